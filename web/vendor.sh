#!/usr/bin/env bash
# Vendors the third-party code of the web UI into web/vendor/, pinned and
# checked, so the UI needs no bundler and no network at run time.
#
#   web/vendor.sh           fetch each pinned package with `npm pack`, check
#                           the tarball's sha512 against the pin, extract the
#                           few files the UI loads, write web/vendor/VERSIONS
#   web/vendor.sh --check   only check that web/vendor/ holds exactly what
#                           VERSIONS records (sha256 of each file); no network
#
# Packages (the registry's `dist.integrity` of each tarball is pinned below):
#   @xterm/xterm      lib/xterm.mjs (ES module), css/xterm.css, LICENSE
#   @xterm/addon-fit  lib/addon-fit.mjs (ES module), LICENSE
#
# One change is made to xterm.mjs, because the page's Content-Security-Policy
# is `style-src 'self'`: xterm's DOM renderer writes its theme and cell sizes
# into <style> elements it creates and sets colours with
# setAttribute("style", ...), both of which that policy refuses (the
# terminal would lose its colours and the console would report violations).
# The patch turns each created <style> into an inert <template> whose text
# goes into a constructed stylesheet (document.adoptedStyleSheets, which the
# policy allows), and the style attribute into a CSSOM cssText change. Each
# replacement must match exactly where expected, else the script fails: a new
# xterm version needs the patch looked at again.
#
# Needs: bash, npm and node, tar, openssl, sha256sum; the npm registry.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUT=$HERE/vendor

# name version integrity (the registry's dist.integrity of the tarball)
PACKAGES=(
    "@xterm/xterm 6.0.0 sha512-TQwDdQGtwwDt+2cgKDLn0IRaSxYu1tSUjgKarSDkUM0ZNiSRXFpjxEsvc/Zgc5kq5omJ+V0a8/kIM2WD3sMOYg=="
    "@xterm/addon-fit 0.11.0 sha512-jYcgT6xtVYhnhgxh3QgYDnnNMYTcf8ElbxxFzX0IZo+vabQqSPAjC3c1wJrKB5E19VwQei89QCiZZP86DCPF7g=="
)

die() {
    echo "vendor.sh: $*" >&2
    exit 1
}

# ---- --check: the files on disk are the ones VERSIONS records ----------------
if [ "${1:-}" = "--check" ]; then
    [ -f "$OUT/VERSIONS" ] || die "$OUT/VERSIONS is missing: run web/vendor.sh"
    status=0
    while read -r kind sum path; do
        [ "$kind" = "file" ] || continue
        actual=$(sha256sum "$OUT/$path" 2>/dev/null | cut -d' ' -f1 || true)
        if [ "$actual" != "$sum" ]; then
            echo "vendor.sh: $path differs from VERSIONS (sha256 ${actual:-missing}, expected $sum)" >&2
            status=1
        fi
    done <"$OUT/VERSIONS"
    [ $status = 0 ] && echo "vendor.sh: web/vendor matches VERSIONS"
    exit $status
elif [ $# -gt 0 ]; then
    die "unknown argument '$1' (usage: $0 [--check])"
fi

command -v npm >/dev/null || die "npm is not on PATH"
command -v node >/dev/null || die "node is not on PATH"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Fetches NAME@VERSION's tarball, checks it against INTEGRITY, unpacks it in
# $WORK/<dir> and echoes that directory.
fetch() {
    local name=$1 version=$2 integrity=$3
    local dir=$WORK/$(echo "$name" | tr -c 'A-Za-z0-9.\n' '_')
    mkdir -p "$dir"
    local tarball
    tarball=$(cd "$dir" && npm pack "$name@$version" --ignore-scripts --silent --no-update-notifier 2>/dev/null | tail -n 1)
    [ -n "$tarball" ] && [ -f "$dir/$tarball" ] || die "npm pack $name@$version produced no tarball"
    local actual
    actual="sha512-$(openssl dgst -sha512 -binary "$dir/$tarball" | base64 -w0)"
    [ "$actual" = "$integrity" ] || die "$name@$version: tarball is $actual, pinned $integrity"
    tar -xzf "$dir/$tarball" -C "$dir"
    echo "$dir/package"
}

# Copies FILE of the unpacked package to web/vendor/DEST.
take() {
    local from=$1 dest=$2
    [ -f "$from" ] || die "missing in the package: $from"
    mkdir -p "$(dirname "$OUT/$dest")"
    cp "$from" "$OUT/$dest"
}

# The build's trailing `//# sourceMappingURL=` points at a .map not vendored.
strip_map() {
    sed -i '/^\/\/# sourceMappingURL=/d' "$1"
}

rm -rf "$OUT.new"
mkdir -p "$OUT.new"
OUT_FINAL=$OUT
OUT=$OUT.new

{
    echo "# Written by web/vendor.sh; check with web/vendor.sh --check."
    echo "# package <name> <version> <tarball integrity>; file <sha256> <path under web/vendor>"
} >"$WORK/VERSIONS"

for spec in "${PACKAGES[@]}"; do
    read -r name version integrity <<<"$spec"
    pkg=$(fetch "$name" "$version" "$integrity")
    echo "package $name $version $integrity" >>"$WORK/VERSIONS"
    case $name in
        @xterm/xterm)
            take "$pkg/lib/xterm.mjs" xterm/xterm.mjs
            take "$pkg/css/xterm.css" xterm/xterm.css
            take "$pkg/LICENSE" xterm/LICENSE.txt
            strip_map "$OUT/xterm/xterm.mjs"
            node - "$OUT/xterm/xterm.mjs" <<'NODE'
