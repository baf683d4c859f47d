//! The LSD-style inbox: apps append newline-terminated JSON lines to
//! `<inbox>/**/<name>.log` and rotate by renaming to `<name>.log.old` (any
//! name ending in `.old`); the collector tails every such file, spools each
//! complete line once, and deletes a rotated file once it is fully spooled
//! and no process holds it open.
//!
//! Exactly once across crashes (docs/adr/0003-inbox-offsets-live-in-the-spool.md):
//! each record spooled from a file carries an
//! [`InboxSource`] (file identity, end offset of its line) inside the same
//! durable batch, so the spool itself says how far every file got. On start
//! the collector rebuilds those offsets from its state file
//! (`<spool>/inbox-state`, offsets as of a spool position) plus
//! the records after that position, read with the spool reader
//! `collector-inbox`; a line is spooled again only if its batch never became
//! durable, and then it was never acknowledged to anyone. The state file is
//! written before the reader commits, so a crash between the two only
//! re-reads records (offsets merge by maximum). The reader never commits
//! past the slowest other reader, so it never lets retention delete
//! unshipped segments.
//!
//! A file's identity is its device, inode and birth time (where the file
//! system reports one), so a rotated file keeps its offset under its new name
//! and a new file reusing a deleted file's inode does not inherit it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, Metadata};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use dc_config::record::{InboxSource, Record, TailPrint};
use dc_config::services::CollectorLimits;
use notify::{RecursiveMode, Watcher};
use spooler::Reader;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::ingest::{Batch, Ingest, Outcome};
use crate::Error;

/// Name of the spool reader that derives inbox offsets from the spool.
pub const READER_NAME: &str = "collector-inbox";
/// The resume state file, in the spool directory: a directory only the
/// collector writes. (It lived in the inbox, where any app that may write
/// there could plant a symlink in its place and have the collector
/// overwrite the file it points to.)
pub const STATE_FILE: &str = "inbox-state";
/// Where earlier releases kept it, inside the inbox: read once (never
/// through a symlink) if the new one does not exist yet, then removed.
pub const LEGACY_STATE_FILE: &str = ".spoolhouse-inbox-state";
/// Deepest sub-directory level scanned: bounds a scan of a deep tree.
const DEPTH_MAX: usize = 4;
/// Frames per reader call while deriving offsets.
const READ_FRAMES_MAX: usize = 10_000;
/// How long a tracked file missing from the directory reads is remembered.
/// A file renamed while the directory is read can be in neither its old
/// nor its new place in that read; forgetting it then meant meeting it
/// again at the offset of the resume state (only as far as the shipper
/// committed) and spooling it twice.
const MISSING_GRACE: Duration = Duration::from_secs(60);
/// The resume state is written in whole blocks of this size.
const STATE_BLOCK: usize = 4096;
/// Wait between tries to start an inbox tailer that could not start.
const START_RETRY: Duration = Duration::from_secs(5);
/// Wait before retrying after the spool refused a batch.
const REFUSED_RETRY: Duration = Duration::from_millis(500);
const ENDPOINT: &str = "inbox";

/// The identity of an inbox file, stable across renames.
pub fn file_id(meta: &Metadata) -> u64 {
    let birth = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    mix(meta.dev() ^ mix(meta.ino() ^ mix(birth)))
}

/// splitmix64's finaliser: spreads bits so XOR-combined parts do not collide.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Offsets derived from the spool, and the reader that keeps deriving them.
struct Resume {
    spool: Arc<spooler::Spool>,
    reader: Reader,
    persisted: HashMap<u64, Resumed>,
    state_path: PathBuf,
}

/// Where a file resumes: `offset`, as of spool position `since`, records at
/// or after which move it on (records before it are already counted, or of
/// content the file no longer has: it was truncated then); `tail`: the
/// fingerprint of the bytes before `offset`, as the tailer read them or as
/// the record that moved the offset carries them, checked again before
/// reading on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Resumed {
    offset: u64,
    since: spooler::Position,
    tail: TailPrint,
}

