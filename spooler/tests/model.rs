//! Model-based test: random sequences of append / rotate / seal / read /
//! commit / retain / crash run against the real spool and an in-memory model
//! of what must survive. A crash drops every handle and then truncates the
//! active segment at a random byte or flips a random byte in it.

mod common;

use std::fs;
use std::path::Path;

use common::{active_segment, small_config};
use proptest::prelude::*;
use spooler::format::{frame_len, SEGMENT_HEADER_LEN};
use spooler::{Compression, Durability, Position, Reader, Spool};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Rotate,
    Seal,
    Read { reader: usize, max: usize },
    Commit { reader: usize },
    Retain,
    Reopen,
    CrashTruncate { at: u32 },
    CrashFlip { at: u32, xor: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6).prop_map(Op::Append),
        1 => Just(Op::Rotate),
        1 => Just(Op::Seal),
        4 => (0..2usize, 1..40usize).prop_map(|(reader, max)| Op::Read { reader, max }),
        2 => (0..2usize).prop_map(|reader| Op::Commit { reader }),
        1 => Just(Op::Retain),
        1 => Just(Op::Reopen),
        1 => any::<u32>().prop_map(|at| Op::CrashTruncate { at }),
        1 => (any::<u32>(), 1..=255u8).prop_map(|(at, xor)| Op::CrashFlip { at, xor }),
    ]
}

const READERS: [&str; 2] = ["ship", "audit"];

struct Model {
    /// Every frame that must still be readable, in position order.
    frames: Vec<(Position, Vec<u8>)>,
    /// Byte ranges of the active segment whose frames a flip destroyed;
    /// flipping there again could restore a frame, so crashes avoid them.
    dead: Vec<(u64, u64, u64)>,
    cursor: [Position; 2],
    committed: [Position; 2],
}

impl Model {
    fn available(&self, from: Position) -> Vec<&(Position, Vec<u8>)> {
        self.frames.iter().filter(|(p, _)| *p >= from).collect()
    }
}

fn open(dir: &Path, compression: Compression, durability: Durability) -> (Spool, Vec<Reader>) {
    let spool = Spool::open(dir, small_config(durability, compression)).unwrap();
    let readers = READERS.iter().map(|n| spool.reader(n).unwrap()).collect();
    (spool, readers)
}

