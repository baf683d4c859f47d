#!/usr/bin/env bash
# The main job: two datacenters on this machine (ZooKeeper, ClickHouse and
# Redis each, started here, each datacenter in a network namespace of its own
# or, where those cannot be made, on loopback ports), history and about a
# minute of live traffic into each DC's collector, then the daily curve, the
# injected drop and anomaly, a global report and the URLs to try. Everything
# it starts is stopped when it ends, also on Ctrl-C; flags go to
# `spoolhouse demo` (--seconds, --rate, --stay).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec "${CARGO_TARGET_DIR:-target}/release/spoolhouse" demo examples/two-dc.toml examples/events.toml "$@"
