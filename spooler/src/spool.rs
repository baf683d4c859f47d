//! The writer side: open and recover, append with a durability policy,
//! rotate, seal, retain, enforce the quota.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Compression, Config, Durability};
use crate::error::{Error, Result};
use crate::fileio::{SeamWriter, SpoolIo, StdIo};
use crate::files::{
    self, compressed_content_size, fsync_dir, list_readers, list_segments, quarantine,
    write_checkpoint, CheckpointRead, Layout, SegmentState,
};
use crate::format::{
    encode_frame, frame_len, Position, Scanned, Scanner, SegmentHeader, FRAME_PAYLOAD_MAX,
    SEGMENT_BYTES_MAX, SEGMENT_HEADER_LEN,
};
use crate::reader::Reader;
use crate::stats::{Counters, ReaderLag, SpoolStats};
use crate::watermark::Shared;

/// What the writer knows of one segment.
#[derive(Debug, Clone, Copy)]
struct SegMeta {
    state: SegmentState,
    raw_len: u64,
    disk_len: u64,
}

struct Writer {
    file: Arc<File>,
    seq: u64,
    len: u64,
    created_unix_ms: u64,
    frames: u64,
    buf: Vec<u8>,
    catalog: BTreeMap<u64, SegMeta>,
    disk_bytes: u64,
    poisoned: bool,
}

struct Inner {
    layout: Layout,
    config: Config,
    io: Arc<dyn SpoolIo>,
    writer: Mutex<Writer>,
    shared: Arc<Shared>,
    counters: Counters,
    /// Serialises compressions between the sealer thread and `seal_pending`.
    seal_lock: Mutex<()>,
    /// Wakes the background threads: (shutdown, seal wanted).
    bg: Mutex<(bool, bool)>,
    bg_cv: Condvar,
    /// Held (flock) for the spool's lifetime: one writer per directory.
    _lock: File,
}

/// A batch written by `Spool::append_deferred`, not yet acknowledged.
#[derive(Debug)]
#[must_use = "a deferred append is acknowledged only by Spool::wait_durable"]
pub struct PendingAppend {
    positions: Vec<Position>,
    end: Position,
}

impl PendingAppend {
    /// Where the batch's frames were written.
    pub fn positions(&self) -> &[Position] {
        &self.positions
    }
}

/// The durable spool: one writer per directory.
///
/// ```
/// use spooler::{Config, Spool};
/// let dir = tempfile::tempdir().unwrap();
/// let spool = Spool::open(dir.path(), Config::default()).unwrap();
/// let positions = spool.append(&[b"hello".as_slice(), b"world"]).unwrap();
/// let mut reader = spool.reader("shipper").unwrap();
/// let records = reader.next(100, 1 << 20).unwrap();
/// assert_eq!(records[1].payload, b"world");
/// assert_eq!(records[1].position, positions[1]);
/// reader.commit_read().unwrap();
/// ```
pub struct Spool {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock_dir(layout: &Layout) -> Result<File> {
    let path = layout.root.join("LOCK");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::Locked {
                path: layout.root.clone(),
            });
        }
        return Err(Error::io("lock", &path, e));
    }
    Ok(f)
}

fn create_segment(io: &dyn SpoolIo, layout: &Layout, seq: u64) -> Result<(File, u64)> {
    let path = layout.segment(seq, SegmentState::Active);
    let created = now_unix_ms();
    let header = SegmentHeader {
        seq,
        created_unix_ms: created,
    }
    .encode();
    // The header goes through the seam, durably; appends then write at
    // offsets after it through the same seam.
    let write = || -> io::Result<File> {
        io.write_file(&path, &header)?;
        OpenOptions::new().read(true).write(true).open(&path)
    };
    let f = write().map_err(|e| Error::io("create segment", &path, e))?;
    fsync_dir(io, &layout.segments)?;
    Ok((f, created))
}

/// Outcome of recovering the active segment.
struct Recovered {
    file: File,
    len: u64,
    frames: u64,
    created_unix_ms: u64,
    /// A torn tail was cut off.
    cut: bool,
}

