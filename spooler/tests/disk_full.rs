//! A real full disk: the spool alone on a 256 KiB tmpfs, its quota far
//! above that, so the disk fills first. Appends then fail with a disk-full
//! error and nothing of them is acknowledged or left behind; readers still
//! checkpoint (retention needs that to free anything); the next append runs
//! retention itself, which frees the read segments, and goes through, round
//! after round, wherever in a segment (mid-frame, at rotation) the disk ran
//! out. Every acknowledged frame is read exactly once, intact, also after
//! reopening.
//!
//! Mounting needs root, as every test here runs (see the README); without
//! it the test fails saying so.

mod common;

use std::path::Path;

use common::{drain, small_config};
use spooler::{Compression, Durability, Error, Spool};

/// A tmpfs of `size` on `dir`, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Self {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} failed (this test needs root, as the README's test command runs): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

/// A payload of `len` bytes naming frame `i`.
fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("{{\"i\":{i},\"pad\":\"").into_bytes();
    p.resize(len.max(p.len() + 2) - 2, b'x');
    p.extend_from_slice(b"\"}");
    p
}

/// Compresses the sealed segments; on a full disk that fails, cleanly.
fn seal(spool: &Spool, round: usize) -> usize {
    match spool.seal_pending() {
        Ok(n) => n,
        Err(e) => {
            assert!(e.is_disk_full(), "round {round}: {e}");
            0
        }
    }
}

