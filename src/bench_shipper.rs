//! `spoolhouse bench shipper`: 1 M generic events shipped from a spool into
//! a one-shard datacenter, beside the bulk references measured in the same
//! run on the same server: `clickhouse-client` inserting the same rows as
//! TSV, and curl posting them as RowBinary over HTTP. Each goes into its own
//! table of the same engine and layout as `events_local`. Then the lag from
//! spool acknowledgement to row visible in ClickHouse, at a steady rate.
//! Last, relay mode (docs/adr/0017-relay-tier.md): the same number of
//! events spread over a few app hosts' spools, streamed by their forwarders
//! into one relay, which ships them; timed until ClickHouse shows them all.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use dc_config::event::{ValidEvent, Value};
use dc_config::record::Record;
use dc_config::services::ShipperConfig;
use dc_config::Declared;
use dc_config::{
    row::{EventRow, SpoolPosition},
    schema::column::EVENT_COLUMNS,
};
use launcher::{LaunchOptions, LocalCluster};
use shipper::{Guards, Health, Metrics, Shipper};

/// Arguments of `spoolhouse bench shipper`.
#[derive(Debug, Args)]
pub struct ShipperBench {
    /// Events to ship.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1_000..=20_000_000))]
    events: u64,
    /// Rows per insert (the shipper's `batch_rows_max`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    batch_rows: u64,
    /// Events per second of the lag measurement.
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=200_000))]
    lag_rate: u64,
    /// Seconds of the lag measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    lag_seconds: u64,
    /// App hosts whose forwarders stream the relay phase's events into one
    /// relay (0: no relay phase).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=64))]
    forwarders: u64,
}

const T0: u64 = 1_764_028_800_000;

/// A realistic generic event: a vote, about 100 bytes as a spool record.
fn event(i: u64) -> ValidEvent {
    ValidEvent {
        event: "vote".into(),
        time_ms: T0 + i,
        attrs: vec![
            ("user_id".into(), Value::UInt(1_000_000 + i % 250_000)),
            (
                "target_user_id".into(),
                Value::UInt(2_000_000 + (i * 7919) % 500_000),
            ),
            (
                "vote".into(),
                Value::Str(if i.is_multiple_of(3) { "no" } else { "yes" }.into()),
            ),
            ("country_id".into(), Value::UInt(i % 200)),
        ],
    }
}

fn tsv_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\'' => out.push_str("\\'"),
            c => out.push(c),
        }
    }
}

fn tsv_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, s) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('\'');
        tsv_escape(out, s);
        out.push('\'');
    }
    out.push(']');
}

/// The row as TSV, for the `clickhouse-client` reference.
fn tsv_row(out: &mut String, r: &EventRow) {
    use std::fmt::Write;
    tsv_escape(out, &r.event);
    let day = dc_config::row::date_text(r.date);
    let _ = write!(out, "\t{day}\t{}\t{}\t", r.time, r.time_ms);
    tsv_escape(out, &r.dc);
    out.push('\t');
    tsv_escape(out, &r.host);
    out.push('\t');
    tsv_array(out, &r.attr_names);
    out.push('\t');
    tsv_array(out, &r.attr_values);
    let _ = writeln!(out, "\t{}\t{}", r.spool_segment, r.spool_offset);
}

/// The example topology's dc2 alone: one shard x one replica.
pub(crate) fn one_shard_dc() -> Declared {
    let mut d = dc_config::examples::declared();
    d.topology.datacenter.retain(|dc| dc.name == "dc2");
    d
}

/// CPU seconds (user + system) of this process and of the ClickHouse
/// server since `start`.
struct Cpu {
    server: Option<u32>,
    own: u64,
    clickhouse: u64,
}

impl Cpu {
    fn start(server: Option<u32>) -> Self {
        let own = crate::machine::cpu_ticks(std::process::id()).unwrap_or(0);
        let clickhouse = server.and_then(crate::machine::cpu_ticks).unwrap_or(0);
        Self {
            server,
            own,
            clickhouse,
        }
    }

    /// (this process, ClickHouse) seconds since the start.
    fn took(&self) -> (f64, f64) {
        let own = crate::machine::cpu_ticks(std::process::id()).unwrap_or(0);
        let clickhouse = self.server.and_then(crate::machine::cpu_ticks).unwrap_or(0);
        (
            own.saturating_sub(self.own) as f64 / 100.0,
            clickhouse.saturating_sub(self.clickhouse) as f64 / 100.0,
        )
    }
}

