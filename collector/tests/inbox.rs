//! Inbox files: tailing, partial lines, rotation, deletion, and resuming
//! from the spool without loss or duplicates.

mod common;

use std::io::Write;
use std::time::Duration;

use common::process::{self, CollectorProcess};
use common::*;
use dc_config::services::CollectorLimits;

#[test]
#[ignore = "the collector process of the tests that need one; they start it with --ignored"]
fn collector_process() {
    process::child_main();
}

fn append(path: &std::path::Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn lines(ids: std::ops::RangeInclusive<u64>) -> String {
    ids.map(|i| format!("{}\n", vote(i))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_lines_wait_rotation_is_followed_and_rotated_files_are_deleted() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox().join("app")).unwrap();
    let (running, spool) = h.start().await;
    let log = h.inbox().join("app/events.log");
    let third = vote(3);
    let (head, tail) = third.split_at(20);
    append(&log, &format!("{}{head}", lines(1..=2)));
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 2).await);
    // The partial line is not forwarded while it waits for its newline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read_all(&spool).len(), 2);
    append(&log, &format!("{tail}\n"));
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 3).await);
    // Rename rotation while the writer still holds the old file open.
    let old = h.inbox().join("app/events.log.old");
    let mut writer = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::fs::rename(&log, &old).unwrap();
    writer.write_all(lines(4..=5).as_bytes()).unwrap();
    append(&log, &lines(6..=7));
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 7).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(old.exists(), "a rotated file a writer still holds is kept");
    drop(writer);
    assert!(
        eventually(Duration::from_secs(10), || !old.exists()).await,
        "deleted once fully spooled and unheld"
    );
    assert!(log.exists(), "the live file is never deleted");
    running.shutdown().await.unwrap();
    let mut ids = user_ids(&read_all(&spool));
    ids.sort_unstable();
    assert_eq!(ids, (1..=7).collect::<Vec<_>>());
    assert!(h
        .metrics_text()
        .contains("spoolhouse_collector_inbox_files_deleted_total 1"));
}

/// The quarantine file's text, and its entries.
fn quarantined(h: &Harness) -> (String, Vec<serde_json::Value>) {
    let q = std::fs::read_to_string(h.config.quarantine_dir().join("rejected.jsonl")).unwrap();
    let entries = q
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (q, entries)
}

/// Bad lines are skipped, counted, and kept in the quarantine with the rule
/// they broke, where they were and the line itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_overlong_inbox_lines_are_counted_skipped_and_quarantined() {
    let limits = CollectorLimits {
        line_bytes_max: 200,
        read_buffer_bytes: 4096,
        ..fast_limits()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, spool) = h.start().await;
    let log = h.inbox().join("a.log");
    append(
        &log,
        &format!(
            "{}not json\n{}\n{}",
            lines(1..=1),
            "z".repeat(10_000),
            lines(2..=2)
        ),
    );
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 2).await);
    running.shutdown().await.unwrap();
    assert_eq!(user_ids(&read_all(&spool)), [1, 2]);
    let m = h.metrics_text();
    assert!(
        m.contains("spoolhouse_collector_lines_too_long_total{endpoint=\"inbox\"} 1"),
        "{m}"
    );
    assert!(m.contains("reason=\"not_json\"} 1"), "{m}");

    let (q, entries) = quarantined(&h);
    assert_eq!(entries.len(), 2, "{q}");
    let first_line = lines(1..=1).len() as u64;
    assert_eq!(entries[0]["rule"], "not_json", "{q}");
    assert_eq!(entries[0]["line"], "not json");
    assert_eq!(entries[0]["offset"], first_line);
    assert_eq!(entries[0]["file"], log.to_str().unwrap());
    assert!(
        entries[0]["error"]
            .as_str()
            .unwrap()
            .starts_with("not valid JSON"),
        "{q}"
    );
    assert_eq!(entries[1]["rule"], "line_too_long", "{q}");
    assert_eq!(entries[1]["offset"], first_line + 9);
    assert!(
        entries[1]["line"].as_str().unwrap().starts_with("zzz"),
        "{q}"
    );
    assert!(
        m.contains("spoolhouse_collector_quarantined_lines_total{rule=\"not_json\"} 1"),
        "{m}"
    );
    let health = h.health.to_json();
    assert_eq!(health["inbox_lines_quarantined"], 2, "{health}");
    assert_eq!(
        health["last_quarantined"]["rule"], "line_too_long",
        "{health}"
    );
}

