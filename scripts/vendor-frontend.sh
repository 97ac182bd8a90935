#!/usr/bin/env bash
# Developers only: refresh the dashboard's vendored front-end files from the npm registry.
# Users never run this (no Node at install or run time); the files it writes are committed.
# Bump a version here, run it, look at the diff, run the browser test, commit.
set -euo pipefail
cd "$(dirname "$0")/.."
HTMX=2.0.11
UPLOT=1.6.32
SWAGGER=5.35.0
dest=src/conveyor/dashboard/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "htmx.org@$HTMX" "uplot@$UPLOT" "swagger-ui-dist@$SWAGGER" >/dev/null)
for tgz in "$work"/*.tgz; do
    mkdir -p "${tgz%.tgz}" && tar xzf "$tgz" -C "${tgz%.tgz}"
done
rm -rf "$dest" && mkdir -p "$dest/swagger-ui"
cp "$work/htmx.org-$HTMX/package/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$work/htmx.org-$HTMX/package/LICENSE" "$dest/htmx.LICENSE"
cp "$work/uplot-$UPLOT/package/dist/uPlot.iife.min.js" "$dest/uplot.min.js"
cp "$work/uplot-$UPLOT/package/dist/uPlot.min.css" "$dest/uplot.min.css"
cp "$work/uplot-$UPLOT/package/LICENSE" "$dest/uplot.LICENSE"
sw="$work/swagger-ui-dist-$SWAGGER/package"
# The source-map comment is dropped: the .map files (3 MB) are not shipped.
sed '/^\/\/# sourceMappingURL=/d' "$sw/swagger-ui-bundle.js" > "$dest/swagger-ui/swagger-ui-bundle.js"
sed '/^\/\*# sourceMappingURL=/d' "$sw/swagger-ui.css" > "$dest/swagger-ui/swagger-ui.css"
cp "$sw/LICENSE" "$dest/swagger-ui/LICENSE"
cp "$sw/NOTICE" "$dest/swagger-ui/NOTICE"
cp "$sw/swagger-ui-bundle.js.LICENSE.txt" "$dest/swagger-ui/swagger-ui-bundle.js.LICENSE.txt"
cat > "$dest/README.md" <<MD
# Vendored front-end files

Fetched from the npm registry by \`scripts/vendor-frontend.sh\` (do not edit by hand):

| file | package | version | licence |
|---|---|---|---|
| htmx.min.js | htmx.org | $HTMX | BSD Zero Clause (htmx.LICENSE) |
| uplot.min.js, uplot.min.css | uplot | $UPLOT | MIT (uplot.LICENSE) |
| swagger-ui/ | swagger-ui-dist | $SWAGGER | Apache-2.0 (swagger-ui/LICENSE, NOTICE) |

Only change: the \`sourceMappingURL\` comments of the Swagger UI files are removed, since the
source maps are not shipped.
MD
echo "vendored into $dest"
