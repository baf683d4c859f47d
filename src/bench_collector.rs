//! `spoolhouse bench collector`: 100 B events from clients over the Unix
//! socket and TCP into a real collector and spool (fsync policy `group`),
//! beside the spooler's direct append of the same records and `dd` to the
//! same directory, in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use collector::{Client, ClientConfig, Collector, Endpoint, Health, LineOutcome, Metrics};
use dc_config::event::{validate, Event};
use dc_config::record::Record;
use dc_config::services::CollectorConfig;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Transport {
    Unix,
    Tcp,
}

/// Arguments of `spoolhouse bench collector`.
#[derive(Debug, Args)]
pub struct CollectorBench {
    /// Directory to benchmark in (a fresh subdirectory per case is made and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Time each case sends for, in milliseconds.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    case_ms: u64,
    /// Concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Transports.
    #[arg(long, value_delimiter = ',', value_enum, default_value = "unix,tcp")]
    transports: Vec<Transport>,
    /// Lines per client batch (1 = each event waits for its ack).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    batches: Vec<usize>,
    /// zstd level of sealed segments, for the collector and the direct
    /// appends alike; 0 leaves them raw.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(0..=22))]
    zstd_level: i32,
}

/// A wire line of exactly 100 bytes (newline excluded) with a varying user:
/// the id is right-aligned in spaces, which JSON allows before a value.
fn line(id: u64) -> String {
    let l = format!(
        r#"{{"event":"watch_progress","time":{},"attrs":{{"user_id":{:>4},"video_id":2,"video_time":3}}}}"#,
        // Now: the collector accepts a window around its clock.
        dc_config::event::now_ms(),
        id % 10_000
    );
    debug_assert_eq!(l.len(), 100);
    l
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct CaseResult {
    events: u64,
    secs: f64,
    latencies: Vec<f64>,
    spool_bytes: u64,
}

fn config_for(dir: &Path, zstd_level: i32) -> CollectorConfig {
    let d = dc_config::examples::declared();
    let mut c = CollectorConfig::for_dc(d.topology.dc("dc1").expect("example dc1"));
    c.tcp = "127.0.0.1:0".parse().expect("static address");
    c.socket = dir.join("collector.sock");
    c.inbox = dir.join("inbox");
    c.spool_dir = dir.join("spool");
    c.spool_quota_bytes = 100 << 30;
    c.limits.spool_zstd_level = zstd_level;
    c
}

fn run_case(
    dir: &Path,
    transport: Transport,
    clients: usize,
    batch: usize,
    case: Duration,
    zstd_level: i32,
) -> anyhow::Result<CaseResult> {
    let config = config_for(dir, zstd_level);
    let d = dc_config::examples::declared();
    let collector = Collector::open(
        config,
        d.registry,
        Arc::new(Metrics::unregistered()),
        Arc::new(Health::default()),
    )?;
    let spool = collector.spool();
    // The collector gets the two workers it would have in production; the
    // clients run on their own runtime, as separate apps would.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let running = server_rt.block_on(collector.start())?;
    let endpoint = match transport {
        Transport::Unix => Endpoint::Unix(running.socket.clone()),
        Transport::Tcp => Endpoint::Tcp(running.tcp_addr),
    };
    let t0 = Instant::now();
    let deadline = t0 + case;
    let results = client_rt.block_on(async {
        let tasks: Vec<_> = (0..clients)
            .map(|k| {
                let endpoint = endpoint.clone();
                tokio::spawn(async move {
                    let mut client = Client::connect(endpoint, ClientConfig::default()).await?;
                    let mut id = k as u64 * 1_000_000_000;
                    let mut events = 0u64;
                    let mut lat = Vec::new();
                    // Bounded by the deadline and by a count far above any rate here.
                    for _ in 0..10_000_000 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        let lines: Vec<String> = (id..id + batch as u64).map(line).collect();
                        id += batch as u64;
                        let t = Instant::now();
                        let out = client.send_batch(&lines).await?;
                        lat.push(t.elapsed().as_secs_f64());
                        events += out.iter().filter(|o| **o == LineOutcome::Acked).count() as u64;
                    }
                    anyhow::Ok((events, lat))
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await??);
        }
        anyhow::Ok(all)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    server_rt.block_on(running.shutdown())?;
    let spool_bytes = spool.stats()?.appended_bytes;
    let mut latencies: Vec<f64> = results.iter().flat_map(|r| r.1.iter().copied()).collect();
    latencies.sort_by(f64::total_cmp);
    Ok(CaseResult {
        events: results.iter().map(|r| r.0).sum(),
        secs,
        latencies,
        spool_bytes,
    })
}

/// The spooler alone: the same records (as the collector encodes them),
/// 1 000 per append from `threads` threads, policy `group`.
fn direct_append(
    dir: &Path,
    threads: usize,
    case: Duration,
    zstd_level: i32,
) -> anyhow::Result<f64> {
    let d = dc_config::examples::declared();
    let rec = |id: u64| {
        let ev = Event::parse_line(line(id).as_bytes()).expect("bench line parses");
        let valid = validate(&ev, &d.registry).expect("bench line is valid");
        Record {
            event: valid,
            inbox: None,
        }
        .encode()
        .expect("encodes")
    };
    let batch: Vec<Vec<u8>> = (0..1000).map(rec).collect();
    let spool = Arc::new(spooler::Spool::open(
        dir.join("direct"),
        spooler::Config {
            durability: spooler::Durability::Group,
            quota_bytes: 100 << 30,
            compression: match zstd_level {
                0 => spooler::Compression::Off,
                level => spooler::Compression::Zstd { level },
            },
            ..spooler::Config::default()
        },
    )?);
    let t0 = Instant::now();
    let deadline = t0 + case;
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (spool, batch) = (spool.clone(), batch.clone());
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut n = 0;
                while Instant::now() < deadline {
                    spool.append(&batch)?;
                    n += batch.len() as u64;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("appender thread")?;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}

/// Runs every case and prints one table row each.
pub fn run(b: CollectorBench) -> anyhow::Result<()> {
    std::fs::create_dir_all(&b.dir).with_context(|| format!("creating {}", b.dir.display()))?;
    let case = Duration::from_millis(b.case_ms);
    println!(
        "collector → spool, 100 B events (JSON line; ~{} B spool record), policy group, zstd level {} (0 = raw), {} ms per case, {} cores",
        {
            let d = dc_config::examples::declared();
            let ev = Event::parse_line(line(1).as_bytes()).expect("parses");
            Record { event: validate(&ev, &d.registry).expect("valid"), inbox: None }
                .encode()
                .expect("encodes")
                .len()
        },
        b.zstd_level,
        b.case_ms,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "| transport | clients | batch | events/s | ack p50 ms | ack p99 ms | direct append ev/s | % of direct | spool MB/s | dd MB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for &clients in &b.clients {
        for &transport in &b.transports {
            for &batch in &b.batches {
                let dir = b.dir.join(format!(
                    "bench-collector-{}-{clients}-{transport:?}-{batch}",
                    std::process::id()
                ));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let r = run_case(&dir, transport, clients, batch, case, b.zstd_level)?;
                let direct = direct_append(&dir, clients.min(8), case, b.zstd_level)?;
                let dd = super::dd_median(&dir, r.spool_bytes.max(1 << 20))?;
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
                let eps = r.events as f64 / r.secs;
                println!(
                    "| {:?} | {clients} | {batch} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} % | {:.0} | {:.0} |",
                    transport,
                    eps,
                    percentile(&r.latencies, 0.5) * 1e3,
                    percentile(&r.latencies, 0.99) * 1e3,
                    direct,
                    100.0 * eps / direct,
                    r.spool_bytes as f64 / r.secs / 1e6,
                    dd / 1e6,
                );
            }
        }
    }
    println!("ack latency = client-side time from writing a batch to its last ack; direct append = Spool::append of the same records, 1 000 per append, min(clients, 8) threads; dd = median of 3 `dd conv=fdatasync` of the bytes the case spooled, same directory");
    Ok(())
}
