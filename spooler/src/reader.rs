//! Named readers: read from a durable checkpoint, skip (and report) damage,
//! wait for new data without polling, commit durably.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::event::ModifyKind;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::error::{Error, Result};
use crate::fileio::{SpoolIo, StdIo};
use crate::files::{
    self, list_segments, quarantine, read_checkpoint, validate_reader_name, write_checkpoint,
    CheckpointRead, Layout, SegmentState,
};
use crate::format::{Position, Scanned, Scanner, SegmentHeader, SEGMENT_HEADER_LEN};
use crate::stats::ReaderStats;
use crate::watermark::{Shared, Signal};

/// Most segments one `next` call moves through before returning, so a call
/// over a long run of empty or damaged segments stays bounded.
const SEGMENT_HOPS_MAX: usize = 64;

/// One frame handed to a reader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts.
    pub position: Position,
    /// Where the next frame starts: commit this to mark the frame done.
    pub next: Position,
    /// The payload, exactly as appended.
    pub payload: Vec<u8>,
}

/// A segment in memory: sealed ones whole, the active one as far as read.
struct Loaded {
    seq: u64,
    data: Vec<u8>,
    /// Open while the segment is active, to read what gets appended.
    file: Option<File>,
    sealed: bool,
}

/// A named consumer of the spool with a durable checkpoint.
///
/// Obtain one from `Spool::reader` (same process: sees frames once durable,
/// woken by the writer) or `Reader::open` (another process: sees what the
/// kernel shows, woken by file-system notifications). Both read sealed and
/// active segments alike.
pub struct Reader {
    name: String,
    layout: Layout,
    /// Checkpoint writes and quarantine copies go through it.
    io: Arc<dyn SpoolIo>,
    shared: Option<Arc<Shared>>,
    signal: Arc<Signal>,
    _watcher: Option<RecommendedWatcher>,
    committed: Position,
    cursor: Position,
    seg: Option<Loaded>,
    stats: ReaderStats,
    /// Where in the active segment this reader met bytes it could not take
    /// yet (an incomplete frame, or a first bad checksum), and how often it
    /// met a bad checksum there. Without the writer's durable watermark a
    /// reader in another process can see an append the writer then cuts off
    /// (a full disk) and writes again differently: the bytes from here on
    /// are read afresh, never from the cache, and a bad checksum counts as
    /// damage only when it is still there after that.
    recheck: Option<(Position, u32)>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("name", &self.name)
            .field("committed", &self.committed)
            .field("cursor", &self.cursor)
            .finish()
    }
}

impl Reader {
    /// True once a writer has created the spool at `dir` (its directories
    /// exist), so a reader in another process can open it.
    pub fn spool_exists(dir: impl AsRef<Path>) -> bool {
        Layout::new(dir.as_ref()).exists()
    }

    /// Opens the named reader on a spool another process writes. New data is
    /// signalled by inotify on the segment directory. Without the writer's
    /// durable watermark it may see frames written but not yet synced (only
    /// possible with the `Interval` policy).
    pub fn open(dir: impl AsRef<Path>, name: &str) -> Result<Reader> {
        Reader::attach(dir.as_ref(), name, None, Arc::new(StdIo))
    }

