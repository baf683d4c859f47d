//! The shipper's Prometheus metrics, all named `spoolhouse_shipper_*`, and
//! its health as `/healthz` reports it.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Sample names other programs read (the query service's pipeline health,
/// the demo, the benches): renaming a metric here renames it there, and
/// `tests/metrics_lint.rs` holds the query service's copies equal.
pub mod names {
    /// Rows inserted into ClickHouse (counter).
    pub const ROWS_TOTAL: &str = "spoolhouse_shipper_rows_total";
    /// Seconds from an unshipped event's time to now, by `sink` (gauge).
    pub const LAG_SECONDS: &str = "spoolhouse_shipper_lag_seconds";
    /// Minute aggregation rounds done (counter).
    pub const AGGREGATION_ROUNDS_TOTAL: &str = "spoolhouse_shipper_aggregation_rounds_total";
    /// Seconds per aggregation round: one statement per event type over one or more minutes of one shard (histogram).
    pub const AGGREGATION_SECONDS: &str = "spoolhouse_shipper_aggregation_seconds";
    /// Series points (aggregate-state rows) the aggregation wrote (counter).
    pub const SERIES_POINTS_TOTAL: &str = "spoolhouse_shipper_series_points_total";
    /// Batches committed, by `sink` (counter).
    pub const BATCHES_TOTAL: &str = "spoolhouse_shipper_batches_total";
    /// Seconds reading and encoding a batch (histogram).
    pub const PREPARE_SECONDS: &str = "spoolhouse_shipper_prepare_seconds";
    /// Seconds per insert (histogram).
    pub const INSERT_SECONDS: &str = "spoolhouse_shipper_insert_seconds";
    /// 1 while this shipper is its DC's aggregator (gauge).
    pub const AGGREGATOR: &str = "spoolhouse_shipper_aggregator";
    /// The DC's app hosts by `state` (`live`, `silent`), on the aggregator (gauge).
    pub const FLEET_HOSTS: &str = "spoolhouse_shipper_fleet_hosts";
}

/// A label set: one (name, value) pair.
pub type Label = Vec<(String, String)>;

/// Builds a one-label set.
pub fn label(name: &str, value: &str) -> Label {
    vec![(name.to_string(), value.to_string())]
}

