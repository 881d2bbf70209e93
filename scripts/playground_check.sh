#!/usr/bin/env bash
# The playground (`GET /` of `tessera serve`) as a person uses it, in headless Chromium
# driven by Playwright, on the tiny fixture model (issue 18):
#   - the page loads under its Content-Security-Policy with no console error, asks for the
#     API key the server wants, shows the picked image's size, refuses bad LoRA JSON itself;
#   - a job submitted from the form moves the progress bar through intermediate steps,
#     shows its results with their seeds, and the downloaded files have the pixels the API
#     answers directly for the same fields and seed;
#   - an API error is shown in the API's words; Cancel ends a long job as `cancelled`, which
#     `GET /jobs/<id>` confirms;
#   - screenshots: target/playground.png (desktop) and target/playground-phone.png.
#
#   scripts/playground_check.sh
#
# Prints one line per check and exits non-zero at the first failure. Needs python3 (with
# venv), PyPI once for the pinned packages in target/playground-venv, and Debian's
# `chromium` (installed here with apt-get when missing; Playwright's own browser download is
# never used). No GPU, no HuggingFace hub, no standard input.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source scripts/check_lib.sh

chromium=/usr/bin/chromium
if [[ ! -x $chromium ]]; then
    echo "installing Debian's chromium" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null >&2
    apt-get install -y -qq chromium </dev/null >&2
fi

# Pinned, with Playwright's own dependencies, so that a release cannot change what is
# checked without a commit here.
requirements=(playwright==1.65.2 greenlet==3.5.6 pillow==13.0.0 numpy==2.4.6)
venv="$repo/target/playground-venv"
pinned_venv "$venv" "${requirements[@]}"

echo "building tessera (debug)" >&2
cargo build --quiet -p tessera </dev/null >&2

make_work

HF_HUB_OFFLINE=1 "$venv/bin/python" "$repo/scripts/playground_check.py" \
    --tessera "$repo/target/debug/tessera" \
    --chromium "$chromium" \
    --fixtures "$repo/tests/fixtures/diffusers-parity" \
    --work "$work" \
    --screenshots "$repo/target" </dev/null
