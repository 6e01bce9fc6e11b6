#!/usr/bin/env bash
# Install Debian's chromium (headless browser for `spnas report` PNGs via kaleido and the
# dashboard browser test). Idempotent; never downloads a browser from anywhere but apt.
# As non-root without chromium: warn and exit 0 (tests/test_dashboard_browser.py then skips,
# or fails under CI).
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "chromium: present ($CHROMIUM)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium: WARNING: $CHROMIUM missing and not root; install it with 'apt-get install chromium'" >&2
    exit 0
fi
start=$(date +%s)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
echo "chromium: installed $CHROMIUM in $(( $(date +%s) - start )) s"
