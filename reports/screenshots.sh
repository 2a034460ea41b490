#!/usr/bin/env bash
# A screenshot of each view of a report.html in headless Chromium, beside it:
#   reports/screenshots.sh reports/NAME/report.html  ->  reports/NAME/view_report.png, view_samples.png
set -euo pipefail
page=$(realpath "$1")
dir=$(dirname "$page")
chrome=$(command -v chromium || command -v chromium-browser || command -v google-chrome)
sandbox=()
[ "$(id -u)" = 0 ] && sandbox=(--no-sandbox)  # Chromium refuses to run as root with its sandbox
for view in report samples; do
  "$chrome" --headless "${sandbox[@]}" --disable-gpu --hide-scrollbars --window-size=1300,1700 \
    --virtual-time-budget=15000 --screenshot="$dir/view_$view.png" "file://$page#$view" 2>/dev/null
done
ls "$dir"/view_report.png "$dir"/view_samples.png
