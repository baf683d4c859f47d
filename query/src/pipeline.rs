//! Pipeline health (`GET /v1/pipeline`): every datacenter's collector,
//! shipper and query service `/metrics`, read at once, each bounded by
//! [`SCRAPE_TIMEOUT`], reduced to the figures an operator watches: events
//! accepted, spool bytes, shipper lag, rows inserted into ClickHouse, Redis
//! hits; and which services and datacenters answered (ADR 0007).
//!
//! Counters are reported as totals with the time they were read: a rate is
//! the difference of two answers over the difference of their times (the
//! console polls and does this). The service keeps no history of its own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dc_config::event::now_ms;
use dc_config::services::QueryDatacenter;
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
    /// `shipper::metrics::names::LAG_SECONDS`.
    pub const SHIPPER_LAG_SECONDS: &str = "spoolhouse_shipper_lag_seconds";
    /// `shipper::metrics::names::ROWS_TOTAL`.
    pub const SHIPPER_ROWS_TOTAL: &str = "spoolhouse_shipper_rows_total";
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

/// One datacenter's health, as `GET /v1/pipeline` answers it.
pub async fn datacenter(dc: &QueryDatacenter) -> serde_json::Value {
    let started = now_ms();
    let (collector, shipper, query) = tokio::join!(
        scrape(dc.collector_admin),
        scrape(dc.shipper_admin),
        scrape(dc.query)
    );
    let mut services = BTreeMap::new();
    let mut answered = Vec::new();
    let mut texts = BTreeMap::new();
    for (name, addr, got) in [
        ("collector", dc.collector_admin, collector),
        ("shipper", dc.shipper_admin, shipper),
        ("query", dc.query, query),
    ] {
        let (up, error) = match got {
            Ok(text) => {
                texts.insert(name, text);
                answered.push(name);
                (true, None)
            }
            Err(e) => (false, Some(e.to_string())),
        };
        services.insert(
            name,
            serde_json::json!({"address": addr.to_string(), "up": up, "error": error}),
        );
    }
    let parsed: BTreeMap<&str, Vec<Sample<'_>>> =
        texts.iter().map(|(k, t)| (*k, samples(t))).collect();
    let figure = |service: &str, name: &str, label: &str| {
        parsed.get(service).and_then(|s| sum(s, name, label))
    };
    // A counter family shows no sample until its first count: a service
    // that answered without one has counted 0, not an unknown figure.
    let total = |service: &str, name: &str, label: &str| {
        parsed
            .get(service)
            .map(|s| sum(s, name, label).unwrap_or(0.0))
    };
    serde_json::json!({
        "name": dc.name,
        "answered": !answered.is_empty(),
        "partial": answered.len() < 3,
        "scraped_at_ms": started,
        "services": services,
        "events_in_total": total("collector", reads::COLLECTOR_EVENTS_ACCEPTED_TOTAL, ""),
        "spool_bytes": figure("collector", reads::COLLECTOR_SPOOL_BYTES, ""),
        "shipper_lag_seconds": {
            "clickhouse": figure("shipper", reads::SHIPPER_LAG_SECONDS, "sink=\"clickhouse\""),
            "redis": figure("shipper", reads::SHIPPER_LAG_SECONDS, "sink=\"redis\""),
        },
        "clickhouse_rows_total": total("shipper", reads::SHIPPER_ROWS_TOTAL, ""),
        "redis_hits_total": total("query", PROGRESS_SOURCE_TOTAL, "source=\"redis\""),
        "progress_reads_total": total("query", PROGRESS_SOURCE_TOTAL, ""),
    })
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
