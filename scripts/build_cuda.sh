#!/usr/bin/env bash
# Builds the CUDA binary of tessera on a machine without a GPU or a CUDA install: nvcc 13.0,
# the CUDA headers and link-time libraries come from PyPI wheels (scripts/cuda-toolchain.sh),
# and a stub libcuda.so stands in for the driver's at link time.
#
#   scripts/build_cuda.sh                 # -> target/release/tessera, for compute capability 90 (H100/H200)
#   CUDA_COMPUTE_CAP=89 scripts/build_cuda.sh
#   FEATURES=cuda scripts/build_cuda.sh     # without cuDNN (candle's own convolution kernels)
#
# The default features are `cudnn` (implies `cuda`): candle's convolutions through cuDNN.
# Measured 2026-12-04: a cold build took 40 min on 2 cores shared with other builds (the nvcc
# part, candle-kernels, about 10 of them); ~13 min on 2 idle cores (2026-11-24).
#
# On the GPU machine the binary needs the CUDA 13 runtime libraries on LD_LIBRARY_PATH (for
# example those of a PyTorch cu130 install: <site-packages>/nvidia/cu13/lib) and driver >= 580.
set -euo pipefail
cd "$(dirname "$0")/.."
# The wheels are large (about 3 GB unpacked); do not keep a second copy in pip's cache.
export PIP_NO_CACHE_DIR=1
TOOLCHAIN_DIR=${TOOLCHAIN_DIR:-$HOME/.cache/cuda-toolchain}
# The toolchain script reads cudarc's sources for the stub driver library.
cargo fetch --locked
# shellcheck disable=SC1090
source <(bash scripts/cuda-toolchain.sh "$TOOLCHAIN_DIR")
cargo build --release --locked -p tessera --features "${FEATURES:-cudnn}"
echo "built target/release/tessera with ${FEATURES:-cudnn} for compute capability $CUDA_COMPUTE_CAP" >&2
