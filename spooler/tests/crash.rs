//! Real crash test: a child process appends with policy `always` or `group`
//! and prints each acknowledged position; the parent `kill -9`s it at a
//! random moment, reopens the spool and checks that every acknowledged frame
//! is there, intact, exactly once.
//!
//! `SPOOLHOUSE_CRASH_ROUNDS` sets the number of rounds (default 10). The
//! binary re-executes itself as the child when `SPOOLHOUSE_CRASH_CHILD` is
//! set.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spooler::{Compression, Config, Durability, Position, Spool};

const CHILD_ENV: &str = "SPOOLHOUSE_CRASH_CHILD";
/// A child that is never killed stops by itself after this long.
const CHILD_LIFETIME: Duration = Duration::from_secs(30);
/// Appender threads in a `group` child, so group commit really groups.
const GROUP_THREADS: u64 = 4;
/// Longest a round may take before the test fails.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);

fn config(durability: Durability) -> Config {
    Config {
        durability,
        segment_bytes: 64 << 10,
        segment_age_ms: 0,
        compression: Compression::Zstd { level: 1 },
        background_seal: true,
        quota_bytes: 1 << 34,
    }
}

/// Deterministic payload, so "intact" can be checked byte for byte.
fn payload(round: u64, thread: u64, n: u64) -> Vec<u8> {
    let mut v = format!("r{round}-t{thread}-n{n}-").into_bytes();
    let len = 20 + (n * 37 + thread * 11) % 400;
    let mut x = round ^ (thread << 20) ^ (n << 32) ^ 0x9E37_79B9_7F4A_7C15;
    while (v.len() as u64) < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(b'a' + (x % 26) as u8);
    }
    v
}

fn child(spec: &str) {
    let mut parts = spec.split(',');
    let dir = parts.next().expect("dir");
    let policy = parts.next().expect("policy");
    let round: u64 = parts.next().expect("round").parse().expect("round number");
    let (durability, threads) = match policy {
        "always" => (Durability::Always, 1),
        _ => (Durability::Group, GROUP_THREADS),
    };
    let spool = Arc::new(Spool::open(dir, config(durability)).expect("child opens spool"));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let spool = spool.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while started.elapsed() < CHILD_LIFETIME {
                    let size = 1 + (n * 7 + t) % 40;
                    let batch: Vec<Vec<u8>> = (n..n + size).map(|i| payload(round, t, i)).collect();
                    let pos = spool.append(&batch).expect("child append");
                    let mut o = out.lock().unwrap();
                    for (i, p) in pos.iter().enumerate() {
                        writeln!(o, "{} {} {} {}", p.segment, p.offset, t, n + i as u64).unwrap();
                    }
                    o.flush().unwrap();
                    n += size;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn round(
    dir: &Path,
    round: u64,
    policy: &str,
    rng: &mut Rng,
) -> (usize, HashMap<Vec<u8>, Position>) {
    let deadline = Instant::now() + ROUND_TIMEOUT;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, format!("{},{policy},{round}", dir.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().unwrap();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // Ends when the child's stdout closes, i.e. when it dies.
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                // A line cut by the kill has no newline: not acknowledged.
                if line.ends_with('\n') {
                    acked.lock().unwrap().push(line.trim_end().to_string());
                }
                line.clear();
            }
        })
    };
    let wait_ms = 20 + rng.next() % 300;
    std::thread::sleep(Duration::from_millis(wait_ms));
    child.kill().expect("kill -9 the child");
    child.wait().unwrap();
    while !collector.is_finished() {
        assert!(Instant::now() < deadline, "round {round} timed out");
        std::thread::sleep(Duration::from_millis(5));
    }
    collector.join().unwrap();
    let lines = acked.lock().unwrap().clone();
    let mut out = HashMap::new();
    for l in &lines {
        let f: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        out.insert(payload(round, f[2], f[3]), Position::new(f[0], f[1]));
    }
    (lines.len(), out)
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let rounds: u64 = std::env::var("SPOOLHOUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("crash test: {rounds} rounds, seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut all_acked: HashMap<Vec<u8>, Position> = HashMap::new();
    let mut total_acked = 0;
    let started = Instant::now();
    for r in 0..rounds {
        let policy = if r % 2 == 0 { "always" } else { "group" };
        let (n, acked) = round(dir.path(), r, policy, &mut rng);
        total_acked += n;
        all_acked.extend(acked);

        let spool = Spool::open(dir.path(), config(Durability::Always)).expect("reopen after kill");
        let st = spool.stats().unwrap();
        assert_eq!(st.corrupt_regions, 0, "kill -9 must not corrupt: {st:?}");
        let mut reader = spool.reader("verify").unwrap();
        let mut seen: HashMap<Vec<u8>, Position> = HashMap::new();
        for _ in 0..1_000_000 {
            let batch = reader.next(10_000, 64 << 20).unwrap();
            if batch.is_empty() {
                break;
            }
            for rec in batch {
                if let Some(prev) = seen.insert(rec.payload.clone(), rec.position) {
                    panic!(
                        "frame {:?} present twice, at {prev} and {}",
                        String::from_utf8_lossy(&rec.payload[..20.min(rec.payload.len())]),
                        rec.position
                    );
                }
            }
        }
        assert_eq!(reader.stats().corrupt_regions, 0);
        for (p, pos) in &all_acked {
            match seen.get(p) {
                Some(at) => assert_eq!(at, pos, "acknowledged frame moved"),
                None => panic!(
                    "round {r} ({policy}): acknowledged frame at {pos} lost ({} bytes)",
                    p.len()
                ),
            }
        }
        println!(
            "round {r:>3} {policy:<6}: {n:>6} acknowledged this round, {} frames in spool, torn tail {} bytes",
            seen.len(),
            st.torn_tail_bytes
        );
    }
    println!(
        "crash test passed: {rounds} rounds, {total_acked} acknowledged frames all present, intact, once ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