    pub(crate) fn attach(
        dir: &Path,
        name: &str,
        shared: Option<Arc<Shared>>,
        io: Arc<dyn SpoolIo>,
    ) -> Result<Reader> {
        validate_reader_name(name)?;
        let layout = Layout::new(dir);
        if !layout.segments.is_dir() {
            return Err(Error::io(
                "open spool directory",
                &layout.segments,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a spool: no segments directory",
                ),
            ));
        }
        // A leftover of this reader's own interrupted checkpoint write.
        let tmp = layout.checkpoint_tmp(name);
        match std::fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove temp file", &tmp, e)),
        }
        let mut stats = ReaderStats::default();
        let ck = read_checkpoint(&layout.checkpoint(name))?;
        let start = match ck {
            CheckpointRead::At(p) => p,
            CheckpointRead::Missing | CheckpointRead::Corrupt => {
                if ck == CheckpointRead::Corrupt {
                    // At-least-once: re-reading beats skipping; duplicates
                    // are absorbed downstream by position.
                    tracing::error!(
                        reader = name,
                        "corrupt checkpoint; restarting from the oldest segment"
                    );
                    stats.corrupt_checkpoints += 1;
                }
                let first = list_segments(&layout.segments)?.keys().next().copied();
                let p = first.map_or(Position::default(), |s| {
                    Position::new(s, SEGMENT_HEADER_LEN as u64)
                });
                write_checkpoint(&*io, &layout, name, p)?;
                p
            }
        };
        let (signal, watcher) = match &shared {
            Some(_) => (Arc::new(Signal::default()), None),
            None => {
                let signal = Arc::new(Signal::default());
                let s = signal.clone();
                let mut w =
                    notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                        // Only changes wake readers: access events (our own reads
                        // open the directory and files) would turn waiting into
                        // a busy loop.
                        let wake = match res {
                            Ok(ev) => matches!(
                                ev.kind,
                                EventKind::Create(_)
                                    | EventKind::Remove(_)
                                    | EventKind::Modify(ModifyKind::Data(_))
                                    | EventKind::Modify(ModifyKind::Name(_))
                                    | EventKind::Modify(ModifyKind::Any)
                                    | EventKind::Any
                            ),
                            Err(_) => true,
                        };
                        if wake {
                            s.notify();
                        }
                    })
                    .map_err(|e| {
                        Error::io("watch", &layout.segments, io::Error::other(e.to_string()))
                    })?;
                w.watch(&layout.segments, RecursiveMode::NonRecursive)
                    .map_err(|e| {
                        Error::io("watch", &layout.segments, io::Error::other(e.to_string()))
                    })?;
                (signal, Some(w))
            }
        };
        let mut r = Reader {
            name: name.to_string(),
            layout,
            io,
            shared,
            signal,
            _watcher: watcher,
            committed: start,
            cursor: start,
            seg: None,
            stats,
            recheck: None,
        };
        r.clamp_past_last_segment()?;
        Ok(r)
    }

    /// The reader's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The durable checkpoint: where reading resumes after a restart.
    pub fn committed(&self) -> Position {
        self.committed
    }

    /// Where the next `next` call starts.
    pub fn position(&self) -> Position {
        self.cursor
    }

    /// What this reader skipped and read.
    pub fn stats(&self) -> &ReaderStats {
        &self.stats
    }

    /// A checkpoint in a segment beyond the newest one is stale (the data it
    /// claims was read is gone); move it to the end of the newest segment.
    fn clamp_past_last_segment(&mut self) -> Result<()> {
        let segs = list_segments(&self.layout.segments)?;
        let Some((&last, _)) = segs.iter().next_back() else {
            return Ok(());
        };
        if self.cursor.segment <= last {
            return Ok(());
        }
        let end = match self.load(last)? {
            Some(l) => valid_end(&l.data),
            None => SEGMENT_HEADER_LEN as u64,
        };
        self.mark_stale(Position::new(last, end))
    }

    fn mark_stale(&mut self, to: Position) -> Result<()> {
        tracing::warn!(reader = %self.name, checkpoint = %self.cursor, moved_to = %to, "checkpoint past the end of the data; moving it back");
        self.stats.stale_checkpoints += 1;
        self.cursor = to;
        self.committed = to;
        write_checkpoint(&*self.io, &self.layout, &self.name, to)
    }

    /// Finds segment `seq` in whichever lifecycle stage it is. The file can
    /// move on (active → sealed → compressed) while we look, so look in that
    /// order, a bounded number of times.
    fn load(&mut self, seq: u64) -> Result<Option<Loaded>> {
        for _ in 0..3 {
            let active = self.layout.segment(seq, SegmentState::Active);
            match File::open(&active) {
                Ok(mut f) => {
                    let mut data = Vec::new();
                    Read::by_ref(&mut f)
                        .take(crate::format::SEGMENT_BYTES_MAX + 1)
                        .read_to_end(&mut data)
                        .map_err(|e| Error::io("read segment", &active, e))?;
                    return Ok(Some(Loaded {
                        seq,
                        data,
                        file: Some(f),
                        sealed: false,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("open segment", &active, e)),
            }
            let sealed = self.layout.segment(seq, SegmentState::Sealed);
            match files::read_raw(&sealed) {
                Ok(data) => {
                    return Ok(Some(Loaded {
                        seq,
                        data,
                        file: None,
                        sealed: true,
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("read segment", &sealed, e)),
            }
            let comp = self.layout.segment(seq, SegmentState::Compressed);
            match files::read_compressed(&comp) {
                Ok(sb) => {
                    if let Some(reason) = sb.damage {
                        // Frames decoded before the damage are still served;
                        // the whole compressed file is kept aside.
                        tracing::error!(segment = seq, %reason, "damaged compressed segment");
                        let whole = std::fs::read(&comp).unwrap_or_default();
                        self.stats.corrupt_regions += 1;
                        self.stats.corrupt_bytes += whole.len() as u64;
                        self.stats.quarantined_bytes +=
                            quarantine(&*self.io, &self.layout, seq, u64::MAX, &whole)?;
                    }
                    return Ok(Some(Loaded {
                        seq,
                        data: sb.data,
                        file: None,
                        sealed: true,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("read segment", &comp, e)),
            }
        }
        Ok(None)
    }

    fn refresh_active(&mut self) -> Result<()> {
        let Some(l) = self.seg.as_mut() else {
            return Ok(());
        };
        if l.sealed {
            return Ok(());
        }
        let path = self.layout.segment(l.seq, SegmentState::Active);
        // Bytes from the recheck point on may have been cut off and written
        // again since they were cached: read them afresh.
        if let Some((p, _)) = self.recheck {
            if p.segment == l.seq && (p.offset as usize) < l.data.len() {
                l.data.truncate(p.offset as usize);
            }
        }
        // Checked before reading: if the rename to sealed already happened,
        // the writer synced everything first, so reading to the end now
        // gets the whole segment.
        let gone = !path.exists();
        let f = l
            .file
            .as_mut()
            .expect("an active loaded segment keeps its file");
        f.seek(SeekFrom::Start(l.data.len() as u64))
            .and_then(|_| f.read_to_end(&mut l.data))
            .map_err(|e| Error::io("read segment", &path, e))?;
        if gone {
            l.sealed = true;
            l.file = None;
        }
        Ok(())
    }

    /// How far into segment `seq` this reader may read.
    fn limit(&self, l: &Loaded) -> usize {
        match &self.shared {
            Some(s) if !l.sealed => {
                let d = s.durable();
                if l.seq < d.segment {
                    l.data.len()
                } else if l.seq == d.segment {
                    (d.offset as usize).min(l.data.len())
                } else {
                    SEGMENT_HEADER_LEN.min(l.data.len())
                }
            }
            _ => l.data.len(),
        }
    }

    fn next_segment_after(&self, seq: u64) -> Result<Option<u64>> {
        Ok(list_segments(&self.layout.segments)?
            .range(seq + 1..)
            .next()
            .map(|(s, _)| *s))
    }

    fn skip_corrupt(&mut self, seq: u64, offset: usize, len: usize) -> Result<()> {
        tracing::error!(reader = %self.name, segment = seq, offset, bytes = len, "skipping corrupt spool bytes");
        self.stats.corrupt_regions += 1;
        self.stats.corrupt_bytes += len as u64;
        let l = self.seg.as_ref().expect("segment loaded");
        let bytes = l.data[offset..offset + len].to_vec();
        self.stats.quarantined_bytes +=
            quarantine(&*self.io, &self.layout, seq, offset as u64, &bytes)?;
        Ok(())
    }

    /// Returns up to `max_frames` frames (at least one if any is available,
    /// even if larger than `max_bytes`) from the read position, advancing it.
    /// Empty means caught up: call `wait`. Damaged bytes are skipped, counted
    /// in `stats` and quarantined.
    pub fn next(&mut self, max_frames: usize, max_bytes: usize) -> Result<Vec<Frame>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for _ in 0..SEGMENT_HOPS_MAX {
            if self.cursor.segment == 0 {
                match self.next_segment_after(0)? {
                    Some(s) => self.cursor = Position::new(s, SEGMENT_HEADER_LEN as u64),
                    None => return Ok(out),
                }
            }
            let seq = self.cursor.segment;
            if self.seg.as_ref().map(|l| l.seq) != Some(seq) {
                self.seg = None;
                match self.load(seq)? {
                    Some(l) => {
                        if l.data.len() >= SEGMENT_HEADER_LEN || l.sealed {
                            self.check_header(&l)?;
                        }
                        self.seg = Some(l);
                    }
                    None => match self.next_segment_after(seq)? {
                        Some(n) => {
                            tracing::error!(reader = %self.name, missing_from = seq, missing_to = n - 1, "spool segments missing; skipping them");
                            self.stats.missing_segments += n - seq;
                            self.cursor = Position::new(n, SEGMENT_HEADER_LEN as u64);
                            continue;
                        }
                        None => return Ok(out),
                    },
                }
            } else {
                self.refresh_active()?;
            }
            let l = self.seg.as_ref().expect("segment loaded above");
            let limit = self.limit(l);
            let sealed = l.sealed && limit == l.data.len();
            if self.cursor.offset < SEGMENT_HEADER_LEN as u64 {
                self.cursor.offset = SEGMENT_HEADER_LEN as u64;
            }
            if self.cursor.offset as usize > l.data.len() && (l.sealed || self.shared.is_none()) {
                let end = valid_end(&l.data);
                self.mark_stale(Position::new(seq, end))?;
            }
            let l = self.seg.as_ref().expect("segment loaded above");
            let start = self.cursor.offset as usize;
            if start >= limit {
                if !sealed {
                    return Ok(out);
                }
            } else {
                let mut corrupt = Vec::new();
                let mut tail = None;
                let mut full = false;
                let mut refetch = false;
                for item in Scanner::new(&l.data[..limit], start) {
                    match item {
                        Scanned::Frame { offset, payload } => {
                            if out.len() >= max_frames
                                || (!out.is_empty() && bytes + payload.len() > max_bytes)
                            {
                                full = true;
                                break;
                            }
                            let next = offset + crate::format::frame_len(payload.len());
                            bytes += payload.len();
                            self.stats.frames_read += 1;
                            out.push(Frame {
                                position: Position::new(seq, offset as u64),
                                next: Position::new(seq, next as u64),
                                payload: payload.to_vec(),
                            });
                            self.cursor.offset = next as u64;
                        }
                        Scanned::Corrupt { offset, len } => {
                            // In a segment still being written, a bad
                            // checksum may be an append that was cut off
                            // and written again: read it afresh once more
                            // before calling it damage.
                            let at = Position::new(seq, offset as u64);
                            let seen = match self.recheck {
                                Some((p, n)) if p == at => n,
                                _ => 0,
                            };
                            if !sealed && self.shared.is_none() && seen == 0 {
                                self.recheck = Some((at, 1));
                                tail = None;
                                refetch = true;
                                break;
                            }
                            corrupt.push((offset, len));
                            self.cursor.offset = (offset + len) as u64;
                        }
                        Scanned::Tail { offset } => tail = Some(offset),
                    }
                }
                if refetch {
                    for (offset, len) in corrupt {
                        self.skip_corrupt(seq, offset, len)?;
                    }
                    return Ok(out);
                }
                for (offset, len) in corrupt {
                    self.skip_corrupt(seq, offset, len)?;
                }
                // Read past: nothing there to read afresh any more.
                if self.recheck.is_some_and(|(p, _)| p < self.cursor) {
                    self.recheck = None;
                }
                if full {
                    return Ok(out);
                }
                if let Some(offset) = tail {
                    if sealed {
                        let len = limit - offset;
                        self.skip_corrupt(seq, offset, len)?;
                        self.cursor.offset = limit as u64;
                    } else {
                        // An append in progress (another process's reader)
                        // or a torn tail the next recovery will cut: read
                        // afresh from here next time.
                        self.recheck = Some((Position::new(seq, offset as u64), 0));
                        return Ok(out);
                    }
                }
            }
            if !sealed {
                return Ok(out);
            }
            match self.next_segment_after(seq)? {
                Some(n) => {
                    if n != seq + 1 {
                        tracing::error!(reader = %self.name, missing_from = seq + 1, missing_to = n - 1, "spool segments missing; skipping them");
                        self.stats.missing_segments += n - seq - 1;
                    }
                    self.cursor = Position::new(n, SEGMENT_HEADER_LEN as u64);
                    self.seg = None;
                }
                None => {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn check_header(&mut self, l: &Loaded) -> Result<()> {
        let problem = match SegmentHeader::decode(&l.data) {
            Ok(h) if h.seq == l.seq => return Ok(()),
            Ok(h) => format!("header names segment {}", h.seq),
            Err(p) => p.to_string(),
        };
        tracing::error!(reader = %self.name, segment = l.seq, %problem, "corrupt segment header; reading its frames anyway");
        let n = l.data.len().min(SEGMENT_HEADER_LEN);
        self.stats.corrupt_regions += 1;
        self.stats.corrupt_bytes += n as u64;
        self.stats.quarantined_bytes +=
            quarantine(&*self.io, &self.layout, l.seq, 0, &l.data[..n])?;
        Ok(())
    }

    /// Durably records that everything before `upto` is done. `upto` must lie
    /// between the last commit and the read position.
    pub fn commit(&mut self, upto: Position) -> Result<()> {
        if upto > self.cursor || upto < self.committed {
            return Err(Error::InvalidCommit {
                requested: upto,
                read: self.cursor,
                committed: self.committed,
            });
        }
        write_checkpoint(&*self.io, &self.layout, &self.name, upto)?;
        self.committed = upto;
        Ok(())
    }

    /// Commits everything read so far.
    pub fn commit_read(&mut self) -> Result<()> {
        self.commit(self.cursor)
    }

    /// Goes back to the last commit, to re-read what was not done (for
    /// example after a failed shipment).
    pub fn rewind(&mut self) {
        self.cursor = self.committed;
        self.seg = None;
    }

    /// Whether new data may be there, without reading it.
    fn may_have_more(&self) -> Result<bool> {
        if let Some(s) = &self.shared {
            return Ok(s.durable() > self.cursor);
        }
        let loaded_len = match &self.seg {
            Some(l) if l.seq == self.cursor.segment => l.data.len() as u64,
            _ => return Ok(true),
        };
        let active = self
            .layout
            .segment(self.cursor.segment, SegmentState::Active);
        match std::fs::metadata(&active) {
            Ok(m) if m.len() > loaded_len => return Ok(true),
            Ok(_) => {}
            // Sealed meanwhile: `next` moves on.
            Err(_) => return Ok(true),
        }
        Ok(self.next_segment_after(self.cursor.segment)?.is_some())
    }

    /// Blocks until new data may be available or `timeout` passes; true if
    /// it may. Woken by the writer (same process) or inotify (other process),
    /// never by polling. Spurious `true` is possible: call `next` and wait
    /// again if it returns nothing.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let signal: &Signal = match &self.shared {
            Some(s) => &s.signal,
            None => &self.signal,
        };
        let seen = signal.generation();
        if self.may_have_more()? {
            return Ok(true);
        }
        let signal: &Signal = match &self.shared {
            Some(s) => &s.signal,
            None => &self.signal,
        };
        Ok(signal.wait_changed(seen, timeout))
    }
}

/// End of the last whole frame (or damaged run followed by one) in a segment:
/// where a stale checkpoint is moved back to.
fn valid_end(data: &[u8]) -> u64 {
    if data.len() < SEGMENT_HEADER_LEN {
        return SEGMENT_HEADER_LEN as u64;
    }
    let mut end = SEGMENT_HEADER_LEN;
    for item in Scanner::new(data, SEGMENT_HEADER_LEN) {
        match item {
            Scanned::Frame { offset, payload } => {
                end = offset + crate::format::frame_len(payload.len())
            }
            Scanned::Corrupt { offset, len } => end = offset + len,
            Scanned::Tail { offset } => end = offset,
        }
    }
    end as u64
}
