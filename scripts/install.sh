#!/usr/bin/env bash
# Create .venv and install EmoDiffTalk with the torch pins that work on CPU-only machines.
# torch is installed FIRST so pip does not pick other builds for the package's dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# espeak-ng: the text-to-speech voices of the synthetic data (emodifftalk synth, v2). Best effort:
# without it synth falls back to formant speech with a warning.
if ! ldconfig -p 2>/dev/null | grep -q libespeak-ng; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo -n"
    { $SUDO apt-get install -y -qq espeak-ng >/dev/null 2>&1 \
      || { $SUDO apt-get update -qq >/dev/null 2>&1 && $SUDO apt-get install -y -qq espeak-ng >/dev/null 2>&1; }; } \
      || echo "install.sh: could not apt-get install espeak-ng; synth will use formant speech" >&2
  else
    echo "install.sh: espeak-ng not found (install it with your package manager); synth will use formant speech" >&2
  fi
fi
EXTRAS=${EMODIFFTALK_EXTRAS:-test,viewer}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
# torch 2.14.1 + torchvision 0.29.1: the pair whose torchvision imports (open_clip needs it); CUDA builds
# from PyPI that also run on CPU. See README "Installing" for CUDA machines.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -m pip install -q -e ".[${EXTRAS}]" 2>&1 | grep -v "is ignored" || true
.venv/bin/python -c "import torch, torchvision, emodifftalk; print('emodifftalk', emodifftalk.__version__, 'torch', torch.__version__)"
