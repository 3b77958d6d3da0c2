#!/usr/bin/env bash
# The web UI ships third-party browser libraries as built files in src/conveyor/server/web/static/vendor-*, so
# that `pip install .` alone serves a complete UI. Their source is the npm package pinned in
# src/conveyor/server/web/package.json (+ package-lock.json, with its integrity hash).
#   .ci/ui-assets.sh check   install the pinned packages (npm ci, from the machine's npm configuration) and fail
#                            if a shipped file differs from the package's
#   .ci/ui-assets.sh update  copy the package's files over the shipped ones (after changing the pinned version)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
web="$here/src/conveyor/server/web"
mode="${1:-check}"
command -v npm >/dev/null || { echo "ui-assets: npm is missing (apt-get install npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$web/package.json" "$web/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

# shipped file <- file in the package
pairs=(
  "vendor-uplot.js:uplot/dist/uPlot.iife.min.js"
  "vendor-uplot.css:uplot/dist/uPlot.min.css"
)
status=0
for pair in "${pairs[@]}"; do
  shipped="$web/static/${pair%%:*}"
  source="$work/node_modules/${pair#*:}"
  if [[ "$mode" == update ]]; then
    cp "$source" "$shipped"
    echo "ui-assets: $(basename "$shipped") <- ${pair#*:}"
  elif ! cmp -s "$source" "$shipped"; then
    echo "ui-assets: $shipped differs from the pinned package's ${pair#*:}: run .ci/ui-assets.sh update" >&2
    status=1
  fi
done
[[ "$mode" == check && $status == 0 ]] && echo "ui-assets: the shipped vendor files match their pinned packages"
exit $status
