//! Behaviour of the spool through its public API.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{drain, payload, segment_files, small_config};
use spooler::{Compression, Config, Durability, Error, Position, Reader, Spool};

const ZSTD: Compression = Compression::Zstd { level: 3 };

#[test]
fn appended_frames_come_back_in_order_across_rotation_sealing_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut expected = Vec::new();
    {
        let spool = Spool::open(dir.path(), small_config(Durability::Always, ZSTD)).unwrap();
        for b in 0..40 {
            let batch: Vec<Vec<u8>> = (0..5).map(|i| payload(b * 5 + i)).collect();
            let pos = spool.append(&batch).unwrap();
            expected.extend(pos.into_iter().zip(batch));
        }
        let st = spool.stats().unwrap();
        assert!(st.segments_rotated >= 3, "{st:?}");
        assert!(spool.seal_pending().unwrap() >= 3);
        assert_eq!(st.appended_frames, 200);
    }
    let names: Vec<String> = segment_files(dir.path())
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.ends_with(".seg.zst")), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".seg")), "{names:?}");
    let spool = Spool::open(dir.path(), small_config(Durability::Always, ZSTD)).unwrap();
    let mut r = spool.reader("shipper").unwrap();
    let got: Vec<(Position, Vec<u8>)> = drain(&mut r)
        .into_iter()
        .map(|rec| (rec.position, rec.payload))
        .collect();
    assert_eq!(got, expected);
    let w: Vec<_> = expected.windows(2).filter(|w| w[0].0 >= w[1].0).collect();
    assert!(w.is_empty(), "positions must increase");
}

#[test]
fn checkpoint_survives_reopen_and_reader_resumes_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Group, Compression::Off),
    )
    .unwrap();
    let pos = spool
        .append(&(0..10).map(payload).collect::<Vec<_>>())
        .unwrap();
    let mut r = spool.reader("a").unwrap();
    let recs = r.next(4, 1 << 20).unwrap();
    assert_eq!(recs.len(), 4);
    r.commit(recs[3].next).unwrap();
    let more = r.next(100, 1 << 20).unwrap();
    assert_eq!(more.len(), 6);
    drop(r);
    drop(spool);
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Group, Compression::Off),
    )
    .unwrap();
    let mut r = spool.reader("a").unwrap();
    assert_eq!(r.committed(), pos[4]);
    let recs = drain(&mut r);
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[0].position, pos[4]);
    assert!(matches!(
        r.commit(Position::new(99, 0)),
        Err(Error::InvalidCommit { .. })
    ));
}

#[test]
fn group_commit_shares_syncs_between_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), Config::default()).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let s = spool.clone();
            std::thread::spawn(move || {
                let mut pos = Vec::new();
                for i in 0..200 {
                    pos.extend(s.append(&[payload(t * 1000 + i)]).unwrap());
                }
                pos
            })
        })
        .collect();
    let mut all: Vec<Position> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 1600);
    let st = spool.stats().unwrap();
    assert_eq!(st.appended_frames, 1600);
    assert!(
        st.fsyncs < 1600,
        "group commit should need fewer syncs than appends: {}",
        st.fsyncs
    );
    assert!(spool.durable() >= *all.last().unwrap());
}

#[test]
fn interval_policy_makes_appends_visible_after_its_sync() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        durability: Durability::Interval { interval_ms: 20 },
        ..small_config(Durability::Always, Compression::Off)
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let mut r = spool.reader("a").unwrap();
    let pos = spool.append(&[b"x".as_slice()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        r.wait(Duration::from_millis(500)).unwrap();
        got = r.next(10, 1 << 20).unwrap();
    }
    assert_eq!(got.len(), 1);
    assert!(spool.durable() > pos[0]);
}

#[test]
fn in_process_reader_is_woken_by_an_append_not_by_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Arc::new(Spool::open(dir.path(), Config::default()).unwrap());
    let mut r = spool.reader("a").unwrap();
    assert!(r.next(10, 1 << 20).unwrap().is_empty());
    let s = spool.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        s.append(&[b"hello".as_slice()]).unwrap();
    });
    let t = Instant::now();
    assert!(r.wait(Duration::from_secs(20)).unwrap());
    assert!(t.elapsed() < Duration::from_secs(10));
    writer.join().unwrap();
    assert_eq!(r.next(10, 1 << 20).unwrap()[0].payload, b"hello");
    // Caught up and nothing new: the wait times out.
    assert!(!r.wait(Duration::from_millis(50)).unwrap());
}

