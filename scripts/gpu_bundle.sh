#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that cannot reach any registry, into
# one folder: the CUDA binary (stripped, xz-compressed: ~11 MB instead of ~220 MB) and the
# Python wheels the machine lacks (diffusers 0.42.1, as the parity fixtures; its
# importlib_metadata), for Python 3.12 on x86-64.
#
#   scripts/build_cuda.sh && scripts/gpu_bundle.sh target/release/tessera .gpu
# There:
#   pip install --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site
#   python3 -c "import lzma,shutil;shutil.copyfileobj(lzma.open('.gpu/tessera.xz'),open('/tmp/tessera','wb'))"
#   chmod +x /tmp/tessera && scripts/gpu_check.sh --tessera /tmp/tessera --out OUT
set -euo pipefail
binary="${1:?usage: $0 BINARY DIR}" dir="${2:?usage: $0 BINARY DIR}"
mkdir -p "$dir"
strip -o "$dir/tessera" "$binary"
xz -9 -T0 -f "$dir/tessera"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d "$dir" diffusers==0.42.1 importlib_metadata==10.2.0
ls -la "$dir"
