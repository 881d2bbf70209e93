#!/usr/bin/env bash
# go-livepeer's Live Runner protocol against `tessera orchestrator` and `tessera runner
# --register-with`, driven by the official `livepeer-gateway` SDK (see the checks listed in
# scripts/live_runner_check.py). Needs python3 and the package index once, for the pinned
# SDK in target/liverunner-venv; no GPU, no HuggingFace hub, no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

# livepeer-gateway declares Python >= 3.12 but runs on 3.11; its `av` dependency only as a
# wheel (building it needs FFmpeg's headers).
requirements=(livepeer-gateway==1.0.0 aiohttp==3.14.5 protobuf==7.36.2 grpcio==1.85.3 av==18.1.0)
venv="$repo/target/liverunner-venv"
stamp="$venv/.requirements"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "${requirements[*]}" ]]; then
    echo "setting up $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
        "$venv/bin/pip" install --quiet --ignore-requires-python --only-binary=av \
        "${requirements[@]}" </dev/null >&2
    echo "${requirements[*]}" >"$stamp"
fi

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/scripts/live_runner_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" </dev/null
