#!/usr/bin/env bash
# The one command for a GPU machine: correctness of the CUDA build against diffusers' numbers,
# then tessera against diffusers on the same random-weight folders, in one table. Built to
# finish within 8 minutes on an H200, from a prebuilt binary (no GPU minute spent compiling):
#
#   scripts/build_cuda.sh                                   # here, once: target/release/tessera
#   scripts/gpu_check.sh --tessera BIN --out DIR            # there
#   scripts/gpu_check.sh --tessera target/debug/tessera --out /tmp/g --dry-run   # rehearsal, CPU
#
# What it runs, in order (each phase has its own time limit; past the overall budget the
# remaining phases are skipped and say so, so a slow phase cannot cost the whole run):
#  1. parity: scripts/gpu_parity.py, every fixture pipeline case in f16 and bf16 on the GPU,
#     against diffusers' CPU f32 reference, beside diffusers' own GPU f16/bf16 distance.
#  2. sd15-pix2pix (timbrooks/instruct-pix2pix's architecture, random weights): `tessera bench`
#     and scripts/bench_diffusers.py, f16: text encoder, VAE encode/decode at 512², the UNet
#     call at batch 3 (64×64 latents), the whole 512² edit at 20 steps and at 100 steps;
#     diffusers' UNet also under torch.compile.
#  3. sdxl (stable-diffusion-xl-base-1.0's architecture): both text encoders, VAE at 1024²,
#     the UNet call at batch 2 (128×128), a 1024² img2img at 8 steps, guidance 0, strength 1.
# Peak VRAM is read per process from nvidia-smi (sampled every 100 ms, less what was in use
# before), the same way for both engines; diffusers' results also carry torch's peak reserved.
#
# DIR gets gpu_check.json (every figure) and gpu_check.log; the table is printed last.
# Options: --dry-run (CPU, toy architectures, f32: rehearses every step here), --budget SECS
# (default 420), --skip-sdxl, --no-compile. PYTHON: a python with torch, diffusers,
# transformers, peft (default python3).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tessera="" out="" dry=0 budget=420 sdxl=1 compile=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tessera) tessera="$(realpath "$2")"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        --budget) budget="$2"; shift 2 ;;
        --skip-sdxl) sdxl=0; shift ;;
        --no-compile) compile=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -x "$tessera" && -n "$out" ]] || { echo "usage: $0 --tessera BIN --out DIR [--dry-run]" >&2; exit 2; }
python="${PYTHON:-python3}"
mkdir -p "$out"
work="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$work"' EXIT
exec > >(tee "$out/gpu_check.log") 2>&1

if ((dry)); then
    device=cpu dtype=f32 parity_dtypes=f32
    pix2pix_arch=tiny sdxl_arch=tiny-sdxl pix2pix_size=64 sdxl_size=64 long_steps=4
    export CUDA_VISIBLE_DEVICES=""