fn run(compression: Compression) {
    let mount = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mount.path(), "256k");
    let dir = mount.path().join("spool");
    let mut config = small_config(Durability::Group, compression);
    config.segment_bytes = 16 << 10;
    config.quota_bytes = 1 << 30;
    let spool = Spool::open(&dir, config.clone()).unwrap();
    let mut reader = spool.reader("shipper").unwrap();
    let mut next = 0u64;
    let mut read = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut full_errors = 0;
    let mut sealed = 0;
    for round in 0..6 {
        // Fill the disk: batches of varied sizes, so the disk runs out at a
        // different place in a segment each round.
        let mut failures = 0;
        let mut acked_this_round = 0;
        let deleted_before = spool.stats().unwrap().segments_deleted;
        for _ in 0..10_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let n = 1 + (rng % 20) as usize;
            let len = 20 + (rng >> 8) as usize % 400;
            let batch: Vec<Vec<u8>> = (0..n as u64).map(|k| payload(next + k, len)).collect();
            match spool.append(&batch) {
                Ok(_) => {
                    next += n as u64;
                    acked_this_round += n;
                    failures = 0;
                    // As the background sealer would, while space lasts.
                    sealed += seal(&spool, round);
                }
                Err(e) => {
                    assert!(e.is_disk_full(), "round {round}: {e}");
                    assert!(!matches!(e, Error::Poisoned));
                    full_errors += 1;
                    failures += 1;
                    // Smaller batches may still fit; several misses in a
                    // row mean the disk is full.
                    if failures == 5 {
                        break;
                    }
                }
            }
        }
        assert_eq!(failures, 5, "round {round}: the disk never filled");
        let deleted = spool.stats().unwrap().segments_deleted;
        assert!(
            round == 0 || deleted > deleted_before,
            "round {round}: retention freed nothing"
        );
        assert!(acked_this_round > 0, "round {round}: nothing fitted");
        // Sealing needs room for the compressed copy: on the full disk it
        // fails, cleanly, and is tried again later.
        sealed += seal(&spool, round);
        // The reader reads and checkpoints on the full disk; the next
        // append finds the disk full, runs retention, which frees what was
        // read, and goes through.
        read.extend(drain(&mut reader).into_iter().map(|r| r.payload));
        reader.commit_read().unwrap();
    }
    // Every acknowledged frame exactly once, in order, intact.
    let expected: Vec<u64> = (0..next).collect();
    let ids: Vec<u64> = read
        .iter()
        .map(|p| {
            let s = std::str::from_utf8(p).unwrap();
            let rest = s.strip_prefix("{\"i\":").unwrap();
            rest[..rest.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .collect();
    assert_eq!(ids, expected);
    // Reopening finds no damage and nothing unread.
    drop(reader);
    drop(spool);
    let spool = Spool::open(&dir, config).unwrap();
    assert_eq!(spool.stats().unwrap().corrupt_regions, 0);
    let mut reader = spool.reader("shipper").unwrap();
    assert!(drain(&mut reader).is_empty());
    if compression != Compression::Off {
        assert!(sealed > 0, "nothing was ever sealed");
    }
    eprintln!("{compression:?}: {next} frames acknowledged over 6 fills of the disk, {full_errors} appends refused as disk full, {sealed} segments compressed");
}

// One test, the cases in turn: a `mount` forked by a test running beside
// could briefly hold a copy of the spool's lock file descriptor and make
// the reopen below fail with `Locked`.
#[test]
fn a_full_disk_refuses_appends_and_recovers_when_the_spool_drains() {
    run(Compression::Off);
    run(Compression::Zstd { level: 1 });
}

/// Regression (the full-disk process test lost acknowledged events now and
/// then): a reader in another process sees bytes as they are written. An
/// append that ran out of space left part of its bytes in the file until it
/// was cut off, and the next append wrote other bytes there: such a reader
/// took frames of the refused batch, or cached the torn bytes, met a bad
/// checksum where the new frames were, and skipped acknowledged ones. Now a
/// full disk refuses an append before any byte of it is written, and a bad
/// checksum in a segment still being written is read afresh before it counts
/// as damage. Here a reader with no shared watermark (as the shipper's)
/// reads all along while appends fill the disk again and again.
#[test]
fn a_reader_in_another_process_sees_only_acknowledged_frames_of_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap();
    let _fs = Tmpfs::mount(&spool_dir, "256k");
    let config = small_config(Durability::Group, Compression::Off);
    let spool = std::sync::Arc::new(Spool::open(&spool_dir, config).unwrap());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Opened before the disk fills: a new reader writes its first
    // checkpoint, which needs space (the shipper waits for it, as for every
    // state write); opened in the thread, it raced the appends.
    let mut r = spooler::Reader::open(&spool_dir, "other-process").unwrap();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let t0 = std::time::Instant::now();
            // Bounded in time; reads until told to stop and drained.
            while t0.elapsed() < std::time::Duration::from_secs(120) {
                let got = r.next(1_000, usize::MAX).unwrap();
                if got.is_empty() {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    r.wait(std::time::Duration::from_millis(5)).unwrap();
                    continue;
                }
                for rec in &got {
                    let text = String::from_utf8_lossy(&rec.payload).to_string();
                    // A frame that is not one of ours counts as foreign.
                    let i: u64 = text
                        .get(5..)
                        .and_then(|t| t.split(',').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(u64::MAX);
                    seen.push(i);
                }
                r.commit(got.last().unwrap().next).unwrap();
            }
            (seen, r.stats().corrupt_regions)
        })
    };
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut i = 0u64;
    // Bounded in count: 3 000 batches.
    for _ in 0..3_000 {
        let batch: Vec<Vec<u8>> = (i..i + 7).map(|n| payload(n, 300)).collect();
        match spool.append(&batch) {
            Ok(_) => acked.extend(i..i + 7),
            Err(e) if e.is_disk_full() => {
                refused += 1;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
        i += 7;
    }
    // The last batch is read once the reader catches up; then it stops.
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (seen, corrupt) = reader.join().unwrap();
    assert!(
        refused > 0,
        "the disk never filled: the test proves nothing"
    );
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a frame read twice");
    let acked_set: std::collections::HashSet<u64> = acked.iter().copied().collect();
    let foreign: Vec<u64> = seen
        .iter()
        .filter(|i| !acked_set.contains(i))
        .copied()
        .collect();
    assert!(
        foreign.is_empty(),
        "frames of refused appends read: {:?}",
        &foreign[..foreign.len().min(10)]
    );
    assert_eq!(
        seen.len(),
        acked.len(),
        "acknowledged frames not read ({refused} appends refused)"
    );
    assert_eq!(corrupt, 0, "damage reported where there was none");
}
