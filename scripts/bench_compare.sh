#!/usr/bin/env bash
# Times tessera and diffusers on the same random-weight model folder, component by component,
# and prints the ratio tessera ms / diffusers ms (below 1: tessera is faster).
#
#   scripts/bench_compare.sh [--arch sd15-pix2pix | --model-dir DIR] [bench options]
#
# Without --model-dir, `tessera random-model --arch ARCH` writes a temporary folder (about
# 4.3 GB for sd15-pix2pix), removed afterwards. Other options (--component, --batch, --size,
# --iters, --device, --dtype) go to both benches. The two run one after the other, so they
# do not compete for cores.
#
# Environment: TESSERA, the tessera command (default: a release build through cargo);
# PYTHON, a python with torch, diffusers and transformers (default: /tmp/pyref/bin/python
# if present, else python3).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
read -r -a tessera <<<"${TESSERA:-cargo run -q --release -p tessera --}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x /tmp/pyref/bin/python ]]; then python=/tmp/pyref/bin/python; else python=python3; fi
fi

arch=sd15-pix2pix
model_dir=""
pass=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --model-dir) model_dir="$2"; shift 2 ;;
        *) pass+=("$1"); shift ;;
    esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ -z "$model_dir" ]]; then
    model_dir="$work/model"
    echo "writing a random $arch model to $model_dir" >&2
    "${tessera[@]}" random-model --arch "$arch" --out "$model_dir" >&2
fi

echo "timing tessera" >&2
"${tessera[@]}" bench --model-dir "$model_dir" --json "${pass[@]}" >"$work/tessera.json"
echo "timing diffusers" >&2
"$python" "$here/bench_diffusers.py" --model-dir "$model_dir" --json "${pass[@]}" >"$work/diffusers.json"

"$python" - "$work/tessera.json" "$work/diffusers.json" <<'PY'
import json, sys

ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
by_name = {r["component"]: r for r in theirs["results"]}
print(f"tessera ({ours['threads']} threads) vs diffusers ({theirs['threads']} threads), "
      f"{ours['device']} {ours['dtype']}, {ours['size']} px, median of {ours['iters']} calls")
print(f"{'component':<11} {'input':<18} {'tessera ms':>11} {'diffusers ms':>13} {'ratio':>6} "
      f"{'tessera GFLOP/s':>16} {'diffusers GFLOP/s':>18} {'tessera RSS':>12} {'diffusers RSS':>14}")
rss = lambda m: "?" if m is None else f"{m:.0f} MiB"
for r in ours["results"]:
    d = by_name.get(r["component"])
    if d is None:
        print(f"{r['component']:<11} (diffusers did not run it)")
        continue
    if abs(r["gflop"] - d["gflop"]) > 1e-6 * d["gflop"]:
        print(f"  note: FLOP counts differ for {r['component']}: tessera {r['gflop']:.3f}, torch {d['gflop']:.3f} GFLOP")
    print(f"{r['component']:<11} {str(r['input_shape']):<18} {r['median_ms']:>11.1f} {d['median_ms']:>13.1f} "
          f"{r['median_ms'] / d['median_ms']:>6.2f} {r['gflop_per_s']:>16.1f} {d['gflop_per_s']:>18.1f} "
          f"{rss(r['peak_rss_mib']):>12} {rss(d['peak_rss_mib']):>14}")
PY
