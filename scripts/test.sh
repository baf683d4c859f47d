#!/usr/bin/env bash
# Every check and every test: formatting, lints, then unit and integration
# tests (these start their own ZooKeeper, ClickHouse and Redis servers on
# free loopback ports, or each datacenter in a network namespace the test
# makes, which needs root; and stop them, also on failure).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The service binary a host is deployed with, without the lab commands.
cargo clippy -p spoolhouse --no-default-features --bins -- -D warnings
cargo test --workspace