/// Every metric of the shipper.
pub struct Metrics {
    /// Batches committed, by sink (`clickhouse`, `redis`).
    pub batches: Family<Label, Counter>,
    /// Rows inserted into ClickHouse.
    pub rows: Counter,
    /// RowBinary bytes sent to ClickHouse.
    pub bytes: Counter,
    /// Seconds per successful insert.
    pub insert_seconds: Histogram,
    /// Seconds to read and encode a full batch (waiting for data excluded
    /// only when the batch filled up; a partial batch includes its age wait).
    pub prepare_seconds: Histogram,
    /// Failed attempts, by kind (`network`, `timeout`, `server`, `schema`, …).
    pub errors: Family<Label, Counter>,
    /// Rows a replay found already in ClickHouse and did not send again.
    pub replay_rows_skipped: Counter,
    /// Spool frames that did not decode, copied to the dead-letter folder.
    pub dead_letters: Counter,
    /// 1 while a batch is blocked by a non-retriable error.
    pub blocked: Gauge,
    /// Seconds between now and the event time of the oldest unshipped
    /// event, by sink; 0 when caught up.
    pub lag_seconds: Family<Label, Gauge<f64, AtomicU64>>,
    /// Frames read but not yet committed, by sink.
    pub lag_frames: Family<Label, Gauge>,
    /// Redis states written (newer event) and kept (older or equal event).
    pub redis_states: Family<Label, Counter>,
    /// Aggregation rounds done, one per minute aggregated (a minute
    /// aggregated again after a late event counts again).
    pub aggregation_rounds: Counter,
    /// Seconds per aggregation round: one statement per event type over one or more minutes of one shard.
    pub aggregation_seconds: Histogram,
    /// Seconds between now and the watermark.
    pub watermark_delay_seconds: Gauge<f64, AtomicU64>,
    /// Series points (aggregate-state rows) written.
    pub series_points: Counter,
    /// Distinct dimension values beyond `max_values_per_minute`, folded
    /// into `other`, by event and dimension (summed over rounds).
    pub dimension_values_folded: Family<Label, Counter>,
    /// Minutes of new metrics' history aggregated (their backfill).
    pub backfill_aggregations: Counter,
    /// Hours and days built from finer states, by `step` (a rebuild
    /// counts again; docs/adr/0016-pre-merged-hours-and-days.md).
    pub periods_built: Family<Label, Counter>,
    /// Minutes of events waiting to be aggregated.
    pub aggregations_pending: Gauge,
    /// 1 while a write of the shipper's state or a checkpoint waits for
    /// disk space.
    pub state_disk_full: Gauge,
    /// Tries of a state write that found the disk full.
    pub state_disk_full_waits: Counter,
    /// Position checks, each after fencing the earlier inserts of this host.
    pub fences: Counter,
    /// 1 while this shipper is its DC's aggregator (docs/adr/0014).
    pub aggregator: Gauge,
    /// The DC's app hosts as the aggregator last read them, by state
    /// (`live`, `silent`); 0 on the other shippers.
    pub fleet_hosts: Family<Label, Gauge>,
    /// Seconds between now and the DC's watermark (the smallest of the live
    /// hosts'), on the aggregator.
    pub dc_watermark_delay_seconds: Gauge<f64, AtomicU64>,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            batches: Family::default(),
            rows: Counter::default(),
            bytes: Counter::default(),
            // 1 ms … ~65 s: a healthy insert takes milliseconds, a struggling
            // server seconds, and the insert timeout bounds the top.
            insert_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            prepare_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            errors: Family::default(),
            replay_rows_skipped: Counter::default(),
            dead_letters: Counter::default(),
            blocked: Gauge::default(),
            lag_seconds: Family::default(),
            lag_frames: Family::default(),
            redis_states: Family::default(),
            aggregation_rounds: Counter::default(),
            aggregation_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            watermark_delay_seconds: Gauge::default(),
            series_points: Counter::default(),
            dimension_values_folded: Family::default(),
            periods_built: Family::default(),
            backfill_aggregations: Counter::default(),
            aggregations_pending: Gauge::default(),
            state_disk_full: Gauge::default(),
            state_disk_full_waits: Counter::default(),
            fences: Counter::default(),
            aggregator: Gauge::default(),
            fleet_hosts: Family::default(),
            dc_watermark_delay_seconds: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("spoolhouse_shipper");
        r.register("batches", "Batches committed, by sink", m.batches.clone());
        r.register("rows", "Rows inserted into ClickHouse", m.rows.clone());
        r.register(
            "bytes",
            "RowBinary bytes sent to ClickHouse",
            m.bytes.clone(),
        );
        r.register(
            "insert_seconds",
            "Duration of successful inserts",
            m.insert_seconds.clone(),
        );
        r.register(
            "prepare_seconds",
            "Duration of reading and encoding a batch",
            m.prepare_seconds.clone(),
        );
        r.register("errors", "Failed attempts by kind", m.errors.clone());
        r.register(
            "replay_rows_skipped",
            "Rows a replay found already in ClickHouse",
            m.replay_rows_skipped.clone(),
        );
        r.register(
            "dead_letters",
            "Spool frames that did not decode",
            m.dead_letters.clone(),
        );
        r.register(
            "blocked",
            "1 while a batch is blocked by a non-retriable error",
            m.blocked.clone(),
        );
        r.register(
            "lag_seconds",
            "Age of the oldest unshipped event, by sink",
            m.lag_seconds.clone(),
        );
        r.register(
            "lag_frames",
            "Frames read and not yet committed, by sink",
            m.lag_frames.clone(),
        );
        r.register(
            "redis_states",
            "Redis state writes by outcome",
            m.redis_states.clone(),
        );
        r.register(
            "aggregation_rounds",
            "Aggregation rounds done, one per minute aggregated (a late event's minute counts again)",
            m.aggregation_rounds.clone(),
        );
        r.register(
            "aggregation_seconds",
            "Seconds per aggregation round (one statement per event type over one or more minutes of one shard)",
            m.aggregation_seconds.clone(),
        );
        r.register(
            "watermark_delay_seconds",
            "Seconds between now and the aggregation watermark",
            m.watermark_delay_seconds.clone(),
        );
        r.register(
            "series_points",
            "Series points (aggregate-state rows) written",
            m.series_points.clone(),
        );
        r.register(
            "dimension_values_folded",
            "Distinct dimension values over the registry's max_values_per_minute, counted under `other`, by event and dimension (a late event's minute counts again)",
            m.dimension_values_folded.clone(),
        );
        r.register(
            "backfill_aggregations",
            "Minutes of new metrics' history aggregated (a backfill bounded by rollup_backfill_days)",
            m.backfill_aggregations.clone(),
        );
        r.register(
            "periods_built",
            "Hours and days built from finer states, by step (a period rebuilt after a late minute counts again)",
            m.periods_built.clone(),
        );
        r.register(
            "aggregations_pending",
            "Minutes of events waiting to be aggregated",
            m.aggregations_pending.clone(),
        );
        r.register(
            "state_disk_full",
            "1 while a state write or checkpoint waits for disk space",
            m.state_disk_full.clone(),
        );
        r.register(
            "state_disk_full_waits",
            "State writes or checkpoints that found the disk full and wait to be tried again",
            m.state_disk_full_waits.clone(),
        );
        r.register(
            "fences",
            "Position checks, each after fencing this host's earlier inserts",
            m.fences.clone(),
        );
        r.register(
            "aggregator",
            "1 while this shipper is its datacenter's aggregator",
            m.aggregator.clone(),
        );
        r.register(
            "fleet_hosts",
            "The datacenter's app hosts by state (live, silent: left out of the watermark), as the aggregator last read them",
            m.fleet_hosts.clone(),
        );
        r.register(
            "dc_watermark_delay_seconds",
            "Seconds between now and the datacenter's watermark (the smallest of its live hosts'), on the aggregator",
            m.dc_watermark_delay_seconds.clone(),
        );
        m
    }
}