#[test]
fn reader_in_another_handle_is_woken_by_file_notifications() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Config::default()).unwrap();
    let mut r = Reader::open(dir.path(), "other").unwrap();
    assert!(r.next(10, 1 << 20).unwrap().is_empty());
    let path = dir.path().to_path_buf();
    let t = Instant::now();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        spool.append(&[b"cross".as_slice()]).unwrap();
        spool
    });
    let mut got = Vec::new();
    let mut wakes = 0;
    for _ in 0..20 {
        if r.wait(Duration::from_secs(20)).unwrap() {
            wakes += 1;
            got = r.next(10, 1 << 20).unwrap();
            if !got.is_empty() {
                break;
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(got[0].payload, b"cross");
    assert!(wakes <= 5, "woken {wakes} times for one append");
    drop(writer.join().unwrap());
    drop(path);
}

#[test]
fn retention_deletes_only_what_every_reader_committed_past() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Always, Compression::Off),
    )
    .unwrap();
    for i in 0..200 {
        spool.append(&[payload(i)]).unwrap();
    }
    spool.rotate().unwrap();
    assert_eq!(spool.retain().unwrap(), 0, "no reader: nothing deleted");
    let mut fast = spool.reader("fast").unwrap();
    let mut slow = spool.reader("slow").unwrap();
    drain(&mut fast);
    fast.commit_read().unwrap();
    assert_eq!(spool.retain().unwrap(), 0, "slow reader holds everything");
    let first = slow.next(150, 1 << 20).unwrap();
    slow.commit(first.last().unwrap().next).unwrap();
    let deleted = spool.retain().unwrap();
    assert!(deleted >= 1);
    let rest = drain(&mut slow);
    assert_eq!(first.len() + rest.len(), 200);
    assert_eq!(slow.stats().missing_segments, 0);
}

#[test]
fn quota_refuses_with_full_before_exceeding_and_retention_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        quota_bytes: 3 * 4096,
        ..small_config(Durability::Always, Compression::Off)
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    let mut r = spool.reader("a").unwrap();
    let big = vec![b'x'; 1000];
    let mut accepted = 0;
    let err = loop {
        match spool.append(&[&big]) {
            Ok(_) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 100, "quota never enforced");
    };
    assert!(matches!(err, Error::Full { .. }), "{err}");
    assert_eq!(err.code(), "full");
    let st = spool.stats().unwrap();
    assert!(st.bytes_on_disk <= 3 * 4096, "{st:?}");
    assert_eq!(st.full_rejections, 1);
    drain(&mut r);
    r.commit_read().unwrap();
    spool.append(&[&big]).unwrap();
    assert_eq!(drain(&mut r).len(), 1);
}

#[test]
fn limits_and_locking_give_distinct_errors() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), Config::default()).unwrap();
    let e = spool
        .append(&[vec![0u8; spooler::FRAME_PAYLOAD_MAX + 1]])
        .unwrap_err();
    assert_eq!(e.code(), "frame_too_large");
    let e = Spool::open(dir.path(), Config::default()).err().unwrap();
    assert_eq!(e.code(), "locked");
    assert_eq!(
        spool.reader("../etc").unwrap_err().code(),
        "invalid_reader_name"
    );
    drop(spool);
    Spool::open(dir.path(), Config::default()).unwrap();
}

#[test]
fn age_rotation_seals_an_idle_segment_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        segment_age_ms: 50,
        background_seal: true,
        ..small_config(Durability::Group, ZSTD)
    };
    let spool = Spool::open(dir.path(), config).unwrap();
    spool.append(&[b"old".as_slice()]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let st = spool.stats().unwrap();
        if st.segments_rotated >= 1 && st.segments_compressed >= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let st = spool.stats().unwrap();
    assert!(
        st.segments_rotated >= 1 && st.segments_compressed >= 1,
        "{st:?}"
    );
    let mut r = spool.reader("a").unwrap();
    assert_eq!(drain(&mut r)[0].payload, b"old");
}

#[test]
fn stats_report_reader_lag() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Always, Compression::Off),
    )
    .unwrap();
    let mut r = spool.reader("a").unwrap();
    spool.append(&[b"0123456789".as_slice(); 3]).unwrap();
    let st = spool.stats().unwrap();
    assert_eq!(st.readers[0].lag_bytes, 3 * 22);
    let recs = r.next(1, 1 << 20).unwrap();
    r.commit(recs[0].next).unwrap();
    let st = spool.stats().unwrap();
    assert_eq!(st.readers[0].name, "a");
    assert_eq!(st.readers[0].lag_bytes, 2 * 22);
    assert!(st.fsyncs >= 1);
    assert_eq!(st.fsync_latency_buckets.iter().sum::<u64>(), st.fsyncs);
}