fn recover_active(
    io: &dyn SpoolIo,
    layout: &Layout,
    seq: u64,
    counters: &Counters,
) -> Result<Recovered> {
    let path = layout.segment(seq, SegmentState::Active);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io("open segment", &path, e))?;
    let mut data = Vec::new();
    (&file)
        .take(SEGMENT_BYTES_MAX + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read segment", &path, e))?;
    if data.len() < SEGMENT_HEADER_LEN {
        // Torn while being created: nothing in it was ever acknowledged.
        tracing::warn!(
            segment = seq,
            bytes = data.len(),
            "rewriting torn segment header"
        );
        counters
            .torn_tail_bytes
            .fetch_add(data.len() as u64, Relaxed);
        drop(file);
        let (file, created) = create_segment(io, layout, seq)?;
        return Ok(Recovered {
            file,
            len: SEGMENT_HEADER_LEN as u64,
            frames: 0,
            created_unix_ms: created,
            // Nothing here was acknowledged, but whatever it was, its
            // positions are not handed out again.
            cut: !data.is_empty(),
        });
    }
    let mut created_unix_ms = now_unix_ms();
    match SegmentHeader::decode(&data) {
        Ok(h) if h.seq == seq => created_unix_ms = h.created_unix_ms,
        other => {
            // Frames after a damaged header are still good: keep them, count
            // and quarantine the header.
            let reason = match other {
                Ok(h) => format!("header names segment {} in file of segment {seq}", h.seq),
                Err(p) => p.to_string(),
            };
            tracing::error!(segment = seq, %reason, "corrupt segment header");
            counters.corrupt_regions.fetch_add(1, Relaxed);
            counters
                .corrupt_bytes
                .fetch_add(SEGMENT_HEADER_LEN as u64, Relaxed);
            let q = quarantine(io, layout, seq, 0, &data[..SEGMENT_HEADER_LEN])?;
            counters.quarantined_bytes.fetch_add(q, Relaxed);
        }
    }
    let mut frames = 0u64;
    let mut len = data.len() as u64;
    let mut cut = false;
    for item in Scanner::new(&data, SEGMENT_HEADER_LEN) {
        match item {
            Scanned::Frame { .. } => frames += 1,
            Scanned::Corrupt { offset, len } => {
                tracing::error!(
                    segment = seq,
                    offset,
                    bytes = len,
                    "corrupt frame(s) skipped in recovery"
                );
                counters.corrupt_regions.fetch_add(1, Relaxed);
                counters.corrupt_bytes.fetch_add(len as u64, Relaxed);
                let q = quarantine(io, layout, seq, offset as u64, &data[offset..offset + len])?;
                counters.quarantined_bytes.fetch_add(q, Relaxed);
            }
            Scanned::Tail { offset } => {
                let bytes = data.len() - offset;
                tracing::warn!(segment = seq, offset, bytes, "truncating torn tail");
                counters.torn_tail_bytes.fetch_add(bytes as u64, Relaxed);
                file.set_len(offset as u64)
                    .map_err(|e| Error::io("truncate torn tail of", &path, e))?;
                len = offset as u64;
                cut = true;
            }
        }
    }
    // Whatever the crashed writer left in the page cache is made durable now,
    // so the durable watermark starts true.
    file.sync_all()
        .map_err(|e| Error::io("fsync segment", &path, e))?;
    Ok(Recovered {
        file,
        len,
        frames,
        created_unix_ms,
        cut,
    })
}

