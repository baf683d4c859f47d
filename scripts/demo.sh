#!/usr/bin/env bash
# The main job: two datacenters on this machine (ZooKeeper, ClickHouse and
# Redis each, started here, each datacenter in a network namespace of its own
# or, where those cannot be made, on loopback ports), sample events written
# into each, and a global report read through the global Distributed table.
# Everything it starts is stopped when it ends, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec ./target/release/spoolhouse demo examples/two-dc.toml examples/events.toml "$@"
