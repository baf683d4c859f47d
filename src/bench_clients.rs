//! `spoolhouse bench clients`: the generated Python, PHP and Go clients'
//! `send()` of N events into a collector, beside `spoolhouse send` of the
//! same events as JSON lines, same run, same collector (in this process,
//! its spool in a temporary folder).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use collector::{Collector, Health, Metrics};

/// Arguments of `spoolhouse bench clients`.
#[derive(Debug, Args)]
pub struct ClientsBench {
    /// Directory to benchmark in (a fresh subdirectory is made and removed).
    #[arg(long, default_value = ".")]
    dir: std::path::PathBuf,
    /// Events each client sends.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1_000..=5_000_000))]
    events: u64,
    /// Events per `send()` call of the generated client.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
}

/// The Python side: the same votes, `batch` per `send()`, timed around the
/// sends only (building the typed events included: that is the client's work).
const PYTHON: &str = r#"
import sys, time
from spoolhouse_events import Client, Vote
n, batch = int(sys.argv[1]), int(sys.argv[2])
client = Client()
t0 = time.monotonic()
stored = 0
for start in range(0, n, batch):
    events = [Vote(user_id=i, target_user_id=2, vote=Vote.Vote.YES, country_id=7)
              for i in range(start, min(n, start + batch))]
    stored += client.send(*events)
print(stored, time.monotonic() - t0)
"#;

/// The PHP side, as the Python one (argv: package folder, n, batch).
const PHP: &str = r#"<?php
declare(strict_types=1);
require $argv[1] . '/autoload.php';
use Spoolhouse\Events\{Client, Vote};
[$n, $batch] = [(int) $argv[2], (int) $argv[3]];
$client = new Client();
$t0 = microtime(true);
$stored = 0;
for ($start = 0; $start < $n; $start += $batch) {
    $events = [];
    for ($i = $start; $i < min($n, $start + $batch); $i++) {
        $events[] = new Vote(userId: $i, targetUserId: 2, vote: Vote::VOTE_YES, countryId: 7);
    }
    $stored += $client->send(...$events);
}
echo $stored, ' ', microtime(true) - $t0, "\n";
"#;

/// The Go side, as the Python one.
const GO: &str = r#"package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"spoolhouse/events"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	batch, _ := strconv.Atoi(os.Args[2])
	client, err := events.NewClientFromEnv()
	if err != nil {
		panic(err)
	}
	t0 := time.Now()
	stored := 0
	for start := 0; start < n; start += batch {
		var evs []events.Event
		for i := start; i < n && i < start+batch; i++ {
			evs = append(evs, events.Vote{UserID: uint64(i), TargetUserID: 2, Vote: events.VoteVoteYes, CountryID: 7})
		}
		k, err := client.Send(evs...)
		if err != nil {
			panic(err)
		}
		stored += k
	}
	fmt.Println(stored, time.Since(t0).Seconds())
}
"#;

/// Runs a timing program (its output: events stored, seconds); checks
/// every event was stored.
fn timed(cmd: &mut Command, what: &str, events: u64) -> anyhow::Result<f64> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let stored: u64 = it.next().unwrap_or("0").parse()?;
    let secs: f64 = it.next().unwrap_or("0").parse()?;
    if stored != events {
        bail!("{what} stored {stored} of {events} events");
    }
    Ok(secs)
}

