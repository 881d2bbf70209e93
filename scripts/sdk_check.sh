#!/usr/bin/env bash
# Drives `tessera runner` the way Livepeer clients do, on the tiny fixture model (CPU, no hub):
#   1. the official Python SDK (`livepeer-ai`): image-to-image results equal `tessera edit`'s
#      pixels for the same seeds; a wrong token and a bad field give the SDK's error types
#      (scripts/sdk_check.py);
#   2. schemathesis, fuzzing every operation of the served OpenAPI document with all its
#      checks (no 5xx, no response outside the schema, no undocumented status code or content
#      type, auth enforced, wrong methods refused, ...) but two that cannot hold for this
#      form: positive_data_acceptance wants every schema-valid form accepted, and ai-runner's
#      schema (which the runner serves unchanged) cannot say "at most 4 steps" or "at least
#      8x8 pixels"; negative_data_rejection wants every schema-violating form refused, but a
#      multipart field is text, so its "wrong" values can be right on the wire (it flags
#      `image_guidance_scale` sent as `0.0`, a valid number, as a `format` violation).
# Needs python3 (with venv) and network access to PyPI the first time; the venv is kept in
# target/sdk-venv. Run from anywhere; CI runs it from .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# Pinned so that a new SDK or fuzzer release cannot change what CI checks unannounced.
LIVEPEER_AI=0.10.0
SCHEMATHESIS=4.32.5
PILLOW=13.0.0
# Per operation and phase; the fuzzer stops early once it has nothing new to try.
MAX_EXAMPLES=${SDK_CHECK_MAX_EXAMPLES:-300}

venv=target/sdk-venv
stamp="$venv/.pinned-$LIVEPEER_AI-$SCHEMATHESIS-$PILLOW"
if [[ ! -f $stamp ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet \
    "livepeer-ai==$LIVEPEER_AI" "schemathesis==$SCHEMATHESIS" "pillow==$PILLOW" </dev/null
  touch "$stamp"
fi
py="$venv/bin/python"

cargo build -p tessera </dev/null
tessera="$root/target/debug/tessera"

fixtures="$root/tests/fixtures/diffusers-parity"
model="$fixtures/models/tiny-instruct-pix2pix"
checker="$fixtures/models/tiny-safety-checker"
token="sdk-check-$RANDOM$RANDOM"
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="http://127.0.0.1:$port"
tmp=$(mktemp -d)
log="$tmp/runner.log"

max_steps=4
# The fuzzer sends any step count the schema allows; the runner's limit keeps each
# accepted request to a few denoising steps, so the run stays short on two cores.
HF_HUB_OFFLINE=1 "$tessera" runner \
  --host 127.0.0.1 --port "$port" \
  --model-id "$model" --auth-token "$token" --safety-checker "$checker" \
  --max-inference-steps "$max_steps" --max-images-per-prompt 2 --max-image-side 256 \
  </dev/null >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$tmp"' EXIT

status=""
for _ in $(seq 1 240); do
  if ! kill -0 "$server" 2>/dev/null; then
    echo "tessera runner exited:" >&2
    cat "$log" >&2
    exit 1
  fi
  status=$("$py" - "$url/health" <<'EOF' 2>/dev/null || true
import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1], timeout=2))["status"])
EOF
)
  [[ $status == OK || $status == ERROR ]] && break
  sleep 0.5
done
if [[ $status != OK ]]; then
  echo "tessera runner never became healthy (last status: '${status}'):" >&2
  cat "$log" >&2
  exit 1
fi
echo "tessera runner is up at $url"

echo "== livepeer-ai SDK $LIVEPEER_AI"
"$py" scripts/sdk_check.py --server-url "$url" --token "$token" --tessera "$tessera" \
  --model "$model" --safety-checker "$checker" --image "$fixtures/inputs/square.png" \
  --max-inference-steps "$max_steps" </dev/null

echo "== schemathesis $SCHEMATHESIS"
st_log="$tmp/schemathesis.log"
st_status=0
# Run from the temporary folder: schemathesis keeps a cache under its working directory.
(cd "$tmp" && SDK_CHECK_IMAGE="$fixtures/inputs/square.png" \
  SCHEMATHESIS_HOOKS="$root/scripts/sdk_check_hooks.py" "$root/$venv/bin/st" run "$url/openapi.json" \
  --header "Authorization: Bearer $token" \
  --checks all --exclude-checks positive_data_acceptance,negative_data_rejection \
  --max-examples "$MAX_EXAMPLES" --seed 1 --no-color --workers 1 --request-timeout 120 \
  </dev/null) | tee "$st_log" || st_status=$?
# The summary's "Test cases:" block says how many requests the fuzzer sent and how they fared.
echo "schemathesis test cases: $(grep -A1 '^Test cases:' "$st_log" | tail -1 | xargs)"
echo "runner: $(grep -c 'image-to-image done' "$log" || true) inference runs"
exit "$st_status"
