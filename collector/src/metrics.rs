//! Every Prometheus metric of the collector, named
//! `spoolhouse_collector_<thing>_<unit>`, and its health for `/healthz`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// A label set.
pub type Labels = Vec<(&'static str, String)>;

/// Every metric of the collector.
pub struct Metrics {
    /// Events durably spooled, by event type and endpoint.
    pub events_accepted: Family<Labels, Counter>,
    /// Lines rejected, by event type (`unknown` when not a registry type) and reason code.
    pub events_rejected: Family<Labels, Counter>,
    /// Valid events refused because the spool was full or failing, by reason.
    pub events_refused: Family<Labels, Counter>,
    /// Bytes received, by endpoint.
    pub received_bytes: Family<Labels, Counter>,
    /// Events per spool append.
    pub batch_events: Histogram,
    /// Seconds from reading a batch to acknowledging it (validation, append, sync).
    pub ack_latency_seconds: Histogram,
    /// Bytes the spool's segments take on disk.
    pub spool_bytes: Gauge,
    /// The spool's quota in bytes.
    pub spool_quota_bytes: Gauge,
    /// Appends refused because the spool quota was reached.
    pub quota_refusals: Counter,
    /// Open client connections, by endpoint.
    pub connections_open: Family<Labels, Gauge>,
    /// Connections turned away over `max_connections`.
    pub connections_refused: Counter,
    /// Connections closed for idleness.
    pub idle_timeouts: Counter,
    /// Connections closed because the client did not read its answers.
    pub write_timeouts: Counter,
    /// Lines longer than `line_bytes_max`, by endpoint.
    pub lines_too_long: Family<Labels, Counter>,
    /// Inbox files tracked now.
    pub inbox_files: Gauge,
    /// Rotated inbox files deleted once fully spooled.
    pub inbox_files_deleted: Counter,
    /// Scans of the inbox directory (woken by notify or the poll interval).
    pub inbox_scans: Counter,
    /// Rotated inbox files fully spooled but kept because whether a writer
    /// still holds them cannot be told (see the log for why).
    pub inbox_files_undecided: Gauge,
    /// Idle `.log` inbox files the collector rotated itself.
    pub inbox_files_rotated: Counter,
    /// Inbox files found but not tracked yet: over `inbox_files_max`.
    pub inbox_files_waiting: Gauge,
    /// Inbox files found shorter than what was read of them (truncated in
    /// place, e.g. logrotate's `copytruncate`): read again from the start.
    pub inbox_truncations: Counter,
    /// Inbox errors (unreadable files, unterminated last lines of finished
    /// files, files over `inbox_files_max`), by kind.
    pub inbox_errors: Family<Labels, Counter>,
    /// Invalid inbox lines written to the quarantine, by rule.
    pub quarantined: Family<Labels, Counter>,
    /// Quarantine writes that failed (the lines stay counted as rejected).
    pub quarantine_errors: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            events_accepted: Family::default(),
            events_rejected: Family::default(),
            events_refused: Family::default(),
            received_bytes: Family::default(),
            batch_events: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            ack_latency_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            spool_bytes: Gauge::default(),
            spool_quota_bytes: Gauge::default(),
            quota_refusals: Counter::default(),
            connections_open: Family::default(),
            connections_refused: Counter::default(),
            idle_timeouts: Counter::default(),
            write_timeouts: Counter::default(),
            lines_too_long: Family::default(),
            quarantined: Family::default(),
            quarantine_errors: Counter::default(),
            inbox_files: Gauge::default(),
            inbox_files_deleted: Counter::default(),
            inbox_scans: Counter::default(),
            inbox_files_undecided: Gauge::default(),
            inbox_files_rotated: Counter::default(),
            inbox_files_waiting: Gauge::default(),
            inbox_truncations: Counter::default(),
            inbox_errors: Family::default(),
        };
        let r = registry;
        // prometheus-client appends `_total` to counters itself.
        r.register(
            "spoolhouse_collector_events_accepted",
            "Events durably spooled, by event type and endpoint",
            m.events_accepted.clone(),
        );
        r.register(
            "spoolhouse_collector_events_rejected",
            "Lines rejected by validation, by event type and reason",
            m.events_rejected.clone(),
        );
        r.register(
            "spoolhouse_collector_events_refused",
            "Valid events refused because the spool could not take them, by reason",
            m.events_refused.clone(),
        );
        r.register(
            "spoolhouse_collector_received_bytes",
            "Bytes received, by endpoint",
            m.received_bytes.clone(),
        );
        r.register(
            "spoolhouse_collector_batch_events",
            "Events per spool append",
            m.batch_events.clone(),
        );
        r.register(
            "spoolhouse_collector_ack_latency_seconds",
            "Seconds from reading a batch to acknowledging it",
            m.ack_latency_seconds.clone(),
        );
        r.register(
            "spoolhouse_collector_spool_bytes",
            "Bytes the spool segments take on disk",
            m.spool_bytes.clone(),
        );
        r.register(
            "spoolhouse_collector_spool_quota_bytes",
            "The spool quota in bytes",
            m.spool_quota_bytes.clone(),
        );
        r.register(
            "spoolhouse_collector_quota_refusals",
            "Appends refused because the spool quota was reached",
            m.quota_refusals.clone(),
        );
        r.register(
            "spoolhouse_collector_connections_open",
            "Open client connections, by endpoint",
            m.connections_open.clone(),
        );
        r.register(
            "spoolhouse_collector_connections_refused",
            "Connections turned away over max_connections",
            m.connections_refused.clone(),
        );
        r.register(
            "spoolhouse_collector_idle_timeouts",
            "Connections closed for idleness",
            m.idle_timeouts.clone(),
        );
        r.register(
            "spoolhouse_collector_write_timeouts",
            "Connections closed because the client read none of its answers for idle_timeout_ms",
            m.write_timeouts.clone(),
        );
        r.register(
            "spoolhouse_collector_quarantined_lines",
            "Invalid inbox lines kept in the quarantine file, by rule",
            m.quarantined.clone(),
        );
        r.register(
            "spoolhouse_collector_quarantine_errors",
            "Quarantine writes that failed (the lines are still counted as rejected)",
            m.quarantine_errors.clone(),
        );
        r.register(
            "spoolhouse_collector_lines_too_long",
            "Lines longer than line_bytes_max, by endpoint",
            m.lines_too_long.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_files",
            "Inbox files tracked",
            m.inbox_files.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_files_deleted",
            "Rotated inbox files deleted once fully spooled",
            m.inbox_files_deleted.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_scans",
            "Scans of the inbox directory",
            m.inbox_scans.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_files_undecided",
            "Rotated inbox files fully spooled but kept: whether a writer holds them cannot be told",
            m.inbox_files_undecided.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_files_rotated",
            "Idle .log inbox files the collector rotated itself",
            m.inbox_files_rotated.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_files_waiting",
            "Inbox files over limits.inbox_files_max, waiting to be tracked",
            m.inbox_files_waiting.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_truncations",
            "Inbox files found truncated in place and read again from the start",
            m.inbox_truncations.clone(),
        );
        r.register(
            "spoolhouse_collector_inbox_errors",
            "Inbox errors, by kind",
            m.inbox_errors.clone(),
        );
        m
    }

    /// Metrics registered nowhere, for tests and embedding.
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }
}

