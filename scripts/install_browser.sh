#!/usr/bin/env bash
# Install Debian's headless-capable Chromium for the viewer browser test
# (tests/integration/test_viewer_browser.py drives it with Playwright's Python package).
# Idempotent: does nothing when /usr/bin/chromium already exists. Never runs `playwright install`
# (that downloads a browser build from the internet); the apt package is used instead.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install_browser.sh: need root or sudo to apt-get install chromium" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# chromium: the browser; fonts-liberation: a font so text renders; SwiftShader ships inside the
# chromium package (libvk_swiftshader / libGLESv2), giving WebGL without a GPU.
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation
/usr/bin/chromium --version
