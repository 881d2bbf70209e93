#!/usr/bin/env bash
# The network end to end across processes (issue 8): two `tessera orchestrator` processes
# with different prices and one `tessera gateway` on loopback ports, driven by Livepeer's own
# Python SDK (`livepeer-ai`) as the client, on the tiny parity fixture model. Every result
# is compared pixel for pixel with `tessera edit` on the same model, parameters and seed.
#
#   scripts/network_check.sh
#
# Prints one line per check and exits non-zero at the first failure, saying what differed.
# Needs python3 (3.9+) and the package index once, for the pinned SDK in
# target/netcheck-venv; no GPU, no HuggingFace hub, no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# The SDK and what the check reads images with, pinned so that a new SDK release cannot
# change what is being checked without a commit here.
requirements=(livepeer-ai==0.10.0 pillow==13.0.0 numpy==2.4.6)
venv="$repo/target/netcheck-venv"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
    echo "setting up $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$venv/bin/pip" install --quiet "${requirements[@]}" </dev/null >&2
    echo "${requirements[*]}" >"$stamp"
fi

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

work="$(mktemp -d)"
# The Python side writes the id of every process it starts to $work/pids; whatever way
# this script ends, none of them outlives it.
cleanup() {
    if [[ -f "$work/pids" ]]; then
        while read -r pid; do
            kill -9 "$pid" 2>/dev/null || true
        done <"$work/pids"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/scripts/network_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" </dev/null