fn disk_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and recovers it: removes
    /// temp files, finishes interrupted sealing, truncates a torn tail, skips,
    /// counts and quarantines corrupt frames of the active segment, and moves
    /// checkpoints that point past the data back to its end.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<Spool> {
        Spool::open_with_io(dir, config, Arc::new(StdIo))
    }

    /// `open`, with the append path's writes and syncs going through `io`
    /// (tests use it to fail or tear them).
    pub fn open_with_io(
        dir: impl AsRef<Path>,
        config: Config,
        io: Arc<dyn SpoolIo>,
    ) -> Result<Spool> {
        config.validate()?;
        let layout = Layout::new(dir.as_ref());
        layout.create_dirs(&*io)?;
        let lock = lock_dir(&layout)?;
        files::remove_temp_files(&layout.segments)?;
        // Readers' temp files are their own: a reader in another process (a
        // shipper started beside the collector) may be writing its checkpoint
        // right now, and deleting its temp file would fail that rename.
        // Each reader clears its own leftover when it attaches.
        files::remove_temp_files(&layout.quarantine)?;
        let counters = Counters::default();
        let Found {
            mut catalog,
            active,
            last_seq,
        } = recover_segments(&*io, &layout, &counters)?;
        // Read before keep_active clamps checkpoints: a new segment goes
        // after every position any reader has seen.
        let ckpt_max = newest_checkpoint_segment(&layout)?;
        let active = match keep_active(&*io, &layout, active, last_seq, &mut catalog, &counters)? {
            Some(a) => a,
            None => new_active(&*io, &layout, last_seq.max(ckpt_max), &mut catalog)?,
        };
        let seq = *catalog
            .keys()
            .next_back()
            .expect("catalog holds the active segment");
        let end = Position::new(seq, active.len);

        let shared = Arc::new(Shared::default());
        shared.publish_durable(end);
        let disk_bytes = catalog.values().map(|m| m.disk_len).sum();
        let inner = Arc::new(Inner {
            layout,
            config,
            io,
            writer: Mutex::new(Writer {
                file: Arc::new(active.file),
                seq,
                len: active.len,
                created_unix_ms: active.created_unix_ms,
                frames: active.frames,
                buf: Vec::new(),
                catalog,
                disk_bytes,
                poisoned: false,
            }),
            shared,
            counters,
            seal_lock: Mutex::new(()),
            bg: Mutex::new((false, true)),
            bg_cv: Condvar::new(),
            _lock: lock,
        });
        let threads = spawn_background(&inner)?;
        Ok(Spool { inner, threads })
    }

    /// Appends a batch of frames and returns their positions once the
    /// durability policy's promise holds. A batch never spans segments. On
    /// error nothing of the batch is acknowledged (`Full`: nothing written).
    pub fn append<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<Position>> {
        self.inner.append(payloads)
    }

    /// Writes a batch without waiting for it to become durable, so one caller
    /// can keep several batches in flight (a pipelined collector writes the
    /// next batch while the previous one syncs). Nothing is acknowledged
    /// until `wait_durable` returns; under `Always` and `Group` that wait
    /// joins the group commit, so one fdatasync may cover several batches.
    pub fn append_deferred<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<PendingAppend> {
        let (positions, end) = self.inner.write_batch(payloads)?;
        Ok(PendingAppend { positions, end })
    }

    /// Waits until a deferred append is as durable as the policy promises
    /// and returns its positions.
    pub fn wait_durable(&self, pending: PendingAppend) -> Result<Vec<Position>> {
        match self.inner.config.durability {
            Durability::Always | Durability::Group => self.inner.sync_to(pending.end)?,
            Durability::Interval { .. } => {}
        }
        Ok(pending.positions)
    }

    /// Opens the named reader, sharing this spool's durable watermark: it sees
    /// a frame only once the frame is durable.
    pub fn reader(&self, name: &str) -> Result<Reader> {
        Reader::attach(
            &self.inner.layout.root,
            name,
            Some(self.inner.shared.clone()),
            self.inner.io.clone(),
        )
    }

    /// Syncs everything appended so far (useful with `Interval` before a
    /// planned shutdown).
    pub fn flush(&self) -> Result<()> {
        let target = {
            let w = self.inner.lock_writer();
            Position::new(w.seq, w.len)
        };
        self.inner.sync_to(target)
    }

    /// Seals the active segment now if it holds any frame.
    pub fn rotate(&self) -> Result<()> {
        let mut w = self.inner.lock_writer();
        if w.poisoned {
            return Err(Error::Poisoned);
        }
        if w.frames > 0 {
            self.inner.rotate_locked(&mut w)?;
        }
        Ok(())
    }

    /// Compresses every sealed, uncompressed segment now; returns how many.
    /// The background sealer does the same on its own.
    pub fn seal_pending(&self) -> Result<usize> {
        self.inner.seal_pending()
    }

    /// Deletes sealed segments that every reader has committed past; returns
    /// how many. With no reader registered nothing is deleted: unshipped data
    /// is never dropped.
    pub fn retain(&self) -> Result<usize> {
        let mut w = self.inner.lock_writer();
        self.inner.retain_locked(&mut w)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.layout.root
    }

    /// Position up to which everything is durable.
    pub fn durable(&self) -> Position {
        self.inner.shared.durable()
    }

    /// Counters and gauges, including each reader's lag.
    pub fn stats(&self) -> Result<SpoolStats> {
        let c = &self.inner.counters;
        let (segments, bytes_on_disk, lens, active) = {
            let w = self.inner.lock_writer();
            let lens: Vec<(u64, u64)> = w.catalog.iter().map(|(s, m)| (*s, m.raw_len)).collect();
            (w.catalog.len() as u64, w.disk_bytes, lens, w.seq)
        };
        let durable = self.durable();
        let readers = list_readers(&self.inner.layout)?
            .into_iter()
            .map(|(name, ck)| {
                let committed = match ck {
                    CheckpointRead::At(p) => Some(p),
                    _ => None,
                };
                let from = committed.unwrap_or_default();
                let lag_bytes = lens
                    .iter()
                    .filter(|(s, _)| *s >= from.segment && *s <= durable.segment)
                    .map(|(s, l)| {
                        let end = if *s == durable.segment {
                            durable.offset
                        } else {
                            *l
                        };
                        let start = if *s == from.segment {
                            from.offset
                        } else {
                            SEGMENT_HEADER_LEN as u64
                        };
                        end.saturating_sub(start)
                    })
                    .sum();
                ReaderLag {
                    name,
                    committed,
                    lag_bytes,
                    lag_segments: active.saturating_sub(from.segment),
                }
            })
            .collect();
        Ok(SpoolStats {
            appends: c.appends.load(Relaxed),
            appended_frames: c.appended_frames.load(Relaxed),
            appended_bytes: c.appended_bytes.load(Relaxed),
            fsyncs: c.fsyncs.load(Relaxed),
            fsync_latency_buckets: c.fsync_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            fsync_latency_sum_us: c.fsync_sum_us.load(Relaxed),
            corrupt_regions: c.corrupt_regions.load(Relaxed),
            corrupt_bytes: c.corrupt_bytes.load(Relaxed),
            quarantined_bytes: c.quarantined_bytes.load(Relaxed),
            torn_tail_bytes: c.torn_tail_bytes.load(Relaxed),
            stale_checkpoints: c.stale_checkpoints.load(Relaxed),
            full_rejections: c.full_rejections.load(Relaxed),
            segments_rotated: c.segments_rotated.load(Relaxed),
            segments_compressed: c.segments_compressed.load(Relaxed),
            segments_deleted: c.segments_deleted.load(Relaxed),
            segments,
            bytes_on_disk,
            durable,
            readers,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        {
            let mut bg = self.inner.bg.lock().expect("bg mutex poisoned");
            bg.0 = true;
        }
        self.inner.bg_cv.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Best effort: an Interval spool closed cleanly loses nothing.
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "final spool sync failed");
        }
    }
}
/// The segments found in the spool's folder, each recovered: its catalog
/// entry, the newest active segment (the one appends continue), and the
/// newest sequence number. An older active segment is sealed, as rotation
/// would have; a segment both sealed and compressed (a crash between the
/// rename and the delete) keeps its raw copy.
fn recover_segments(io: &dyn SpoolIo, layout: &Layout, counters: &Counters) -> Result<Found> {
    let listed = list_segments(&layout.segments)?;
    let last_seq = listed.keys().next_back().copied();
    let mut catalog = BTreeMap::new();
    let mut active: Option<Recovered> = None;
    for (&seq, states) in &listed {
        if states.contains(&SegmentState::Sealed) && states.contains(&SegmentState::Compressed) {
            // Interrupted between renaming the compressed copy in and
            // deleting the raw one: both are complete; keep the raw
            // one, which sealing will compress again.
            let p = layout.segment(seq, SegmentState::Compressed);
            fs::remove_file(&p).map_err(|e| Error::io("remove duplicate", &p, e))?;
            fsync_dir(io, &layout.segments)?;
        }
        let state = if states.contains(&SegmentState::Active) {
            SegmentState::Active
        } else if states.contains(&SegmentState::Sealed) {
            SegmentState::Sealed
        } else {
            SegmentState::Compressed
        };
        let path = layout.segment(seq, state);
        let meta = match state {
            SegmentState::Active => {
                let r = recover_active(io, layout, seq, counters)?;
                let meta = SegMeta {
                    state,
                    raw_len: r.len,
                    disk_len: r.len,
                };
                if Some(seq) == last_seq {
                    active = Some(r);
                    meta
                } else {
                    // Only the newest segment may stay active; an older
                    // active one is sealed as rotation would have.
                    let sealed = layout.segment(seq, SegmentState::Sealed);
                    io.rename(&path, &sealed)
                        .map_err(|e| Error::io("seal", &path, e))?;
                    fsync_dir(io, &layout.segments)?;
                    SegMeta {
                        state: SegmentState::Sealed,
                        ..meta
                    }
                }
            }
            SegmentState::Sealed => {
                let l = disk_len(&path);
                SegMeta {
                    state,
                    raw_len: l,
                    disk_len: l,
                }
            }
            SegmentState::Compressed => SegMeta {
                state,
                raw_len: compressed_content_size(&path).unwrap_or(0),
                disk_len: disk_len(&path),
            },
        };
        catalog.insert(seq, meta);
    }
    Ok(Found {
        catalog,
        active,
        last_seq,
    })
}

