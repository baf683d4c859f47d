//! Inbox files: tailing, partial lines, rotation, deletion, and resuming
//! from the spool without loss or duplicates.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use dc_config::services::CollectorLimits;

fn fast() -> CollectorLimits {
    CollectorLimits {
        inbox_poll_ms: 20,
        inbox_checkpoint_ms: 50,
        ..CollectorLimits::default()
    }
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
    let h = Harness::new(fast(), 1 << 30);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_and_overlong_inbox_lines_are_counted_and_skipped() {
    let limits = CollectorLimits {
        line_bytes_max: 200,
        read_buffer_bytes: 4096,
        ..fast()
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_every_file_from_the_spool_without_duplicates() {
    let h = Harness::new(fast(), 1 << 30);
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
    std::fs::remove_file(h.inbox().join(collector::inbox::STATE_FILE)).unwrap();
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
