#!/usr/bin/env bash
# Installs what Spoolhouse needs on Debian 12, as root; does nothing that is
# already done, so running it twice is harmless. The packaged services are
# never started: Spoolhouse starts its own servers, each datacenter in a
# network namespace of its own (iproute2's `ip`) or on loopback ports.
set -euo pipefail

packages=(clickhouse-server clickhouse-client zookeeper redis-server iproute2)
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

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a current Rust toolchain (rustup: https://rustup.rs), then run this again" >&2
  exit 1
fi
