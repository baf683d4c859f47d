//! The main job, small: two DCs with 100 ms between them, each DC's services,
//! sample traffic, every acknowledged event shipped once, the injected drop
//! found first, a global report, and the same report partial with dc2 cut off.

use std::process::Command;

#[test]
fn the_main_job_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(["demo", "--events-per-dc", "2000"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for expected in [
        "100 ms each way between datacenters",
        "dc1: 2000 events sent to the collector over its Unix socket, 2000 acknowledged",
        "dc2: 2000 events sent to the collector over its Unix socket, 2000 acknowledged",
        "all 4000 acknowledged events shipped (exactly once: yes), every minute aggregated",
        "Top drops of screen_view",
        "Global report, registrations by gender",
        "partial: false, missing: []",
        "With dc2 cut off (its links dropped), asked again:",
        "partial: true, missing: [\"dc2\"]",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    // The injected drop (iOS screen views, -80 % in three minutes) ranks first.
    let first_drop = text
        .lines()
        .skip_while(|l| !l.starts_with("Top drops of screen_view"))
        .nth(1)
        .unwrap_or("");
    assert!(
        first_drop
            .trim_start()
            .starts_with("screen_view.count(){platform=ios} "),
        "{text}"
    );
}
