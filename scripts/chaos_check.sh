#!/usr/bin/env bash
# How hard tessera is to break, measured (issue 19): the fuzz targets at a larger budget and
# another seed than `cargo test` gives them, then overload of a runner and of `tessera
# serve`, secrets in logs, and SIGKILL rounds on a burst of jobs (scripts/chaos_check.py
# says what each checks). Prints the figures, one line per check; exits non-zero at the
# first failure.
#
#   scripts/chaos_check.sh [--requests N] [--rounds N]
#
# CHAOS_FUZZ_INPUTS (default 5000) and CHAOS_FUZZ_SEED (default 19) set the fuzz budget.
# Standard-library Python only; no GPU, no HuggingFace hub, no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/check_lib.sh

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

make_work

echo "fuzzing (${CHAOS_FUZZ_INPUTS:-5000} mutations per target, seed ${CHAOS_FUZZ_SEED:-19})" >&2
TESSERA_FUZZ_INPUTS="${CHAOS_FUZZ_INPUTS:-5000}" TESSERA_FUZZ_SEED="${CHAOS_FUZZ_SEED:-19}" \
    cargo test --quiet -p tessera-api -p tessera-engine -p tessera-orchestrator --test fuzz \
    -- --nocapture </dev/null >"$work/fuzz.txt" 2>&1 || {
    cat "$work/fuzz.txt"
    echo "FAIL  the fuzz targets failed (inputs saved under target/fuzz-failures/)"
    exit 1
}

python3 "$repo/scripts/chaos_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" --fuzz-log "$work/fuzz.txt" "$@" </dev/null
