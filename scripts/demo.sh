#!/usr/bin/env bash
# README demo command: install, then run the whole pipeline on synthetic data at the tiny preset
# (synth → pack → rig on local Ray → train s2au/motion/text2au → animate a held-out clip).
# Extra arguments go to `emodifftalk demo` (e.g. --out DIR, --preset small, --skip-synth).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAY_TMPDIR=${RAY_TMPDIR:-/tmp/ray_edt}
.venv/bin/emodifftalk demo --out results/demo "$@"
