//! Injected write and fsync failures on the append path: an append that
//! fails is never acknowledged, a failed fsync stops the spool until it is
//! reopened, and reopening keeps every acknowledged frame. And the rest of
//! the spool's I/O seam: a checkpoint whose rename never happens, and a seal
//! that fails midway (its compressed copy torn while written, its rename or
//! the directory sync after it failing), lose nothing and are recovered by
//! reopening.

mod common;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::SeqCst};
use std::sync::Arc;

use common::{drain, payload, small_config};
use spooler::{Compression, Durability, Error, Position, Spool, SpoolIo};

/// Fails the nth sync or tears the nth write (counting down; negative:
/// never), then behaves.
#[derive(Default)]
struct Faulty {
    syncs_until_failure: AtomicI64,
    writes_until_tear: AtomicI64,
}

impl Faulty {
    fn new(syncs: i64, writes: i64) -> Arc<Self> {
        Arc::new(Faulty {
            syncs_until_failure: AtomicI64::new(syncs),
            writes_until_tear: AtomicI64::new(writes),
        })
    }
}

impl SpoolIo for Faulty {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.writes_until_tear.fetch_sub(1, SeqCst) == 0 {
            // Half the batch reaches the file, as when the disk fills mid-write.
            file.write_all_at(&buf[..buf.len() / 2], offset)?;
            return Err(io::Error::from_raw_os_error(ENOSPC));
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        if self.syncs_until_failure.fetch_sub(1, SeqCst) == 0 {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        file.sync_data()
    }
}

/// Appends payloads `0..n` one frame per append; what was acknowledged.
fn append_one_by_one(spool: &Spool, n: usize) -> Vec<(Position, Vec<u8>)> {
    (0..n)
        .map(|i| (spool.append(&[payload(i)]).unwrap()[0], payload(i)))
        .collect()
}

/// errno values, Linux.
const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn acked_survive_reopen(dir: &std::path::Path, acked: &[(Position, Vec<u8>)]) {
    let spool = Spool::open(dir, small_config(Durability::Always, Compression::Off)).unwrap();
    assert_eq!(spool.stats().unwrap().corrupt_regions, 0);
    let mut r = spool.reader("check").unwrap();
    let got: Vec<(Position, Vec<u8>)> = drain(&mut r)
        .into_iter()
        .map(|r| (r.position, r.payload))
        .collect();
    for a in acked {
        assert!(got.contains(a), "acknowledged frame at {} lost", a.0);
    }
}

#[test]
fn failed_fsync_is_not_acknowledged_and_poisons_until_reopen() {
    for durability in [Durability::Always, Durability::Group] {
        let dir = tempfile::tempdir().unwrap();
        let io = Faulty::new(3, -1);
        let spool = Spool::open_with_io(dir.path(), small_config(durability, Compression::Off), io)
            .unwrap();
        let mut acked = Vec::new();
        let mut failed = None;
        for i in 0..10 {
            match spool.append(&[payload(i)]) {
                Ok(p) => acked.push((p[0], payload(i))),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = failed.expect("the fourth sync fails");
        assert_eq!(e.code(), "io", "{e}");
        assert_eq!(acked.len(), 3);
        let last_acked = acked.last().unwrap().0;
        let durable = spool.durable();
        assert!(durable > last_acked);
        // The failed batch was written but never confirmed: in-process readers
        // must not see it.
        let mut r = spool.reader("a").unwrap();
        assert_eq!(drain(&mut r).len(), 3);
        assert!(matches!(
            spool.append(&[b"x".as_slice()]),
            Err(Error::Poisoned)
        ));
        drop(r);
        drop(spool);
        acked_survive_reopen(dir.path(), &acked);
    }
}

#[test]
fn torn_write_is_rolled_back_and_the_next_append_lands_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let io = Faulty::new(-1, 2);
    let spool = Spool::open_with_io(
        dir.path(),
        small_config(Durability::Always, Compression::Off),
        io,
    )
    .unwrap();
    let mut acked = Vec::new();
    let mut errors = 0;
    for i in 0..6 {
        let batch = vec![payload(i), payload(100 + i)];
        match spool.append(&batch) {
            Ok(p) => acked.extend(p.into_iter().zip(batch)),
            Err(e) => {
                assert_eq!(e.code(), "io");
                errors += 1;
            }
        }
    }
    assert_eq!(errors, 1);
    assert_eq!(acked.len(), 10);
    let mut r = spool.reader("a").unwrap();
    let got: Vec<(Position, Vec<u8>)> = drain(&mut r)
        .into_iter()
        .map(|r| (r.position, r.payload))
        .collect();
    assert_eq!(got, acked, "no trace of the torn batch, no gap");
    assert_eq!(r.stats().corrupt_regions, 0);
    drop(r);
    drop(spool);
    acked_survive_reopen(dir.path(), &acked);
}

#[test]
fn concurrent_group_appenders_sharing_a_failed_sync_all_fail() {
    let dir = tempfile::tempdir().unwrap();
    let io = Faulty::new(0, -1);
    let spool = Arc::new(
        Spool::open_with_io(
            dir.path(),
            small_config(Durability::Group, Compression::Off),
            io,
        )
        .unwrap(),
    );
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = spool.clone();
            std::thread::spawn(move || s.append(&[payload(t)]))
        })
        .collect();
    for t in threads {
        let e = t.join().unwrap().unwrap_err();
        assert!(matches!(e.code(), "io" | "poisoned"), "{e}");
    }
    let mut r = spool.reader("a").unwrap();
    assert!(drain(&mut r).is_empty(), "nothing unconfirmed is visible");
}

