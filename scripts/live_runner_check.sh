#!/usr/bin/env bash
# go-livepeer's Live Runner protocol against `tessera orchestrator` and `tessera runner
# --register-with`, driven by the official `livepeer-gateway` SDK (see the checks listed in
# scripts/live_runner_check.py). Needs python3 and the package index once, for the pinned
# SDK in target/liverunner-venv; no GPU, no HuggingFace hub, no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/check_lib.sh

# livepeer-gateway declares Python >= 3.12 but runs on 3.11; its `av` dependency only as a
# wheel (building it needs FFmpeg's headers).
requirements=(livepeer-gateway==1.0.0 aiohttp==3.14.5 protobuf==7.36.2 grpcio==1.85.3 av==18.1.0)
venv="$repo/target/liverunner-venv"
PIP_FLAGS=(--ignore-requires-python --only-binary=av)
pinned_venv "$venv" "${requirements[@]}"

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/scripts/live_runner_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" </dev/null
