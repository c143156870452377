#!/usr/bin/env bash
# Build the installable plugin zip (Plugins → Add New → Upload Plugin):
#   bash bridge/wordpress/build-zip.sh [OUT_DIR]   → OUT_DIR/kivihook-bridge-<version>.zip
# Every PHP file is checked with `php -l` first when PHP is installed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/dist}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
version=$(sed -n 's/^ \* Version: *//p' "$here/kivihook-bridge/kivihook-bridge.php" | tr -d '[:space:]')
[ -n "$version" ] || { echo "no Version: header in kivihook-bridge.php" >&2; exit 1; }
if command -v php >/dev/null; then
  find "$here/kivihook-bridge" -name '*.php' -print0 | xargs -0 -n1 php -l >/dev/null
fi
zip="$out/kivihook-bridge-$version.zip"
rm -f "$zip"
if command -v zip >/dev/null; then
  (cd "$here" && zip -qr -X "$zip" kivihook-bridge)
else
  (cd "$here" && python3 -c 'import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for root, _, files in os.walk("kivihook-bridge"):
        for f in sorted(files):
            z.write(os.path.join(root, f))' "$zip")
fi
echo "$zip"
