//! Hand-written damage: each case breaks the files in one known way, then
//! checks recovery, readers and `inspect::examine` skip exactly the damage,
//! count it, quarantine it and keep everything else.

mod common;

use std::fs;
use std::path::Path;

use common::{active_segment, drain, payload, segment_files, small_config};
use spooler::format::SEGMENT_HEADER_LEN;
use spooler::inspect::{examine, ProblemKind};
use spooler::{Compression, Durability, Position, Spool};

const OFF: Compression = Compression::Off;

fn open(dir: &Path) -> Spool {
    Spool::open(dir, small_config(Durability::Always, OFF)).unwrap()
}

/// Appends `n` frames in one segment and returns their positions.
fn fill(dir: &Path, n: usize) -> Vec<Position> {
    let spool = open(dir);
    (0..n)
        .map(|i| spool.append(&[payload(i)]).unwrap()[0])
        .collect()
}

fn patch(path: &Path, offset: u64, f: impl FnOnce(&mut [u8])) {
    let mut b = fs::read(path).unwrap();
    f(&mut b[offset as usize..]);
    fs::write(path, b).unwrap();
}

fn payloads(dir: &Path) -> (Vec<Vec<u8>>, spooler::ReaderStats) {
    let spool = open(dir);
    let mut r = spool.reader("check").unwrap();
    let got = drain(&mut r).into_iter().map(|r| r.payload).collect();
    (got, r.stats().clone())
}

fn quarantine_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn expect_all_but(n: usize, lost: &[usize]) -> Vec<Vec<u8>> {
    (0..n).filter(|i| !lost.contains(i)).map(payload).collect()
}

#[test]
fn flipped_crc_bit_skips_one_frame_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pos = fill(dir.path(), 10);
    patch(&active_segment(dir.path()), pos[3].offset + 8, |b| {
        b[0] ^= 0x01
    });
    let spool = open(dir.path());
    let st = spool.stats().unwrap();
    assert_eq!(st.corrupt_regions, 1);
    assert_eq!(st.corrupt_bytes, pos[4].offset - pos[3].offset);
    assert_eq!(st.quarantined_bytes, st.corrupt_bytes);
    drop(spool);
    let (got, rs) = payloads(dir.path());
    assert_eq!(got, expect_all_but(10, &[3]));
    assert_eq!(rs.corrupt_regions, 1);
    assert_eq!(quarantine_bytes(dir.path()), pos[4].offset - pos[3].offset);
    let rep = examine(dir.path(), false).unwrap();
    assert!(!rep.is_clean());
    assert_eq!(rep.problems[0].kind, ProblemKind::Corrupt);
    assert_eq!(rep.problems[0].offset, pos[3].offset);
}

#[test]
fn zeroed_length_skips_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let pos = fill(dir.path(), 10);
    patch(&active_segment(dir.path()), pos[5].offset + 4, |b| {
        b[..4].fill(0)
    });
    let (got, rs) = payloads(dir.path());
    assert_eq!(got, expect_all_but(10, &[5]));
    assert_eq!(rs.corrupt_regions, 1);
}

#[test]
fn length_past_the_end_in_the_middle_is_skipped_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let pos = fill(dir.path(), 10);
    patch(&active_segment(dir.path()), pos[2].offset + 4, |b| {
        b[..4].copy_from_slice(&1_000_000u32.to_le_bytes())
    });
    let spool = open(dir.path());
    assert_eq!(spool.stats().unwrap().torn_tail_bytes, 0);
    drop(spool);
    let (got, _) = payloads(dir.path());
    assert_eq!(got, expect_all_but(10, &[2]));
}

#[test]
fn truncated_mid_frame_tail_is_cut_and_appends_continue_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let pos = fill(dir.path(), 10);
    let seg = active_segment(dir.path());
    let cut = pos[9].offset + 5;
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    let spool = open(dir.path());
    assert_eq!(spool.stats().unwrap().torn_tail_bytes, 5);
    let sealed = seg.with_extension("seg");
    assert_eq!(fs::metadata(&sealed).unwrap().len(), pos[9].offset);
    let p = spool.append(&[payload(10)]).unwrap();
    assert_eq!(
        p[0],
        Position::new(pos[9].segment + 1, SEGMENT_HEADER_LEN as u64),
        "a new segment, so the torn frame's position is never reused"
    );
    drop(spool);
    let (got, rs) = payloads(dir.path());
    assert_eq!(got, expect_all_but(11, &[9]));
    assert_eq!(rs.corrupt_regions, 0);
    assert!(examine(dir.path(), false).unwrap().is_clean());
}

#[test]
fn segment_torn_during_creation_is_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    let spool = open(dir.path());
    spool.rotate().unwrap();
    drop(spool);
    let seg = active_segment(dir.path());
    fs::write(&seg, b"SPOOL").unwrap();
    let spool = open(dir.path());
    spool.append(&[payload(3)]).unwrap();
    drop(spool);
    let (got, _) = payloads(dir.path());
    assert_eq!(got, expect_all_but(4, &[]));
}

#[test]
fn damaged_header_keeps_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 5);
    patch(&active_segment(dir.path()), 14, |b| b[0] ^= 0xFF);
    let spool = open(dir.path());
    assert_eq!(spool.stats().unwrap().corrupt_regions, 1);
    drop(spool);
    let (got, rs) = payloads(dir.path());
    assert_eq!(got, expect_all_but(5, &[]));
    assert_eq!(rs.corrupt_regions, 1);
}

