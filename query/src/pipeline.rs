//! Pipeline health (`GET /v1/pipeline`): every datacenter's app hosts'
//! collectors and shippers and its query service's `/metrics`, read at once, each bounded by
//! [`SCRAPE_TIMEOUT`], reduced to the figures an operator watches: events
//! accepted, spool bytes, shipper lag, rows inserted into ClickHouse, Redis
//! hits; and which services and datacenters answered (ADR 0007).
//!
//! Counters are reported as totals with the time they were read: a rate is
//! the difference of two answers over the difference of their times (the
//! console polls and does this). The service keeps no history of its own.

use std::net::SocketAddr;
use std::time::Duration;

use dc_config::event::now_ms;
use dc_config::services::{QueryDatacenter, QueryHost, QueryRelay};
use httpd::client::GetError;
use httpd::exposition::{samples, sum, Sample};

use crate::metrics::names::PROGRESS_SOURCE_TOTAL;

/// Longest one service's `/metrics` may take to answer, connection
/// included. Long enough for a far datacenter (a cross-ocean round trip
/// is ~0.2 s), short enough that a cut one does not hold the page.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/metrics` text read: a service's is ~20 KiB; more is not ours.
pub const SCRAPE_BYTES_MAX: usize = 4 << 20;

/// The other services' sample names pipeline health reads. The query
/// service does not link the collector or the shipper (the crates never
/// import each other), so these are copies: `tests/metrics_lint.rs` holds
/// them equal to `collector::metrics::names` and `shipper::metrics::names`
/// and checks the live services serve them.
pub mod reads {
    /// `collector::metrics::names::EVENTS_ACCEPTED_TOTAL`.
    pub const COLLECTOR_EVENTS_ACCEPTED_TOTAL: &str = "spoolhouse_collector_events_accepted_total";
    /// `collector::metrics::names::SPOOL_BYTES`.
    pub const COLLECTOR_SPOOL_BYTES: &str = "spoolhouse_collector_spool_bytes";
    /// `collector::metrics::names::QUARANTINED_LINES_TOTAL`.
    pub const COLLECTOR_QUARANTINED_LINES_TOTAL: &str =
        "spoolhouse_collector_quarantined_lines_total";
    /// `shipper::metrics::names::LAG_SECONDS`.
    pub const SHIPPER_LAG_SECONDS: &str = "spoolhouse_shipper_lag_seconds";
    /// `shipper::metrics::names::ROWS_TOTAL`.
    pub const SHIPPER_ROWS_TOTAL: &str = "spoolhouse_shipper_rows_total";
    /// `shipper::metrics::names::AGGREGATOR`.
    pub const SHIPPER_AGGREGATOR: &str = "spoolhouse_shipper_aggregator";
    /// `shipper::metrics::names::FLEET_HOSTS`.
    pub const SHIPPER_FLEET_HOSTS: &str = "spoolhouse_shipper_fleet_hosts";
    /// `shipper::relay::names::SESSIONS`.
    pub const RELAY_SESSIONS: &str = "spoolhouse_relay_sessions";
    /// `shipper::relay::names::INFLOW_FRAMES_TOTAL`.
    pub const RELAY_INFLOW_FRAMES_TOTAL: &str = "spoolhouse_relay_inflow_frames_total";
    /// `shipper::relay::names::SPOOL_BYTES`.
    pub const RELAY_SPOOL_BYTES: &str = "spoolhouse_relay_spool_bytes";
    /// `shipper::relay::names::ROWS_TOTAL`.
    pub const RELAY_ROWS_TOTAL: &str = "spoolhouse_relay_rows_total";
}