fn run(ops: Vec<Op>, compress: bool, group: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let compression = if compress {
        Compression::Zstd { level: 1 }
    } else {
        Compression::Off
    };
    let durability = if group {
        Durability::Group
    } else {
        Durability::Always
    };
    let (mut spool, mut readers) = open(dir.path(), compression, durability);
    let start = readers[0].position();
    let mut m = Model {
        frames: Vec::new(),
        dead: Vec::new(),
        cursor: [start; 2],
        committed: [start; 2],
    };
    let mut max_ever: Option<Position> = None;
    let mut untraceable = false;
    for op in ops {
        match op {
            Op::Append(batch) => {
                let pos = spool.append(&batch).unwrap();
                prop_assert_eq!(pos.len(), batch.len());
                for (p, b) in pos.into_iter().zip(batch) {
                    // Across crashes too: a position is never handed out twice.
                    if let Some(m) = max_ever {
                        prop_assert!(p > m, "position {} reused", p);
                    }
                    max_ever = Some(p);
                    m.frames.push((p, b));
                }
            }
            Op::Rotate => spool.rotate().unwrap(),
            Op::Seal => {
                spool.seal_pending().unwrap();
            }
            Op::Read { reader, max } => {
                let got = readers[reader].next(max, 1 << 30).unwrap();
                let want = m.available(m.cursor[reader]);
                prop_assert_eq!(got.len(), want.len().min(max));
                for (g, w) in got.iter().zip(want) {
                    prop_assert_eq!(g.position, w.0);
                    prop_assert_eq!(&g.payload, &w.1);
                }
                if let Some(last) = got.last() {
                    m.cursor[reader] = last.next;
                }
            }
            Op::Commit { reader } => {
                readers[reader].commit_read().unwrap();
                m.committed[reader] = readers[reader].committed();
            }
            Op::Retain => {
                spool.retain().unwrap();
            }
            Op::Reopen | Op::CrashTruncate { .. } | Op::CrashFlip { .. } => {
                drop(readers);
                drop(spool);
                let seg = active_segment(dir.path());
                let seq: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
                let mut bytes = fs::read(&seg).unwrap();
                let len = bytes.len() as u64;
                match op {
                    Op::CrashTruncate { at } => {
                        let cut = at as u64 % (len + 1);
                        bytes.truncate(cut as usize);
                        fs::write(&seg, &bytes).unwrap();
                        // Loss that ends exactly on a frame boundary, below
                        // every checkpoint, leaves recovery no trace: only then
                        // may the lost frames' positions be handed out again.
                        let clean = cut == 0
                            || cut == len
                            || cut == SEGMENT_HEADER_LEN as u64
                            || m.frames.iter().any(|(p, b)| {
                                p.segment == seq && p.offset + frame_len(b.len()) as u64 == cut
                            });
                        let cut_at = Position::new(seq, cut.max(SEGMENT_HEADER_LEN as u64));
                        if clean && m.committed.iter().all(|c| *c <= cut_at) {
                            untraceable = true;
                        }
                        m.frames.retain(|(p, b)| {
                            p.segment != seq
                                || (cut >= SEGMENT_HEADER_LEN as u64
                                    && p.offset + frame_len(b.len()) as u64 <= cut)
                        });
                        m.dead.retain(|&(s, a, _)| s != seq || a < cut);
                    }
                    Op::CrashFlip { at, xor } => {
                        let b = at as u64 % len.max(1);
                        let in_dead = m
                            .dead
                            .iter()
                            .any(|&(s, a, z)| s == seq && (a..z).contains(&b));
                        if len > 0 && !in_dead {
                            bytes[b as usize] ^= xor;
                            fs::write(&seg, &bytes).unwrap();
                            if let Some(i) = m.frames.iter().position(|(p, pl)| {
                                p.segment == seq
                                    && (p.offset..p.offset + frame_len(pl.len()) as u64)
                                        .contains(&b)
                            }) {
                                let (p, pl) = m.frames.remove(i);
                                m.dead
                                    .push((seq, p.offset, p.offset + frame_len(pl.len()) as u64));
                            }
                        }
                    }
                    _ => {}
                }
                if untraceable {
                    max_ever = m.frames.last().map(|(p, _)| *p);
                    untraceable = false;
                }
                (spool, readers) = open(dir.path(), compression, durability);
                for (i, r) in readers.iter().enumerate() {
                    // A checkpoint may have been moved back to the new end;
                    // it never moves forward.
                    prop_assert!(r.committed() <= m.committed[i]);
                    m.committed[i] = r.committed();
                    m.cursor[i] = r.committed();
                }
            }
        }
    }
    // A reader that was never used sees every frame still on disk, in order.
    let oldest = m
        .frames
        .iter()
        .map(|(p, _)| p.segment)
        .filter(|s| {
            fs::read_dir(dir.path().join("segments")).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{s:020}"))
            })
        })
        .min();
    let mut fresh = spool.reader("fresh").unwrap();
    let mut got = Vec::new();
    for _ in 0..10_000 {
        let b = fresh.next(1000, 1 << 30).unwrap();
        if b.is_empty() {
            break;
        }
        got.extend(b.into_iter().map(|r| (r.position, r.payload)));
    }
    let want: Vec<(Position, Vec<u8>)> = m
        .frames
        .iter()
        .filter(|(p, _)| oldest.is_some_and(|o| p.segment >= o))
        .cloned()
        .collect();
    prop_assert_eq!(got, want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn spool_matches_model(ops in prop::collection::vec(op(), 1..60), compress: bool, group: bool) {
        run(ops, compress, group)?;
    }
}
