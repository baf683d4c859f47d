//! `spoolhouse bench progress` at a tiny scale: its code path runs against
//! real servers (launched on loopback, stopped after) and prints its tables.
//! No figure is checked here: performance comes from the bench itself,
//! never from a test's timing.

use std::process::Command;

#[test]
fn bench_progress_runs_at_a_tiny_scale_and_prints_its_tables() {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(["bench", "progress", "--seconds", "2"])
        .args(["--write-rate", "200", "--read-rate", "50"])
        .args(["--steps", "50,100", "--step-seconds", "1"])
        .args(["--expired-keys", "1000", "--lag-samples", "5"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for expected in [
        "| writes (acked) | 200 |",
        "| reads (answered) | 50 |",
        "| all answers |",
        "Redis hit ratio:",
        "read-your-write lag",
        "redis-benchmark -t get",
        "one ClickHouse lookup alone",
        "targets: p99 get on a Redis hit < 1 ms:",
        "CPU during phase 1",
        "| 50 |",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}