/// A registry rule broken in an inbox line is quarantined with the field
/// and message a socket client would get, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_line_carries_the_collectors_message_once() {
    let h = Harness::new(fast_limits(), 1 << 30);
    let (running, spool) = h.start().await;
    let log = h.inbox().join("b.log");
    let bad = vote(3)
        .replace("\"yes\"", "\"maybe\"")
        .replace("\"no\"", "\"maybe\"");
    append(&log, &format!("{}{bad}\n{}", lines(1..=2), lines(4..=4)));
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 3).await);
    running.shutdown().await.unwrap();
    let (q, entries) = quarantined(&h);
    assert_eq!(entries.len(), 1, "{q}");
    assert_eq!(entries[0]["field"], "attrs.vote");
    assert_eq!(entries[0]["rule"], "not_in_enum");
    assert_eq!(entries[0]["error"], "`attrs.vote` must be one of: yes, no");
    assert_eq!(entries[0]["line"], bad.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_every_file_from_the_spool_without_duplicates() {
    let h = Harness::new(fast_limits(), 1 << 30);
    let log = h.inbox().join("a.log");
    std::fs::create_dir_all(h.inbox()).unwrap();
    append(&log, &lines(1..=100));
    {
        let (running, spool) = h.start().await;
        assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() == 100).await);
        running.shutdown().await.unwrap();
    }
    append(&log, &lines(101..=150));
    // Lose the state file: offsets must come from the spool records alone.
    std::fs::remove_file(h.config.spool_dir.join(collector::inbox::STATE_FILE)).unwrap();
    std::fs::remove_file(h.config.spool_dir.join("readers/collector-inbox.ckpt")).unwrap();
    let (running, spool) = h.start().await;
    assert!(eventually(Duration::from_secs(10), || read_all(&spool).len() >= 150).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.shutdown().await.unwrap();
    let ids = user_ids(&read_all(&spool));
    assert_eq!(ids, (1..=150).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_inbox_is_not_rescanned_in_a_loop_and_new_lines_still_wake_it() {
    // A poll interval far beyond the test: every scan seen here is one that
    // a watcher event caused.
    let h = Harness::new(
        CollectorLimits {
            inbox_poll_ms: 600_000,
            inbox_checkpoint_ms: 100,
            ..CollectorLimits::default()
        },
        1 << 30,
    );
    std::fs::create_dir_all(h.inbox()).unwrap();
    let (running, spool) = h.start().await;
    let log = h.inbox().join("a.log");
    append(&log, &lines(1..=2));
    assert!(
        eventually(Duration::from_secs(10), || read_all(&spool).len() == 2).await,
        "a new file wakes the tailer without the poll"
    );
    // The tailer's own reads and state-file writes raise inotify events;
    // reacting to them rescanned ~1600 times a second before.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = h.metrics.inbox_scans.get();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = h.metrics.inbox_scans.get() - before;
    assert!(idle <= 2, "{idle} scans in an idle second");
    append(&log, &lines(3..=3));
    assert!(
        eventually(Duration::from_secs(10), || read_all(&spool).len() == 3).await,
        "an append wakes the tailer without the poll"
    );
    running.shutdown().await.unwrap();
}

/// Inbox votes the collector accepted so far (cheaper to poll than reading
/// the spool back).
fn accepted(h: &Harness) -> u64 {
    h.metrics
        .events_accepted
        .get_or_create(&vec![
            ("event", "vote".to_string()),
            ("endpoint", "inbox".to_string()),
        ])
        .get()
}

fn counter(h: &Harness, name: &str) -> u64 {
    metric_value(&h.metrics_text(), name)
}

/// Ids spooled more than once, and ids of `want` never spooled.
fn duplicates_and_losses(spool: &spooler::Spool, want: &[u64]) -> (Vec<u64>, Vec<u64>) {
    Tally::new(spool).check(want)
}

/// How often each id was spooled, read on by one reader, so a long run
/// reads each record once.
struct Tally {
    reader: spooler::Reader,
    seen: std::collections::HashMap<u64, u32>,
    twice: Vec<u64>,
}

impl Tally {
    fn new(spool: &spooler::Spool) -> Self {
        Self {
            reader: spool.reader("tally").unwrap(),
            seen: Default::default(),
            twice: Vec::new(),
        }
    }

    /// Reads what was spooled since the last call; every id spooled more
    /// than once so far, and the ids of `want` never spooled.
    fn check(&mut self, want: &[u64]) -> (Vec<u64>, Vec<u64>) {
        for id in user_ids(&drain(&mut self.reader)) {
            let n = self.seen.entry(id).or_insert(0);
            *n += 1;
            if *n == 2 {
                self.twice.push(id);
            }
        }
        let lost = want
            .iter()
            .filter(|id| !self.seen.contains_key(id))
            .copied()
            .collect();
        (self.twice.clone(), lost)
    }
}

/// Regression: every file of a large inbox renamed to `.old` at once. A
/// directory read that raced the renames missed some files; the tailer
/// forgot them and met them again at the offset of its resume state (as
/// far as a shipper had committed, 0 here), and spooled them twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_storm_spools_every_line_once() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let (running, spool) = h.start().await;
    let (files, per_file) = (2_000u64, 50u64);
    // 3 storms in CI; `SPOOLHOUSE_STORM_ROUNDS=100` for the long run.
    let storms: u64 = std::env::var("SPOOLHOUSE_STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let started = std::time::Instant::now();
    let mut tally = Tally::new(&spool);
    for round in 0..storms {
        let base = round * files * per_file;
        for f in 0..files {
            let first = base + f * per_file + 1;
            append(
                &h.inbox().join(format!("app-{f}.log")),
                &lines(first..=first + per_file - 1),
            );
        }
        // This round's lines (earlier rounds' were checked then).
        let want: Vec<u64> = (base + 1..=base + files * per_file).collect();
        assert!(
            eventually(Duration::from_secs(60), || accepted(&h)
                >= base + files * per_file)
            .await,
            "round {round}: lines before the storm"
        );
        // The storm: every file renamed while the tailer scans.
        for f in 0..files {
            let p = h.inbox().join(format!("app-{f}.log"));
            std::fs::rename(&p, p.with_extension("log.old")).unwrap();
        }
        assert!(
            eventually(Duration::from_secs(60), || std::fs::read_dir(h.inbox())
                .unwrap()
                .flatten()
                .all(|e| !e.file_name().to_string_lossy().ends_with(".old")))
            .await,
            "round {round}: rotated files deleted"
        );
        let (dups, lost) = tally.check(&want);
        assert!(
            dups.is_empty() && lost.is_empty(),
            "round {round}: {} lines twice, {} lost",
            dups.len(),
            lost.len()
        );
    }
    eprintln!(
        "rotation storms: {storms} of {files} files x {per_file} lines, {} lines, 0 twice, 0 lost, in {:.1} s",
        storms * files * per_file,
        started.elapsed().as_secs_f64()
    );
    running.shutdown().await.unwrap();
}

/// Regression: logrotate's `copytruncate` (the file truncated in place while
/// its writer keeps appending) lost every line written after it until the
/// file outgrew the old offset, then cut a line in half. Now: read again
/// from the start, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_in_place_is_read_again_from_its_start() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let (running, spool) = h.start().await;
    let log = h.inbox().join("app.log");
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    writer.write_all(lines(1..=100).as_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 100).await);
    // Shorter than before.
    writer.set_len(0).unwrap();
    writer.write_all(lines(101..=150).as_bytes()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || accepted(&h) == 150).await,
        "{} of 150",
        accepted(&h)
    );
    // Longer than before by the next read.
    writer.set_len(0).unwrap();
    writer.write_all(lines(151..=450).as_bytes()).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || accepted(&h) == 450).await,
        "{} of 450",
        accepted(&h)
    );
    running.shutdown().await.unwrap();
    let (dups, lost) = duplicates_and_losses(&spool, &(1..=450).collect::<Vec<_>>());
    assert!(dups.is_empty() && lost.is_empty(), "{dups:?} {lost:?}");
    assert_eq!(
        counter(&h, "spoolhouse_collector_inbox_truncations_total"),
        2
    );
    let m = h.metrics_text();
    assert!(!m.contains("reason=\"not_json\""), "no half line: {m}");
}