fn rate(rows: u64, took: Duration) -> f64 {
    rows as f64 / took.as_secs_f64()
}

/// Runs `spoolhouse bench shipper`.
pub fn run(args: ShipperBench) -> anyhow::Result<()> {
    // The relay phase's app hosts and relay are in the topology from the
    // start (their secret and folders are the launcher's); the direct
    // shipper below is told not to use the relay.
    let mut declared = one_shard_dc();
    if args.forwarders > 0 {
        let hosts = launcher::with_app_hosts(&declared.topology, args.forwarders as usize);
        declared.topology = launcher::with_relays(&hosts, "dc2", 1);
    }
    let mut cluster = LocalCluster::start(&declared, LaunchOptions::default())
        .context("starting ClickHouse, ZooKeeper and Redis for the benchmark")?;
    let t = cluster.topology().clone();
    let dc = &t.datacenter[0];
    let server = dc.replicas().next().expect("one replica").name();
    let ch = cluster.clickhouse(&server)?;
    let server_pid = cluster.pid(&server);
    let n = args.events;
    println!("machine: {} cores; ClickHouse 18.16 on loopback, 1 shard x 1 replica (ReplicatedMergeTree)", std::thread::available_parallelism().map(|p| p.get()).unwrap_or(0));

    // The same rows, encoded once for each reference.
    let work = cluster.state_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let (mut rowbinary, mut tsv) = (Vec::new(), String::new());
    for i in 0..n {
        let row = EventRow::new(
            &event(i),
            &dc.name,
            "ref",
            SpoolPosition {
                segment: 1,
                offset: i,
            },
        );
        row.write_row_binary(&mut rowbinary);
        tsv_row(&mut tsv, &row);
    }
    let (bin_path, tsv_path) = (work.join("rows.bin"), work.join("rows.tsv"));
    std::fs::write(&bin_path, &rowbinary)?;
    std::fs::write(&tsv_path, &tsv)?;
    drop((rowbinary, tsv));
    for t in ["ref_tsv", "ref_rowbinary"] {
        ch.query(&format!(
            "CREATE TABLE spoolhouse.{t} AS spoolhouse.events_local \
             ENGINE = ReplicatedMergeTree('/clickhouse/{{dc}}/tables/{{shard}}/spoolhouse/{t}', '{{replica}}') \
             PARTITION BY toYYYYMM(date) ORDER BY (event, time, host, spool_segment, spool_offset)"
        ))?;
    }
    // The shipper's input: the same events in a spool.
    let mut cfg = ShipperConfig::for_dc(&t, dc);
    cfg.host = "bench-direct".into();
    cfg.relay = None;
    cfg.spool_dir = work.join("spool");
    cfg.state_dir = work.join("shipper");
    cfg.limits.batch_rows_max = args.batch_rows as usize;
    fill_spool(&cfg.spool_dir, 0..n, 0)?;
    let count = |table: &str| -> anyhow::Result<u64> {
        Ok(ch
            .query(&format!("SELECT count() FROM spoolhouse.{table}"))?
            .trim()
            .parse()?)
    };

    // Each contender starts on a quiet server: no merge left from the one before.
    let quiet = || -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(120);
        while ch.query("SELECT count() FROM system.merges")?.trim() != "0" && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };

    // Reference 1: clickhouse-client, TSV from a file.
    quiet()?;
    let cpu = Cpu::start(server_pid);
    let started = Instant::now();
    let login = cluster
        .state_dir()
        .join("rendered/clickhouse")
        .join(&server)
        .join("client.xml");
    let status = Command::new("clickhouse-client")
        .arg(format!("--config-file={}", login.display()))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &dc.clickhouse.shard[0].replica[0].tcp_port.to_string(),
        ])
        .args(["--query", "INSERT INTO spoolhouse.ref_tsv FORMAT TSV"])
        .stdin(std::fs::File::open(&tsv_path)?)
        .status()
        .context("running clickhouse-client (apt-get install -y clickhouse-client)")?;
    let tsv_took = started.elapsed();
    let tsv_cpu = cpu.took().1;
    if !status.success() || count("ref_tsv")? != n {
        bail!("clickhouse-client reference failed ({status})");
    }

    // Reference 2: curl, RowBinary over HTTP.
    let url = format!(
        "{}/?query={}",
        dc.replicas().next().expect("one replica").http_url(),
        format!("INSERT INTO spoolhouse.ref_rowbinary ({EVENT_COLUMNS}) FORMAT RowBinary")
            .replace(' ', "%20")
            .replace(',', "%2C")
    );
    // The writer's login as a header file (mode 0600), not on curl's
    // command line.
    let headers = work.join("curl-headers");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&headers)?;
        std::io::Write::write_all(
            &mut f,
            format!(
                "X-ClickHouse-User: {}\nX-ClickHouse-Key: {}\n",
                dc_config::schema::user::WRITER_USER,
                cluster.credentials().writer
            )
            .as_bytes(),
        )?;
    }
    quiet()?;
    let started = Instant::now();
    let out = Command::new("curl")
        .arg("-H")
        .arg(format!("@{}", headers.display()))
        .args(["-sS", "--fail-with-body", "--data-binary"])
        .arg(format!("@{}", bin_path.display()))
        .arg(&url)
        .stdout(Stdio::piped())
        .output()
        .context("running curl (apt-get install -y curl)")?;
    let curl_took = started.elapsed();
    if !out.status.success() || count("ref_rowbinary")? != n {
        bail!(
            "curl reference failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    let host = cfg.host.clone();
    let shipped = |host: &str| -> anyhow::Result<u64> {
        Ok(ch
            .query(&format!(
                "SELECT count() FROM spoolhouse.events_local WHERE host = '{host}'"
            ))?
            .trim()
            .parse()?)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    quiet()?;
    let cpu = Cpu::start(server_pid);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut prom = prometheus_client::registry::Registry::default();
    let (handle, metrics) = start_shipper(&rt, cfg.clone(), &cluster, stop.clone(), &mut prom);
    // Timed by the shipper's own count of rows inserted (an insert
    // acknowledged by the one replica is visible): polling ClickHouse
    // every 20 ms would cost it CPU the references do not pay.
    let deadline = Instant::now() + Duration::from_secs(600);
    while metrics.rows.get() < n {
        if Instant::now() > deadline {
            bail!("the shipper did not ship {n} rows within 600 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ship_took = started.elapsed();
    let ship_cpu = cpu.took();
    if shipped(&host)? != n {
        bail!(
            "the shipper counted {n} rows, ClickHouse holds {}",
            shipped(&host)?
        );
    }

    let (tsv_rate, curl_rate, ship_rate) =
        (rate(n, tsv_took), rate(n, curl_took), rate(n, ship_took));
    println!("\n{n} rows into one 18.16 server, same run:");
    println!(
        "  clickhouse-client TSV      {:>9.0} rows/s  ({:.2} s)",
        tsv_rate,
        tsv_took.as_secs_f64()
    );
    println!(
        "  curl RowBinary over HTTP   {:>9.0} rows/s  ({:.2} s)",
        curl_rate,
        curl_took.as_secs_f64()
    );
    println!(
        "  spoolhouse shipper         {:>9.0} rows/s  ({:.2} s, spool to visible, batches of {})",
        ship_rate,
        ship_took.as_secs_f64(),
        args.batch_rows
    );
    println!(
        "  shipper phases: reading + encoding {:.2} s, inserting {:.2} s (overlapped)",
        histogram_sum(&prom, shipper::metrics::names::PREPARE_SECONDS),
        histogram_sum(&prom, shipper::metrics::names::INSERT_SECONDS)
    );
    println!(
        "  shipper / clickhouse-client = {:.0} %   (target >= 90 %)",
        100.0 * ship_rate / tsv_rate
    );
    println!(
        "  CPU s per 1 M rows: ClickHouse server {:.2} under clickhouse-client, {:.2} under the shipper; the shipper {:.2}",
        tsv_cpu * 1e6 / n as f64,
        ship_cpu.1 * 1e6 / n as f64,
        ship_cpu.0 * 1e6 / n as f64
    );
    println!(
        "  shipper / curl RowBinary    = {:.0} %   (target >= 80 %)",
        100.0 * ship_rate / curl_rate
    );

    // Lag: the shipper keeps running; events are appended at a steady rate
    // and every 50th is watched until ClickHouse shows it.
    let spool = spooler::Spool::open(
        &cfg.spool_dir,
        spooler::Config {
            durability: spooler::Durability::Group,
            ..spooler::Config::default()
        },
    )?;
    let total = args.lag_rate * args.lag_seconds;
    let mut acked: HashMap<(u64, u64), Instant> = HashMap::new();
    let tick = Duration::from_millis(10);
    let per_tick = (args.lag_rate / 100).max(1);
    let lag_start = Instant::now();
    let mut next = 0u64;
    let mut seen: HashMap<(u64, u64), Duration> = HashMap::new();
    let mut last_poll = Instant::now();
    while next < total || seen.len() < acked.len() {
        if next < total && lag_start.elapsed() >= tick * (next / per_tick) as u32 {
            let frames: Vec<Vec<u8>> = (next..next + per_tick)
                .map(|j| {
                    Record {
                        event: event(n + j),
                        inbox: None,
                    }
                    .encode()
                    .expect("small record")
                })
                .collect();
            let positions = spool.append(&frames)?;
            let now = Instant::now();
            for (k, p) in positions.iter().enumerate() {
                if (next + k as u64).is_multiple_of(50) {
                    acked.insert((p.segment, p.offset), now);
                }
            }
            next += per_tick;
        }
        if last_poll.elapsed() >= Duration::from_millis(20) {
            last_poll = Instant::now();
            let body = ch.query(&format!(
                "SELECT spool_segment, spool_offset FROM spoolhouse.events_local WHERE host = '{host}' AND time_ms >= {} FORMAT TSV",
                T0 + n
            ))?;
            let now = Instant::now();
            for line in body.lines() {
                let mut it = line.split('\t').filter_map(|x| x.parse::<u64>().ok());
                if let (Some(s), Some(o)) = (it.next(), it.next()) {
                    if let Some(t0) = acked.get(&(s, o)) {
                        seen.entry((s, o)).or_insert(now - *t0);
                    }
                }
            }
        }
        if lag_start.elapsed() > Duration::from_secs(args.lag_seconds + 120) {
            bail!("rows of the lag run did not all appear within 120 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut lags: Vec<Duration> = seen.into_values().collect();
    lags.sort();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    println!(
        "\nlag, spool acknowledgement to row visible, {} ev/s for {} s ({} samples, 20 ms polling): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        args.lag_rate,
        args.lag_seconds,
        lags.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    stop.store(true, Ordering::SeqCst);
    let _ = handle.join();

    if args.forwarders > 0 {
        // Past every time of the phases before, so a count by time is this
        // phase's alone.
        let from = n + total;
        let relayed = relay_phase(&args, &cluster, &rt, from, server_pid, &quiet)?;
        let count_from = ch
            .query(&format!(
                "SELECT count() FROM spoolhouse.events_local WHERE time_ms >= {}",
                T0 + from
            ))?
            .trim()
            .parse::<u64>()?;
        if count_from != n {
            bail!("relay phase: {count_from} rows in ClickHouse, {n} sent");
        }
        let relay_rate = rate(n, relayed.took);
        println!(
            "\nrelay mode: {} forwarders (batches of {} rows) -> 1 relay (batches of up to {} rows) -> ClickHouse, {n} rows",
            args.forwarders, args.batch_rows, relayed.relay_batch_rows
        );
        println!(
            "  spoolhouse relay           {:>9.0} rows/s  ({:.2} s, forwarders' spools to visible, {} inserts)",
            relay_rate,
            relayed.took.as_secs_f64(),
            relayed.inserts
        );
        println!(
            "  relay / clickhouse-client   = {:.0} %   (target >= 90 %)",
            100.0 * relay_rate / tsv_rate
        );
        println!(
            "  relay / curl RowBinary      = {:.0} %",
            100.0 * relay_rate / curl_rate
        );
        println!(
            "  CPU s per 1 M rows: ClickHouse server {:.2}; forwarders and relay {:.2} (all in this process)",
            relayed.cpu.1 * 1e6 / n as f64,
            relayed.cpu.0 * 1e6 / n as f64
        );
    }
    Ok(())
}

/// Appends events `range` (their times shifted by `shift` ms) to a new
/// spool in `dir`, then seals it: a backlog, as after an outage.
fn fill_spool(
    dir: &std::path::Path,
    range: std::ops::Range<u64>,
    shift: u64,
) -> anyhow::Result<()> {
    let spool = spooler::Spool::open(
        dir,
        spooler::Config {
            durability: spooler::Durability::Group,
            ..spooler::Config::default()
        },
    )?;
    let mut i = range.start;
    while i < range.end {
        let frames: Vec<Vec<u8>> = (i..(i + 1000).min(range.end))
            .map(|j| {
                let mut event = event(j);
                event.time_ms += shift;
                Record { event, inbox: None }
                    .encode()
                    .expect("small record")
            })
            .collect();
        spool.append(&frames)?;
        i += frames.len() as u64;
    }
    spool.rotate()?;
    spool.seal_pending()?;
    Ok(())
}

/// What the relay phase measured.
struct Relayed {
    took: Duration,
    /// (this process, ClickHouse) CPU seconds.
    cpu: (f64, f64),
    inserts: u64,
    relay_batch_rows: usize,
}

/// The relay phase: `args.events` events (times shifted by `from` ms) split
/// over the topology's app hosts' spools; one relay in-process, each
/// forwarder a `Shipper` in relay mode; timed from their start until
/// ClickHouse counts every row.
fn relay_phase(
    args: &ShipperBench,
    cluster: &LocalCluster,
    rt: &tokio::runtime::Runtime,
    from: u64,
    server_pid: Option<u32>,
    quiet: &dyn Fn() -> anyhow::Result<()>,
) -> anyhow::Result<Relayed> {
    let t = cluster.topology();
    let dc = &t.datacenter[0];
    let relay_cfg = dc_config::services::RelayConfig::for_relay(t, dc, &dc.relay[0]);
    let hosts = dc.app_hosts();
    let n = args.events;
    let per = n.div_ceil(hosts.len() as u64);
    let mut forwarders = Vec::new();
    for (k, host) in hosts.iter().enumerate() {
        let mut cfg = ShipperConfig::for_host(t, dc, host);
        cfg.aggregator = false;
        cfg.limits.batch_rows_max = args.batch_rows as usize;
        let start = k as u64 * per;
        fill_spool(&cfg.spool_dir, start..(start + per).min(n), from)?;
        forwarders.push(cfg);
    }
    quiet()?;
    let cpu = Cpu::start(server_pid);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut prom = prometheus_client::registry::Registry::default();
    let relay_metrics = Arc::new(shipper::relay::RelayMetrics::register(&mut prom));
    let relay = Arc::new(
        shipper::relay::Relay::open(relay_cfg.clone(), relay_metrics.clone(), stop.clone())
            .context("opening the relay")?,
    );
    let relay_thread = {
        let handle = rt.handle().clone();
        std::thread::spawn(move || relay.run(handle))
    };
    let shippers: Vec<_> = forwarders
        .into_iter()
        .map(|cfg| {
            let mut prom = prometheus_client::registry::Registry::default();
            start_shipper(rt, cfg, cluster, stop.clone(), &mut prom).0
        })
        .collect();
    // Timed by the relay's count of rows inserted, as the shipper above.
    let deadline = Instant::now() + Duration::from_secs(600);
    let outcome = loop {
        if relay_metrics.rows.get() >= n {
            break Ok((started.elapsed(), cpu.took()));
        }
        if Instant::now() > deadline {
            break Err(anyhow::anyhow!(
                "the relay did not ship {n} rows within 600 s"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    stop.store(true, Ordering::SeqCst);
    for s in shippers {
        let _ = s.join();
    }
    let _ = relay_thread.join();
    let inserts = relay_metrics
        .inserts
        .get_or_create(&shipper::metrics::label("shard", "1"))
        .get();
    let (took, cpu) = outcome?;
    Ok(Relayed {
        took,
        cpu,
        inserts,
        relay_batch_rows: relay_cfg.limits.batch_rows_max,
    })
}

/// The `_sum` of a histogram in the registry's text encoding.
fn histogram_sum(prom: &prometheus_client::registry::Registry, name: &str) -> f64 {
    let text = httpd::exposition::encode(prom).unwrap_or_default();
    httpd::exposition::sum(
        &httpd::exposition::samples(&text),
        &format!("{name}_sum"),
        "",
    )
    .unwrap_or(f64::NAN)
}

fn start_shipper(
    rt: &tokio::runtime::Runtime,
    cfg: ShipperConfig,
    cluster: &LocalCluster,
    stop: Arc<AtomicBool>,
    prom: &mut prometheus_client::registry::Registry,
) -> (std::thread::JoinHandle<shipper::Result<()>>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::register(prom));
    let shipper = Arc::new(Shipper::new(
        cfg,
        cluster.declared().registry.clone(),
        metrics.clone(),
        Arc::new(Health::default()),
        Guards::default(),
        stop,
    ));
    let handle = rt.handle().clone();
    (std::thread::spawn(move || shipper.run(handle)), metrics)
}