/// Fails renames whose target ends in `suffix` (once armed), or, with
/// `then_sync_dir`, lets the rename happen and fails the directory sync
/// after it: the two halves of a step a crash can split.
struct FailingStep {
    suffix: &'static str,
    then_sync_dir: bool,
    armed: AtomicBool,
    sync_dir_fails: AtomicBool,
}

impl FailingStep {
    fn new(suffix: &'static str, then_sync_dir: bool) -> Arc<Self> {
        Arc::new(FailingStep {
            suffix,
            then_sync_dir,
            armed: AtomicBool::new(false),
            sync_dir_fails: AtomicBool::new(false),
        })
    }
}

impl SpoolIo for FailingStep {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let hit = self.armed.load(SeqCst) && to.to_string_lossy().ends_with(self.suffix);
        if hit && !self.then_sync_dir {
            self.armed.store(false, SeqCst);
            return Err(io::Error::from_raw_os_error(EIO));
        }
        std::fs::rename(from, to)?;
        if hit {
            self.armed.store(false, SeqCst);
            self.sync_dir_fails.store(true, SeqCst);
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.sync_dir_fails.swap(false, SeqCst) {
            return Err(io::Error::from_raw_os_error(EIO));
        }
        File::open(dir)?.sync_all()
    }
}

#[test]
fn a_checkpoint_whose_rename_fails_loses_nothing_and_its_reader_reads_again() {
    let dir = tempfile::tempdir().unwrap();
    let io = FailingStep::new(".ckpt", false);
    let spool = Spool::open_with_io(
        dir.path(),
        small_config(Durability::Always, Compression::Off),
        io.clone(),
    )
    .unwrap();
    let acked = append_one_by_one(&spool, 20);
    let mut r = spool.reader("ship").unwrap();
    let first = r.next(5, 1 << 20).unwrap();
    r.commit_read().unwrap();
    let committed = r.committed();
    assert_eq!(committed, first.last().unwrap().next);
    // The next checkpoint's temp file is written, its rename fails: the
    // commit is refused and the old checkpoint stands.
    let _ = r.next(10, 1 << 20).unwrap();
    io.armed.store(true, SeqCst);
    let e = r.commit_read().expect_err("the rename fails");
    assert_eq!(e.code(), "io", "{e}");
    assert_eq!(r.committed(), committed);
    assert!(dir.path().join("readers/ship.ckpt.tmp").exists());
    drop(r);
    drop(spool);
    // Reopened: the leftover temp file is gone, the reader resumes at its
    // last good checkpoint and reads the rest again, nothing lost.
    let spool = Spool::open(
        dir.path(),
        small_config(Durability::Always, Compression::Off),
    )
    .unwrap();
    let mut r = spool.reader("ship").unwrap();
    assert!(!dir.path().join("readers/ship.ckpt.tmp").exists());
    assert_eq!(r.committed(), committed);
    let rest: Vec<(Position, Vec<u8>)> = drain(&mut r)
        .into_iter()
        .map(|f| (f.position, f.payload))
        .collect();
    assert_eq!(rest, acked[5..].to_vec());
    drop(r);
    drop(spool);
    acked_survive_reopen(dir.path(), &acked);
}