/// Regression: a line longer than the read buffer (256 KiB) but within the
/// line limit (1 MiB) held back its file for good, and rotating that file
/// deleted the lines after it. Now it is read whole; a line over the limit
/// is rejected and counted; the lines after either arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_longer_than_the_read_buffer_arrive_and_longer_than_the_limit_are_skipped() {
    let limits = CollectorLimits {
        read_buffer_bytes: 4096,
        line_bytes_max: 64 << 10,
        ..fast_limits()
    };
    let h = Harness::new(limits, 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let (running, spool) = h.start().await;
    let log = h.inbox().join("a.log");
    // A valid line of 20 KiB (spaces are JSON whitespace), one of 100 KiB.
    let long_valid = format!("{}{}", " ".repeat(20 << 10), vote(2));
    let too_long = "z".repeat(100 << 10);
    append(
        &log,
        &format!(
            "{}{long_valid}\n{}{too_long}\n{}",
            lines(1..=1),
            lines(3..=3),
            lines(4..=5)
        ),
    );
    assert!(
        eventually(Duration::from_secs(10), || accepted(&h) == 5).await,
        "{} of 5",
        accepted(&h)
    );
    std::fs::rename(&log, log.with_extension("log.old")).unwrap();
    assert!(
        eventually(Duration::from_secs(10), || !log
            .with_extension("log.old")
            .exists())
        .await,
        "the rotated file is deleted once read"
    );
    running.shutdown().await.unwrap();
    let mut ids = user_ids(&read_all(&spool));
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
    let m = h.metrics_text();
    assert!(
        m.contains("spoolhouse_collector_lines_too_long_total{endpoint=\"inbox\"} 1"),
        "{m}"
    );
}

