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
