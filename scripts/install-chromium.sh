#!/usr/bin/env bash
# Install Debian's Chromium for the end-to-end tests (tests/e2e). Idempotent: does nothing when it is there.
# Playwright drives this system browser through `executable_path`; never `playwright install`, which
# downloads its own browsers and fails offline.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    echo "chromium: already installed ($(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium))"
    exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "chromium: not installed; run this script as root or install sudo" >&2; exit 1; }
    SUDO="sudo"
fi

start=$SECONDS
$SUDO apt-get update -qq
# env, not export: sudo would drop an exported DEBIAN_FRONTEND
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
echo "chromium: installed $(/usr/bin/chromium --version 2>/dev/null) in $((SECONDS - start)) s"