/// Regression: with the inbox reached through a symlinked directory, a
/// rotated file still open for writing looked closed (its path in /proc is
/// the real one) and was deleted under its writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_file_is_kept_through_a_symlinked_inbox() {
    let mut h = Harness::new(fast_limits(), 1 << 30);
    let real = h.dir.path().join("real-inbox");
    std::fs::create_dir_all(&real).unwrap();
    let link = h.dir.path().join("inbox-link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    h.config.inbox = link.clone();
    let (running, spool) = h.start().await;
    let log = link.join("a.log");
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    writer.write_all(lines(1..=3).as_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 3).await);
    let old = link.join("a.log.old");
    std::fs::rename(&log, &old).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(old.exists(), "a rotated file its writer holds is kept");
    writer.write_all(lines(4..=5).as_bytes()).unwrap();
    drop(writer);
    assert!(eventually(Duration::from_secs(10), || !old.exists()).await);
    running.shutdown().await.unwrap();
    let mut ids = user_ids(&read_all(&spool));
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

/// More files than `inbox_files_max`: the others wait (a gauge says how
/// many), and once the app rotates them all, every line arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_limit_wait_and_then_arrive_once() {
    let limits = CollectorLimits {
        inbox_files_max: 10,
        ..fast_limits()
    };
    let h = Harness::new(limits, 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    for f in 0..30u64 {
        append(
            &h.inbox().join(format!("f{f}.log")),
            &lines(f * 10 + 1..=f * 10 + 10),
        );
    }
    let (running, spool) = h.start().await;
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 100).await);
    assert!(
        eventually(Duration::from_secs(10), || h
            .metrics
            .inbox_files_waiting
            .get()
            == 20)
        .await,
        "{}",
        h.metrics.inbox_files_waiting.get()
    );
    for f in 0..30u64 {
        let p = h.inbox().join(format!("f{f}.log"));
        std::fs::rename(&p, p.with_extension("log.old")).unwrap();
    }
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_dir(h.inbox())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().ends_with(".old")))
        .await,
        "every rotated file read and deleted"
    );
    assert_eq!(h.metrics.inbox_files_waiting.get(), 0);
    running.shutdown().await.unwrap();
    let (dups, lost) = duplicates_and_losses(&spool, &(1..=300).collect::<Vec<_>>());
    assert!(dups.is_empty() && lost.is_empty(), "{dups:?} {lost:?}");
}

/// Regression: the resume state lived in the inbox, where an app could plant
/// a symlink in place of its temp file and have the collector overwrite any
/// file it may write. It lives in the spool directory now; symlinks in the
/// inbox under the old names are not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resume_state_cannot_be_pointed_at_another_file() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let victim = h.dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    for name in [
        collector::inbox::LEGACY_STATE_FILE,
        ".spoolhouse-inbox-state.tmp",
    ] {
        std::os::unix::fs::symlink(&victim, h.inbox().join(name)).unwrap();
    }
    let (running, _spool) = h.start().await;
    append(&h.inbox().join("a.log"), &lines(1..=3));
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 3).await);
    // Several checkpoints of the resume state.
    tokio::time::sleep(Duration::from_millis(300)).await;
    running.shutdown().await.unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(h
        .config
        .spool_dir
        .join(collector::inbox::STATE_FILE)
        .is_file());
}

