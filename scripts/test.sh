#!/usr/bin/env bash
# README test command: install, then run the default test suite (slow/gpu tests are behind markers).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Debian chromium for the viewer's browser test (best effort: the test skips with the reason if absent)
bash scripts/install_browser.sh || echo "chromium not installed; the browser test will skip"
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-1000000000}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-1000000000}
# pytest exits 5 when it collects no test: with `set -e` that fails this script, as it should.
.venv/bin/python -m pytest -q "$@"