#[test]
fn damaged_zstd_segment_is_counted_quarantined_and_later_segments_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(Durability::Always, Compression::Zstd { level: 3 });
    let n = 200;
    {
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        for i in 0..n {
            spool.append(&[payload(i)]).unwrap();
        }
        assert!(spool.seal_pending().unwrap() >= 2);
    }
    let zst = segment_files(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".seg.zst"))
        .unwrap();
    let len = fs::metadata(&zst).unwrap().len();
    patch(&zst, len / 2, |b| {
        for x in &mut b[..16] {
            *x ^= 0x5A
        }
    });
    let spool = Spool::open(dir.path(), config).unwrap();
    let mut r = spool.reader("check").unwrap();
    let got: Vec<Vec<u8>> = drain(&mut r).into_iter().map(|r| r.payload).collect();
    let rs = r.stats().clone();
    assert!(rs.corrupt_regions >= 1, "{rs:?}");
    assert!(rs.quarantined_bytes >= len, "{rs:?}");
    assert!(got.len() < n && got.len() > n / 2, "{}", got.len());
    assert_eq!(
        got.last().unwrap(),
        &payload(n - 1),
        "later segments still read"
    );
    // What survives is an in-order subsequence of what was appended.
    let mut want = (0..n).map(payload);
    for p in &got {
        assert!(want.any(|w| &w == p), "frame out of order or unknown");
    }
    let rep = examine(dir.path(), false).unwrap();
    assert!(rep
        .problems
        .iter()
        .any(|p| matches!(p.kind, ProblemKind::DamagedCompression(_))));
}

#[test]
fn missing_segment_is_skipped_counted_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = open(dir.path());
        for i in 0..200 {
            spool.append(&[payload(i)]).unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    fs::remove_file(&files[1]).unwrap();
    let (got, rs) = payloads(dir.path());
    assert_eq!(rs.missing_segments, 1);
    assert!(got.len() < 200 && got.contains(&payload(199)) && got.contains(&payload(0)));
    let rep = examine(dir.path(), false).unwrap();
    assert!(rep
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::MissingSegments { from: 2, to: 2 }));
}

#[test]
fn stale_checkpoint_past_the_end_is_moved_back_so_new_frames_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let pos = fill(dir.path(), 5);
    {
        let spool = open(dir.path());
        let mut r = spool.reader("ship").unwrap();
        drain(&mut r);
        r.commit_read().unwrap();
    }
    // Power loss took the last two frames, but the checkpoint survived.
    let seg = active_segment(dir.path());
    fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(pos[3].offset)
        .unwrap();
    let rep = examine(dir.path(), false).unwrap();
    assert!(rep
        .problems
        .iter()
        .any(|p| matches!(p.kind, ProblemKind::StaleCheckpoint { .. })));
    let spool = open(dir.path());
    assert_eq!(spool.stats().unwrap().stale_checkpoints, 1);
    let newpos = spool.append(&[b"after".as_slice()]).unwrap();
    assert!(newpos[0] > pos[4], "no position is handed out twice");
    let mut r = spool.reader("ship").unwrap();
    assert_eq!(r.committed(), pos[3]);
    let got = drain(&mut r);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"after");
    assert_eq!(got[0].position, newpos[0]);
}

#[test]
fn stale_checkpoint_in_a_segment_that_does_not_exist_is_moved_back_by_a_reader() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 3);
    fs::write(
        dir.path().join("readers/ghost.ckpt"),
        spooler::format::encode_checkpoint(Position::new(50, 999)),
    )
    .unwrap();
    let mut r = spooler::Reader::open(dir.path(), "ghost").unwrap();
    assert_eq!(r.stats().stale_checkpoints, 1);
    assert_eq!(r.committed().segment, 1);
    assert!(drain(&mut r).is_empty());
}

#[test]
fn corrupt_checkpoint_restarts_from_the_oldest_segment() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path(), 4);
    fs::write(dir.path().join("readers/x.ckpt"), b"garbage").unwrap();
    let spool = open(dir.path());
    let mut r = spool.reader("x").unwrap();
    assert_eq!(r.stats().corrupt_checkpoints, 1);
    assert_eq!(drain(&mut r).len(), 4);
}

#[test]
fn damage_in_a_sealed_raw_segment_is_skipped_by_readers() {
    let dir = tempfile::tempdir().unwrap();
    let pos: Vec<Position> = {
        let spool = open(dir.path());
        let p = (0..6)
            .map(|i| spool.append(&[payload(i)]).unwrap()[0])
            .collect();
        spool.rotate().unwrap();
        p
    };
    let sealed = segment_files(dir.path())
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".seg"))
        .unwrap();
    patch(&sealed, pos[1].offset + 20, |b| b[0] ^= 0x80);
    patch(&sealed, pos[5].offset + 20, |b| b[0] ^= 0x80);
    let (got, rs) = payloads(dir.path());
    assert_eq!(got, expect_all_but(6, &[1, 5]));
    assert_eq!(rs.corrupt_regions, 2, "{rs:?}");
    let rep = examine(dir.path(), true).unwrap();
    let kinds: Vec<_> = rep.problems.iter().map(|p| p.kind.clone()).collect();
    assert_eq!(kinds, vec![ProblemKind::Corrupt, ProblemKind::CorruptTail]);
    assert_eq!(
        rep.quarantined_now, 0,
        "the reader already quarantined both"
    );
}

#[test]
fn lost_segments_never_make_positions_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let spool = open(dir.path());
        for i in 0..200 {
            spool.append(&[payload(i)]).unwrap();
        }
        let mut r = spool.reader("ship").unwrap();
        drain(&mut r);
        r.commit_read().unwrap();
        r.committed()
    };
    for f in segment_files(dir.path()) {
        fs::remove_file(f).unwrap();
    }
    let spool = open(dir.path());
    let p = spool.append(&[b"new".as_slice()]).unwrap();
    assert!(p[0] > last, "{} must come after {last}", p[0]);
    let mut r = spool.reader("ship").unwrap();
    let got = drain(&mut r);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"new");
}
