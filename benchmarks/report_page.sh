#!/usr/bin/env bash
# The validation page as a person sees it: `qrr validate --html`, opened in headless Chromium (Debian:
# apt-get install chromium), checked (verdict first, then the artifact-vs-reference plot, then the figures), and
# its first screen kept as a screenshot.
#   bash benchmarks/report_page.sh ARTIFACT CHECKPOINT [SCREENSHOT.png]   (default benchmarks/results/validation_page.png)
set -euo pipefail
art="$1"; ref="$2"; shot="${3:-benchmarks/results/validation_page.png}"
dir="$(mktemp -d)"; profile="$dir/profile"
qrr validate "$art" --reference "$ref" --html "$dir/report.html" > /dev/null || true   # a failed gate writes it too
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking --disable-sync \
  --disable-component-update --user-data-dir="$profile" --dump-dom "file://$dir/report.html" 2>/dev/null > "$dir/dom.html"
python - "$dir/dom.html" <<'PY'
import re, sys
dom = open(sys.argv[1], encoding="utf-8").read()
verdict = re.search(r'<h1>Validation: <span class="(PASS|FAIL)">', dom)
first_img, table = dom.find("<img"), dom.find("<table>")
assert verdict, "no verdict heading in the rendered page"
assert 0 < dom.find('class="verdict"') < first_img < table, "the page does not open with the verdict and the plot"
assert dom.count("data:image/png;base64,") == 3, "a plot is missing"
print(f"page checked: {verdict.group(1)}, verdict sentence and scatter plot before the figures")
PY
bash "$(dirname "$0")/render_html.sh" "$dir/report.html" "$shot" 1000,1100
rm -rf "$dir"
