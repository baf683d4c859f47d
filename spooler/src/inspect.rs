//! The logic behind `spoolhouse spool inspect` and `spoolhouse spool verify`:
//! a read-only walk over every segment, frame and checkpoint (an fsck), that
//! can also copy damaged bytes to the quarantine directory.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fileio::StdIo;
use crate::files::{self, list_readers, list_segments, CheckpointRead, Layout, SegmentState};
use crate::format::{frame_len, Position, Scanned, Scanner, SegmentHeader, SEGMENT_HEADER_LEN};

/// One segment as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentReport {
    /// Sequence number.
    pub seq: u64,
    /// Lifecycle stage.
    pub state: SegmentState,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// Uncompressed bytes (as far as they could be decoded).
    pub raw_bytes: u64,
    /// Creation time from the header, if the header is intact.
    pub created_unix_ms: Option<u64>,
    /// Valid frames.
    pub frames: u64,
    /// Payload bytes in them.
    pub payload_bytes: u64,
}

/// What is wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The segment header does not check.
    BadHeader(String),
    /// Damaged bytes followed by a valid frame: those frames are lost.
    Corrupt,
    /// Incomplete frame at the end of the active segment: an append cut by a
    /// crash (never acknowledged) or one in progress. The next open cuts it.
    TornTail,
    /// Damaged bytes at the end of a sealed segment.
    CorruptTail,
    /// The zstd stream of a compressed segment is damaged; frames after the
    /// damage are lost.
    DamagedCompression(String),
    /// The segment file cannot be read at all.
    Unreadable(String),
    /// Sequence numbers missing between two present segments.
    MissingSegments {
        /// First missing.
        from: u64,
        /// Last missing.
        to: u64,
    },
    /// A reader's checkpoint points past the data; the spool moves it back
    /// on next open.
    StaleCheckpoint {
        /// Reader name.
        reader: String,
        /// The checkpoint.
        at: Position,
    },
    /// A checkpoint file cannot be decoded; that reader restarts from the
    /// oldest segment.
    CorruptCheckpoint {
        /// Reader name.
        reader: String,
    },
}

/// A problem found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Segment concerned (0 for reader problems).
    pub segment: u64,
    /// Byte offset in the uncompressed segment.
    pub offset: u64,
    /// Bytes concerned.
    pub bytes: u64,
    /// What it is.
    pub kind: ProblemKind,
}

impl Problem {
    /// True for real damage or loss; a torn tail of the active segment is an
    /// expected state after a crash, not damage.
    pub fn is_damage(&self) -> bool {
        !matches!(self.kind, ProblemKind::TornTail)
    }
}

/// A reader and how far behind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderReport {
    /// Reader name.
    pub name: String,
    /// Its checkpoint, `None` if corrupt.
    pub committed: Option<Position>,
    /// Valid frames at or after the checkpoint.
    pub lag_frames: u64,
    /// Bytes of those frames, headers included.
    pub lag_bytes: u64,
}

/// Everything the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The spool directory.
    pub dir: PathBuf,
    /// Segments in order.
    pub segments: Vec<SegmentReport>,
    /// Readers by name.
    pub readers: Vec<ReaderReport>,
    /// Problems in the order found.
    pub problems: Vec<Problem>,
    /// Files in the quarantine directory after the walk.
    pub quarantine_files: u64,
    /// Bytes in them.
    pub quarantine_bytes: u64,
    /// Bytes this walk copied into quarantine.
    pub quarantined_now: u64,
}

impl Report {
    /// True when nothing is damaged or lost.
    pub fn is_clean(&self) -> bool {
        !self.problems.iter().any(Problem::is_damage)
    }

    /// Valid frames in all segments.
    pub fn frames(&self) -> u64 {
        self.segments.iter().map(|s| s.frames).sum()
    }
}

/// Walks the spool in `dir` without changing it, except that with
/// `quarantine_damage` damaged byte ranges are copied to `quarantine/`. Safe
/// to run beside a live writer (a tail being appended shows as `TornTail`).
pub fn examine(dir: impl AsRef<Path>, quarantine_damage: bool) -> Result<Report> {
    let layout = Layout::new(dir.as_ref());
    if !layout.segments.is_dir() {
        return Err(Error::io(
            "open spool directory",
            &layout.segments,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "not a spool: no segments directory",
            ),
        ));
    }
    let readers = list_readers(&layout)?;
    let mut walk = Walk {
        layout: &layout,
        quarantine_damage,
        readers: readers
            .iter()
            .map(|(name, ck)| ReaderReport {
                name: name.clone(),
                committed: match ck {
                    CheckpointRead::At(p) => Some(*p),
                    _ => None,
                },
                lag_frames: 0,
                lag_bytes: 0,
            })
            .collect(),
        problems: Vec::new(),
        quarantined_now: 0,
    };
    let mut segments = Vec::new();
    let mut prev: Option<u64> = None;
    let mut ends = Vec::new();
    for (&seq, states) in &list_segments(&layout.segments)? {
        if let Some(p) = prev {
            if seq > p + 1 {
                walk.problems.push(Problem {
                    segment: p + 1,
                    offset: 0,
                    bytes: 0,
                    kind: ProblemKind::MissingSegments {
                        from: p + 1,
                        to: seq - 1,
                    },
                });
            }
        }
        prev = Some(seq);
        // The earliest stage present is the authoritative copy.
        if let Some(rep) = walk.segment(seq, states[0])? {
            ends.push((seq, rep.raw_bytes));
            segments.push(rep);
        }
    }
    let mut problems = walk.problems;
    problems.extend(checkpoint_problems(&readers, &ends));
    let (quarantine_files, quarantine_bytes) = quarantine_totals(&layout);
    Ok(Report {
        dir: layout.root.clone(),
        segments,
        readers: walk.readers,
        problems,
        quarantine_files,
        quarantine_bytes,
        quarantined_now: walk.quarantined_now,
    })
}

