# What the end-to-end check scripts share (sourced, not run): a virtual environment of pinned
# packages, and a work folder whose processes die with the script.

# pinned_venv VENV REQUIREMENT... : (re)creates VENV with exactly these pinned packages,
# unless it already holds them; extra pip flags may be given in the array PIP_FLAGS.
pinned_venv() {
    local venv=$1
    shift
    local stamp="$venv/.requirements"
    if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$*" ]]; then
        echo "setting up $venv" >&2
        rm -rf "$venv"
        python3 -m venv "$venv"
        PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$venv/bin/pip" install --quiet ${PIP_FLAGS[@]+"${PIP_FLAGS[@]}"} "$@" </dev/null >&2
        echo "$*" >"$stamp"
    fi
}

# make_work: sets `work` to a new temporary folder. The Python side writes the id of every
# process it starts to $work/pids; whatever way the script ends, none of them outlives it,
# and the folder goes too.
make_work() {
    work="$(mktemp -d)"
    trap _check_lib_cleanup EXIT
    trap 'exit 130' INT TERM
}

_check_lib_cleanup() {
    if [[ -f "$work/pids" ]]; then
        while read -r pid; do
            kill -9 "$pid" 2>/dev/null || true
        done <"$work/pids"
    fi
    rm -rf "$work"
}
