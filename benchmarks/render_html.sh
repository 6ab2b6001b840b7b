#!/usr/bin/env bash
# Render a `qrr validate --html` page in headless Chromium and save a screenshot (Debian: apt-get install chromium).
#   bash benchmarks/render_html.sh out/report.html out/report.png [WIDTH,HEIGHT]
set -euo pipefail
page="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
shot="${2:-${1%.html}.png}"
size="${3:-1000,2200}"   # the window: 1000,1100 is the first screen
profile="$(mktemp -d)"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size="$size" --screenshot="$shot" "file://$page" 2>/dev/null
rm -rf "$profile"
[ -s "$shot" ] && echo "screenshot: $shot"
