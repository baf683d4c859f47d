//! The `spoolhouse collector` process: `kill -9` at random moments while
//! clients send over the socket and TCP and an app writes (and rotates)
//! inbox files; after a restart every acknowledged event is in the spool
//! exactly once and every inbox line exactly once. Then SIGTERM while
//! clients send: the process drains and exits cleanly, nothing acknowledged
//! missing. And the `nc -U` example of `docs/protocol.md`, run as printed.
//!
//! The kill rounds run beside a CPU hog (one spinning thread per core):
//! timings that only fail on a busy host are the ones a quiet run misses.
//! Rounds: 10 by default (CI), `SPOOLHOUSE_CRASH_ROUNDS=1000` for the full
//! campaign.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use collector::{Client, ClientConfig, Endpoint, LineOutcome};
use dc_config::event::Value;
use dc_config::record::Record;
use dc_config::services::CollectorConfig;
use rand::Rng;

fn rounds() -> usize {
    std::env::var("SPOOLHOUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

/// A collector child process, killed if the test fails.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `collector.toml` and `events.toml` into `dir`; returns the config.
fn write_config(dir: &Path) -> (PathBuf, CollectorConfig) {
    let d = dc_config::examples::declared();
    let mut c = CollectorConfig::for_dc(d.topology.dc("dc1").unwrap());
    c.tcp = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    c.socket = dir.join("collector.sock");
    c.inbox = dir.join("inbox");
    c.spool_dir = dir.join("spool");
    c.spool_quota_bytes = 1 << 30;
    c.limits.inbox_poll_ms = 20;
    c.limits.inbox_checkpoint_ms = 100;
    std::fs::write(dir.join("events.toml"), &d.registry_text).unwrap();
    let path = dir.join("collector.toml");
    std::fs::write(&path, toml::to_string(&c).unwrap()).unwrap();
    (path, c)
}

fn spawn(config: &Path, log: &Path) -> Proc {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
            .args(["collector", "--config", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Waits (bounded) until the collector answers on its socket.
fn wait_ready(socket: &Path, proc: &mut Proc, log: &Path) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        if let Some(status) = proc.0.try_wait().unwrap() {
            panic!(
                "collector exited with {status}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("collector not ready within 20 s");
}

fn vote(id: u64) -> String {
    format!(
        r#"{{"event":"vote","time":{},"attrs":{{"user_id":{id},"target_user_id":2,"vote":"yes","country_id":7}}}}"#,
        common::now_ms()
    )
}

/// Every `user_id` in the spool directory, counted.
fn spooled(dir: &Path) -> HashMap<u64, u32> {
    let mut r = spooler::Reader::open(dir, "test-verify").unwrap();
    let mut out = HashMap::new();
    for _ in 0..1_000_000 {
        let batch = r.next(10_000, 64 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        for f in batch {
            let rec = Record::decode(&f.payload).unwrap();
            let Some(Value::UInt(id)) = rec.event.attr("user_id") else {
                panic!("no user_id in {rec:?}");
            };
            *out.entry(*id).or_default() += 1;
        }
    }
    // A fresh reader next time: this one would start after what it read.
    std::fs::remove_file(dir.join("readers/test-verify.ckpt")).unwrap();
    out
}

/// Sends batches of fresh ids until `stop`, recording what was acked.
async fn client_loop(
    endpoint: Endpoint,
    first_id: u64,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
) {
    let config = ClientConfig {
        // No resends: a resend after an unseen ack could store twice; the
        // test proves the collector side alone.
        retries_max: 0,
        response_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let Ok(mut client) = Client::connect(endpoint, config).await else {
        return;
    };
    let mut next = first_id;
    // Bounded: at most 10 000 batches per client per round.
    for _ in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let n = rand::rng().random_range(1..200u64);
        let lines: Vec<String> = (next..next + n).map(vote).collect();
        let ids: Vec<u64> = (next..next + n).collect();
        next += n;
        let Ok(out) = client.send_batch(&lines).await else {
            return;
        };
        let mut a = acked.lock().unwrap();
        let mut lost = false;
        for (id, o) in ids.iter().zip(out) {
            match o {
                LineOutcome::Acked => a.push(*id),
                LineOutcome::Unsent { .. } => lost = true,
                LineOutcome::Rejected { error, .. } => panic!("valid line rejected: {error}"),
            }
        }
        if lost {
            return;
        }
    }
}

/// Appends lines of fresh ids to the inbox, sometimes rotating, until `stop`.
fn inbox_writer(inbox: PathBuf, first_id: u64, round: usize, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut written = Vec::new();
    let mut next = first_id;
    let log = inbox.join("app.log");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .unwrap();
    let mut rng = rand::rng();
    for i in 0..10_000 {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let n = rng.random_range(1..50u64);
        let mut text = String::new();
        for id in next..next + n {
            text.push_str(&vote(id));
            text.push('\n');
            written.push(id);
        }
        next += n;
        // Torn writes: a line's halves in separate writes.
        let cut = rng.random_range(0..text.len());
        f.write_all(&text.as_bytes()[..cut]).unwrap();
        f.flush().unwrap();
        f.write_all(&text.as_bytes()[cut..]).unwrap();
        if i % 25 == 24 {
            std::fs::rename(&log, inbox.join(format!("app-{round}-{i}.log.old"))).unwrap();
            f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    written
}

struct Round {
    acked: Arc<Mutex<Vec<u64>>>,
    written: Vec<u64>,
}

/// Runs clients and an inbox writer against a live collector, then either
/// kills it (`kill -9`) or sends SIGTERM after `run_for`.
fn round(
    c: &CollectorConfig,
    proc: &mut Proc,
    r: usize,
    run_for: Duration,
    sigterm: bool,
) -> Round {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let base = (r as u64 + 1) * 1_000_000_000;
    let endpoints = [
        Endpoint::Unix(c.socket.clone()),
        Endpoint::Unix(c.socket.clone()),
        Endpoint::Tcp(c.tcp),
    ];
    let tasks: Vec<_> = endpoints
        .into_iter()
        .enumerate()
        .map(|(k, e)| {
            rt.spawn(client_loop(
                e,
                base + k as u64 * 100_000_000,
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    let writer = {
        let (inbox, stop) = (c.inbox.clone(), stop.clone());
        std::thread::spawn(move || inbox_writer(inbox, base + 900_000_000, r, stop))
    };
    std::thread::sleep(run_for);
    if sigterm {
        let ok = Command::new("kill")
            .args(["-TERM", &proc.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    } else {
        proc.0.kill().unwrap();
    }
    let status = proc.0.wait().unwrap();
    if sigterm {
        assert!(
            status.success(),
            "SIGTERM must drain and exit 0, got {status}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("clients stop within 30 s")
                .unwrap();
        }
    });
    Round {
        acked,
        written: writer.join().unwrap(),
    }
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let (config_path, c) = write_config(dir.path());
    let log = dir.path().join("collector.log");
    std::fs::create_dir_all(&c.inbox).unwrap();
    let mut acked = Vec::new();
    let mut written = Vec::new();
    let mut rng = rand::rng();
    let n = rounds();
    let t0 = Instant::now();
    let hog = common::CpuHog::start(Duration::from_secs(7_200));
    for r in 0..n {
        let mut proc = spawn(&config_path, &log);
        wait_ready(&c.socket, &mut proc, &log);
        let run_for = Duration::from_millis(rng.random_range(50..400));
        let out = round(&c, &mut proc, r, run_for, false);
        acked.extend(out.acked.lock().unwrap().iter().copied());
        written.extend(out.written);
    }
    drop(hog);
    // A last run ends with SIGTERM while clients send: it must drain.
    let mut proc = spawn(&config_path, &log);
    wait_ready(&c.socket, &mut proc, &log);
    let out = round(&c, &mut proc, n, Duration::from_millis(300), true);
    acked.extend(out.acked.lock().unwrap().iter().copied());
    written.extend(out.written);
    // Restart once more to let the inbox catch up with what was written
    // after the last stop, then stop cleanly.
    let mut proc = spawn(&config_path, &log);
    wait_ready(&c.socket, &mut proc, &log);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts = spooled(&c.spool_dir);
    while written.iter().any(|id| !counts.contains_key(id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        counts = spooled(&c.spool_dir);
    }
    Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(proc.0.wait().unwrap().success());
    let counts = spooled(&c.spool_dir);
    let missing: Vec<_> = acked.iter().filter(|id| !counts.contains_key(id)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged events missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let missing_inbox: Vec<_> = written
        .iter()
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing_inbox.is_empty(),
        "{} inbox lines missing, e.g. {:?}",
        missing_inbox.len(),
        &missing_inbox[..missing_inbox.len().min(5)]
    );
    let dups: Vec<_> = counts.iter().filter(|(_, &k)| k > 1).collect();
    assert!(
        dups.is_empty(),
        "{} events spooled more than once, e.g. {:?}",
        dups.len(),
        &dups[..dups.len().min(5)]
    );
    let leftover_old: Vec<_> = std::fs::read_dir(&c.inbox)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".old"))
        .collect();
    assert!(
        leftover_old.is_empty(),
        "rotated files left behind: {leftover_old:?}"
    );
    eprintln!(
        "collector kill -9: {n} rounds + SIGTERM in {:.1} s; {} acknowledged socket/TCP events and {} inbox lines, each in the spool exactly once",
        t0.elapsed().as_secs_f64(),
        acked.len(),
        written.len()
    );
}

/// The `sh` block of `docs/protocol.md` under "Try it with `nc`", and the
/// `text` block after it.
fn nc_example() -> (String, String) {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let section = doc
        .split("## Try it with `nc`")
        .nth(1)
        .expect("the nc section");
    let block = |lang: &str| {
        let start = section.find(&format!("```{lang}\n")).expect("block") + lang.len() + 4;
        let end = start + section[start..].find("```").unwrap();
        section[start..end].to_string()
    };
    (block("sh"), block("text"))
}

#[test]
fn the_nc_example_in_the_protocol_doc_works_as_printed() {
    if Command::new("nc").arg("-h").output().is_err() {
        // netcat-openbsd is not installed: the example cannot be run here.
        eprintln!("skipped: `nc` (netcat-openbsd) is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (config_path, c) = write_config(dir.path());
    let log = dir.path().join("collector.log");
    let mut proc = spawn(&config_path, &log);
    wait_ready(&c.socket, &mut proc, &log);
    let (script, expected) = nc_example();
    let script = script.replace(
        "/var/lib/spoolhouse/dc1/collector.sock",
        c.socket.to_str().unwrap(),
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
}

/// SIGHUP under load: the collector reads its registry again and puts it in
/// service. Clients keep their connections (one sends a line of the new
/// event type on the connection it had before the reload and gets it
/// acknowledged), every acknowledged line is in the spool once, and a
/// registry that does not check leaves the one in service.
#[test]
fn sighup_reloads_the_registry_without_dropping_a_connection_or_a_line() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let (config, cfg) = write_config(dir.path());
    let log = dir.path().join("collector.log");
    let mut proc = spawn(&config, &log);
    wait_ready(&cfg.socket, &mut proc, &log);
    let pid = proc.0.id().to_string();
    let hup = || {
        assert!(Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success());
    };
    // One connection held across the reload.
    let held = std::os::unix::net::UnixStream::connect(&cfg.socket).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answers = BufReader::new(held.try_clone().unwrap());
    let mut writer = held;
    let mut ask = |line: &str| -> Vec<String> {
        writer.write_all(format!("{line}\n").as_bytes()).unwrap();
        let mut got = Vec::new();
        loop {
            let mut a = String::new();
            answers.read_line(&mut a).unwrap();
            let done = a.contains("\"ack\"") || a.contains("\"refused\"");
            got.push(a);
            if done {
                return got;
            }
        }
    };
    let click = |id: u64| {
        format!(
            r#"{{"event":"click","time":{},"attrs":{{"user_id":{id}}}}}"#,
            common::now_ms()
        )
    };
    let before = ask(&click(1));
    assert!(before[0].contains("unknown_event"), "{before:?}");

    // Load from two clients throughout (bounded: each at most 10 000 batches).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..2u64)
        .map(|i| {
            rt.spawn(client_loop(
                Endpoint::Unix(cfg.socket.clone()),
                100_000_000 * (i + 1),
                stop.clone(),
                acked.clone(),
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A registry that does not check: logged, the one in service stays.
    let registry = dir.path().join("events.toml");
    let good = std::fs::read_to_string(&registry).unwrap();
    std::fs::write(
        &registry,
        "[event.click]\nfields.user_id = { type = \"nope\" }\n",
    )
    .unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert!(ask(&vote(7))[0].contains("\"accepted\":1"));
    // The new event type.
    std::fs::write(
        &registry,
        format!("{good}\n[event.click]\nfields.user_id = {{ type = \"u64\" }}\n"),
    )
    .unwrap();
    hup();
    let t0 = Instant::now();
    let after = loop {
        let a = ask(&click(2));
        if a[0].contains("\"accepted\":1") || t0.elapsed() > Duration::from_secs(10) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(after[0].contains("\"accepted\":1"), "{after:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        rt.block_on(c).unwrap();
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the registry does not check"), "{text}");
    assert!(text.contains("registry reloaded (SIGHUP)"), "{text}");
    assert!(
        text.contains("new event type"),
        "the change is logged: {text}"
    );
    drop(proc);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "load ran: {}", acked.len());
    let spooled = spooled(&cfg.spool_dir);
    for id in &acked {
        assert_eq!(spooled.get(id), Some(&1), "acked line {id}");
    }
}