// The CSP patch described at the top of vendor.sh.
const fs = require("fs");
const file = process.argv[2];
let code = fs.readFileSync(file, "utf8");
function replace(pattern, replacement, expected, what) {
  const found = code.match(pattern) || [];
  if (found.length !== expected) {
    console.error(`vendor.sh: xterm patch "${what}": ${found.length} matches, expected ${expected}`);
    process.exit(1);
  }
  code = code.replace(pattern, replacement);
}
replace(/([A-Za-z_$][\w$]*(?:\.[A-Za-z_$][\w$]*)*)\.createElement\("style"\)/g,
  "__warrenStyleElement($1)", 3, "<style> elements");
replace(/_addStyle\(([A-Za-z_$][\w$]*),([A-Za-z_$][\w$]*)\)\{\1\.setAttribute\("style",`\$\{\1\.getAttribute\("style"\)\|\|""\}\$\{\2\};`\)\}/g,
  "_addStyle($1,$2){$1.style.cssText+=`${$2};`}", 1, "style attribute");
for (const left of ['createElement("style")', 'setAttribute("style"', "innerHTML", "insertAdjacentHTML"]) {
  if (code.includes(left)) {
    console.error(`vendor.sh: xterm patch: ${left} is still used`);
    process.exit(1);
  }
}
code += `
/* warren (web/vendor.sh): a stand-in for the <style> elements xterm makes,
   which the page's CSP (style-src 'self') refuses. An inert <template> in
   the DOM; its text goes into a constructed stylesheet adopted by the
   document, and leaves with remove(). */
function __warrenStyleElement(doc) {
  const element = doc.createElement("template");
  const sheet = new CSSStyleSheet();
  let text = "";
  doc.adoptedStyleSheets = [...doc.adoptedStyleSheets, sheet];
  Object.defineProperty(element, "textContent", {
    get() { return text; },
    set(value) { text = String(value ?? ""); sheet.replaceSync(text); },
  });
  element.remove = function remove() {
    doc.adoptedStyleSheets = doc.adoptedStyleSheets.filter((s) => s !== sheet);
    Element.prototype.remove.call(element);
  };
  return element;
}
`;
fs.writeFileSync(file, code);
NODE
            ;;
        @xterm/addon-fit)
            take "$pkg/lib/addon-fit.mjs" addon-fit/addon-fit.mjs
            take "$pkg/LICENSE" addon-fit/LICENSE.txt
            strip_map "$OUT/addon-fit/addon-fit.mjs"
            ;;
        *) die "no extraction rule for $name" ;;
    esac
done

(cd "$OUT" && find . -type f ! -name VERSIONS | sed 's|^\./||' | LC_ALL=C sort | while read -r path; do
    echo "file $(sha256sum "$path" | cut -d' ' -f1) $path"
done) >>"$WORK/VERSIONS"
cp "$WORK/VERSIONS" "$OUT/VERSIONS"

rm -rf "$OUT_FINAL"
mv "$OUT" "$OUT_FINAL"
total=$(du -cb "$OUT_FINAL"/*/*.mjs "$OUT_FINAL"/*/*.css | tail -n 1 | cut -f1)
echo "vendor.sh: web/vendor written ($total bytes of code and styles)"
