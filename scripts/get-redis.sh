#!/usr/bin/env bash
# Finds or installs the redis-server the response cache's tests run against
# (respcache's Redis store, the e2e tests of shared state between replicas).
#   1. $REDIS_BIN if set (your own redis-server);
#   2. else redis-server on PATH (or in /usr/bin, which PATH may lack);
#   3. else Debian's redis-server package, installed with apt-get (as
#      root, non-interactively; the package's service is not started: each
#      test runs its own server on a free loopback port, without
#      persistence).
# Prints "redis-server: PATH (VERSION)"; with --path prints only the path.
set -euo pipefail
quiet=0
[ "${1:-}" = "--path" ] && quiet=1

say() { [ "$quiet" = 1 ] || echo "$@" >&2; }

version_of() { "$1" --version 2>/dev/null | sed -n 's#^Redis server v=\([0-9]*\.[0-9]*\.[0-9]*\).*#\1#p' | head -n1; }

if [ -n "${REDIS_BIN:-}" ]; then
  if [ ! -x "$REDIS_BIN" ]; then
    echo "get-redis: REDIS_BIN=$REDIS_BIN is not an executable file" >&2
    exit 1
  fi
  bin=$REDIS_BIN
elif command -v redis-server >/dev/null; then
  bin=$(command -v redis-server)
elif [ -x /usr/bin/redis-server ]; then
  bin=/usr/bin/redis-server
else
  if ! command -v apt-get >/dev/null; then
    echo "get-redis: no redis-server on PATH and no apt-get to install it (set REDIS_BIN)" >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "get-redis: installing redis-server needs root (or set REDIS_BIN)" >&2
      exit 1
    fi
    sudo="sudo -n"
  fi
  say "get-redis: installing Debian's redis-server package with apt-get"
  # policy-rc.d exit 101 keeps the package's service from starting where
  # an init system would start it.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
  bin=$(command -v redis-server || echo /usr/bin/redis-server)
fi

ver=$(version_of "$bin")
if [ -z "$ver" ]; then
  echo "get-redis: $bin does not run here:" >&2
  "$bin" --version >&2 || true
  exit 1
fi
case "$ver" in
  6.*|7.*|8.*) ;;
  *) say "get-redis: warning: $bin is Redis $ver; detour is tested with 7.0" ;;
esac
if [ "$quiet" = 1 ]; then
  echo "$bin"
else
  echo "redis-server: $bin ($ver)"
fi