/// Runs `spoolhouse bench clients`.
pub fn run(args: ClientsBench) -> anyhow::Result<()> {
    let path = args
        .dir
        .join(format!("bench-clients-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let result = measure(&args, &path);
    let _ = std::fs::remove_dir_all(&path);
    result
}

fn measure(args: &ClientsBench, dir: &std::path::Path) -> anyhow::Result<()> {
    let d = dc_config::examples::declared();
    let mut config =
        dc_config::services::CollectorConfig::for_dc(d.topology.dc("dc1").expect("example dc1"));
    config.tcp = "127.0.0.1:0".parse().expect("static address");
    config.socket = dir.join("collector.sock");
    config.inbox = dir.join("inbox");
    config.spool_dir = dir.join("spool");
    config.spool_quota_bytes = 100 << 30;
    let collector = Collector::open(
        config,
        d.registry.clone(),
        Arc::new(Metrics::unregistered()),
        Arc::new(Health::default()),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let running = rt.block_on(collector.start())?;
    let socket = running.socket.clone();

    // The generated clients.
    let write = |lang, out: &std::path::Path| -> anyhow::Result<()> {
        for f in dc_config::codegen::generate(lang, &d.registry, &d.registry_text) {
            let p = out.join(&f.path);
            std::fs::create_dir_all(p.parent().expect("a file in a folder"))?;
            std::fs::write(&p, &f.text)?;
        }
        Ok(())
    };
    let (n, batch) = (args.events.to_string(), args.batch.to_string());
    let py_dir = dir.join("python");
    write(dc_config::codegen::Lang::Python, &py_dir)?;
    let py_s = timed(
        Command::new("python3")
            .args(["-c", PYTHON, &n, &batch])
            .env("PYTHONPATH", &py_dir)
            .env("SPOOLHOUSE_SOCKET", &socket),
        "the Python client (apt-get install -y python3)",
        args.events,
    )?;
    let php_dir = dir.join("php");
    write(dc_config::codegen::Lang::Php, &php_dir)?;
    let php_s = timed(
        Command::new("php")
            .args(["-r", PHP.trim_start_matches("<?php"), "--"])
            .arg(&php_dir)
            .args([&n, &batch])
            .env("SPOOLHOUSE_SOCKET", &socket),
        "the PHP client (apt-get install -y php-cli)",
        args.events,
    )?;
    let go_dir = dir.join("go");
    write(dc_config::codegen::Lang::Go, &go_dir)?;
    std::fs::create_dir_all(go_dir.join("sendbench"))?;
    std::fs::write(go_dir.join("sendbench/main.go"), GO)?;
    // Built before, not timed.
    let built = Command::new("go")
        .args(["build", "-o", "sendbench.bin", "./sendbench"])
        .current_dir(&go_dir)
        .env("GOCACHE", go_dir.join(".gocache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .status()
        .context("running go (apt-get install -y golang-go)")?;
    if !built.success() {
        bail!("building the Go client's bench failed ({built})");
    }
    let go_s = timed(
        Command::new(go_dir.join("sendbench.bin"))
            .args([&n, &batch])
            .env("SPOOLHOUSE_SOCKET", &socket),
        "the Go client",
        args.events,
    )?;

    // `spoolhouse send` of the same votes as JSON lines.
    let now = dc_config::event::now_ms();
    let lines: String = (0..args.events)
        .map(|i| {
            format!(
                "{{\"event\":\"vote\",\"time\":{now},\"attrs\":{{\"user_id\":{i},\"target_user_id\":2,\"vote\":\"yes\",\"country_id\":7}}}}\n"
            )
        })
        .collect();
    let file = dir.join("votes.jsonl");
    std::fs::write(&file, lines)?;
    let t0 = Instant::now();
    let send = Command::new(std::env::current_exe()?)
        .arg("send")
        .arg(&file)
        .arg("--to")
        .arg(format!("unix:{}", socket.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    let send_s = t0.elapsed().as_secs_f64();
    if !send.success() {
        bail!("spoolhouse send failed ({send})");
    }
    rt.block_on(running.shutdown())?;
    let load = crate::machine::load_average();
    println!(
        "{} vote events into one collector (unix socket, fsync group), load {load}:",
        args.events
    );
    println!(
        "  generated Python client, {} per send(): {:>9.0} events/s ({py_s:.2} s)",
        args.batch,
        args.events as f64 / py_s
    );
    println!(
        "  generated PHP client, {} per send():    {:>9.0} events/s ({php_s:.2} s)",
        args.batch,
        args.events as f64 / php_s
    );
    println!(
        "  generated Go client, {} per Send():     {:>9.0} events/s ({go_s:.2} s)",
        args.batch,
        args.events as f64 / go_s
    );
    println!(
        "  spoolhouse send (JSON lines file):        {:>9.0} events/s ({send_s:.2} s, process start included)",
        args.events as f64 / send_s
    );
    println!(
        "  Python / spoolhouse send = {:.0} %, PHP / spoolhouse send = {:.0} %, Go / spoolhouse send = {:.0} %",
        100.0 * send_s / py_s,
        100.0 * send_s / php_s,
        100.0 * send_s / go_s
    );
    Ok(())
}
