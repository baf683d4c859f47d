//! Shared set-up: a collector on a temporary directory with the example registry.
#![allow(dead_code)]

pub mod process;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use collector::{Collector, Health, Metrics, Running};
use dc_config::record::Record;
use dc_config::services::{CollectorConfig, CollectorLimits};
use spooler::Spool;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: CollectorConfig,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub prom: prometheus_client::registry::Registry,
}

impl Harness {
    pub fn new(limits: CollectorLimits, quota_bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = config_in(dir.path(), limits, quota_bytes);
        let mut prom = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::register(&mut prom));
        Self {
            dir,
            config,
            metrics,
            health: Arc::new(Health::default()),
            prom,
        }
    }

    pub fn standard() -> Self {
        Self::new(CollectorLimits::default(), 1 << 30)
    }

    /// Opens the spool and starts listening; returns the spool for reading back.
    pub async fn start(&self) -> (Running, Arc<Spool>) {
        let d = dc_config::examples::declared();
        let c = Collector::open(
            self.config.clone(),
            d.registry,
            self.metrics.clone(),
            self.health.clone(),
        )
        .unwrap();
        let spool = c.spool();
        (c.start().await.unwrap(), spool)
    }

    pub fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.prom).unwrap();
        s
    }

    pub fn inbox(&self) -> PathBuf {
        self.config.inbox.clone()
    }
}

/// Fast inbox polls and checkpoints, so short tests see many of them.
pub fn fast_limits() -> CollectorLimits {
    CollectorLimits {
        inbox_poll_ms: 20,
        inbox_checkpoint_ms: 50,
        ..CollectorLimits::default()
    }
}

/// dc1's collector config with everything under `dir`: its socket, inbox
/// (`dir/inbox`) and spool (`dir/spool`).
pub fn config_in(dir: &Path, limits: CollectorLimits, quota_bytes: u64) -> CollectorConfig {
    let d = dc_config::examples::declared();
    let mut config = CollectorConfig::for_dc(d.topology.dc("dc1").unwrap());
    config.tcp = "127.0.0.1:0".parse().unwrap();
    config.socket = dir.join("collector.sock");
    config.inbox = dir.join("inbox");
    config.spool_dir = dir.join("spool");
    config.spool_quota_bytes = quota_bytes;
    config.limits = limits;
    config
}

/// The value of the samples called `name` in Prometheus `text`, summed over
/// their labels; 0 when absent.
pub fn metric_value(text: &str, name: &str) -> u64 {
    httpd::exposition::sum(&httpd::exposition::samples(text), name, "").unwrap_or(0.0) as u64
}

/// Every record in the spool, read by a fresh reader.
pub fn read_all(spool: &Spool) -> Vec<Record> {
    read_with(spool.reader(&fresh_reader_name()).unwrap())
}

/// Every record in the spool at `dir` that a collector in another process
/// writes, read by a fresh reader; empty while it has no spool yet.
pub fn read_spool_of_other_process(dir: &Path) -> Vec<Record> {
    if !spooler::Reader::spool_exists(dir) {
        return Vec::new();
    }
    read_with(spooler::Reader::open(dir, &fresh_reader_name()).unwrap())
}

fn fresh_reader_name() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "verify{}",
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    )
}

fn read_with(mut r: spooler::Reader) -> Vec<Record> {
    drain(&mut r)
}

/// Every record `r` has not read yet, committed as read.
pub fn drain(r: &mut spooler::Reader) -> Vec<Record> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let batch = r.next(10_000, 64 << 20).unwrap();
        if batch.is_empty() {
            break;
        }
        out.extend(batch.iter().map(|f| Record::decode(&f.payload).unwrap()));
    }
    // Commit, so this reader does not hold retention in quota tests (the
    // spool only runs retention when an append would pass the quota).
    r.commit_read().unwrap();
    out
}

/// Every record in a spool directory no process writes to.
pub fn read_dir(dir: &Path) -> Vec<Record> {
    let spool = Spool::open(dir, spooler::Config::default()).unwrap();
    read_all(&spool)
}

/// A valid `vote` line whose `user_id` is `id`, timed now (the collector
/// accepts a window around its clock).
pub fn vote(id: u64) -> String {
    format!(
        r#"{{"event":"vote","time":{},"attrs":{{"user_id":{id},"target_user_id":2,"vote":"yes","country_id":7}}}}"#,
        now_ms()
    )
}

pub use dc_config::event::now_ms;

pub fn user_ids(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| match r.event.attr("user_id") {
            Some(dc_config::event::Value::UInt(v)) => *v,
            other => panic!("user_id missing: {other:?}"),
        })
        .collect()
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub async fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
