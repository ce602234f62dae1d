#!/usr/bin/env bash
# Installs redis-server for the test suite when it is missing. The shared-state tests start a
# private real Redis (never a fake): without the server binary they fail, by design, rather than
# skip. Idempotent and quiet: a machine that already has it does nothing.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
  echo "ensure_redis: redis-server is not installed and installing it needs root;" >&2
  echo "  run as root, or install it yourself: apt-get install redis-server" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure_redis: redis-server is not installed and apt-get is not available;" >&2
  echo "  install redis-server (Redis >= 7) with this system's package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# apt and debconf chatter goes to a log that is shown only when the install fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; } \
  >"$log" 2>&1; then
  cat "$log" >&2
  echo "ensure_redis: installing redis-server with apt-get failed (output above)" >&2
  exit 1
fi
# The package enables a system-wide server; the tests start their own on free ports, so the
# system one is left as the package set it up and never used by them.
command -v redis-server >/dev/null 2>&1 || {
  echo "ensure_redis: apt-get finished but redis-server is still not on PATH" >&2
  exit 1
}