else
    device=cuda dtype=f16 parity_dtypes=f16,bf16
    pix2pix_arch=sd15-pix2pix sdxl_arch=sdxl pix2pix_size=512 sdxl_size=1024 long_steps=100
    # The binary links the CUDA 13 runtime, cuBLAS, cuRAND and cuDNN: PyTorch's cu13 wheels
    # carry them.
    site="$("$python" -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
    for d in "$site"/nvidia/cu13/lib "$site"/nvidia/cudnn/lib "$site"/nvidia/*/lib; do
        [[ -d "$d" ]] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    done
    export LD_LIBRARY_PATH
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
fi
echo "gpu_check: device $device, dtype $dtype, budget ${budget}s, tessera $tessera"
"$tessera" --version || true

# Runs "$@" under a time limit, recording its peak VRAM (MiB above the idle level) in $vram.
vram="?"
measured() {
    local limit="$1"; shift
    vram="?"
    if ((dry)); then timeout "$limit" "$@"; return; fi
    local idle samples="$work/vram.$RANDOM"
    idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$samples" &
    local sampler=$!
    timeout "$limit" "$@"
    local rc=$?
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    vram=$(awk -v idle="$idle" 'BEGIN{m=0} {if ($1-idle>m) m=$1-idle} END{print m}' "$samples")
    return $rc
}

# Phase bookkeeping: each result line goes to $work/results.jsonl.
results="$out/results.jsonl"
: >"$results"
record() { "$python" - "$@" >>"$results" <<'PY'
import json, sys
engine, arch, phase, path, vram = sys.argv[1:6]
try:
    doc = json.load(open(path))
except Exception as e:
    print(json.dumps({"engine": engine, "arch": arch, "phase": phase, "error": f"no result ({e})"}))
    sys.exit()
for r in doc["results"]:
    r.update(engine=engine, arch=arch, phase=phase, vram_mib=None if vram == "?" else float(vram))
    r.pop("times_ms", None)
    print(json.dumps(r))
PY
}
over_budget() {
    if ((SECONDS > budget)); then echo "SKIPPED $1: past the ${budget}s budget at ${SECONDS}s"; return 0; fi
    return 1
}

# tessera and diffusers on one folder, one component set (extra args for both; DT overrides
# the dtype).
bench_pair() {
    local arch="$1" dir="$2" phase="$3" dt="${DT:-$dtype}"; shift 3
    over_budget "$arch $phase" && return
    echo "== $arch $phase: tessera"
    measured 240 "$tessera" bench --model-dir "$dir" --device "$device" --dtype "$dt" --json "$@" >"$work/t.json"
    record tessera "$arch" "$phase" "$work/t.json" "$vram"
    echo "== $arch $phase: diffusers"
    measured 240 "$python" "$here/bench_diffusers.py" --model-dir "$dir" --device "$device" --dtype "$dt" --json "$@" >"$work/d.json"
    record diffusers "$arch" "$phase" "$work/d.json" "$vram"
}

echo "== parity (fixture cases, $parity_dtypes)"
measured 200 "$python" "$here/gpu_parity.py" --tessera "$tessera" --device "$device" --dtypes "$parity_dtypes" --json "$out/gpu_parity.json"
parity_rc=$?

run_arch() {
    local arch="$1" size="$2"
    over_budget "$arch" && return
    local dir="$work/$arch"
    echo "== $arch: writing a random-weight folder"
    timeout 180 "$tessera" random-model --arch "$arch" --out "$dir" || { echo "random-model $arch failed"; return; }
    if [[ "$arch" == "$pix2pix_arch" ]]; then
        bench_pair "$arch" "$dir" components --component all --size "$size" --iters 5
    else
        # SDXL's UNet at batch 2 (classifier-free guidance); VAE at batch 1.
        bench_pair "$arch" "$dir" components --component unet --batch 2 --size "$size" --iters 5
        bench_pair "$arch" "$dir" components --component text --size "$size" --iters 5
        bench_pair "$arch" "$dir" components --component vae-decode --size "$size" --iters 3
        bench_pair "$arch" "$dir" components --component vae-encode --size "$size" --iters 3
    fi
    bench_pair "$arch" "$dir" pipeline --component pipeline --size "$size" --iters 3 "${pipeline_args[@]}"
    if [[ "$arch" == "$pix2pix_arch" ]]; then
        bench_pair "$arch" "$dir" "pipeline-$long_steps" --component pipeline --size "$size" --iters 1 --steps "$long_steps"
        ((dry)) || DT=bf16 bench_pair "$arch" "$dir" bf16 --component unet --size "$size" --iters 5
        if ((compile)) && ! over_budget "torch.compile"; then
            echo "== $arch: diffusers UNet under torch.compile"
            measured 240 "$python" "$here/bench_diffusers.py" --model-dir "$dir" --device "$device" --dtype "$dtype" \
                --json --component unet --size "$size" --iters 10 --compile >"$work/c.json"
            record diffusers-compile "$arch" components "$work/c.json" "$vram"
        fi
    fi
    rm -rf "$dir"
}
pipeline_args=(--steps 20)
run_arch "$pix2pix_arch" "$pix2pix_size"
if ((sdxl)); then
    pipeline_args=(--steps 8 --guidance-scale 0 --strength 1)
    run_arch "$sdxl_arch" "$sdxl_size"
fi

"$python" - "$results" "$out/gpu_check.json" "$device" "$dtype" "$parity_rc" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump({"device": sys.argv[3], "dtype": sys.argv[4], "parity_passed": sys.argv[5] == "0", "results": rows},
          open(sys.argv[2], "w"), indent=1)
ok = [r for r in rows if "median_ms" in r]
for r in rows:
    if "error" in r:
        print(f"  {r['engine']} {r['arch']} {r['phase']}: {r['error']}")
key = lambda r: (r["arch"], r["phase"], r["component"])
base = {key(r): r for r in ok if r["engine"] == "diffusers"}
comp = {key(r): r for r in ok if r["engine"] == "diffusers-compile"}
fmt = lambda v, spec: "-" if v is None else format(v, spec)
print(f"\n{sys.argv[3]} {sys.argv[4]}: median ms (ratio = tessera / diffusers; below 1 tessera is faster)")
print(f"{'arch':<13} {'what':<22} {'input':<18} {'tessera':>9} {'diffusers':>10} {'ratio':>6} {'compile':>8} "
      f"{'ratio':>6} {'VRAM t/d MiB':>14}")
for r in ok:
    if r["engine"] != "tessera":
        continue
    d, c = base.get(key(r)), comp.get(key(r))
    what = r["component"] if r["phase"] == "components" else f"{r['component']} ({r['phase']})"
    print(f"{r['arch']:<13} {what:<22} {str(r['input_shape']):<18} {r['median_ms']:>9.1f} "
          f"{fmt(d and d['median_ms'], '>10.1f'):>10} {fmt(d and r['median_ms'] / d['median_ms'], '>6.2f'):>6} "
          f"{fmt(c and c['median_ms'], '>8.1f'):>8} {fmt(c and r['median_ms'] / c['median_ms'], '>6.2f'):>6} "
          f"{fmt(r.get('vram_mib'), '.0f'):>6}/{fmt(d and d.get('vram_mib'), '.0f')}")
print(f"parity: {'passed' if sys.argv[5] == '0' else 'FAILED (see gpu_parity.json)'}")
PY
echo "gpu_check finished in ${SECONDS}s"
exit "$parity_rc"