/// What `/healthz` reports: the collector is healthy while its spool takes
/// appends; a full spool or a failing one shows here, never only in a counter.
#[derive(Default)]
pub struct Health {
    spool_failed: AtomicBool,
    spool_full: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Why the inbox tailer is not running, while it is not.
    inbox_failed: Mutex<Option<String>>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    quarantined: AtomicU64,
    /// The quarantine file, and its last entry's file, rule and error.
    quarantine: Mutex<(Option<String>, Option<serde_json::Value>)>,
}

impl Health {
    /// Records the outcome of one append.
    pub(crate) fn record(&self, accepted: u64, rejected: u64, refused: u64) {
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.refused.fetch_add(refused, Ordering::Relaxed);
    }

    /// Records lines written to the quarantine file `path`, the last of
    /// them described by `last`.
    pub(crate) fn quarantined(&self, n: u64, path: String, last: serde_json::Value) {
        self.quarantined.fetch_add(n, Ordering::Relaxed);
        *self.quarantine.lock().expect("health lock") = (Some(path), Some(last));
    }

    /// Records the spool's state after an append.
    pub(crate) fn spool_state(&self, full: bool, error: Option<String>) {
        self.spool_full.store(full, Ordering::Relaxed);
        self.spool_failed.store(error.is_some(), Ordering::Relaxed);
        if let Some(e) = error {
            *self.last_error.lock().expect("health lock") = Some(e);
        }
    }

