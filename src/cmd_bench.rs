//! `spoolhouse bench`: measured side by side with a reference on the same
//! disk in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use spooler::{Compression, Config, Durability, Spool};

// A child module, so it shares this module's `dd` reference measurement.
#[path = "bench_collector.rs"]
mod bench_collector;

/// Arguments of `spoolhouse bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Spool appends (100 B and 1 KiB payloads; batches of 1, 100, 1000; each
    /// durability policy) against `dd … conv=fdatasync` writing the same bytes.
    Spool(SpoolBench),
    /// 1 M events from a spool into a one-shard datacenter, beside
    /// `clickhouse-client` (TSV) and curl (RowBinary) inserting the same rows.
    Shipper(crate::bench_shipper::ShipperBench),
    /// Time-series reads (20 series x 14 days out of 2 000) and the
    /// aggregation's points per second beside ClickHouse's own GROUP BY.
    Series(crate::bench_series::SeriesBench),
    /// Events/s of 100 B events from 1, 8 and 64 clients over the Unix socket
    /// and TCP into the spool, batched and not, beside direct spool appends and `dd`.
    Collector(bench_collector::CollectorBench),
    /// The KION watch-progress load on one datacenter: 8 000 writes/s through
    /// the collector, 250 reads/s through the query service; get latency,
    /// Redis hit ratio, read-your-write lag, beside `redis-benchmark`; then
    /// the highest read rate with p99 < 5 ms.
    Progress(crate::bench_progress::ProgressBench),
    /// Global reports across two DCs 100 ms apart (through the launcher's
    /// relays) and directly, beside this DC's own report, from the same states.
    Report(crate::bench_report::ReportBench),
    /// The generated Python client's send() of 100 000 events into a
    /// collector, beside `spoolhouse send` of the same events.
    Clients(crate::bench_clients::ClientsBench),
    /// One DC with 1, 8 and 32 app hosts at the same total event rate:
    /// aggregation rounds, their seconds and ClickHouse's CPU per DC-minute,
    /// INSERTs per second per shard, ZooKeeper's load.
    Fleet(crate::bench_fleet::FleetBench),
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Policy {
    Always,
    Group,
    Interval,
}

#[derive(Debug, Args)]
struct SpoolBench {
    /// Directory to benchmark in (a fresh subdirectory per case is made and removed).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Time each case appends for, in milliseconds.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    case_ms: u64,
    /// Concurrent appender threads (the collector's connections).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    threads: u64,
    /// Appends each thread keeps in flight (`append_deferred` + `wait_durable`,
    /// as a pipelined collector acknowledges); 1 is a plain blocking `append`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pipeline: u64,
    /// zstd level for sealed segments; 0 leaves them raw.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..=22))]
    zstd_level: i32,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "100,1024")]
    payloads: Vec<usize>,
    /// Frames per append.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    batches: Vec<usize>,
    /// Durability policies.
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "always,group,interval"
    )]
    policies: Vec<Policy>,
    /// Interval of the `interval` policy, in milliseconds.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
}

/// Runs `spoolhouse bench …`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.command {
        BenchCommand::Spool(a) => bench_spool(a),
        BenchCommand::Shipper(a) => crate::bench_shipper::run(a),
        BenchCommand::Series(a) => crate::bench_series::run(a),
        BenchCommand::Collector(a) => bench_collector::run(a),
        BenchCommand::Progress(a) => crate::bench_progress::run(a),
        BenchCommand::Report(a) => crate::bench_report::run(a),
        BenchCommand::Fleet(a) => crate::bench_fleet::run(a),
        BenchCommand::Clients(a) => crate::bench_clients::run(a),
    }
}

struct Measured {
    frames: u64,
    bytes: u64,
    secs: f64,
    fsyncs: u64,
    fsync_us: u64,
}