impl Resume {
    fn open(ingest: &Ingest, dir: &Path) -> Result<Self, Error> {
        let state_path = ingest.spool.dir().join(STATE_FILE);
        let legacy = dir.join(LEGACY_STATE_FILE);
        // Only a regular file is taken: a symlink there is not ours.
        let legacy_file = std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file());
        let persisted = if state_path.exists() || !legacy_file {
            read_state(&state_path)?
        } else {
            let p = read_state(&legacy)?;
            write_state(&state_path, &p)?;
            let _ = std::fs::remove_file(&legacy);
            let _ = std::fs::remove_file(legacy.with_extension("tmp"));
            tracing::info!(from = %legacy.display(), to = %state_path.display(), "moved the inbox resume state out of the inbox");
            p
        };
        let reader = ingest.spool.reader(READER_NAME)?;
        let mut r = Self {
            spool: ingest.spool.clone(),
            reader,
            persisted,
            state_path,
        };
        r.checkpoint(None)?;
        Ok(r)
    }

    /// Records that file `id` starts again from 0, as of now in the spool.
    fn truncated(&mut self, id: u64) -> Result<(), Error> {
        self.persisted.insert(
            id,
            Resumed {
                offset: 0,
                since: self.spool.durable(),
                tail: TailPrint::default(),
            },
        );
        write_state(&self.state_path, &self.persisted)
    }

    /// Reads the spool, merges the inbox offsets found, writes the state
    /// file and only then commits the reader. At start (`live` is `None`) it
    /// reads to the durable end: the resume needs every inbox record. At run
    /// time the in-memory offsets are authoritative, so it reads only as far
    /// as the slowest other reader, which is as far as it may commit:
    /// retention deletes what every reader has committed past, and this
    /// reader must never be the one that lets unshipped data go. With no
    /// other reader it reads nothing (a restart then re-reads more; offsets
    /// merge by maximum). Both loops end at a position fixed on entry.
    fn checkpoint(
        &mut self,
        snapshot: Option<&HashMap<u64, (u64, TailPrint)>>,
    ) -> Result<(), Error> {
        let lowest_other = self
            .spool
            .stats()?
            .readers
            .into_iter()
            .filter(|r| r.name != READER_NAME)
            .map(|r| r.committed.unwrap_or_default())
            .min();
        // Every inbox record of the snapshot lies before this: the tailer
        // waits for the checkpoint, and nothing else spools inbox lines.
        let now = self.spool.durable();
        let target = match (snapshot, lowest_other) {
            (None, _) => now,
            (Some(_), Some(p)) => p,
            (Some(_), None) => self.reader.position(),
        };
        while self.reader.position() < target {
            let records = self.reader.next(READ_FRAMES_MAX, 64 << 20)?;
            if records.is_empty() {
                break;
            }
            for r in records {
                // Byte 1 is the record's flags; bit 0 says an inbox source follows.
                if r.payload.get(1).is_some_and(|f| f & 1 != 0) {
                    if let Ok(Record {
                        inbox: Some(src), ..
                    }) = Record::decode(&r.payload)
                    {
                        // Records of one file come in offset order, but
                        // for a truncation: the last one at or after the
                        // truncation wins.
                        let e = self.persisted.entry(src.file).or_default();
                        if r.position >= e.since {
                            e.offset = src.end_offset;
                            e.tail = src.tail;
                        }
                    }
                }
            }
        }
        if let Some(snapshot) = snapshot {
            // The tailer's offsets are authoritative, and they come with the
            // bytes before them, which tell after a restart whether the file
            // was truncated and written past the offset meanwhile.
            self.persisted.retain(|id, _| snapshot.contains_key(id));
            for (id, (offset, tail)) in snapshot {
                self.persisted.insert(
                    *id,
                    Resumed {
                        offset: *offset,
                        since: now,
                        tail: *tail,
                    },
                );
            }
        }
        write_state(&self.state_path, &self.persisted)?;
        if let Some(lowest) = lowest_other {
            let upto = lowest.min(self.reader.position());
            if upto > self.reader.committed() {
                self.reader.commit(upto)?;
            }
        }
        Ok(())
    }
}