    /// Records why the inbox tailer cannot run (`None` once it runs).
    pub(crate) fn inbox_state(&self, failed: Option<String>) {
        *self.inbox_failed.lock().expect("health lock") = failed;
    }

    /// Whether ingest works: the spool neither full nor failing, and the
    /// inbox tailer running.
    pub fn ok(&self) -> bool {
        !self.spool_failed.load(Ordering::Relaxed)
            && !self.spool_full.load(Ordering::Relaxed)
            && self.inbox_failed.lock().expect("health lock").is_none()
    }

    /// The `/healthz` body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": self.ok(),
            "spool_full": self.spool_full.load(Ordering::Relaxed),
            "spool_failed": self.spool_failed.load(Ordering::Relaxed),
            "last_spool_error": *self.last_error.lock().expect("health lock"),
            "inbox_failed": *self.inbox_failed.lock().expect("health lock"),
            "events_accepted": self.accepted.load(Ordering::Relaxed),
            "lines_rejected": self.rejected.load(Ordering::Relaxed),
            "events_refused": self.refused.load(Ordering::Relaxed),
            "inbox_lines_quarantined": self.quarantined.load(Ordering::Relaxed),
            "quarantine": self.quarantine.lock().expect("health lock").0.clone(),
            "last_quarantined": self.quarantine.lock().expect("health lock").1.clone(),
        })
    }
}

/// Exports the spool's own figures (`spoolhouse_spooler_*`: appends, fsync
/// latency, corruption, segments, disk bytes, every reader's lag) on the
/// collector's `/metrics`, read from the spool at each scrape. The spooler
/// names them; this only speaks Prometheus.
pub struct SpoolExport {
    spool: std::sync::Arc<spooler::Spool>,
}

impl std::fmt::Debug for SpoolExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpoolExport")
            .field("dir", &self.spool.dir())
            .finish()
    }
}

impl SpoolExport {
    /// Registers the export of `spool` in `registry`.
    pub fn register(registry: &mut Registry, spool: std::sync::Arc<spooler::Spool>) {
        registry.register_collector(Box::new(Self { spool }));
    }
}

/// The fsync histogram's samples, encoded as one histogram instead.
const FSYNC_HISTOGRAM: &str = "spoolhouse_spooler_fsync_duration_seconds";