/// One walk of [`examine`] over the segments: what it found so far.
struct Walk<'a> {
    layout: &'a Layout,
    quarantine_damage: bool,
    readers: Vec<ReaderReport>,
    problems: Vec<Problem>,
    quarantined_now: u64,
}

impl Walk<'_> {
    /// Examines segment `seq` in `state`: its report, or `None` when it
    /// cannot be read at all (a problem says why).
    fn segment(&mut self, seq: u64, state: SegmentState) -> Result<Option<SegmentReport>> {
        let path = self.layout.segment(seq, state);
        let disk_bytes = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let Some(data) = self.read(seq, state, &path, disk_bytes)? else {
            return Ok(None);
        };
        let mut rep = SegmentReport {
            seq,
            state,
            disk_bytes,
            raw_bytes: data.len() as u64,
            created_unix_ms: None,
            frames: 0,
            payload_bytes: 0,
        };
        rep.created_unix_ms = self.header(seq, &data)?;
        self.frames(&mut rep, &data)?;
        Ok(Some(rep))
    }

    /// The segment's bytes, decompressed; damage to a compressed copy is a
    /// problem (its readable start still counts).
    fn read(
        &mut self,
        seq: u64,
        state: SegmentState,
        path: &Path,
        disk_bytes: u64,
    ) -> Result<Option<Vec<u8>>> {
        let read = match state {
            SegmentState::Compressed => files::read_compressed(path).map(|sb| {
                if let Some(reason) = sb.damage {
                    self.problems.push(Problem {
                        segment: seq,
                        offset: sb.data.len() as u64,
                        bytes: disk_bytes,
                        kind: ProblemKind::DamagedCompression(reason),
                    });
                    (sb.data, true)
                } else {
                    (sb.data, false)
                }
            }),
            _ => files::read_raw(path).map(|d| (d, false)),
        };
        match read {
            Ok((data, damaged)) => {
                if damaged && self.quarantine_damage {
                    let whole = fs::read(path).unwrap_or_default();
                    self.quarantined_now +=
                        files::quarantine(&StdIo, self.layout, seq, u64::MAX, &whole)?;
                }
                Ok(Some(data))
            }
            Err(e) => {
                self.problems.push(unreadable(seq, e));
                Ok(None)
            }
        }
    }

    /// The creation time the segment's header gives, or a problem.
    fn header(&mut self, seq: u64, data: &[u8]) -> Result<Option<u64>> {
        match SegmentHeader::decode(data) {
            Ok(h) if h.seq == seq => Ok(Some(h.created_unix_ms)),
            other => {
                let reason = match other {
                    Ok(h) => format!("header names segment {}", h.seq),
                    Err(p) => p.to_string(),
                };
                let n = data.len().min(SEGMENT_HEADER_LEN);
                self.problems.push(Problem {
                    segment: seq,
                    offset: 0,
                    bytes: n as u64,
                    kind: ProblemKind::BadHeader(reason),
                });
                if self.quarantine_damage {
                    self.quarantined_now +=
                        files::quarantine(&StdIo, self.layout, seq, 0, &data[..n])?;
                }
                Ok(None)
            }
        }
    }

    /// Counts the segment's frames (and each reader's lag) and reports
    /// every damaged stretch, quarantining it when asked.
    fn frames(&mut self, rep: &mut SegmentReport, data: &[u8]) -> Result<()> {
        let seq = rep.seq;
        for item in Scanner::new(data, SEGMENT_HEADER_LEN) {
            let (offset, len, kind) = match item {
                Scanned::Frame { offset, payload } => {
                    rep.frames += 1;
                    rep.payload_bytes += payload.len() as u64;
                    let pos = Position::new(seq, offset as u64);
                    for r in self.readers.iter_mut() {
                        if r.committed.is_none_or(|c| pos >= c) {
                            r.lag_frames += 1;
                            r.lag_bytes += frame_len(payload.len()) as u64;
                        }
                    }
                    continue;
                }
                Scanned::Corrupt { offset, len } => (offset, len, ProblemKind::Corrupt),
                Scanned::Tail { offset } if rep.state == SegmentState::Active => {
                    (offset, data.len() - offset, ProblemKind::TornTail)
                }
                Scanned::Tail { offset } => (offset, data.len() - offset, ProblemKind::CorruptTail),
            };
            if self.quarantine_damage && kind != ProblemKind::TornTail {
                self.quarantined_now += files::quarantine(
                    &StdIo,
                    self.layout,
                    seq,
                    offset as u64,
                    &data[offset..offset + len],
                )?;
            }
            self.problems.push(Problem {
                segment: seq,
                offset: offset as u64,
                bytes: len as u64,
                kind,
            });
        }
        Ok(())
    }
}

