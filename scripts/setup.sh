#!/usr/bin/env bash
# Installs what building and testing wsgate needs on a fresh Debian machine
# that has only the Rust toolchain, gcc, Python 3 and Node.js. Idempotent:
# anything already present is left alone.
#   scripts/setup.sh          build dependencies only (cmake for pingora, make for jemalloc)
#   scripts/setup.sh --demo   plus redis-server (so the demo's backends share rooms)
#   scripts/setup.sh --test   plus redis-server, redis-tools, chromium, haproxy, dnsmasq, Python and Node test deps
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
want_demo=0
[ "${1:-}" = "--test" ] && want_test=1
[ "${1:-}" = "--demo" ] && want_demo=1

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make) # jemalloc's build
if [ "$want_test" = 1 ] || [ "$want_demo" = 1 ]; then
  command -v redis-server >/dev/null || missing+=(redis-server)
fi
if [ "$want_test" = 1 ]; then
  # redis-cli, which joins the Redis Cluster of tests/chat/sharded.rs
  # (Debian's redis-server depends on it; stated for a server from elsewhere).
  command -v redis-cli >/dev/null || missing+=(redis-tools)
fi
if [ "$want_test" = 1 ]; then
  command -v chromium >/dev/null || missing+=(chromium fonts-dejavu-core)
  # A real PROXY protocol sender in front of wsgate (tests/e2e/proxyproto.rs).
  command -v haproxy >/dev/null || missing+=(haproxy)
  # A real DNS server for pools from DNS (tests/e2e/discovery.rs): the
  # binary alone, without the system service the `dnsmasq` package starts.
  command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
  # prlimit, for the descriptor-exhaustion tests.
  command -v prlimit >/dev/null || missing+=(util-linux)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "$want_test" = 1 ]; then
  python3 -c 'import websockets, pytest, prometheus_client' 2>/dev/null || {
    echo "setup: installing Python test packages"
    python3 -m pip install -q --disable-pip-version-check -r tests/python/requirements.txt
  }
  if [ -f tests/browser/package-lock.json ] && [ ! -d tests/browser/node_modules ]; then
    echo "setup: installing browser test packages"
    (cd tests/browser && npm ci --silent --no-audit --no-fund)
  fi
fi
