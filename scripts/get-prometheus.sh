#!/usr/bin/env bash
# Finds or installs the Prometheus server the signals package's integration
# test runs against.
#   1. $PROMETHEUS_BIN if set (your own Prometheus: a release tarball, a
#      distro package);
#   2. else prometheus on PATH;
#   3. else Debian's prometheus package, installed with apt-get (as root,
#      non-interactively; the package's service is not started: the test
#      runs its own server on a free loopback port).
# Prints "prometheus: PATH (VERSION)"; with --path prints only the path.
set -euo pipefail
quiet=0
[ "${1:-}" = "--path" ] && quiet=1

say() { [ "$quiet" = 1 ] || echo "$@" >&2; }

version_of() { "$1" --version 2>/dev/null | sed -n 's#^prometheus, version \([0-9]*\.[0-9]*\.[0-9]*\).*#\1#p' | head -n1; }

if [ -n "${PROMETHEUS_BIN:-}" ]; then
  if [ ! -x "$PROMETHEUS_BIN" ]; then
    echo "get-prometheus: PROMETHEUS_BIN=$PROMETHEUS_BIN is not an executable file" >&2
    exit 1
  fi
  bin=$PROMETHEUS_BIN
elif command -v prometheus >/dev/null; then
  bin=$(command -v prometheus)
else
  if ! command -v apt-get >/dev/null; then
    echo "get-prometheus: no prometheus on PATH and no apt-get to install it (set PROMETHEUS_BIN)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "get-prometheus: installing prometheus needs root (or set PROMETHEUS_BIN)" >&2
      exit 1
    fi
    sudo="sudo -n"
  fi
  say "get-prometheus: installing Debian's prometheus package with apt-get"
  # policy-rc.d exit 101 keeps the package's service from starting where
  # an init system would start it.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
  bin=$(command -v prometheus)
fi

ver=$(version_of "$bin")
if [ -z "$ver" ]; then
  echo "get-prometheus: $bin does not run here:" >&2
  "$bin" --version >&2 || true
  exit 1
fi
case "$ver" in
  2.*|3.*) ;;
  *) say "get-prometheus: warning: $bin is Prometheus $ver; detour is tested with 2.42" ;;
esac
if [ "$quiet" = 1 ]; then
  echo "$bin"
else
  echo "prometheus: $bin ($ver)"
fi