/// Regression: a resume state that did not load ended the tailer silently
/// (`/healthz` said ok, nothing was spooled). Now /healthz says why, and the
/// tailer starts once the state is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailer_that_cannot_start_fails_healthz_with_the_reason() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    std::fs::create_dir_all(&h.config.spool_dir).unwrap();
    let state = h.config.spool_dir.join(collector::inbox::STATE_FILE);
    std::fs::write(&state, "not a state file\n").unwrap();
    append(&h.inbox().join("a.log"), &lines(1..=2));
    let (running, _spool) = h.start().await;
    assert!(
        eventually(Duration::from_secs(10), || !h.health.ok()).await,
        "{}",
        h.health.to_json()
    );
    let body = h.health.to_json();
    let reason = body["inbox_failed"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("is damaged") && reason.contains("delete it"),
        "{body}"
    );
    assert_eq!(accepted(&h), 0);
    std::fs::remove_file(&state).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || accepted(&h) == 2).await,
        "the tailer starts once the state is gone"
    );
    assert!(h.health.ok(), "{}", h.health.to_json());
    running.shutdown().await.unwrap();
}

/// Regression: `.log` files were never rotated or deleted by the collector,
/// so an inbox of apps that never rotate grew without bound. An idle file no
/// one holds is rotated (then deleted once read); a file a writer holds is
/// left alone however idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_log_files_no_one_holds_are_rotated_and_deleted() {
    let limits = CollectorLimits {
        inbox_rotate_idle_ms: 300,
        ..fast_limits()
    };
    let h = Harness::new(limits, 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let (running, spool) = h.start().await;
    let closed = h.inbox().join("closed.log");
    append(&closed, &lines(1..=3));
    let held = h.inbox().join("held.log");
    let mut writer = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&held)
        .unwrap();
    writer.write_all(lines(4..=5).as_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 5).await);
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_dir(h.inbox())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with("closed")))
        .await,
        "the idle file is rotated and deleted"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(held.exists(), "a file its writer holds is never rotated");
    writer.write_all(lines(6..=6).as_bytes()).unwrap();
    assert!(eventually(Duration::from_secs(10), || accepted(&h) == 6).await);
    running.shutdown().await.unwrap();
    let mut ids = user_ids(&read_all(&spool));
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        counter(&h, "spoolhouse_collector_inbox_files_rotated_total"),
        1
    );
}

/// Regression (found by the model test): a file truncated while the
/// collector was stopped, then written past the old offset with lines of the
/// same length, lost as many lines as it had before: the newline before the
/// old offset was all that was checked after a restart. The resume state now
/// keeps the last bytes read of each file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_and_rewritten_while_stopped_is_read_from_its_start() {
    let h = Harness::new(fast_limits(), 1 << 30);
    std::fs::create_dir_all(h.inbox()).unwrap();
    let log = h.inbox().join("a.log");
    append(&log, &lines(20..=32));
    {
        let (running, _spool) = h.start().await;
        assert!(eventually(Duration::from_secs(10), || accepted(&h) == 13).await);
        running.shutdown().await.unwrap();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &lines(33..=60));
    let (running, spool) = h.start().await;
    assert!(
        eventually(Duration::from_secs(10), || accepted(&h) == 13 + 28).await,
        "{} of 41",
        accepted(&h)
    );
    running.shutdown().await.unwrap();
    let (dups, lost) = duplicates_and_losses(&spool, &(20..=60).collect::<Vec<_>>());
    assert!(dups.is_empty() && lost.is_empty(), "{dups:?} {lost:?}");
}