/// What [`recover_segments`] found.
struct Found {
    catalog: BTreeMap<u64, SegMeta>,
    active: Option<Recovered>,
    last_seq: Option<u64>,
}

/// The recovered active segment if appends may continue in it, or `None`
/// after sealing it. Positions are identities downstream (deduplication by
/// position), so none may be handed out twice. Appending after a cut tail,
/// or below a checkpoint that read further than what survived, could reuse
/// a position some reader already saw: start a new segment instead.
fn keep_active(
    io: &dyn SpoolIo,
    layout: &Layout,
    recovered: Option<Recovered>,
    last_seq: Option<u64>,
    catalog: &mut BTreeMap<u64, SegMeta>,
    counters: &Counters,
) -> Result<Option<Recovered>> {
    let Some(r) = recovered else {
        return Ok(None);
    };
    let seq = last_seq.expect("an active segment was found");
    let end = Position::new(seq, r.len);
    let clamped = clamp_checkpoints(io, layout, end, counters)?;
    if !r.cut && clamped == 0 {
        return Ok(Some(r));
    }
    tracing::warn!(
        segment = seq,
        "recovery cut data; sealing the segment so no position is reused"
    );
    let path = layout.segment(seq, SegmentState::Active);
    r.file
        .sync_all()
        .map_err(|e| Error::io("fsync segment", &path, e))?;
    let sealed = layout.segment(seq, SegmentState::Sealed);
    io.rename(&path, &sealed)
        .map_err(|e| Error::io("seal", &path, e))?;
    fsync_dir(io, &layout.segments)?;
    if let Some(m) = catalog.get_mut(&seq) {
        m.state = SegmentState::Sealed;
    }
    Ok(None)
}

