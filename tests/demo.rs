//! The main job, short: two DCs with 100 ms between them, three app hosts
//! each, the history and 10 s of live traffic with one host killed and
//! restarted; every acknowledged event shipped once per host, the injected drop and the injected anomaly found first, a
//! global report, the same report partial with dc2 cut off, and the URLs to
//! try. The demo bounds its own waits (the load by `--seconds`, shipping and
//! aggregation by a limit it reports), so this test ends on its own.

use std::process::Command;

/// The line after the first one starting with `heading`, trimmed.
fn first_after<'a>(text: &'a str, heading: &str) -> &'a str {
    text.lines()
        .skip_while(|l| !l.starts_with(heading))
        .nth(1)
        .unwrap_or("")
        .trim_start()
}

#[test]
fn the_main_job_runs_end_to_end() {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(["demo", "--seconds", "10", "--rate", "300"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for expected in [
        "100 ms each way between datacenters",
        "live traffic: 300 events/s into each datacenter, spread over its app hosts, for 10 s",
        "every acknowledged event shipped exactly once: yes; every minute aggregated",
        "Global report, registrations by gender",
        "partial: false, missing: []",
        "With dc2 cut off (its links dropped), asked again:",
        "partial: true, missing: [\"dc2\"]",
        "Try it",
        "curl -s \"$Q/v1/anomalies?event=vote",
        "the injected drop ranks first: yes",
        "the injected anomaly ranks first: yes",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    // Each DC: everything acknowledged is in ClickHouse once, live traffic
    // included, nothing refused; per app host, each of the three.
    let n = |line: &str, after: &str| -> u64 {
        line.split(after)
            .next()
            .and_then(|s| s.rsplit(|c: char| !c.is_ascii_digit()).next())
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("no figure before {after:?} in {line:?}"))
    };
    for dc in ["dc1", "dc2"] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{dc}: ")) && l.contains(" app hosts:"))
            .unwrap_or_else(|| panic!("no acknowledgement line of {dc} in\n{text}"));
        let acked = n(line, " acknowledged (");
        assert!(n(line, " live;") > 0, "{line}");
        assert_eq!(n(line, " refused)"), 0, "{line}");
        assert_eq!(n(line, " app hosts:"), 3, "{line}");
        let mut sum = 0;
        for host in 1..=3 {
            let prefix = format!("  {dc}-app{host}: ");
            let line = text
                .lines()
                .find(|l| l.starts_with(&prefix) && l.contains("exactly once"))
                .unwrap_or_else(|| panic!("no line of {prefix:?} in\n{text}"));
            let host_acked = n(line, " acknowledged,");
            assert!(host_acked > 0, "{line}");
            assert_eq!(n(line, " in ClickHouse"), host_acked, "{line}");
            assert_eq!(n(line, " distinct spool positions"), host_acked, "{line}");
            assert!(line.ends_with("exactly once: yes"), "{line}");
            sum += host_acked;
        }
        assert_eq!(sum, acked, "{dc}'s hosts add up to its total");
    }
    // One host was killed and came back during the live traffic.
    assert!(
        text.lines()
            .any(|l| l.starts_with("dc1-app2: collector and shipper killed (SIGKILL)")),
        "{text}"
    );
    // The injected drop (iOS screen views, -80 % for three minutes) and the
    // injected anomaly (a vote farm in country 7, one hour) rank first.
    assert!(
        first_after(&text, "Top drops of screen_view")
            .starts_with("screen_view.count(){platform=ios} "),
        "{text}"
    );
    assert!(
        first_after(&text, "Top anomalies of vote")
            .starts_with("vote.count(){vote=yes,country_id=7} ")
            && first_after(&text, "Top anomalies of vote").ends_with("<- the injected one"),
        "{text}"
    );
    // The watch progress written in dc2 is found from dc1.
    assert!(
        text.lines()
            .any(|l| l.starts_with("Watch progress written in dc2, read in dc1")),
        "{text}"
    );
}