/// Checkpoints that cannot be read, or that name a position past the end
/// of what the segments hold (`ends`: each readable segment's length).
fn checkpoint_problems(readers: &[(String, CheckpointRead)], ends: &[(u64, u64)]) -> Vec<Problem> {
    let last = ends.last().copied();
    let mut problems = Vec::new();
    for (name, ck) in readers {
        match ck {
            CheckpointRead::Corrupt => problems.push(Problem {
                segment: 0,
                offset: 0,
                bytes: 0,
                kind: ProblemKind::CorruptCheckpoint {
                    reader: name.clone(),
                },
            }),
            CheckpointRead::At(p) => {
                let past = match ends.iter().find(|(s, _)| *s == p.segment) {
                    Some((_, end)) => p.offset > *end,
                    None => last.is_some_and(|(s, _)| p.segment > s),
                };
                if past {
                    problems.push(Problem {
                        segment: p.segment,
                        offset: p.offset,
                        bytes: 0,
                        kind: ProblemKind::StaleCheckpoint {
                            reader: name.clone(),
                            at: *p,
                        },
                    });
                }
            }
            CheckpointRead::Missing => {}
        }
    }
    problems
}

/// Files and bytes in the quarantine folder.
fn quarantine_totals(layout: &Layout) -> (u64, u64) {
    let (mut files, mut bytes) = (0, 0);
    if let Ok(rd) = fs::read_dir(&layout.quarantine) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".bad") {
                files += 1;
                bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    (files, bytes)
}

fn unreadable(seq: u64, e: std::io::Error) -> Problem {
    Problem {
        segment: seq,
        offset: 0,
        bytes: 0,
        kind: ProblemKind::Unreadable(e.to_string()),
    }
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::BadHeader(r) => write!(f, "bad segment header: {r}"),
            ProblemKind::Corrupt => write!(f, "corrupt frame(s), skipped by readers"),
            ProblemKind::TornTail => write!(
                f,
                "torn tail of the active segment (unacknowledged; cut on next open)"
            ),
            ProblemKind::CorruptTail => write!(f, "corrupt tail of a sealed segment"),
            ProblemKind::DamagedCompression(r) => write!(f, "{r}"),
            ProblemKind::Unreadable(r) => write!(f, "unreadable: {r}"),
            ProblemKind::MissingSegments { from, to } => {
                write!(f, "segments {from}..={to} missing")
            }
            ProblemKind::StaleCheckpoint { reader, at } => {
                write!(
                    f,
                    "reader {reader} checkpoint {at} is past the end of the data"
                )
            }
            ProblemKind::CorruptCheckpoint { reader } => {
                write!(f, "reader {reader} checkpoint is corrupt")
            }
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "spool {}", self.dir.display())?;
        writeln!(
            f,
            "{:>20}  {:<10} {:>12} {:>12} {:>10} {:>14}  created_unix_ms",
            "segment", "state", "disk_bytes", "raw_bytes", "frames", "payload_bytes"
        )?;
        for s in &self.segments {
            let created = s.created_unix_ms.map_or("-".to_string(), |c| c.to_string());
            writeln!(
                f,
                "{:>20}  {:<10} {:>12} {:>12} {:>10} {:>14}  {}",
                s.seq,
                s.state.name(),
                s.disk_bytes,
                s.raw_bytes,
                s.frames,
                s.payload_bytes,
                created
            )?;
        }
        let disk: u64 = self.segments.iter().map(|s| s.disk_bytes).sum();
        writeln!(
            f,
            "total: {} segments, {} frames, {} bytes on disk",
            self.segments.len(),
            self.frames(),
            disk
        )?;
        if self.readers.is_empty() {
            writeln!(f, "readers: none")?;
        }
        for r in &self.readers {
            let at = r.committed.map_or("corrupt".to_string(), |p| p.to_string());
            writeln!(
                f,
                "reader {}: committed {at}, lag {} frames / {} bytes",
                r.name, r.lag_frames, r.lag_bytes
            )?;
        }
        writeln!(
            f,
            "quarantine: {} files, {} bytes ({} bytes added now)",
            self.quarantine_files, self.quarantine_bytes, self.quarantined_now
        )?;
        for p in &self.problems {
            writeln!(
                f,
                "problem: segment {} offset {} ({} bytes): {}",
                p.segment, p.offset, p.bytes, p.kind
            )?;
        }
        if self.is_clean() {
            writeln!(f, "status: clean")
        } else {
            let n = self.problems.iter().filter(|p| p.is_damage()).count();
            writeln!(f, "status: DAMAGED ({n} problems)")
        }
    }
}
