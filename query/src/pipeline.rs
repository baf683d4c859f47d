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

use bytes::Bytes;
use dc_config::services::QueryDatacenter;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Longest one service's `/metrics` may take to answer, connection
/// included. Long enough for a far datacenter (a cross-ocean round trip
/// is ~0.2 s), short enough that a cut one does not hold the page.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest `/metrics` text read: a service's is ~20 KiB; more is not ours.
pub const SCRAPE_BYTES_MAX: usize = 4 << 20;

/// Why one service's `/metrics` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// Nothing accepted the connection (service down, or the DC cut off).
    #[error("no connection to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The system's reason.
        reason: String,
    },
    /// The connection or the answer took longer than [`SCRAPE_TIMEOUT`].
    #[error("no answer from {addr} within {} ms", SCRAPE_TIMEOUT.as_millis())]
    Timeout {
        /// Where.
        addr: SocketAddr,
    },
    /// An answer that was not a 200 with metrics text.
    #[error("bad answer from {addr}: {reason}")]
    Answer {
        /// Where.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
}

/// The samples of a Prometheus text exposition: `(name, labels, value)`,
/// labels as written between the braces. Comments, blank lines and lines
/// that do not parse are skipped (a scrape reads what it understands).
pub fn samples(text: &str) -> Vec<(&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|line| {
            let (series, rest) = if line.contains('{') {
                // Label values may hold spaces and braces inside quotes;
                // the set ends at the last `}` of the line.
                let close = line.rfind('}')?;
                (&line[..close + 1], &line[close + 1..])
            } else {
                line.split_once(' ')?
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, l.strip_suffix('}')?),
                None => (series, ""),
            };
            let value = rest.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((name, labels, value))
        })
        .collect()
}

/// Sum of the samples called `name` whose labels contain `label` (all of
/// them when `label` is empty); `None` when there is no such sample.
fn sum(samples: &[(&str, &str, f64)], name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for (n, l, v) in samples {
        if *n == name && (label.is_empty() || l.split(',').any(|p| p == label)) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// GETs `/metrics` of `addr` within [`SCRAPE_TIMEOUT`].
pub async fn scrape(addr: SocketAddr) -> Result<String, ScrapeError> {
    match tokio::time::timeout(SCRAPE_TIMEOUT, scrape_unbounded(addr)).await {
        Ok(r) => r,
        Err(_) => Err(ScrapeError::Timeout { addr }),
    }
}

async fn scrape_unbounded(addr: SocketAddr) -> Result<String, ScrapeError> {
    let answer = |reason: String| ScrapeError::Answer { addr, reason };
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| ScrapeError::Connect {
            addr,
            reason: e.to_string(),
        })?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| answer(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("static request parts are valid");
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| answer(e.to_string()))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), SCRAPE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| answer(format!("reading the body: {e}")))?
        .to_bytes();
    conn.abort();
    if !status.is_success() {
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
    let parsed: BTreeMap<&str, Vec<(&str, &str, f64)>> =
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
        "events_in_total": total("collector", "spoolhouse_collector_events_accepted_total", ""),
        "spool_bytes": figure("collector", "spoolhouse_collector_spool_bytes", ""),
        "shipper_lag_seconds": {
            "clickhouse": figure("shipper", "spoolhouse_shipper_lag_seconds", "sink=\"clickhouse\""),
            "redis": figure("shipper", "spoolhouse_shipper_lag_seconds", "sink=\"redis\""),
        },
        "clickhouse_rows_total": total("shipper", "spoolhouse_shipper_rows_total", ""),
        "redis_hits_total": total("query", "spoolhouse_query_progress_source_total", "source=\"redis\""),
        "progress_reads_total": total("query", "spoolhouse_query_progress_source_total", ""),
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

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_read_names_labels_and_values() {
        let text = "# HELP x y\n# TYPE x counter\n\
            spoolhouse_collector_events_accepted_total{event=\"vote\",endpoint=\"unix\"} 10\n\
            spoolhouse_collector_events_accepted_total{event=\"a}b c\",endpoint=\"tcp\"} 5\n\
            spoolhouse_collector_spool_bytes 4096\n\
            spoolhouse_shipper_lag_seconds{sink=\"clickhouse\"} 0.25\n\
            spoolhouse_shipper_lag_seconds{sink=\"redis\"} 1.5\n\
            broken line\n# EOF\n";
        let s = samples(text);
        assert_eq!(s.len(), 5, "{s:?}");
        assert_eq!(
            sum(&s, "spoolhouse_collector_events_accepted_total", ""),
            Some(15.0)
        );
        assert_eq!(
            sum(&s, "spoolhouse_collector_spool_bytes", ""),
            Some(4096.0)
        );
        assert_eq!(
            sum(&s, "spoolhouse_shipper_lag_seconds", "sink=\"redis\""),
            Some(1.5)
        );
        assert_eq!(sum(&s, "spoolhouse_shipper_rows_total", ""), None);
    }

    proptest::proptest! {
        // Another service's answer is input from the network: any text is
        // read without a panic, and a well-formed sample always comes back.
        #[test]
        fn any_text_is_read_and_samples_come_back(
            noise in "\\PC{0,200}",
            name in "[a-z_]{1,20}",
            label in "[a-z]{1,8}=\"[^\"\\n]{0,12}\"",
            value in 0u32..1_000_000,
        ) {
            let _ = samples(&noise);
            let text = format!("{noise}\n{name}{{{label}}} {value}\n");
            let s = samples(&text);
            proptest::prop_assert_eq!(s.last(), Some(&(name.as_str(), label.as_str(), f64::from(value))));
        }
    }
}
