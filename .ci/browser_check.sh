#!/usr/bin/env bash
# The built docs site in a real browser: Debian's chromium, headless, loads every page from
# `python -m http.server` on 127.0.0.1 and .ci/browser_check.py checks the DOM after the scripts
# ran (rendered pages, typeset equations, local links, images and assets), after first proving
# on a deliberately broken copy of the site that each of those faults is caught.
# The site loads KaTeX from its CDN; here KaTeX comes from the npm registry and is served to the
# browser under the CDN's name, so the equations are really typeset. Without npm (or openssl)
# the check falls back to asserting that every equation is wrapped for the renderer.
# Usage: bash .ci/browser_check.sh SITE_DIR [SCREENSHOT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:?usage: browser_check.sh SITE_DIR [SCREENSHOT_DIR]}
shots=${2:-}

if ! command -v chromium >/dev/null; then
  echo "installing Debian's chromium"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq chromium >/dev/null
fi
chromium --version

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--site "$site" --docs docs --self-test)
[[ -z $shots ]] || args+=(--screenshots "$shots")
version=$(grep -o 'npm/katex@[0-9][0-9a-z.-]*/' "$site/index.html" | head -n 1 | cut -d@ -f2 | tr -d /)
if [[ -n $version ]] && command -v npm >/dev/null && command -v openssl >/dev/null &&
  (cd "$tmp" && npm pack --silent "katex@$version" >/dev/null && tar xzf "katex-$version.tgz"); then
  args+=(--katex "$tmp/package")
else
  echo "no KaTeX package: the check asserts only that every equation is wrapped for KaTeX"
fi
python .ci/browser_check.py "${args[@]}"