#[test]
fn a_seal_that_fails_midway_loses_nothing_and_reopening_recovers() {
    // Two places a seal can fail: renaming the compressed copy in, and the
    // directory sync after it (the copy in place, the raw segment not yet
    // removed: reopening finds both and keeps one).
    for then_sync_dir in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let io = FailingStep::new(".seg.zst", then_sync_dir);
        let config = small_config(Durability::Always, Compression::Zstd { level: 3 });
        let spool = Spool::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
        let acked = append_one_by_one(&spool, 300);
        io.armed.store(true, SeqCst);
        let e = spool.seal_pending().expect_err("the seal fails midway");
        assert_eq!(e.code(), "io", "{e}");
        // Acknowledged frames are all still readable from the live spool.
        let mut r = spool.reader("live").unwrap();
        assert_eq!(
            drain(&mut r).len(),
            acked.len(),
            "then_sync_dir {then_sync_dir}"
        );
        drop(r);
        drop(spool);
        let spool = Spool::open(dir.path(), config.clone()).unwrap();
        assert_eq!(spool.stats().unwrap().corrupt_regions, 0);
        // Sealing goes on where it stopped.
        spool.seal_pending().unwrap();
        drop(spool);
        acked_survive_reopen(dir.path(), &acked);
    }
}

/// Tears the next write to a file whose name ends in `suffix` (once armed):
/// half of it lands, then ENOSPC. A `File` carries no name, so the name is
/// read from `/proc/self/fd`.
struct TornFileWrite {
    suffix: &'static str,
    armed: AtomicBool,
    torn: AtomicBool,
}

impl SpoolIo for TornFileWrite {
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if self.armed.load(SeqCst) {
            let name = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
            if name.to_string_lossy().ends_with(self.suffix) {
                self.armed.store(false, SeqCst);
                self.torn.store(true, SeqCst);
                file.write_all_at(&buf[..buf.len() / 2], offset)?;
                return Err(io::Error::from_raw_os_error(ENOSPC));
            }
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

#[test]
fn a_compressed_copy_torn_while_written_loses_nothing_and_sealing_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let io = Arc::new(TornFileWrite {
        suffix: ".seg.zst.tmp",
        armed: AtomicBool::new(false),
        torn: AtomicBool::new(false),
    });
    let config = small_config(Durability::Always, Compression::Zstd { level: 3 });
    let spool = Spool::open_with_io(dir.path(), config.clone(), io.clone()).unwrap();
    let acked = append_one_by_one(&spool, 300);
    io.armed.store(true, SeqCst);
    let e = spool.seal_pending().expect_err("the copy's write is torn");
    assert_eq!(e.code(), "io", "{e}");
    assert!(
        io.torn.load(SeqCst),
        "the copy was written through the seam"
    );
    // The torn temp file is gone; the raw segments still hold everything.
    let segments: Vec<String> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        segments.iter().all(|n| !n.ends_with(".tmp")),
        "{segments:?}"
    );
    let mut r = spool.reader("live").unwrap();
    assert_eq!(drain(&mut r).len(), acked.len());
    drop(r);
    // The seam behaves again: sealing goes on where it stopped.
    spool.seal_pending().unwrap();
    let compressed = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".seg.zst")
        })
        .count();
    assert!(compressed > 0, "no compressed copy after the retry");
    drop(spool);
    acked_survive_reopen(dir.path(), &acked);
}