/// The newest segment a reader's checkpoint names, if any.
fn newest_checkpoint_segment(layout: &Layout) -> Result<Option<u64>> {
    Ok(list_readers(layout)?
        .iter()
        .filter_map(|(_, ck)| match ck {
            CheckpointRead::At(p) => Some(p.segment),
            _ => None,
        })
        .max())
}

/// A new, empty active segment after `after` (the newest segment, or the
/// newest a checkpoint names: no position is handed out twice).
fn new_active(
    io: &dyn SpoolIo,
    layout: &Layout,
    after: Option<u64>,
    catalog: &mut BTreeMap<u64, SegMeta>,
) -> Result<Recovered> {
    let seq = after.map_or(1, |s| s + 1);
    let (file, created) = create_segment(io, layout, seq)?;
    catalog.insert(
        seq,
        SegMeta {
            state: SegmentState::Active,
            raw_len: SEGMENT_HEADER_LEN as u64,
            disk_len: SEGMENT_HEADER_LEN as u64,
        },
    );
    Ok(Recovered {
        file,
        len: SEGMENT_HEADER_LEN as u64,
        frames: 0,
        created_unix_ms: created,
        cut: false,
    })
}

/// The background threads the config asks for: the sealer (compression
/// off the append path) and the housekeeper (interval fsyncs, age rotation).
fn spawn_background(inner: &Arc<Inner>) -> Result<Vec<JoinHandle<()>>> {
    let spawn = |name: &str, op: &'static str, body: fn(&Inner)| {
        let i = inner.clone();
        std::thread::Builder::new()
            .name(format!("spool-{name}"))
            .spawn(move || body(&i))
            .map_err(|e| Error::io(op, &inner.layout.root, e))
    };
    let mut threads = Vec::new();
    if inner.config.background_seal && inner.config.compression != Compression::Off {
        threads.push(spawn(
            "sealer",
            "spawn sealer thread for",
            Inner::sealer_loop,
        )?);
    }
    if matches!(inner.config.durability, Durability::Interval { .. })
        || inner.config.segment_age_ms > 0
    {
        threads.push(spawn(
            "housekeeper",
            "spawn housekeeper thread for",
            Inner::housekeeper_loop,
        )?);
    }
    Ok(threads)
}