impl prometheus_client::collector::Collector for SpoolExport {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::{MetricEncoder, NoLabelSet};
        use prometheus_client::metrics::MetricType;
        use spooler::StatKind;
        // A scrape while the spool cannot be read shows no spool figures;
        // the collector's own health and error metrics say why.
        let Ok(stats) = self.spool.stats() else {
            return Ok(());
        };
        let samples = stats.figures();
        let mut i = 0;
        while i < samples.len() {
            let first = &samples[i];
            let same = samples[i..]
                .iter()
                .take_while(|m| m.name == first.name)
                .count();
            let family = &samples[i..i + same];
            i += same;
            if first.name.starts_with(FSYNC_HISTOGRAM) {
                continue;
            }
            let (name, kind) = match first.kind {
                // The encoder appends `_total` to counters itself.
                StatKind::Counter => (
                    first.name.strip_suffix("_total").unwrap_or(first.name),
                    MetricType::Counter,
                ),
                StatKind::Gauge => (first.name, MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, first.help, None, kind)?;
            for m in family {
                // Every spool figure is a whole count of frames, bytes or
                // segments; integers print as Prometheus users expect.
                let value = m.value as i64;
                let encode = |sample: &mut MetricEncoder| match m.kind {
                    StatKind::Counter => {
                        sample.encode_counter::<NoLabelSet, u64, f64>(&(value as u64), None)
                    }
                    StatKind::Gauge => sample.encode_gauge(&value),
                };
                if m.labels.is_empty() {
                    encode(&mut metric)?;
                } else {
                    encode(&mut metric.encode_family(&m.labels)?)?;
                }
            }
        }
        let buckets: Vec<(f64, u64)> = stats
            .fsync_latency_buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let le = spooler::FSYNC_BUCKETS_US
                    .get(i)
                    // The encoder writes `+Inf` for exactly f64::MAX.
                    .map_or(f64::MAX, |&us| us as f64 / 1e6);
                (le, n)
            })
            .collect();
        let mut metric = encoder.encode_descriptor(
            FSYNC_HISTOGRAM,
            "fdatasync latency of segment files.",
            None,
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(
            stats.fsync_latency_sum_us as f64 / 1e6,
            stats.fsyncs,
            &buckets,
            None,
        )
    }
}

/// Sample names other programs read (the query service's pipeline health):
/// `tests/metrics_lint.rs` holds the query service's copies equal.
pub mod names {
    /// Events durably spooled, by `event` and `endpoint` (counter).
    pub const EVENTS_ACCEPTED_TOTAL: &str = "spoolhouse_collector_events_accepted_total";
    /// Bytes the spool holds (gauge).
    pub const SPOOL_BYTES: &str = "spoolhouse_collector_spool_bytes";
    /// Invalid inbox lines kept in the quarantine, by `rule` (counter).
    pub const QUARANTINED_LINES_TOTAL: &str = "spoolhouse_collector_quarantined_lines_total";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spool_figures_are_served_in_prometheus_text() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(
            spooler::Spool::open(dir.path(), spooler::Config::default()).unwrap(),
        );
        spool.append(&[b"one".as_slice(), b"two"]).unwrap();
        let mut reader = spool.reader("shipper").unwrap();
        reader.next(1, 1 << 20).unwrap();
        reader.commit_read().unwrap();
        let mut registry = Registry::default();
        SpoolExport::register(&mut registry, spool);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE spoolhouse_spooler_appended_frames counter",
            "spoolhouse_spooler_appended_frames_total 2",
            "# TYPE spoolhouse_spooler_segments gauge",
            "# TYPE spoolhouse_spooler_fsync_duration_seconds histogram",
            "spoolhouse_spooler_fsync_duration_seconds_bucket{le=\"+Inf\"} ",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        // One frame of two is still unread by the shipper's reader.
        let lag = httpd::exposition::sum(
            &httpd::exposition::samples(&text),
            "spoolhouse_spooler_reader_lag_bytes",
            "reader=\"shipper\"",
        )
        .unwrap_or_else(|| panic!("no reader lag in\n{text}"));
        assert!(lag > 0.0, "{lag}");
        assert_eq!(
            text.matches("# TYPE").count(),
            text.matches("# HELP").count()
        );
        assert!(!text.contains("_total_total"), "{text}");
    }

    #[test]
    fn the_names_others_read_are_exported() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.events_accepted
            .get_or_create(&vec![
                ("event", "vote".to_string()),
                ("endpoint", "unix".to_string()),
            ])
            .inc();
        m.spool_bytes.set(1);
        let text = httpd::exposition::encode(&r).unwrap();
        let samples = httpd::exposition::samples(&text);
        for name in [names::EVENTS_ACCEPTED_TOTAL, names::SPOOL_BYTES] {
            assert!(
                httpd::exposition::sum(&samples, name, "").is_some(),
                "{name} not in:\n{text}"
            );
        }
    }
}