fn append_case(
    dir: &Path,
    b: &SpoolBench,
    policy: Policy,
    payload: usize,
    batch: usize,
) -> anyhow::Result<Measured> {
    let durability = match policy {
        Policy::Always => Durability::Always,
        Policy::Group => Durability::Group,
        Policy::Interval => Durability::Interval {
            interval_ms: b.interval_ms,
        },
    };
    let config = Config {
        durability,
        compression: if b.zstd_level == 0 {
            Compression::Off
        } else {
            Compression::Zstd {
                level: b.zstd_level,
            }
        },
        quota_bytes: 1 << 40,
        ..Config::default()
    };
    let spool = Arc::new(
        Spool::open(dir, config).with_context(|| format!("opening spool in {}", dir.display()))?,
    );
    let stop_after = Duration::from_millis(b.case_ms);
    let start = Instant::now();
    let pipeline = b.pipeline;
    let handles: Vec<_> = (0..b.threads)
        .map(|t| {
            let spool = spool.clone();
            std::thread::spawn(move || -> spooler::Result<u64> {
                let frames: Vec<Vec<u8>> = (0..batch)
                    .map(|i| {
                        let mut v = format!("{{\"t\":{t},\"i\":{i},\"p\":\"").into_bytes();
                        v.resize(payload.saturating_sub(2), b'x');
                        v.extend_from_slice(b"\"}");
                        v.truncate(payload);
                        v
                    })
                    .collect();
                let mut n = 0;
                let mut in_flight = std::collections::VecDeque::new();
                while start.elapsed() < stop_after {
                    if pipeline == 1 {
                        spool.append(&frames)?;
                    } else {
                        in_flight.push_back(spool.append_deferred(&frames)?);
                        if in_flight.len() as u64 >= pipeline {
                            let oldest = in_flight.pop_front().expect("non-empty");
                            spool.wait_durable(oldest)?;
                        }
                    }
                    n += batch as u64;
                }
                for p in in_flight {
                    spool.wait_durable(p)?;
                }
                Ok(n)
            })
        })
        .collect();
    let mut frames = 0;
    for h in handles {
        frames += h
            .join()
            .map_err(|_| anyhow::anyhow!("appender thread panicked"))??;
    }
    // Interval's promise is kept by its flusher; count the final sync in.
    spool.flush()?;
    let secs = start.elapsed().as_secs_f64();
    let st = spool.stats()?;
    Ok(Measured {
        frames,
        bytes: st.appended_bytes,
        secs,
        fsyncs: st.fsyncs,
        fsync_us: st.fsync_latency_sum_us,
    })
}

/// `dd` three times, the median: single runs of a few hundred MB vary by 2x
/// on this kind of virtual disk.
fn dd_median(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let mut runs = [dd(dir, bytes)?, dd(dir, bytes)?, dd(dir, bytes)?];
    runs.sort_by(f64::total_cmp);
    Ok(runs[1])
}

/// Runs `dd if=/dev/zero of=DIR/x bs=1M count=N conv=fdatasync`; bytes/s.
fn dd(dir: &Path, bytes: u64) -> anyhow::Result<f64> {
    let count = bytes.div_ceil(1 << 20).max(1);
    let target = dir.join("x");
    let start = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .arg("bs=1M")
        .arg(format!("count={count}"))
        .arg("conv=fdatasync")
        .output()
        .context("running dd")?;
    let wall = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    // dd's own figure ("…, 0.57 s, 470 MB/s") leaves out process start-up.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let secs = stderr
        .lines()
        .find(|l| l.contains("copied"))
        .and_then(|l| l.split(", ").nth(2))
        .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok())
        .unwrap_or(wall);
    Ok((count << 20) as f64 / secs)
}

fn bench_spool(b: SpoolBench) -> anyhow::Result<()> {
    std::fs::create_dir_all(&b.dir).with_context(|| format!("creating {}", b.dir.display()))?;
    println!(
        "spool bench in {}: {} appender threads, {} appends in flight per thread, {} ms per case, sealed segments {}",
        b.dir.display(),
        b.threads,
        b.pipeline,
        b.case_ms,
        if b.zstd_level == 0 {
            "raw".to_string()
        } else {
            format!("zstd level {}", b.zstd_level)
        }
    );
    println!(
        "{:>8} {:>6} {:<9} {:>12} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "payload",
        "batch",
        "policy",
        "events/s",
        "MB/s",
        "dd MB/s",
        "ratio",
        "fsyncs",
        "fsync µs",
        "sync busy"
    );
    for &payload in &b.payloads {
        for &batch in &b.batches {
            for &policy in &b.policies {
                let case = b.dir.join(format!("spool-bench-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&case);
                let m = append_case(&case, &b, policy, payload, batch);
                let _ = std::fs::remove_dir_all(&case);
                let m = m?;
                let dd_bps = dd_median(&b.dir, m.bytes)?;
                let bps = m.bytes as f64 / m.secs;
                println!(
                    "{:>7}B {:>6} {:<9} {:>12.0} {:>9.1} {:>9.1} {:>8.0}% {:>7} {:>9.0} {:>8.0}%",
                    payload,
                    batch,
                    format!("{policy:?}").to_lowercase(),
                    m.frames as f64 / m.secs,
                    bps / 1e6,
                    dd_bps / 1e6,
                    100.0 * bps / dd_bps,
                    m.fsyncs,
                    m.fsync_us as f64 / m.fsyncs.max(1) as f64,
                    100.0 * m.fsync_us as f64 / 1e6 / m.secs
                );
            }
        }
    }
    println!("MB = 10^6 bytes of frames written (payload + 12-byte frame header); dd writes the same byte count, rounded up to whole MiB, to the same directory right after each case (median of 3 runs); fsync µs = mean fdatasync latency, sync busy = share of the wall time a segment fdatasync was running");
    Ok(())
}
