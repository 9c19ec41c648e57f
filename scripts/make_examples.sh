#!/usr/bin/env bash
# Re-create examples/speech.wav (the README's animate input) with espeak-ng: ~2.5 s of English
# speech, 16 kHz mono PCM16. The file is committed; run this only to change it.
# Needs espeak-ng (Debian: apt-get install espeak-ng) and the project's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
command -v espeak-ng >/dev/null || { echo "espeak-ng not found: apt-get install espeak-ng" >&2; exit 1; }
tmp=$(mktemp --suffix=.wav)
trap 'rm -f "$tmp"' EXIT
espeak-ng -v en-us -s 150 -w "$tmp" "Hello there. I can smile while I speak."
"$PY" - "$tmp" examples/speech.wav <<'PY'
import sys

from emodifftalk.data.audio import load_audio, write_wav

audio = load_audio(sys.argv[1], target_sr=16000)
audio = 0.9 * audio / max(float(abs(audio).max()), 1e-6)
write_wav(sys.argv[2], audio, 16000)
print(f"{sys.argv[2]}: {audio.shape[0] / 16000:.2f} s at 16 kHz")
PY