#[test]
fn deferred_appends_are_acknowledged_by_one_shared_sync() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Group, Compression::Off),
    )
    .unwrap();
    let pending: Vec<_> = (0..5)
        .map(|i| spool.append_deferred(&[payload(i)]).unwrap())
        .collect();
    let before = spool.stats().unwrap().fsyncs;
    let last = pending.last().unwrap().positions()[0];
    assert!(spool.durable() <= last, "nothing synced before the wait");
    let mut acked = Vec::new();
    for p in pending {
        acked.extend(spool.wait_durable(p).unwrap());
    }
    assert_eq!(spool.stats().unwrap().fsyncs - before, 1);
    assert!(spool.durable() > last);
    let mut r = spool.reader("a").unwrap();
    let got: Vec<Position> = drain(&mut r).iter().map(|r| r.position).collect();
    assert_eq!(got, acked);
}

#[test]
fn readers_keep_up_with_concurrent_appends_rotation_sealing_and_retention() {
    const WRITERS: usize = 2;
    const PER_WRITER: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        background_seal: true,
        ..small_config(Durability::Group, ZSTD)
    };
    let spool = Arc::new(Spool::open(dir.path(), config).unwrap());
    let mut in_proc = spool.reader("in-process").unwrap();
    let mut other = Reader::open(dir.path(), "other-process").unwrap();
    let writers: Vec<_> = (0..WRITERS)
        .map(|t| {
            let s = spool.clone();
            std::thread::spawn(move || {
                for i in 0..PER_WRITER {
                    s.append(&[format!("{t}:{i}").into_bytes()]).unwrap();
                    if i % 500 == 0 {
                        s.retain().unwrap();
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = [vec![Vec::new(); WRITERS], vec![Vec::new(); WRITERS]];
    let mut done = [0usize; 2];
    while done.iter().any(|d| *d < WRITERS * PER_WRITER) {
        assert!(Instant::now() < deadline, "readers fell behind: {done:?}");
        for (k, r) in [&mut in_proc, &mut other].into_iter().enumerate() {
            let batch = r.next(500, 1 << 20).unwrap();
            if batch.is_empty() {
                r.wait(Duration::from_millis(20)).unwrap();
                continue;
            }
            for rec in &batch {
                let s = String::from_utf8(rec.payload.clone()).unwrap();
                let (t, i) = s.split_once(':').unwrap();
                seen[k][t.parse::<usize>().unwrap()].push(i.parse::<usize>().unwrap());
            }
            done[k] += batch.len();
            // Committing lets retention delete segments under the readers.
            r.commit_read().unwrap();
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    for per_reader in &seen {
        for per_writer in per_reader {
            assert_eq!(*per_writer, (0..PER_WRITER).collect::<Vec<_>>());
        }
    }
    assert_eq!(
        in_proc.stats().missing_segments + other.stats().missing_segments,
        0
    );
    assert_eq!(
        in_proc.stats().corrupt_regions + other.stats().corrupt_regions,
        0
    );
    let st = spool.stats().unwrap();
    assert!(
        st.segments_rotated > 10 && st.segments_deleted > 0,
        "{st:?}"
    );
}

#[test]
fn rewind_rereads_everything_after_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), small_config(Durability::Always, ZSTD)).unwrap();
    assert!(spool.append(&[] as &[&[u8]]).unwrap().is_empty());
    for i in 0..100 {
        spool.append(&[payload(i)]).unwrap();
    }
    spool.rotate().unwrap();
    spool.seal_pending().unwrap();
    let mut r = spool.reader("a").unwrap();
    let first = r.next(10, 1 << 20).unwrap();
    r.commit(first.last().unwrap().next).unwrap();
    let shipped_then_failed = drain(&mut r);
    assert_eq!(shipped_then_failed.len(), 90);
    r.rewind();
    assert_eq!(r.position(), first.last().unwrap().next);
    assert_eq!(drain(&mut r), shipped_then_failed);
}

/// The collector opening the spool while the shipper, another process,
/// writes its first checkpoint: the writer must not delete the reader's
/// temp file (the shipper stopped with "write checkpoint …: No such file").
#[test]
fn opening_the_spool_leaves_readers_temp_checkpoints_to_their_readers() {
    let dir = tempfile::tempdir().unwrap();
    drop(Spool::open(dir.path(), small_config(Durability::Always, ZSTD)).unwrap());
    let tmp = |name: &str| dir.path().join("readers").join(format!("{name}.ckpt.tmp"));
    std::fs::write(tmp("shipper"), b"being written").unwrap();
    std::fs::write(tmp("crashed"), b"left by a crash").unwrap();
    let _spool = Spool::open(dir.path(), small_config(Durability::Always, ZSTD)).unwrap();
    assert!(
        tmp("shipper").exists(),
        "the writer removed a reader's temp file"
    );
    let _r = Reader::open(dir.path(), "crashed").unwrap();
    assert!(!tmp("crashed").exists(), "a reader keeps its own leftover");
    assert!(tmp("shipper").exists());
}