/// Opens `path` for reading, refusing a symlink in its place.
fn open_nofollow(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// The resume state: a header, then per file `ID OFFSET SEGMENT OFFSET
/// TAIL` (the spool position records count from, then the bytes before
/// the offset in hex, `-` for none), then `end`. Version 1 files (`ID
/// OFFSET`) count from the spool's start.
fn read_state(path: &Path) -> Result<HashMap<u64, Resumed>, Error> {
    let read = || -> std::io::Result<String> {
        let mut text = String::new();
        open_nofollow(path)?.read_to_string(&mut text)?;
        Ok(text)
    };
    let text = match read() {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => {
            return Err(Error::Inbox {
                path: path.into(),
                source,
            })
        }
    };
    let bad = |reason: &str| Error::InboxState {
        path: path.into(),
        reason: reason.into(),
    };
    let mut lines = text.lines();
    let fields = match lines.next() {
        Some("spoolhouse-inbox-state 1") => 2,
        Some("spoolhouse-inbox-state 2") => 5,
        _ => return Err(bad("missing header `spoolhouse-inbox-state 2`")),
    };
    let mut map = HashMap::new();
    let mut ended = false;
    for line in lines {
        if line == "end" {
            ended = true;
            break;
        }
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != fields {
            return Err(bad("a line has the wrong number of fields"));
        }
        let nums: Vec<u64> = parts[..fields.min(4)]
            .iter()
            .map(|p| p.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| bad("a field is not a number"))?;
        let (since, tail) = if fields == 5 {
            let tail = match parts[4] {
                "-" => TailPrint::default(),
                // `LEN:CRC` (hexadecimal); the bytes themselves, as hex, in
                // the state files of earlier versions.
                print => match print.split_once(':') {
                    Some((len, crc)) => {
                        let len = u8::from_str_radix(len, 16)
                            .ok()
                            .filter(|l| (1..=TailPrint::MAX_LEN).contains(&usize::from(*l)));
                        let crc = u32::from_str_radix(crc, 16).ok();
                        match (len, crc) {
                            (Some(len), Some(crc)) => TailPrint { len, crc },
                            _ => return Err(bad("the tail is not LEN:CRC in hexadecimal")),
                        }
                    }
                    None => {
                        TailPrint::of(&from_hex(print).ok_or_else(|| bad("the tail is not hex"))?)
                    }
                },
            };
            (spooler::Position::new(nums[2], nums[3]), tail)
        } else {
            (spooler::Position::default(), TailPrint::default())
        };
        map.insert(
            nums[0],
            Resumed {
                offset: nums[1],
                since,
                tail,
            },
        );
    }
    // The writer renames a fully synced file into place, so a missing end
    // marker means the file was damaged afterwards.
    if !ended {
        return Err(bad("truncated: no `end` line"));
    }
    Ok(map)
}

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write_state(path: &Path, map: &HashMap<u64, Resumed>) -> Result<(), Error> {
    let io = |source| Error::Inbox {
        path: path.into(),
        source,
    };
    let mut text = String::from("spoolhouse-inbox-state 2\n");
    let mut ids: Vec<_> = map.iter().collect();
    ids.sort_by_key(|(id, _)| **id);
    for (id, r) in ids {
        let tail = if r.tail.is_empty() {
            "-".to_string()
        } else {
            format!("{:x}:{:08x}", r.tail.len, r.tail.crc)
        };
        text.push_str(&format!(
            "{id} {} {} {} {tail}\n",
            r.offset, r.since.segment, r.since.offset
        ));
    }
    text.push_str("end\n");
    // Padded to whole blocks (read_state stops at `end`): on a full disk the
    // state is then rewritten in place when it still fits, as the spool's
    // checkpoints are (ADR 0008). Without it the inbox reader could not
    // commit, and retention could not free the spool that filled the disk.
    let padded = text.len().div_ceil(STATE_BLOCK) * STATE_BLOCK;
    text.extend(std::iter::repeat_n('\n', padded - text.len()));
    let tmp = path.with_extension("tmp");
    let fresh = || -> std::io::Result<()> {
        // A fresh temp file, never through a symlink planted in its place.
        let _ = std::fs::remove_file(&tmp);
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            File::options()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?
        };
        f.write_all(text.as_bytes())?;
        f.sync_data()?;
        std::fs::rename(&tmp, path)?;
        if let Some(parent) = path.parent() {
            File::open(parent).and_then(|d| d.sync_all())?;
        }
        Ok(())
    };
    match fresh() {
        Ok(()) => Ok(()),
        Err(e) if spooler::error::is_disk_full(&e) => {
            let _ = std::fs::remove_file(&tmp);
            // In place: no new block. A crash during this write could tear
            // the state; it then fails to load, and /healthz says to delete
            // it (rebuilt from the spool).
            let in_place = || -> std::io::Result<()> {
                use std::os::unix::fs::{FileExt, OpenOptionsExt};
                let f = File::options()
                    .write(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)?;
                if f.metadata()?.len() < text.len() as u64 {
                    return Err(e);
                }
                f.write_all_at(text.as_bytes(), 0)?;
                f.sync_data()
            };
            in_place().map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// One file being tailed.
struct Tracked {
    path: PathBuf,
    /// Since when the file has been missing from every directory read, if
    /// it is: it is read again, at its offset, if it shows up within
    /// [`MISSING_GRACE`] (a rename racing a directory read hides a file from
    /// that read).
    missing_since: Option<Instant>,
    offset: u64,
    /// Inside a line already rejected as too long.
    discarding: bool,
    /// Whether "cannot tell if a writer holds it" was logged for this file.
    undecided_logged: bool,
    /// The fingerprint of the last bytes read, ending at `offset` (empty
    /// inside a discarded line): checked again before each chunk, it tells
    /// a file truncated and written past the old offset (`copytruncate`)
    /// from one that only grew. Records carry it too, so a restart after a
    /// crash checks the same.
    tail: TailPrint,
    /// Last modification time at the last scan.
    modified: std::time::SystemTime,
    rotated: bool,
    len: u64,
    /// Rejected lines starting before this offset are in the quarantine
    /// already (a refused batch is read again; its bad lines are not
    /// written twice).
    quarantined_to: u64,
}

fn is_inbox_file(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".log") || name.ends_with(".old"))
}

/// Whether a watcher event may mean new lines, a new file or a writer gone.
/// The tailer's own opens, reads and closes, and its state file's writes,
/// raise events too; waking on them would rescan in a loop forever.
fn wakes_the_tailer(event: &notify::Event) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind};
    match event.kind {
        // A writer closing may let a rotated file go.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => event.paths.is_empty() || event.paths.iter().any(|p| !is_hidden(p)),
    }
}

/// Dot files are the collector's own (the state file and its temp copy).
fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// One inbox file as a directory read found it.
struct Found {
    id: u64,
    path: PathBuf,
    len: u64,
    rotated: bool,
    modified: std::time::SystemTime,
}

