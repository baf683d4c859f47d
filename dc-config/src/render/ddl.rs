//! The ClickHouse schema of one datacenter, as statements to run on each of
//! its servers (the `{dc}`, `{shard}` and `{replica}` macros make the same
//! text right on every one). Every statement runs on ClickHouse 18.16.
//!
//! Tables, per server:
//! - `events_local`: the generic events table (ReplicatedMergeTree, so a
//!   replayed insert block is deduplicated); `events_dc` over this DC's
//!   cluster and `events_all` over every DC (Distributed).
//! - `metric_states_local`: per-minute aggregate states, one row per
//!   (metric series, minute, DC, aggregation round); the highest `version`
//!   of a minute replaces earlier rounds, so late events re-aggregate it.
//! - `series_local`: (date, metric hash, time, value) fed by `series_mv`.

use crate::topology::{Datacenter, Topology};

/// Names of the tables, in one place for every crate that reads or writes them.
pub mod table {
    /// The generic events table on each server.
    pub const EVENTS_LOCAL: &str = "events_local";
    /// Distributed over this DC's cluster.
    pub const EVENTS_DC: &str = "events_dc";
    /// Distributed over every DC.
    pub const EVENTS_ALL: &str = "events_all";
    /// Per-minute aggregate states on each server.
    pub const STATES_LOCAL: &str = "metric_states_local";
    /// Aggregate states over this DC's cluster.
    pub const STATES_DC: &str = "metric_states_dc";
    /// Aggregate states over every DC.
    pub const STATES_ALL: &str = "metric_states_all";
    /// The time-series table on each server.
    pub const SERIES_LOCAL: &str = "series_local";
    /// Series over this DC's cluster.
    pub const SERIES_DC: &str = "series_dc";
    /// Series over every DC.
    pub const SERIES_ALL: &str = "series_all";
    /// The materialized view feeding the series table.
    pub const SERIES_MV: &str = "series_mv";
    /// A one-row view naming the server's DC: read through
    /// [`DC_MARKER_ALL`] it tells which DCs (and how many of their shards)
    /// answered a global read.
    pub const DC_MARKER: &str = "dc_marker";
    /// The marker over every DC.
    pub const DC_MARKER_ALL: &str = "dc_marker_all";
}

/// Every statement, in the order to run them, for the servers of `dc`.
pub fn statements(topology: &Topology, dc: &Datacenter) -> Vec<String> {
    use table::*;
    let db = &topology.database;
    let global = &topology.global_cluster;
    let cluster = &dc.name;
    let zk = |t: &str| format!("'/clickhouse/{{dc}}/tables/{{shard}}/{db}/{t}', '{{replica}}'");
    let distributed = |name: &str, cluster: &str, local: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{name} AS {db}.{local} \
             ENGINE = Distributed({cluster}, {db}, {local}, rand())"
        )
    };
    vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{EVENTS_LOCAL} (\n\
             \x20   event String,\n\
             \x20   date Date,\n\
             \x20   time DateTime,\n\
             \x20   time_ms UInt64,\n\
             \x20   dc String,\n\
             \x20   host String,\n\
             \x20   attr_names Array(String),\n\
             \x20   attr_values Array(String),\n\
             \x20   spool_segment UInt64,\n\
             \x20   spool_offset UInt64\n\
             ) ENGINE = ReplicatedMergeTree({})\n\
             PARTITION BY toYYYYMM(date)\n\
             ORDER BY (event, time, host, spool_segment, spool_offset)",
            zk(EVENTS_LOCAL)
        ),
        distributed(EVENTS_DC, cluster, EVENTS_LOCAL),
        distributed(EVENTS_ALL, global, EVENTS_LOCAL),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{STATES_LOCAL} (\n\
             \x20   date Date,\n\
             \x20   minute DateTime,\n\
             \x20   dc String,\n\
             \x20   event String,\n\
             \x20   metric String,\n\
             \x20   metric_hash UInt64 MATERIALIZED cityHash64(metric),\n\
             \x20   kind Enum8('count' = 1, 'uniq' = 2, 'sum' = 3, 'min' = 4, 'max' = 5),\n\
             \x20   version UInt64,\n\
             \x20   count_state AggregateFunction(count),\n\
             \x20   uniq_state AggregateFunction(uniq, String),\n\
             \x20   sum_state AggregateFunction(sum, Float64),\n\
             \x20   min_state AggregateFunction(min, Float64),\n\
             \x20   max_state AggregateFunction(max, Float64)\n\
             ) ENGINE = ReplicatedReplacingMergeTree({}, version)\n\
             PARTITION BY toYYYYMM(date)\n\
             ORDER BY (metric_hash, minute, dc)",
            zk(STATES_LOCAL)
        ),
        distributed(STATES_DC, cluster, STATES_LOCAL),
        distributed(STATES_ALL, global, STATES_LOCAL),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{SERIES_LOCAL} (\n\
             \x20   date Date,\n\
             \x20   metric_hash UInt64,\n\
             \x20   time DateTime,\n\
             \x20   dc String,\n\
             \x20   value Float64,\n\
             \x20   version UInt64\n\
             ) ENGINE = ReplicatedReplacingMergeTree({}, version)\n\
             PARTITION BY toYYYYMM(date)\n\
             ORDER BY (metric_hash, time, dc)",
            zk(SERIES_LOCAL)
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{SERIES_MV} TO {db}.{SERIES_LOCAL} AS\n\
             SELECT date, metric_hash, minute AS time, dc,\n\
             \x20   multiIf(kind = 'count', toFloat64(finalizeAggregation(count_state)),\n\
             \x20           kind = 'uniq', toFloat64(finalizeAggregation(uniq_state)),\n\
             \x20           kind = 'sum', finalizeAggregation(sum_state),\n\
             \x20           kind = 'min', finalizeAggregation(min_state),\n\
             \x20           finalizeAggregation(max_state)) AS value,\n\
             \x20   version\n\
             FROM {db}.{STATES_LOCAL}"
        ),
        distributed(SERIES_DC, cluster, SERIES_LOCAL),
        distributed(SERIES_ALL, global, SERIES_LOCAL),
        format!(
            "CREATE VIEW IF NOT EXISTS {db}.{DC_MARKER} AS SELECT {} AS dc",
            crate::sql::quote_str(&dc.name)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{DC_MARKER_ALL} (dc String) \
             ENGINE = Distributed({global}, {db}, {DC_MARKER})"
        ),
    ]
}

/// The statements of `dc` as one SQL file, each ending in `;`.
pub fn script(topology: &Topology, dc: &Datacenter) -> String {
    let mut out = format!(
        "-- Spoolhouse schema for datacenter {}: run on each of its ClickHouse servers.\n\n",
        dc.name
    );
    for s in statements(topology, dc) {
        out.push_str(&s);
        out.push_str(";\n\n");
    }
    out
}