/// Moves checkpoints that point past the recovered end back to it: data they
/// claim was read is gone (torn before it was durable), and a reader left
/// ahead would skip the frames appended next silently. Returns how many moved.
fn clamp_checkpoints(
    io: &dyn SpoolIo,
    layout: &Layout,
    end: Position,
    counters: &Counters,
) -> Result<usize> {
    let mut n = 0;
    for (name, ck) in list_readers(layout)? {
        if let CheckpointRead::At(p) = ck {
            if p > end {
                tracing::warn!(reader = %name, checkpoint = %p, end = %end, "checkpoint past the end of the spool; moving it back");
                counters.stale_checkpoints.fetch_add(1, Relaxed);
                write_checkpoint(io, layout, &name, end)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

impl Inner {
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().expect("writer mutex poisoned")
    }

    fn timed_sync(&self, file: &File) -> io::Result<()> {
        let t = Instant::now();
        let r = self.io.sync_data(file);
        self.counters.record_fsync(t.elapsed());
        r
    }

    fn poison(&self, w: &mut Writer) {
        w.poisoned = true;
        self.shared
            .sync
            .lock()
            .expect("sync mutex poisoned")
            .poisoned = true;
        self.shared.sync_cv.notify_all();
    }

    fn append<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<Vec<Position>> {
        if let Durability::Always = self.config.durability {
            return self.write_batch_then(payloads, true).map(|(p, _)| p);
        }
        let (positions, end) = self.write_batch(payloads)?;
        if let Durability::Group = self.config.durability {
            self.sync_to(end)?;
        }
        Ok(positions)
    }

    /// Writes a batch; returns its positions and the end it must be durable
    /// up to.
    fn write_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(Vec<Position>, Position)> {
        self.write_batch_then(payloads, false)
    }

    /// Writes a batch and, with `sync_now`, fdatasyncs it under the writer
    /// lock (the `Always` policy: one sync per append, no sharing). When the
    /// disk is full, retention runs and the batch is tried once more: the
    /// quota alone triggers retention, and a disk smaller than the quota
    /// would otherwise stay full of segments every reader is done with.
    fn write_batch_then<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        sync_now: bool,
    ) -> Result<(Vec<Position>, Position)> {
        match self.write_batch_once(payloads, sync_now) {
            Err(e) if e.is_disk_full() => {
                let freed = {
                    let mut w = self.lock_writer();
                    self.retain_locked(&mut w)?
                };
                if freed == 0 {
                    return Err(e);
                }
                self.write_batch_once(payloads, sync_now)
            }
            other => other,
        }
    }

    fn write_batch_once<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        sync_now: bool,
    ) -> Result<(Vec<Position>, Position)> {
        if payloads.is_empty() {
            let w = self.lock_writer();
            return Ok((Vec::new(), Position::new(w.seq, SEGMENT_HEADER_LEN as u64)));
        }
        let mut total = 0u64;
        for p in payloads {
            let len = p.as_ref().len();
            if len > FRAME_PAYLOAD_MAX {
                return Err(Error::FrameTooLarge {
                    len,
                    max: FRAME_PAYLOAD_MAX,
                });
            }
            total += frame_len(len) as u64;
        }
        if total + SEGMENT_HEADER_LEN as u64 > SEGMENT_BYTES_MAX {
            return Err(Error::BatchTooLarge {
                len: total,
                max: SEGMENT_BYTES_MAX - SEGMENT_HEADER_LEN as u64,
            });
        }
        let mut w = self.lock_writer();
        if w.poisoned {
            return Err(Error::Poisoned);
        }
        let aged = self.config.segment_age_ms > 0
            && now_unix_ms().saturating_sub(w.created_unix_ms) >= self.config.segment_age_ms;
        let rotate = w.frames > 0 && (w.len + total > self.config.segment_bytes || aged);
        let needed = total + if rotate { SEGMENT_HEADER_LEN as u64 } else { 0 };
        if w.disk_bytes + needed > self.config.quota_bytes {
            self.retain_locked(&mut w)?;
            if w.disk_bytes + needed > self.config.quota_bytes {
                self.counters.full_rejections.fetch_add(1, Relaxed);
                return Err(Error::Full {
                    quota_bytes: self.config.quota_bytes,
                    used_bytes: w.disk_bytes,
                    needed_bytes: needed,
                });
            }
        }
        if rotate {
            self.rotate_locked(&mut w)?;
        }
        let mut buf = std::mem::take(&mut w.buf);
        buf.clear();
        let mut positions = Vec::with_capacity(payloads.len());
        for p in payloads {
            positions.push(Position::new(w.seq, w.len + buf.len() as u64));
            encode_frame(&mut buf, p.as_ref());
        }
        debug_assert_eq!(buf.len() as u64, total);
        let at = w.len;
        if let Err(e) = self.io.write_at(&w.file, &buf, at) {
            // Undo a partial write so the next append does not land behind
            // garbage; if even that fails, stop until recovery.
            if w.file.set_len(at).is_err() {
                self.poison(&mut w);
            }
            w.buf = buf;
            return Err(Error::io(
                "append to",
                self.layout.segment(w.seq, SegmentState::Active),
                e,
            ));
        }
        w.buf = buf;
        w.len += total;
        w.frames += payloads.len() as u64;
        w.disk_bytes += total;
        let seq = w.seq;
        let len = w.len;
        if let Some(m) = w.catalog.get_mut(&seq) {
            m.raw_len = len;
            m.disk_len = len;
        }
        self.counters.appends.fetch_add(1, Relaxed);
        self.counters
            .appended_frames
            .fetch_add(payloads.len() as u64, Relaxed);
        self.counters.appended_bytes.fetch_add(total, Relaxed);
        let target = Position::new(seq, len);
        if sync_now {
            if let Err(e) = self.timed_sync(&w.file) {
                self.poison(&mut w);
                return Err(Error::io(
                    "fsync",
                    self.layout.segment(seq, SegmentState::Active),
                    e,
                ));
            }
            drop(w);
            self.shared.publish_durable(target);
        }
        Ok((positions, target))
    }

    /// Group commit: returns once `target` is durable. One caller at a time
    /// runs fdatasync; whoever arrives meanwhile waits for that sync or the
    /// next, which covers every write made before it started.
    fn sync_to(&self, target: Position) -> Result<()> {
        let mut st = self.shared.sync.lock().expect("sync mutex poisoned");
        // Bounded: each pass either returns, or waits for a sync that
        // finishes, or runs one; a sync covers every write before it, so
        // `target` is reached within two syncs.
        loop {
            if st.durable >= target {
                return Ok(());
            }
            if st.poisoned {
                return Err(Error::Poisoned);
            }
            if st.syncing {
                st = self.shared.sync_cv.wait(st).expect("sync mutex poisoned");
                continue;
            }
            st.syncing = true;
            drop(st);
            let (file, upto) = {
                let w = self.lock_writer();
                (w.file.clone(), Position::new(w.seq, w.len))
            };
            let res = self.timed_sync(&file);
            st = self.shared.sync.lock().expect("sync mutex poisoned");
            st.syncing = false;
            if let Err(e) = res {
                st.poisoned = true;
                drop(st);
                self.shared.sync_cv.notify_all();
                let mut w = self.lock_writer();
                self.poison(&mut w);
                return Err(Error::io(
                    "fsync",
                    self.layout.segment(upto.segment, SegmentState::Active),
                    e,
                ));
            }
            if upto > st.durable {
                st.durable = upto;
            }
            self.shared.sync_cv.notify_all();
            self.shared.signal.notify();
        }
    }

    /// Seals the active segment and starts the next. The old one is synced
    /// before it is renamed, so a sealed segment is always complete.
    fn rotate_locked(&self, w: &mut Writer) -> Result<()> {
        let old = self.layout.segment(w.seq, SegmentState::Active);
        if let Err(e) = self.timed_sync(&w.file) {
            self.poison(w);
            return Err(Error::io("fsync", &old, e));
        }
        self.shared.publish_durable(Position::new(w.seq, w.len));
        // The next segment first: if the disk is full it cannot be created,
        // and the current one stays active, intact, for the next try. A
        // crash between the two steps leaves two active segments, which
        // recovery resolves by sealing the older.
        let seq = w.seq + 1;
        let (file, created) = match create_segment(&*self.io, &self.layout, seq) {
            Ok(x) => x,
            Err(e) => {
                let _ = fs::remove_file(self.layout.segment(seq, SegmentState::Active));
                if !e.is_disk_full() {
                    self.poison(w);
                }
                return Err(e);
            }
        };
        let sealed = self.layout.segment(w.seq, SegmentState::Sealed);
        let step = self
            .io
            .rename(&old, &sealed)
            .map_err(|e| Error::io("seal", &old, e))
            .and_then(|_| fsync_dir(&*self.io, &self.layout.segments));
        if let Err(e) = step {
            self.poison(w);
            return Err(e);
        }
        if let Some(m) = w.catalog.get_mut(&w.seq) {
            m.state = SegmentState::Sealed;
        }
        w.file = Arc::new(file);
        w.seq = seq;
        w.len = SEGMENT_HEADER_LEN as u64;
        w.frames = 0;
        w.created_unix_ms = created;
        w.disk_bytes += SEGMENT_HEADER_LEN as u64;
        w.catalog.insert(
            seq,
            SegMeta {
                state: SegmentState::Active,
                raw_len: SEGMENT_HEADER_LEN as u64,
                disk_len: SEGMENT_HEADER_LEN as u64,
            },
        );
        self.counters.segments_rotated.fetch_add(1, Relaxed);
        self.bg.lock().expect("bg mutex poisoned").1 = true;
        self.bg_cv.notify_all();
        self.shared.signal.notify();
        Ok(())
    }

    fn retain_locked(&self, w: &mut Writer) -> Result<usize> {
        let readers = list_readers(&self.layout)?;
        if readers.is_empty() {
            return Ok(0);
        }
        // A corrupt checkpoint counts as "read nothing": keep everything.
        let min = readers
            .iter()
            .map(|(_, ck)| match ck {
                CheckpointRead::At(p) => p.segment,
                _ => 0,
            })
            .min()
            .unwrap_or(0);
        let doomed: Vec<u64> = w
            .catalog
            .range(..min)
            .filter(|(s, m)| **s != w.seq && m.state != SegmentState::Active)
            .map(|(s, _)| *s)
            .collect();
        for seq in &doomed {
            for state in [SegmentState::Sealed, SegmentState::Compressed] {
                let p = self.layout.segment(*seq, state);
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("delete retained segment", &p, e)),
                }
            }
            if let Some(m) = w.catalog.remove(seq) {
                w.disk_bytes -= m.disk_len;
            }
            self.counters.segments_deleted.fetch_add(1, Relaxed);
        }
        if !doomed.is_empty() {
            fsync_dir(&*self.io, &self.layout.segments)?;
            tracing::info!(
                segments = doomed.len(),
                below = min,
                "retention deleted shipped segments"
            );
        }
        Ok(doomed.len())
    }

    fn seal_pending(&self) -> Result<usize> {
        let Compression::Zstd { level } = self.config.compression else {
            return Ok(0);
        };
        let _g = self.seal_lock.lock().expect("seal mutex poisoned");
        let pending: Vec<u64> = {
            let w = self.lock_writer();
            w.catalog
                .iter()
                .filter(|(_, m)| m.state == SegmentState::Sealed)
                .map(|(s, _)| *s)
                .collect()
        };
        let mut n = 0;
        for seq in pending {
            // Closing the spool does not wait for a backlog of compressions;
            // the next open picks them up.
            if self.bg.lock().expect("bg mutex poisoned").0 {
                break;
            }
            if self.compress(seq, level)? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Compresses one sealed segment. Order matters: the compressed copy is
    /// complete and durable under its final name before the raw one goes, so
    /// there is no moment without a complete copy. Returns false if retention
    /// deleted the segment meanwhile.
    fn compress(&self, seq: u64, level: i32) -> Result<bool> {
        let raw = self.layout.segment(seq, SegmentState::Sealed);
        let tmp = self.layout.segment_tmp(seq);
        let fin = self.layout.segment(seq, SegmentState::Compressed);
        let build = || -> io::Result<u64> {
            let mut src = File::open(&raw)?;
            let raw_len = src.metadata()?.len();
            // Streamed to the temp file through the seam (a segment may be
            // large: it is never held whole in memory).
            let out = SeamWriter::new(&*self.io, File::create(&tmp)?);
            let mut enc = zstd::stream::write::Encoder::new(out, level)?;
            enc.include_checksum(true)?;
            enc.include_contentsize(true)?;
            enc.set_pledged_src_size(Some(raw_len))?;
            let mut hasher = crc32fast::Hasher::new();
            let mut chunk = vec![0u8; 1 << 20];
            loop {
                let n = src.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                hasher.update(&chunk[..n]);
                enc.write_all(&chunk[..n])?;
            }
            drop(enc.finish()?.sync()?);
            // Read the copy back before trusting it with the only copy.
            let back = files::read_compressed(&tmp)?;
            if back.damage.is_some()
                || back.data.len() as u64 != raw_len
                || crc32fast::hash(&back.data) != hasher.finalize()
            {
                return Err(io::Error::other(
                    "compressed copy does not read back identical",
                ));
            }
            Ok(raw_len)
        };
        let raw_len = match build() {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                if e.kind() == io::ErrorKind::NotFound {
                    return Ok(false);
                }
                return Err(Error::io("compress segment", &raw, e));
            }
        };
        let mut w = self.lock_writer();
        if w.catalog.get(&seq).map(|m| m.state) != Some(SegmentState::Sealed) {
            let _ = fs::remove_file(&tmp);
            return Ok(false);
        }
        self.io
            .rename(&tmp, &fin)
            .map_err(|e| Error::io("rename compressed segment", &tmp, e))?;
        fsync_dir(&*self.io, &self.layout.segments)?;
        fs::remove_file(&raw).map_err(|e| Error::io("remove raw sealed segment", &raw, e))?;
        fsync_dir(&*self.io, &self.layout.segments)?;
        let zlen = disk_len(&fin);
        let w = &mut *w;
        if let Some(m) = w.catalog.get_mut(&seq) {
            w.disk_bytes = w.disk_bytes - m.disk_len + zlen;
            *m = SegMeta {
                state: SegmentState::Compressed,
                raw_len,
                disk_len: zlen,
            };
        }
        self.counters.segments_compressed.fetch_add(1, Relaxed);
        Ok(true)
    }

    fn sealer_loop(&self) {
        // Retry a failed compression at this pace rather than spin on it.
        const RETRY: Duration = Duration::from_secs(10);
        loop {
            {
                let mut bg = self.bg.lock().expect("bg mutex poisoned");
                if !bg.0 && !bg.1 {
                    bg = self
                        .bg_cv
                        .wait_timeout(bg, RETRY)
                        .expect("bg mutex poisoned")
                        .0;
                }
                if bg.0 {
                    return;
                }
                bg.1 = false;
            }
            if let Err(e) = self.seal_pending() {
                tracing::error!(error = %e, code = e.code(), "sealing failed; will retry");
            }
        }
    }

    fn housekeeper_loop(&self) {
        let tick = match self.config.durability {
            Durability::Interval { interval_ms } => Duration::from_millis(interval_ms),
            _ => Duration::from_millis((self.config.segment_age_ms / 4).clamp(10, 1000)),
        };
        loop {
            {
                let bg = self.bg.lock().expect("bg mutex poisoned");
                let (bg, _) = self
                    .bg_cv
                    .wait_timeout_while(bg, tick, |b| !b.0)
                    .expect("bg mutex poisoned");
                if bg.0 {
                    return;
                }
            }
            if let Durability::Interval { .. } = self.config.durability {
                let target = {
                    let w = self.lock_writer();
                    Position::new(w.seq, w.len)
                };
                if let Err(e) = self.sync_to(target) {
                    tracing::error!(error = %e, code = e.code(), "interval sync failed");
                }
            }
            if self.config.segment_age_ms > 0 {
                let mut w = self.lock_writer();
                let aged =
                    now_unix_ms().saturating_sub(w.created_unix_ms) >= self.config.segment_age_ms;
                if aged && w.frames > 0 && !w.poisoned {
                    if let Err(e) = self.rotate_locked(&mut w) {
                        tracing::error!(error = %e, code = e.code(), "age rotation failed");
                    }
                }
            }
        }
    }
}