/// Lists inbox files, depth-bounded.
fn scan(dir: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            let path = e.path();
            if meta.is_dir() {
                if depth < DEPTH_MAX {
                    stack.push((path, depth + 1));
                }
                continue;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if meta.is_file() && is_inbox_file(name) {
                out.push(Found {
                    id: file_id(&meta),
                    path,
                    len: meta.len(),
                    rotated: name.ends_with(".old"),
                    modified: meta.modified().unwrap_or(UNIX_EPOCH),
                });
            }
        }
    }
    out
}

/// The files processes hold open, by (device, inode), read from
/// `/proc/*/fd` once per pass that has rotated files to delete. By inode,
/// not by path: an inbox reached through a symlinked directory, or a file
/// renamed since it was opened, has another path in `/proc`.
#[derive(Debug, Default)]
struct OpenFiles {
    held: HashSet<(u64, u64)>,
    /// Owners (uids) of processes whose open files could not be read (a
    /// collector running as another user than the app).
    unreadable_uids: HashSet<u32>,
}

impl OpenFiles {
    fn read() -> Self {
        let mut out = Self::default();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return out;
        };
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(pid) = name.to_str() else { continue };
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let fds = match std::fs::read_dir(p.path().join("fd")) {
                Ok(fds) => fds,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    if let Ok(m) = p.metadata() {
                        out.unreadable_uids.insert(m.uid());
                    }
                    continue;
                }
                // The process ended meanwhile.
                Err(_) => continue,
            };
            for fd in fds.flatten() {
                if let Ok(m) = std::fs::metadata(fd.path()) {
                    if m.is_file() {
                        out.held.insert((m.dev(), m.ino()));
                    }
                }
            }
        }
        out
    }

    /// Whether some process may hold `meta`'s file: `Err` with the reason
    /// when that cannot be told (a process of the file's owner whose open
    /// files this process may not read).
    fn holds(&self, meta: &Metadata) -> Result<bool, String> {
        if self.held.contains(&(meta.dev(), meta.ino())) {
            return Ok(true);
        }
        if self.unreadable_uids.contains(&meta.uid()) {
            return Err(format!(
                "cannot see which files the processes of uid {} hold open (run the collector as that user, or with CAP_SYS_PTRACE)",
                meta.uid()
            ));
        }
        Ok(false)
    }
}