/// How one sink is doing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SinkHealth {
    /// Not started yet.
    #[default]
    Starting,
    /// The last attempt succeeded.
    Ok,
    /// Transient failures; retrying with backoff.
    Retrying(String),
    /// A non-retriable error: the batch waits for an operator.
    Blocked(String),
}

/// What `/healthz` reports.
#[derive(Debug, Default)]
pub struct Health {
    /// The ClickHouse pipeline.
    pub clickhouse: Mutex<SinkHealth>,
    /// The Redis pipeline (`None` state when no event type declares a state).
    pub redis: Mutex<SinkHealth>,
    /// The aggregation rounds.
    pub aggregation: Mutex<SinkHealth>,
    /// Schema problems found by the start-up check.
    pub schema_problems: Mutex<Vec<String>>,
    /// What waits for disk space, while something does.
    pub state_disk: Mutex<Option<String>>,
    /// The ZooKeeper session of aggregation (publishing, election).
    pub zookeeper: Mutex<SinkHealth>,
    /// Hosts the aggregator left out of the DC's watermark as silent (on
    /// the aggregator; empty elsewhere).
    pub silent_hosts: Mutex<Vec<String>>,
}

impl Health {
    /// True when nothing is blocked, the schema matched and no state write
    /// waits for disk space.
    pub fn ok(&self) -> bool {
        let blocked = |m: &Mutex<SinkHealth>| {
            matches!(*m.lock().expect("health lock"), SinkHealth::Blocked(_))
        };
        !blocked(&self.clickhouse)
            && !blocked(&self.redis)
            && self.state_disk.lock().expect("health lock").is_none()
            && self.schema_problems.lock().expect("health lock").is_empty()
    }

    /// A JSON object for `/healthz`.
    pub fn to_json(&self) -> serde_json::Value {
        fn sink(h: &SinkHealth) -> serde_json::Value {
            match h {
                SinkHealth::Starting => serde_json::json!({"state": "starting"}),
                SinkHealth::Ok => serde_json::json!({"state": "ok"}),
                SinkHealth::Retrying(e) => serde_json::json!({"state": "retrying", "error": e}),
                SinkHealth::Blocked(e) => serde_json::json!({"state": "blocked", "error": e}),
            }
        }
        serde_json::json!({
            "ok": self.ok(),
            "clickhouse": sink(&self.clickhouse.lock().expect("health lock")),
            "redis": sink(&self.redis.lock().expect("health lock")),
            "aggregation": sink(&self.aggregation.lock().expect("health lock")),
            "zookeeper": sink(&self.zookeeper.lock().expect("health lock")),
            "silent_hosts": *self.silent_hosts.lock().expect("health lock"),
            "schema_problems": *self.schema_problems.lock().expect("health lock"),
            "state_disk": match &*self.state_disk.lock().expect("health lock") {
                None => serde_json::json!({"state": "ok"}),
                Some(e) => serde_json::json!({"state": "full", "error": e}),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_others_read_are_exported() {
        let mut r = Registry::default();
        let m = Metrics::register(&mut r);
        m.rows.inc();
        m.aggregation_rounds.inc();
        m.aggregation_seconds.observe(0.1);
        m.batches.get_or_create(&label("sink", "clickhouse")).inc();
        m.lag_seconds
            .get_or_create(&label("sink", "redis"))
            .set(1.0);
        m.prepare_seconds.observe(0.1);
        m.insert_seconds.observe(0.1);
        m.aggregator.set(1);
        m.fleet_hosts.get_or_create(&label("state", "live")).set(3);
        let text = httpd::exposition::encode(&r).unwrap();
        let samples = httpd::exposition::samples(&text);
        for name in [
            names::ROWS_TOTAL,
            names::LAG_SECONDS,
            names::AGGREGATION_ROUNDS_TOTAL,
            &format!("{}_sum", names::AGGREGATION_SECONDS),
            names::BATCHES_TOTAL,
            &format!("{}_sum", names::PREPARE_SECONDS),
            &format!("{}_sum", names::INSERT_SECONDS),
            names::AGGREGATOR,
            names::FLEET_HOSTS,
        ] {
            assert!(
                httpd::exposition::sum(&samples, name, "").is_some(),
                "{name} not in:\n{text}"
            );
        }
    }
}
