#!/usr/bin/env bash
# OpenAI's images API on `tessera serve`, driven by the official `openai` Python SDK on the
# tiny fixture model (CPU, no hub): edits equal to `tessera edit`'s pixels as b64_json and as
# URLs, a bad API key, an unsupported field, and the model list (the checks are listed in
# scripts/openai_check.py). Needs python3 (with venv) and PyPI the first time, for the
# pinned SDK in target/openai-venv; no GPU, no standard input. CI runs it from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/check_lib.sh
root=$(pwd)

# Pinned so that a new SDK release cannot change what CI checks unannounced.
requirements=(openai==3.63.0 pillow==13.0.0)
venv=target/openai-venv
pinned_venv "$venv" "${requirements[@]}"
py="$root/$venv/bin/python"

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2
tessera="$root/target/debug/tessera"

fixtures="$root/tests/fixtures/diffusers-parity"
model="$fixtures/models/tiny-instruct-pix2pix"
checker="$fixtures/models/tiny-safety-checker"
key="openai-check-$RANDOM$RANDOM"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
tmp=$(mktemp -d)
log="$tmp/serve.log"

HF_HUB_OFFLINE=1 "$tessera" serve \
  --host 127.0.0.1 --port "$port" --data-dir "$tmp/data" \
  --model-id "$model" --safety-checker "$checker" --api-key "$key" \
  </dev/null >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT

status=""
for _ in $(seq 1 240); do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "tessera serve exited:" >&2
    cat "$log" >&2
    exit 1
  fi
  status=$("$py" - "$url/health" <<'PY' 2>/dev/null || true
import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["status"])
PY
)
  [[ $status == OK ]] && break
  sleep 0.5
done
if [[ $status != OK ]]; then
  echo "tessera serve never became healthy (last status: '${status}'):" >&2
  cat "$log" >&2
  exit 1
fi
echo "tessera serve is up at $url"

check_status=0
"$py" scripts/openai_check.py --base-url "$url/v1" --api-key "$key" --tessera "$tessera" \
  --model "$model" --safety-checker "$checker" --image "$fixtures/inputs/square.png" \
  </dev/null || check_status=$?
if [[ $check_status != 0 ]]; then
  echo "tessera serve's log:" >&2
  cat "$log" >&2
fi
exit "$check_status"
