#!/usr/bin/env bash
# One GPU check of every CUDA path (benchmarks/gpu_check.py): gsplat vs torch renderer, rig on CUDA,
# the three training tasks in fp32/bf16, DeepSpeed ZeRO-2, data-loader idle time, animate's RTF.
# Writes gpu_check.json (OUT=...) and prints a summary.
#
# Time budget: 480 s in all (GPU_CHECK_BUDGET) on one H100/H200-class GPU, and it stops by itself:
#   offline installs from .gpu_check/wheels  <= 60 s (skipped when the same wheels are installed)
#   the checks                                the rest, each with its own budget (see PLAN in
#                                             gpu_check.py); gsplat's kernel build (minutes, first
#                                             run only: cached in .gpu_check/torch_extensions)
#                                             runs in the background beside the training checks.
# Prepare once where PyPI is reachable: `bash scripts/gpu_wheels.sh` (wheels + data in .gpu_check/,
# git-ignored; carry that folder to the GPU machine). Without a GPU: `bash scripts/gpu_check.sh --dry-run`.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
TOTAL=${GPU_CHECK_BUDGET:-480}
PY=${PYTHON:-python3}
GC=$PWD/.gpu_check
OUT=${OUT:-gpu_check.json}
echo "gpu_check: budget ${TOTAL} s in all ($(date -u +%H:%M:%S) UTC)"

dry=0
for a in "$@"; do [ "$a" = "--dry-run" ] && dry=1; done

# Carried packages go to their own folder on PYTHONPATH: no change to the image's environment.
SITE=$GC/site
if [ -d "$GC/wheels" ] && ! cmp -s "$GC/wheels/pins.txt" "$SITE/pins.txt" 2>/dev/null; then
  rm -rf "$SITE"
  if timeout 60 "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$GC"/wheels/*.whl; then
    cp "$GC/wheels/pins.txt" "$SITE/pins.txt"
  else  # one bad wheel (e.g. another Python version) must not cost the others
    echo "gpu_check: offline install failed; installing wheel by wheel (checks needing a missing one record why)"
    rm -rf "$SITE"
    for w in "$GC"/wheels/ninja-*.whl "$GC"/wheels/*.whl; do  # ninja first: pip --target keeps the first bin/
      timeout 20 "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$w" >/dev/null 2>&1 \
        || echo "gpu_check: could not install $(basename "$w")"
    done
  fi
fi
[ -d "$SITE" ] && export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export PATH=$SITE/bin:$PATH  # ninja, for gsplat's JIT build
export TORCH_EXTENSIONS_DIR=$GC/torch_extensions MAX_JOBS=${MAX_JOBS:-12}
export RAY_TMPDIR=/tmp/ray_gc TOKENIZERS_PARALLELISM=false

assets=()
if [ "$dry" = 0 ]; then
  assets=(--assets "$GC/assets")
  [ -f "$GC/assets/shards/manifest.json" ] || echo "gpu_check: no $GC/assets (run scripts/gpu_wheels.sh); making them here"
  [ -f "$GC/assets/shards/manifest.json" ] || "$PY" benchmarks/gpu_check.py --prepare "$GC/assets"
fi
left=$(( TOTAL - ($(date +%s) - start) - 10 ))
echo "gpu_check: $left s left for the checks"
# the hard stop: the driver's own budget is $left; this only catches a driver that hangs itself
timeout -k 5 $(( left + 8 )) "$PY" benchmarks/gpu_check.py "${assets[@]}" --out "$OUT" --budget "$left" "$@"
rc=$?
echo "gpu_check: finished in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