/// GETs `/metrics` of `addr` within [`SCRAPE_TIMEOUT`]: its text, or why not.
pub async fn scrape(addr: SocketAddr) -> Result<String, GetError> {
    let (status, body) =
        httpd::client::get(addr, "/metrics", SCRAPE_TIMEOUT, SCRAPE_BYTES_MAX).await?;
    let answer = |reason: String| GetError::Answer { addr, reason };
    if !(200..300).contains(&status) {
        return Err(answer(format!("status {status}")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| answer("the body is not UTF-8".into()))
}

/// [`scrape`] of `host:port` (an app host's admin address may be its
/// name), the lookup bounded by [`SCRAPE_TIMEOUT`] too; why not as text.
pub async fn scrape_named(addr: &str) -> Result<String, String> {
    let found = tokio::time::timeout(SCRAPE_TIMEOUT, tokio::net::lookup_host(addr)).await;
    let first = match found {
        Ok(Ok(mut addrs)) => addrs.next(),
        Ok(Err(e)) => return Err(format!("cannot resolve {addr}: {e}")),
        Err(_) => return Err(format!("cannot resolve {addr} within {SCRAPE_TIMEOUT:?}")),
    };
    let Some(sock) = first else {
        return Err(format!("{addr} resolves to no address"));
    };
    scrape(sock).await.map_err(|e| e.to_string())
}

/// Most app hosts whose `/metrics` one datacenter's read fetches at once:
/// a DC of 400 hosts is read in 13 waves, not 800 connections at once.
pub const HOSTS_IN_FLIGHT: usize = 32;
/// Most names of hosts that did not answer listed per service.
const DOWN_LISTED_MAX: usize = 20;

/// One app host's two scrapes.
struct HostRead {
    name: String,
    collector: Result<String, String>,
    shipper: Result<String, String>,
}

/// Every app host of `dc` read, at most [`HOSTS_IN_FLIGHT`] at once, in
/// the config's order.
async fn read_hosts(dc: &QueryDatacenter) -> Vec<HostRead> {
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(HOSTS_IN_FLIGHT));
    let tasks: Vec<_> = dc
        .hosts
        .iter()
        .cloned()
        .map(|h| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _slot = gate.acquire_owned().await;
                let (collector, shipper) = tokio::join!(
                    scrape_named(&h.collector_admin),
                    scrape_named(&h.shipper_admin)
                );
                HostRead {
                    name: h.name,
                    collector,
                    shipper,
                }
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (t, h) in tasks.into_iter().zip(&dc.hosts) {
        out.push(t.await.unwrap_or_else(|e| HostRead {
            name: h.name.clone(),
            collector: Err(format!("scrape task failed: {e}")),
            shipper: Err(format!("scrape task failed: {e}")),
        }));
    }
    out
}

/// One datacenter's health, as `GET /v1/pipeline` answers it: every app
/// host's collector and shipper and the DC's query service; figures summed
/// over the hosts that answered (lag: the largest), each host's own too.
pub async fn datacenter(dc: &QueryDatacenter) -> serde_json::Value {
    let started = now_ms();
    // Every relay read at once, beside the hosts and the query service.
    let relay_reads: Vec<_> = dc
        .relays
        .iter()
        .cloned()
        .map(|r| tokio::spawn(async move { read_relay(r).await }))
        .collect();
    let relays = async move {
        let mut out = Vec::with_capacity(relay_reads.len());
        for t in relay_reads {
            out.push(
                t.await
                    .unwrap_or_else(|e| serde_json::json!({"up": false, "error": e.to_string()})),
            );
        }
        out
    };
    let (hosts, query, relays) = tokio::join!(read_hosts(dc), scrape(dc.query), relays);
    let query_text = query.as_ref().ok().cloned();
    let query_samples = query_text.as_deref().map(samples);
    let mut per_host = Vec::with_capacity(hosts.len());
    let mut totals = Figures::default();
    // The DC's aggregator (the shipper saying so) and the hosts it leaves
    // out of the watermark as silent (docs/adr/0014).
    let mut aggregator = None;
    let mut silent_hosts = None;
    let (mut collectors_up, mut shippers_up) = (0, 0);
    let (mut collectors_down, mut shippers_down) = (Vec::new(), Vec::new());
    let (mut collector_error, mut shipper_error) = (None, None);
    for h in &hosts {
        let c = h.collector.as_deref().ok().map(samples);
        let s = h.shipper.as_deref().ok().map(samples);
        let f = Figures::of(c.as_deref(), s.as_deref());
        totals.add(&f);
        if let Some(s) = s.as_deref() {
            if sum(s, reads::SHIPPER_AGGREGATOR, "") == Some(1.0) {
                aggregator = Some(h.name.clone());
                silent_hosts = sum(s, reads::SHIPPER_FLEET_HOSTS, "state=\"silent\"");
            }
        }
        for (got, up, down, first_error) in [
            (
                &h.collector,
                &mut collectors_up,
                &mut collectors_down,
                &mut collector_error,
            ),
            (
                &h.shipper,
                &mut shippers_up,
                &mut shippers_down,
                &mut shipper_error,
            ),
        ] {
            match got {
                Ok(_) => *up += 1,
                Err(e) => {
                    if down.len() < DOWN_LISTED_MAX {
                        down.push(h.name.clone());
                    }
                    first_error.get_or_insert_with(|| format!("{}: {e}", h.name));
                }
            }
        }
        per_host.push(serde_json::json!({
            "name": h.name,
            "collector": {"up": h.collector.is_ok(), "error": h.collector.as_ref().err()},
            "shipper": {"up": h.shipper.is_ok(), "error": h.shipper.as_ref().err()},
            "events_in_total": f.events_in,
            "spool_bytes": f.spool_bytes,
            "inbox_lines_quarantined_total": f.quarantined,
            "shipper_lag_seconds": {"clickhouse": f.lag_clickhouse, "redis": f.lag_redis},
            "clickhouse_rows_total": f.rows,
        }));
    }
    let n = hosts.len();
    // One host: where it is, as before fleets.
    let single =
        |addr: &dyn Fn(&QueryHost) -> &String| (n == 1).then(|| addr(&dc.hosts[0]).clone());
    let group = |up: usize, down: Vec<String>, error: Option<String>, address: Option<String>| {
        let mut g = serde_json::json!({
            "up": up == n && n > 0,
            "hosts": n,
            "hosts_up": up,
            "down": down,
            "error": error,
        });
        if let Some(a) = address {
            g["address"] = a.into();
        }
        g
    };
    let collector = group(
        collectors_up,
        collectors_down,
        collector_error,
        single(&|h| &h.collector_admin),
    );
    let shipper = group(
        shippers_up,
        shippers_down,
        shipper_error,
        single(&|h| &h.shipper_admin),
    );
    let query_service = serde_json::json!({
        "address": dc.query.to_string(),
        "up": query.is_ok(),
        "error": query.as_ref().err().map(|e| e.to_string()),
    });
    let answered = collectors_up + shippers_up + usize::from(query.is_ok());
    let query_total = |name: &str, label: &str| {
        query_samples
            .as_deref()
            .map(|s| sum(s, name, label).unwrap_or(0.0))
    };
    serde_json::json!({
        "name": dc.name,
        "answered": answered > 0,
        "partial": answered < 2 * n + 1,
        "scraped_at_ms": started,
        "services": {"collector": collector, "shipper": shipper, "query": query_service},
        "hosts": per_host,
        "relays": relays,
        "aggregator": aggregator,
        "silent_hosts": silent_hosts,
        "events_in_total": totals.events_in,
        "spool_bytes": totals.spool_bytes,
        "inbox_lines_quarantined_total": totals.quarantined,
        "shipper_lag_seconds": {
            "clickhouse": totals.lag_clickhouse,
            "redis": totals.lag_redis,
        },
        "clickhouse_rows_total": totals.rows,
        "redis_hits_total": query_total(PROGRESS_SOURCE_TOTAL, "source=\"redis\""),
        "progress_reads_total": query_total(PROGRESS_SOURCE_TOTAL, ""),
    })
}

/// One relay's figures (docs/adr/0017): live sessions, frames taken in,
/// spool bytes, rows inserted; and whether it answered.
async fn read_relay(r: QueryRelay) -> serde_json::Value {
    let got = scrape_named(&r.admin).await;
    let s = got.as_deref().ok().map(samples);
    let figure = |name: &str| s.as_deref().and_then(|s| sum(s, name, ""));
    serde_json::json!({
        "name": r.name,
        "address": r.admin,
        "up": got.is_ok(),
        "error": got.as_ref().err(),
        "sessions": figure(reads::RELAY_SESSIONS),
        "inflow_frames_total": figure(reads::RELAY_INFLOW_FRAMES_TOTAL),
        "spool_bytes": figure(reads::RELAY_SPOOL_BYTES),
        "clickhouse_rows_total": figure(reads::RELAY_ROWS_TOTAL),
    })
}

/// The figures read from one host's collector and shipper, or summed over
/// hosts (lags: the largest). `None`: no answer held the figure.
#[derive(Debug, Default, Clone, PartialEq)]
struct Figures {
    events_in: Option<f64>,
    spool_bytes: Option<f64>,
    quarantined: Option<f64>,
    lag_clickhouse: Option<f64>,
    lag_redis: Option<f64>,
    rows: Option<f64>,
}

impl Figures {
    fn of(collector: Option<&[Sample<'_>]>, shipper: Option<&[Sample<'_>]>) -> Self {
        // A counter family shows no sample until its first count: a service
        // that answered without one has counted 0, not an unknown figure.
        let total =
            |s: Option<&[Sample<'_>]>, name: &str| s.map(|s| sum(s, name, "").unwrap_or(0.0));
        let lag = |sink: &str| {
            shipper.and_then(|s| sum(s, reads::SHIPPER_LAG_SECONDS, &format!("sink=\"{sink}\"")))
        };
        Self {
            events_in: total(collector, reads::COLLECTOR_EVENTS_ACCEPTED_TOTAL),
            spool_bytes: collector.and_then(|s| sum(s, reads::COLLECTOR_SPOOL_BYTES, "")),
            quarantined: total(collector, reads::COLLECTOR_QUARANTINED_LINES_TOTAL),
            lag_clickhouse: lag("clickhouse"),
            lag_redis: lag("redis"),
            rows: total(shipper, reads::SHIPPER_ROWS_TOTAL),
        }
    }

    fn add(&mut self, o: &Figures) {
        let plus = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        let max = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.events_in = plus(self.events_in, o.events_in);
        self.spool_bytes = plus(self.spool_bytes, o.spool_bytes);
        self.quarantined = plus(self.quarantined, o.quarantined);
        self.lag_clickhouse = max(self.lag_clickhouse, o.lag_clickhouse);
        self.lag_redis = max(self.lag_redis, o.lag_redis);
        self.rows = plus(self.rows, o.rows);
    }
}

/// Every datacenter's health, read at once: the answer of `GET /v1/pipeline`.
pub async fn read(datacenters: &[QueryDatacenter]) -> serde_json::Value {
    let dcs = each_datacenter(datacenters).await;
    let missing: Vec<&str> = dcs
        .iter()
        .filter(|d| d["answered"] == false)
        .filter_map(|d| d["name"].as_str())
        .collect();
    let partial = dcs.iter().any(|d| d["partial"] == true);
    serde_json::json!({"partial": partial, "missing": missing, "datacenters": dcs})
}

/// Each DC's [`datacenter`] read concurrently, in the config's order.
async fn each_datacenter(datacenters: &[QueryDatacenter]) -> Vec<serde_json::Value> {
    let tasks: Vec<_> = datacenters
        .iter()
        .cloned()
        .map(|dc| tokio::spawn(async move { datacenter(&dc).await }))
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for (t, dc) in tasks.into_iter().zip(datacenters) {
        out.push(
            t.await
                .unwrap_or_else(|e| panic!("pipeline health task of {} failed: {e}", dc.name)),
        );
    }
    out
}
