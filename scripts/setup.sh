#!/usr/bin/env bash
# Installs what Spoolhouse needs on Debian 12, as root; does nothing that is
# already done, so running it twice is harmless. The packaged services are
# never started: Spoolhouse starts its own servers, each datacenter in a
# network namespace of its own (iproute2's `ip`) or on loopback ports.
set -euo pipefail

# chromium: the web console's browser test (tests/console.rs) drives it.
# prometheus: its promtool lints every service's /metrics (tests/metrics_lint.rs).
# python3, golang-go, php-cli: the generated clients run for real (tests/codegen.rs).
packages=(clickhouse-server clickhouse-client zookeeper redis-server iproute2 chromium prometheus python3 golang-go php-cli)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages: ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Only promtool is wanted from the prometheus package: its server stays off.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled prometheus >/dev/null 2>&1; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# Node.js 20 or later and npm run that test's browser script
# (playwright-core needs 20; Debian 12's own nodejs is 18, too old).
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ] || ! command -v npm >/dev/null 2>&1; then
  echo "setup: Node.js 20 or later with npm is needed for the console's browser test (found: $(node --version 2>/dev/null || echo none)); install it, then run this again" >&2
  exit 1
fi
# The console's npm packages (uPlot, playwright-core), exactly as the
# lockfile pins them; skipped when that lockfile is already installed.
console="$(dirname "$0")/../query/console"
stamp="$console/node_modules/.installed-package-lock.json"
if ! cmp -s "$console/package-lock.json" "$stamp"; then
  echo "setup: npm ci in query/console" >&2
  (cd "$console" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$console/package-lock.json" "$stamp"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a current Rust toolchain (rustup: https://rustup.rs), then run this again" >&2
  exit 1
fi
