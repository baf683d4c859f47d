//! A model-based property test of the inbox: random sequences of appends
//! (some lines in two writes under `flock`, as a slow writer's), rotations,
//! deletions of rotated files, truncations in place, re-creations under the
//! same name, collector restarts and kills (`SIGKILL`: no last checkpoint,
//! appends the spool took but the inbox state does not know of), run against
//! a real collector process while it tails, and checked against an
//! in-memory model of which lines must arrive
//! (every line appended, unless its file was deleted, truncated or replaced
//! before it was read: then it may arrive). Every line that must arrive
//! arrives exactly once; no line arrives twice.
//!
//! Cases: 24 by default, `PROPTEST_CASES=N` for more.
//!
//! The collector runs as a process of its own ([`common::process`]), so it
//! can be killed as a crash would.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::process::{self, CollectorProcess};
use common::*;
use proptest::prelude::*;

const FILES: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// `n` lines to file `k`; `split`: each line in two writes under `flock`.
    Append { k: usize, n: u64, split: bool },
    /// Rename `k.log` to a new `.old` name; the app reopens `k.log`.
    Rotate { k: usize },
    /// Delete the oldest rotated file of `k` (if the collector has not).
    DeleteOld { k: usize },
    /// Truncate `k.log` in place.
    Truncate { k: usize },
    /// Delete `k.log` and create it anew.
    Recreate { k: usize },
    /// Stop the collector and start it again.
    Restart,
    /// Kill the collector (`SIGKILL`) and start it again.
    Kill,
    /// Let the tailer run a moment.
    Pause { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0..FILES;
    prop_oneof![
        6 => (k.clone(), 1..40u64, any::<bool>()).prop_map(|(k, n, split)| Op::Append { k, n, split }),
        3 => k.clone().prop_map(|k| Op::Rotate { k }),
        1 => k.clone().prop_map(|k| Op::DeleteOld { k }),
        1 => k.clone().prop_map(|k| Op::Truncate { k }),
        1 => k.prop_map(|k| Op::Recreate { k }),
        1 => Just(Op::Restart),
        1 => Just(Op::Kill),
        2 => (0..60u64).prop_map(|ms| Op::Pause { ms }),
    ]
}

/// Whether a line must arrive, or only may.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Must,
    May,
}

struct Model {
    fate: HashMap<u64, Fate>,
    /// Lines in each live `.log`.
    live: Vec<Vec<u64>>,
    /// Rotated files of each `k`, oldest first, with their lines.
    old: Vec<Vec<(PathBuf, Vec<u64>)>>,
    generation: u64,
    next_id: u64,
}

impl Model {
    fn lose_may(&mut self, ids: &[u64]) {
        for id in ids {
            self.fate.insert(*id, Fate::May);
        }
    }
}

#[test]
#[ignore = "the model test's collector process; the model test starts it with --ignored"]
fn collector_process() {
    process::child_main();
}

fn live_path(dir: &Path, k: usize) -> PathBuf {
    dir.join("inbox").join(format!("f{k}.log"))
}

fn append_lines(path: &std::path::Path, ids: &[u64], split: bool) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for id in ids {
        let line = format!("{}\n", vote(*id));
        if split {
            // SAFETY: flock on a file this function holds open.
            use std::os::fd::AsRawFd;
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            let (a, b) = line.split_at(line.len() / 2);
            f.write_all(a.as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(1));
            f.write_all(b.as_bytes()).unwrap();
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
        } else {
            f.write_all(line.as_bytes()).unwrap();
        }
    }
}

fn run_case(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let mut m = Model {
        fate: HashMap::new(),
        live: vec![Vec::new(); FILES],
        old: vec![Vec::new(); FILES],
        generation: 0,
        next_id: 1,
    };
    let mut running = CollectorProcess::start(dir);
    for op in ops {
        match op {
            Op::Append { k, n, split } => {
                let ids: Vec<u64> = (m.next_id..m.next_id + n).collect();
                m.next_id += n;
                append_lines(&live_path(dir, k), &ids, split);
                for id in &ids {
                    m.fate.insert(*id, Fate::Must);
                }
                m.live[k].extend(ids);
            }
            Op::Rotate { k } => {
                let from = live_path(dir, k);
                if from.exists() {
                    m.generation += 1;
                    let to = inbox.join(format!("f{k}.log.{}.old", m.generation));
                    std::fs::rename(&from, &to).unwrap();
                    let ids = std::mem::take(&mut m.live[k]);
                    m.old[k].push((to, ids));
                }
            }
            Op::DeleteOld { k } => {
                if !m.old[k].is_empty() {
                    let (path, ids) = m.old[k].remove(0);
                    // Gone already if the collector read it all and deleted it.
                    if std::fs::remove_file(&path).is_ok() {
                        m.lose_may(&ids);
                    }
                }
            }
            Op::Truncate { k } => {
                let p = live_path(dir, k);
                if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&p) {
                    f.set_len(0).unwrap();
                    let ids = std::mem::take(&mut m.live[k]);
                    m.lose_may(&ids);
                }
            }
            Op::Recreate { k } => {
                let p = live_path(dir, k);
                if std::fs::remove_file(&p).is_ok() {
                    std::fs::File::create(&p).unwrap();
                    let ids = std::mem::take(&mut m.live[k]);
                    m.lose_may(&ids);
                }
            }
            Op::Restart => {
                running.stop();
                running = CollectorProcess::start(dir);
            }
            Op::Kill => {
                running.kill();
                running = CollectorProcess::start(dir);
            }
            Op::Pause { ms } => std::thread::sleep(Duration::from_millis(ms)),
        }
    }
    let must: Vec<u64> = m
        .fate
        .iter()
        .filter(|(_, f)| **f == Fate::Must)
        .map(|(id, _)| *id)
        .collect();
    let spool = dir.join("spool");
    let arrived = || {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        for id in user_ids(&read_spool_of_other_process(&spool)) {
            *seen.entry(id).or_insert(0) += 1;
        }
        seen
    };
    let until = Instant::now() + Duration::from_secs(30);
    let all_there = loop {
        let seen = arrived();
        if must.iter().all(|id| seen.contains_key(id)) {
            break true;
        }
        if Instant::now() > until {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // A moment more for anything that would arrive twice.
    std::thread::sleep(Duration::from_millis(200));
    running.stop();
    let seen = arrived();
    let missing: Vec<u64> = must
        .iter()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let unknown: Vec<u64> = seen
        .keys()
        .filter(|id| !m.fate.contains_key(id))
        .copied()
        .collect();
    prop_assert!(all_there && missing.is_empty(), "lines lost: {missing:?}");
    prop_assert!(twice.is_empty(), "lines spooled twice: {twice:?}");
    prop_assert!(unknown.is_empty(), "lines nobody wrote: {unknown:?}");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        max_shrink_iters: 20,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_line_arrives_once_whatever_the_app_does_to_its_files(ops in prop::collection::vec(op(), 1..40)) {
        run_case(ops)?;
    }
}