/// Regression (found by the model test under load): the same after a
/// crash. Killed (`SIGKILL`) before any checkpoint, the collector resumes a
/// file at the offset the spool's last record of it says; that record
/// carried no fingerprint of the bytes before it, so only the newline there
/// was checked, and a file truncated and rewritten past the offset with
/// lines of the same length lost as many lines as it had before. Records
/// now carry the fingerprint of their line's end.
#[test]
fn a_file_truncated_and_rewritten_after_a_crash_is_read_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // No checkpoint while it runs: the resume comes from the records alone.
    let limits = CollectorLimits {
        inbox_checkpoint_ms: 3_600_000,
        ..fast_limits()
    };
    let log = inbox.join("a.log");
    append(&log, &lines(20..=32));
    let spool = dir.join("spool");
    let arrived = || user_ids(&read_spool_of_other_process(&spool));
    let wait = |c: &CollectorProcess, what: &str, want: &[u64]| {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut got = arrived();
            got.sort_unstable();
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}: {got:?}; collector log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let c = CollectorProcess::start_with(dir, &limits);
    wait(&c, "the first lines", &(20..=32).collect::<Vec<_>>());
    c.kill();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append(&log, &lines(33..=60));
    let c = CollectorProcess::start_with(dir, &limits);
    wait(&c, "every line once", &(20..=60).collect::<Vec<_>>());
    c.stop();
}

/// LSD's "lots of files" case, scaled: 50 000 small rotated files (one line
/// each) in the inbox; the time until every line is spooled and every file
/// deleted. On demand (`cargo test -p collector --test inbox
/// fifty_thousand -- --ignored --nocapture`); the figure is in BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure, run on demand"]
async fn fifty_thousand_small_files() {
    let n = 50_000u64;
    let h = Harness::new(
        CollectorLimits {
            inbox_checkpoint_ms: 1_000,
            ..CollectorLimits::default()
        },
        1 << 30,
    );
    let dir = h.inbox().join("many");
    std::fs::create_dir_all(&dir).unwrap();
    for i in 1..=n {
        append(&dir.join(format!("f{i}.log.old")), &lines(i..=i));
    }
    let started = std::time::Instant::now();
    let (running, spool) = h.start().await;
    assert!(
        eventually(Duration::from_secs(1_800), || accepted(&h) == n).await,
        "{} of {n} lines",
        accepted(&h)
    );
    let spooled = started.elapsed();
    assert!(
        eventually(Duration::from_secs(1_800), || std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .is_none())
        .await,
        "every file deleted"
    );
    let deleted = started.elapsed();
    running.shutdown().await.unwrap();
    let (dups, lost) = duplicates_and_losses(&spool, &(1..=n).collect::<Vec<_>>());
    assert!(
        dups.is_empty() && lost.is_empty(),
        "{} twice, {} lost",
        dups.len(),
        lost.len()
    );
    eprintln!(
        "{n} small files: every line spooled in {:.1} s ({:.0} files/s), every file deleted in {:.1} s",
        spooled.as_secs_f64(),
        n as f64 / spooled.as_secs_f64(),
        deleted.as_secs_f64()
    );
}

/// A rotated file held open by a writer of another user than the
/// collector's, whose open files the collector may not read: whether the
/// writer still holds it cannot be told, so it is kept (never deleted
/// under its writer), the reason logged and the file counted as undecided;
/// what the writer appends later still arrives. Runs the collector as user
/// `nobody` and the writer as root: needs root, as CI runs.
#[test]
fn a_file_whose_writer_the_collector_cannot_see_is_kept_with_the_reason() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test runs the collector as user nobody: run it as root (CI does)"
    );
    const NOBODY: u32 = 65534;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("collector");
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    for d in [&dir, &inbox] {
        std::os::unix::fs::chown(d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    // The app, as root: writes, is rotated (renamed) and keeps the file open.
    let live = inbox.join("app.log");
    let mut writer = std::fs::File::create(&live).unwrap();
    writer.write_all(lines(1..=3).as_bytes()).unwrap();
    let rotated = inbox.join("app.log.1.old");
    std::fs::rename(&live, &rotated).unwrap();

    let c = CollectorProcess::start_as(&dir, NOBODY);
    let spool = dir.join("spool");
    let arrived = || user_ids(&read_spool_of_other_process(&spool));
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting for {what}; collector log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("the rotated file's lines", &|| arrived() == [1, 2, 3]);
    wait("the file counted as undecided", &|| {
        c.metrics()
            .contains("spoolhouse_collector_inbox_files_undecided 1\n")
    });
    let log = c.log();
    assert!(
        log.contains("cannot see which files the processes of uid 0 hold open"),
        "{log}"
    );
    assert!(rotated.exists(), "deleted under its writer");
    // The writer goes on: its next line arrives.
    writer.write_all(lines(4..=4).as_bytes()).unwrap();
    wait("the line written after the rotation", &|| {
        arrived() == [1, 2, 3, 4]
    });
    assert!(rotated.exists(), "deleted under its writer");
    c.stop();
}
