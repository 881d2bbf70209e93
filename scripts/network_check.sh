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
source scripts/check_lib.sh

# The SDK and what the check reads images with, pinned so that a new SDK release cannot
# change what is being checked without a commit here.
requirements=(livepeer-ai==0.10.0 pillow==13.0.0 numpy==2.4.6)
venv="$repo/target/netcheck-venv"
pinned_venv "$venv" "${requirements[@]}"

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

make_work

HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/scripts/network_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" </dev/null
