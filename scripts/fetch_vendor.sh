#!/usr/bin/env bash
# Re-create book/_vendor: the browser assets the static book needs, so no page loads anything
# from a CDN (widgets and math must work offline). Pinned npm tarballs, checked against their
# registry integrity, and only the files a page actually requests are copied.
#
#   scripts/fetch_vendor.sh            # writes book/_vendor (needs npm and the npm registry)
#
# Versions and licences are recorded in book/_vendor/README.md; keep the two in step.
set -euo pipefail

HTML_MANAGER="@jupyter-widgets/html-manager@1.0.15"  # fits ipywidgets 8.1
HTML_MANAGER_SHA512="5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA=="
MATHJAX="mathjax@3.2.2"
MATHJAX_SHA512="Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="

root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/book/_vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# unpack SPEC SHA512 DIR: npm pack the spec, check its integrity, untar it into DIR.
unpack() {
    local tarball
    tarball="$(cd "$work" && npm pack --silent "$1")"
    local got
    got="$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
    if [[ "$got" != "$2" ]]; then
        echo "fetch_vendor: $1: sha512 $got does not match the pinned $2" >&2
        exit 1
    fi
    mkdir -p "$work/$3"
    tar -xzf "$work/$tarball" -C "$work/$3" --strip-components=1
}

unpack "$HTML_MANAGER" "$HTML_MANAGER_SHA512" html-manager
unpack "$MATHJAX" "$MATHJAX_SHA512" mathjax

rm -rf "$dest/widgets" "$dest/mathjax"
mkdir -p "$dest/widgets" "$dest/mathjax/output/chtml/fonts" "$dest/mathjax/input/tex"

# Widgets: the self-contained embed manager (not embed-amd.js, which needs require.js) and the
# Font Awesome fonts it resolves next to itself. Browsers take woff2 (woff as fallback), so the
# eot / ttf / svg variants are never requested.
hm="$work/html-manager/dist"
cp "$hm/embed.js" "$hm/embed.js.LICENSE.txt" "$dest/widgets/"
cp "$hm"/*.woff2 "$hm"/*.woff "$dest/widgets/"

# MathJax: the combined TeX + MathML -> CommonHTML component, its fonts, and the TeX extensions
# it autoloads on first use of a macro (\boldsymbol, \cancel, ...). all-packages.js is never
# autoloaded.
mj="$work/mathjax/es5"
cp "$mj/tex-mml-chtml.js" "$work/mathjax/LICENSE" "$dest/mathjax/"
cp -r "$mj/output/chtml/fonts/woff-v2" "$dest/mathjax/output/chtml/fonts/"
cp -r "$mj/input/tex/extensions" "$dest/mathjax/input/tex/"
rm "$dest/mathjax/input/tex/extensions/all-packages.js"

echo "fetch_vendor: wrote $(du -sh "$dest" | cut -f1) to ${dest#"$root/"}"