/// Reads up to `max` bytes of the file at `path` from `offset`, provided
/// it still is file `id` (it may have been renamed or replaced since the scan).
fn read_chunk(path: &Path, id: u64, offset: u64, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut f = File::open(path)?;
    if file_id(&f.metadata()?) != id {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::with_capacity(max);
    f.take(max as u64).read_to_end(&mut buf)?;
    Ok(Some(buf))
}

/// Starts the inbox tailer; it stops when `stopped` turns true, after
/// finishing the batch in hand and checkpointing.
pub(crate) fn start(
    ingest: Arc<Ingest>,
    dir: PathBuf,
    limits: Arc<CollectorLimits>,
    stopped: watch::Receiver<bool>,
) -> Result<JoinHandle<Result<(), Error>>, Error> {
    std::fs::create_dir_all(&dir).map_err(|source| Error::Inbox {
        path: dir.clone(),
        source,
    })?;
    let wake = Arc::new(Notify::new());
    let w = wake.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // A relevant event (or a watcher error) just triggers a rescan; the
        // scan is the source of truth, so a lost or coalesced event costs
        // nothing.
        if res.as_ref().map_or(true, wakes_the_tailer) {
            w.notify_one();
        }
    })
    .map_err(|e| Error::Inbox {
        path: dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    watcher
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|e| Error::Inbox {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(tokio::spawn(async move {
        let _watcher = watcher;
        // A tailer that cannot start (say, a damaged resume state) says why
        // on /healthz and tries again until it can or the collector stops.
        let mut stopped = stopped;
        let resume = loop {
            let (ing, d) = (ingest.clone(), dir.clone());
            let opened = tokio::task::spawn_blocking(move || Resume::open(&ing, &d))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            match opened {
                Ok(r) => {
                    ingest.health.inbox_state(None);
                    break r;
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_in_s = START_RETRY.as_secs(), "the inbox tailer cannot start; inbox files wait (see /healthz)");
                    ingest.health.inbox_state(Some(e.to_string()));
                    tokio::select! {
                        _ = crate::until_stopped(&mut stopped) => return Ok(()),
                        _ = tokio::time::sleep(START_RETRY) => {}
                    }
                }
            }
        };
        Tailer {
            ingest,
            dir,
            limits,
            files: HashMap::new(),
            resume: Some(resume),
            waiting: 0,
        }
        .run(wake, stopped)
        .await
    }))
}

struct Tailer {
    ingest: Arc<Ingest>,
    dir: PathBuf,
    limits: Arc<CollectorLimits>,
    files: HashMap<u64, Tracked>,
    resume: Option<Resume>,
    /// Files waiting at the last scan (over `inbox_files_max`).
    waiting: usize,
}

impl Tailer {
    async fn run(
        mut self,
        wake: Arc<Notify>,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let poll = Duration::from_millis(self.limits.inbox_poll_ms);
        let every = Duration::from_millis(self.limits.inbox_checkpoint_ms);
        let mut last_checkpoint = Instant::now();
        loop {
            let refused = self.pass(&stopped).await?;
            if last_checkpoint.elapsed() >= every {
                self.checkpoint().await?;
                last_checkpoint = Instant::now();
            }
            if *stopped.borrow() {
                break;
            }
            let wait = if refused { REFUSED_RETRY } else { poll };
            tokio::select! {
                _ = crate::until_stopped(&mut stopped) => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        self.checkpoint().await
    }

    async fn checkpoint(&mut self) -> Result<(), Error> {
        let mut resume = self
            .resume
            .take()
            .expect("resume is put back after each checkpoint");
        let snapshot: HashMap<u64, (u64, TailPrint)> = self
            .files
            .iter()
            .map(|(id, t)| (*id, (t.offset, t.tail)))
            .collect();
        let (resume, result) = tokio::task::spawn_blocking(move || {
            let r = resume.checkpoint(Some(&snapshot));
            (resume, r)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        self.resume = Some(resume);
        if let Err(e) = &result {
            tracing::error!(error = %e, "inbox checkpoint failed; retrying at the next one");
        }
        Ok(())
    }

    /// One scan and read of every file; returns whether the spool refused a batch.
    async fn pass(&mut self, stopped: &watch::Receiver<bool>) -> Result<bool, Error> {
        let d = self.dir.clone();
        self.ingest.metrics.inbox_scans.inc();
        let found = tokio::task::spawn_blocking(move || scan(&d))
            .await
            .map_err(|e| Error::Task(e.to_string()))?;
        let mut seen = HashSet::new();
        let mut waiting = 0usize;
        for Found {
            id,
            path,
            len,
            rotated,
            modified,
        } in found
        {
            seen.insert(id);
            if let Some(t) = self.files.get_mut(&id) {
                t.path = path;
                t.len = len;
                t.rotated = rotated;
                t.modified = modified;
                t.missing_since = None;
                continue;
            }
            if self.files.len() >= self.limits.inbox_files_max {
                waiting += 1;
                continue;
            }
            let (offset, tail) = self
                .resume
                .as_ref()
                .and_then(|r| r.persisted.get(&id))
                .map_or((0, TailPrint::default()), |p| (p.offset, p.tail));
            self.files.insert(
                id,
                Tracked {
                    path,
                    missing_since: None,
                    offset,
                    discarding: false,
                    undecided_logged: false,
                    tail,
                    modified,
                    rotated,
                    len,
                    quarantined_to: 0,
                },
            );
        }
        // A file missing from this read may only be hidden by a rename in
        // progress: it keeps its offset for a while; a file deleted by
        // someone else is forgotten after that.
        let now = Instant::now();
        self.files.retain(|id, t| {
            if seen.contains(id) {
                return true;
            }
            let since = *t.missing_since.get_or_insert(now);
            now.duration_since(since) < MISSING_GRACE
        });
        self.ingest.metrics.inbox_files.set(self.files.len() as i64);
        // One log line when files start and stop waiting, not one per file
        // per scan.
        self.ingest.metrics.inbox_files_waiting.set(waiting as i64);
        if (waiting > 0) != (self.waiting > 0) {
            if waiting > 0 {
                self.error("too_many_files");
                tracing::error!(waiting, max = self.limits.inbox_files_max, "the inbox holds more files than limits.inbox_files_max; the others wait until tracked files are deleted (gauge spoolhouse_collector_inbox_files_waiting)");
            } else {
                tracing::info!("no inbox file waits any more");
            }
        }
        self.waiting = waiting;
        let ids: Vec<u64> = self
            .files
            .iter()
            .filter(|(_, t)| t.missing_since.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut rotated = Vec::new();
        let mut idle = Vec::new();
        for id in ids {
            loop {
                if *stopped.borrow() {
                    return Ok(false);
                }
                match self.read_some(id).await? {
                    Step::More => continue,
                    Step::Done => break,
                    Step::Refused => return Ok(true),
                }
            }
            let t = &self.files[&id];
            if t.rotated {
                rotated.push(id);
            } else if self.idle_enough(t) {
                idle.push(id);
            }
        }
        self.rotate_idle(idle).await;
        self.delete_rotated(rotated).await;
        Ok(false)
    }

    /// Whether `.log` file `t` is fully read and old and large enough for
    /// the collector to rotate it (`inbox_rotate_idle_ms`).
    fn idle_enough(&self, t: &Tracked) -> bool {
        let l = &self.limits;
        l.inbox_rotate_idle_ms > 0
            && t.offset == t.len
            && t.len >= l.inbox_rotate_min_bytes.max(1)
            && t.modified
                .elapsed()
                .is_ok_and(|age| age >= Duration::from_millis(l.inbox_rotate_idle_ms))
    }

    /// Renames each idle, fully read `.log` file of `ids` that no process
    /// holds to `NAME.log.TIMESTAMP.old`, as LSD does, so a file its app
    /// never rotates does not grow the inbox for ever; it is then deleted as
    /// any rotated file. A writer that opens it in between appends to the
    /// rotated file, which is read to its end before it goes.
    async fn rotate_idle(&mut self, ids: Vec<u64>) {
        if ids.is_empty() {
            return;
        }
        let candidates: Vec<(u64, PathBuf, u64)> = ids
            .into_iter()
            .map(|id| (id, self.files[&id].path.clone(), self.files[&id].len))
            .collect();
        let stamp = dc_config::event::now_ms();
        let renamed = tokio::task::spawn_blocking(move || {
            let open = OpenFiles::read();
            candidates
                .into_iter()
                .filter_map(|(id, path, len)| {
                    let meta = std::fs::metadata(&path).ok()?;
                    if file_id(&meta) != id || meta.len() != len || open.holds(&meta) != Ok(false) {
                        return None;
                    }
                    let mut to = path.clone().into_os_string();
                    to.push(format!(".{stamp}.old"));
                    let to = PathBuf::from(to);
                    match std::fs::rename(&path, &to) {
                        Ok(()) => Some(Ok((id, path, to))),
                        Err(e) => Some(Err((path, e))),
                    }
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for r in renamed {
            match r {
                Ok((id, from, to)) => {
                    tracing::info!(from = %from.display(), to = %to.display(), "idle inbox file fully spooled; rotated");
                    self.ingest.metrics.inbox_files_rotated.inc();
                    if let Some(t) = self.files.get_mut(&id) {
                        t.path = to;
                        t.rotated = true;
                    }
                }
                Err((path, e)) => {
                    self.error("rotate");
                    tracing::error!(path = %path.display(), error = %e, "cannot rotate idle inbox file");
                }
            }
        }
    }

    /// Reads and spools one chunk of file `id`.
    async fn read_some(&mut self, id: u64) -> Result<Step, Error> {
        let t = &self.files[&id];
        if t.len < t.offset {
            self.truncated(id, "shorter than what was read of it");
            return Ok(Step::More);
        }
        if t.offset >= t.len {
            return Ok(Step::Done);
        }
        let (path, offset, discarding) = (t.path.clone(), t.offset, t.discarding);
        // Outside a discarded line, the bytes before the offset are the end
        // of the last line read (at least its newline); anything else means
        // the file was truncated and written again past that offset. Only
        // a record of an earlier version comes without a fingerprint: then
        // the newline is all there is to check.
        let expected: TailPrint = match (discarding, t.tail.is_empty()) {
            (true, _) => TailPrint::default(),
            (false, false) => t.tail,
            (false, true) if offset > 0 => TailPrint::of(b"\n"),
            (false, true) => TailPrint::default(),
        };
        let line_max = self.limits.line_bytes_max;
        // A line may be longer than the read buffer, up to the line limit:
        // a chunk without a newline is read again that long.
        let mut max = self.limits.read_buffer_bytes;
        let chunk = loop {
            let back = usize::from(expected.len);
            let from = offset - back as u64;
            let p = path.clone();
            let got = tokio::task::spawn_blocking(move || read_chunk(&p, id, from, max + back))
                .await
                .map_err(|e| Error::Task(e.to_string()))?;
            let mut chunk = match got {
                Ok(Some(c)) => c,
                // Renamed or replaced since the scan: the next scan sees it.
                Ok(None) => return Ok(Step::Done),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Step::Done),
                Err(e) => {
                    self.error("read");
                    tracing::error!(path = %path.display(), error = %e, "cannot read inbox file");
                    return Ok(Step::Done);
                }
            };
            if chunk.get(..back).map(TailPrint::of) != Some(expected) {
                self.truncated(id, "rewritten: the bytes before the offset changed");
                return Ok(Step::More);
            }
            chunk.drain(..back);
            if !discarding && chunk.len() == max && max <= line_max && !chunk.contains(&b'\n') {
                max = line_max + 1;
                continue;
            }
            break chunk;
        };
        if chunk.is_empty() {
            return Ok(Step::Done);
        }
        let t = self.files.get_mut(&id).expect("tracked");
        let mut from = 0usize;
        if t.discarding {
            match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    from = i + 1;
                    t.discarding = false;
                }
                None => {
                    t.offset += chunk.len() as u64;
                    t.tail = TailPrint::default();
                    return Ok(Step::More);
                }
            }
        }
        let complete = chunk[from..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(from, |i| from + i + 1);
        let mut batch = Batch::new(1);
        let mut pos = from;
        // Where each rejected line is in the chunk, by line number.
        let mut bad: Vec<(u64, usize, usize)> = Vec::new();
        while pos < complete {
            let end = pos
                + chunk[pos..complete]
                    .iter()
                    .position(|&b| b == b'\n')
                    .expect("the complete region ends with a newline");
            let src = InboxSource {
                file: id,
                end_offset: offset + end as u64 + 1,
                tail: TailPrint::of(&chunk[pos..=end]),
            };
            let (line_no, rejected) = (batch.last_line + 1, batch.rejected.len());
            batch.add_line(&self.ingest, ENDPOINT, line_no, &chunk[pos..end], Some(src));
            if batch.rejected.len() > rejected {
                bad.push((line_no, pos, end));
            }
            pos = end + 1;
        }
        let mut new_offset = offset + complete as u64;
        let rest = chunk.len() - complete;
        let mut too_long = false;
        if complete == from && rest > line_max {
            // No newline within a whole line's worth of bytes.
            let line_no = batch.last_line + 1;
            batch.reject_too_long(&self.ingest, ENDPOINT, line_no, rest);
            bad.push((line_no, from, chunk.len()));
            new_offset = offset + chunk.len() as u64;
            too_long = true;
        }
        for r in &batch.rejected {
            if let crate::protocol::Response::Rejected { error, .. } = r {
                tracing::warn!(path = %path.display(), error = %error, "inbox line rejected (line numbers count from the chunk read at byte {offset})");
            }
        }
        self.quarantine(id, &path, offset, &chunk, &bad, &batch)
            .await;
        let outcome = self.ingest.commit(&mut batch, ENDPOINT).await?;
        let t = self.files.get_mut(&id).expect("tracked");
        match outcome {
            Outcome::Stored(_) => {
                t.offset = new_offset;
                if too_long {
                    t.discarding = true;
                }
                if t.discarding {
                    t.tail = TailPrint::default();
                } else if new_offset > offset {
                    t.tail = TailPrint::of(&chunk[..(new_offset - offset) as usize]);
                }
                Ok(if new_offset > offset && chunk.len() == max {
                    Step::More
                } else {
                    Step::Done
                })
            }
            Outcome::Refused(reason) => {
                tracing::warn!(path = %t.path.display(), reason = %reason, "inbox batch refused; retrying");
                Ok(Step::Refused)
            }
        }
    }

    /// Deletes each of the rotated files `ids` that is fully spooled and
    /// that no process holds (a writer not yet reopened after rotation). An
    /// unterminated last line can never complete once no writer is left, so
    /// it is reported and dropped with the file; a file with a complete line
    /// still unread is never deleted. Which files are open is read once for
    /// all of them.
    async fn delete_rotated(&mut self, ids: Vec<u64>) {
        let candidates: Vec<(u64, PathBuf, u64, u64, bool)> = ids
            .into_iter()
            .map(|id| {
                let t = &self.files[&id];
                (id, t.path.clone(), t.offset, t.len, t.discarding)
            })
            .collect();
        if candidates.is_empty() {
            self.ingest.metrics.inbox_files_undecided.set(0);
            return;
        }
        let line_max = self.limits.line_bytes_max;
        let decisions = tokio::task::spawn_blocking(move || {
            let open = OpenFiles::read();
            candidates
                .into_iter()
                .map(|(id, path, offset, len, discarding)| {
                    let d = decide(&open, &path, id, offset, len, discarding, line_max);
                    (id, path, offset, len, d)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut undecided = 0;
        for (id, path, offset, len, decision) in decisions {
            match decision {
                Deletion::Keep => {}
                Deletion::Undecided(reason) => {
                    undecided += 1;
                    let t = self.files.get_mut(&id).expect("tracked");
                    if !t.undecided_logged {
                        t.undecided_logged = true;
                        tracing::warn!(path = %path.display(), reason = %reason, "rotated inbox file fully spooled but kept: whether a writer still holds it cannot be told");
                    }
                }
                Deletion::Delete { dropped_tail } => {
                    if dropped_tail {
                        self.error("unterminated_line");
                        tracing::error!(path = %path.display(), bytes = len - offset, "rotated inbox file ends with a line that has no newline and no writer left; dropping that line");
                    }
                    match std::fs::remove_file(&path) {
                        Ok(()) => {
                            self.files.remove(&id);
                            self.ingest.metrics.inbox_files_deleted.inc();
                            tracing::info!(path = %path.display(), "rotated inbox file fully spooled; deleted");
                        }
                        Err(e) => {
                            self.error("delete");
                            tracing::error!(path = %path.display(), error = %e, "cannot delete rotated inbox file");
                        }
                    }
                }
            }
        }
        self.ingest.metrics.inbox_files_undecided.set(undecided);
    }

    /// File `id` was truncated in place (logrotate's `copytruncate`) or
    /// rewritten: it is read again from its start. Lines written before the
    /// truncation and not read by then are gone with it; that is counted and
    /// logged, never silent.
    /// Writes this chunk's rejected lines (those not written before) to the
    /// quarantine, before the batch moves the file's offset past them.
    /// `bad`: (line number, start, end) in `chunk` of each rejected line;
    /// `offset`: the chunk's offset in the file.
    async fn quarantine(
        &mut self,
        id: u64,
        path: &Path,
        offset: u64,
        chunk: &[u8],
        bad: &[(u64, usize, usize)],
        batch: &Batch,
    ) {
        use crate::quarantine::{Entry, LINE_KEPT_MAX};
        let done_to = self.files.get(&id).map_or(0, |t| t.quarantined_to);
        let mut entries = Vec::new();
        for r in &batch.rejected {
            let crate::protocol::Response::Rejected {
                line,
                field,
                rule,
                error,
            } = r
            else {
                continue;
            };
            let Some(&(_, start, end)) = bad.iter().find(|(n, _, _)| n == line) else {
                continue;
            };
            let at = offset + start as u64;
            if at < done_to {
                continue;
            }
            let prefix = format!("line {line}: ");
            entries.push(Entry {
                file: path.to_path_buf(),
                offset: at,
                line_no: *line,
                field: field.clone(),
                rule: rule.clone(),
                error: error.strip_prefix(&prefix).unwrap_or(error).to_string(),
                line: chunk[start..end.min(start + LINE_KEPT_MAX)].to_vec(),
                line_bytes: (end - start) as u64,
            });
        }
        let Some(last) = entries.last() else {
            return;
        };
        let end = offset + bad.last().map_or(0, |b| b.2) as u64;
        let summary = serde_json::json!({
            "file": last.file.to_string_lossy(),
            "offset": last.offset,
            "rule": last.rule,
            "error": last.error,
        });
        let rules: Vec<String> = entries.iter().map(|e| e.rule.clone()).collect();
        let ingest = self.ingest.clone();
        let written = tokio::task::spawn_blocking(move || {
            ingest.quarantine.keep(&entries, dc_config::event::now_ms())
        })
        .await;
        match written {
            Ok(Ok(())) => {
                for rule in &rules {
                    self.ingest
                        .metrics
                        .quarantined
                        .get_or_create(&vec![("rule", rule.clone())])
                        .inc();
                }
                self.ingest.health.quarantined(
                    rules.len() as u64,
                    self.ingest.quarantine.path().to_string_lossy().into_owned(),
                    summary,
                );
                if let Some(t) = self.files.get_mut(&id) {
                    t.quarantined_to = t.quarantined_to.max(end);
                }
            }
            Ok(Err(e)) => {
                self.ingest.metrics.quarantine_errors.inc();
                tracing::warn!(path = %self.ingest.quarantine.path().display(), error = %e, lines = rules.len(), "cannot write rejected inbox lines to the quarantine; they stay counted as rejected and logged");
            }
            Err(e) => {
                self.ingest.metrics.quarantine_errors.inc();
                tracing::warn!(error = %e, "the quarantine write did not finish");
            }
        }
    }

    fn truncated(&mut self, id: u64, how: &str) {
        let t = self.files.get_mut(&id).expect("tracked");
        tracing::warn!(path = %t.path.display(), read = t.offset, size = t.len, how, "inbox file truncated in place; reading it again from the start (lines written before the truncation and not read by then are lost; rotate by renaming instead)");
        t.offset = 0;
        t.discarding = false;
        t.tail = TailPrint::default();
        t.quarantined_to = 0;
        self.ingest.metrics.inbox_truncations.inc();
        // Recorded before any line of the new content is spooled: a restart
        // must not resume at the old offset, which the records of the old
        // content still say.
        if let Some(r) = self.resume.as_mut() {
            if let Err(e) = r.truncated(id) {
                self.error("state");
                tracing::error!(error = %e, "cannot record an inbox truncation in the resume state; a restart before the next checkpoint may skip the start of the new content");
            }
        }
    }

    fn error(&self, kind: &str) {
        self.ingest
            .metrics
            .inbox_errors
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }
}

enum Step {
    More,
    Done,
    Refused,
}

/// What to do with a rotated file.
#[derive(Debug, PartialEq)]
enum Deletion {
    /// Not yet: it grew, was replaced, or holds a complete line not read.
    Keep,
    /// Fully spooled and no writer holds it; `dropped_tail`: it ends in an
    /// unterminated line, dropped with it.
    Delete { dropped_tail: bool },
    /// Fully spooled, but whether a writer holds it cannot be told.
    Undecided(String),
}

/// The decision for rotated file `id` at `path`, read up to `offset` of
/// `len` bytes at the last scan.
fn decide(
    open: &OpenFiles,
    path: &Path,
    id: u64,
    offset: u64,
    len: u64,
    discarding: bool,
    line_max: usize,
) -> Deletion {
    let Ok(meta) = std::fs::metadata(path) else {
        return Deletion::Keep;
    };
    // A writer may have appended since the scan, or the name may now be
    // another file's.
    if file_id(&meta) != id || meta.len() != len {
        return Deletion::Keep;
    }
    // What is left must be one unterminated line (or the rest of one too
    // long, being discarded, which is no loss): never a complete line not
    // yet read.
    let dropped_tail = offset < len && !discarding;
    if dropped_tail {
        let Ok(Some(tail)) = read_chunk(path, id, offset, line_max + 1) else {
            return Deletion::Keep;
        };
        if tail.contains(&b'\n') || (tail.len() as u64) < len - offset {
            return Deletion::Keep;
        }
    }
    match open.holds(&meta) {
        Ok(true) => Deletion::Keep,
        Ok(false) => Deletion::Delete { dropped_tail },
        Err(reason) => Deletion::Undecided(reason),
    }
}
