//! The ClickHouse schema of one datacenter, as statements to run on each of
//! its servers (the `{dc}`, `{shard}` and `{replica}` macros make the same
//! text right on every one). Every statement runs on ClickHouse 18.16.
//!
//! Tables, per server:
//! - `events_local`: the generic events table (ReplicatedMergeTree, so a
//!   replayed insert block is deduplicated); `events_dc` over this DC's
//!   cluster and `events_all` over every DC (Distributed).
//! - `events_ingest` (Null) and `events_ingest_mv`: the shipper's door into
//!   `events_local`. Each row carries its shipper's epoch; the view passes
//!   only rows whose epoch is at least the host's fence in `shipper_fences`
//!   (on each server, not replicated: a fence holds on the server it was
//!   written to; a ReplacingMergeTree by `below`, so merges keep one row per
//!   host however often it is raised). A restarted shipper raises the fence before
//!   it asks which positions a replica holds, so an insert of a killed
//!   shipper that reaches the server after that question stores nothing
//!   (docs/adr/0009-fenced-inserts.md).
//! - `metric_states_local`: per-minute aggregate states, one row per
//!   (metric series, minute, DC, aggregation round); the highest `version`
//!   of a minute replaces earlier rounds, so late events re-aggregate it.
//! - `series_local`: (date, metric hash, time, value) fed by `series_mv`.

use crate::registry::Registry;
use crate::schema::column::{EVENT_COLUMNS, SHIPPER_EPOCH};
use crate::schema::table;
use crate::sql::quote_str;
use crate::state_key::TABLE_SEPARATOR;
use crate::topology::{Datacenter, Topology};

/// The keyed-state table and its view from the events, when the registry
/// declares any state. The view is created once:
/// a state added to the registry later needs `DROP TABLE <db>.keyed_state_mv`
/// and `DROP TABLE <db>.keyed_state_ingest_mv`
/// before the schema is applied again (the table and its data stay).
fn keyed_state_statements(
    topology: &Topology,
    registry: &Registry,
    zk: &dyn Fn(&str) -> String,
) -> Vec<String> {
    use table::*;
    let db = &topology.database;
    let states: Vec<(&String, &crate::registry::State)> = registry
        .event
        .iter()
        .filter_map(|(name, e)| e.state.as_ref().map(|s| (name, s)))
        .collect();
    if states.is_empty() {
        return Vec::new();
    }
    let attr = |f: &str| format!("attr_values[indexOf(attr_names, {})]", quote_str(f));
    let sep = quote_str(&TABLE_SEPARATOR.to_string());
    let mut key = String::from("multiIf(");
    let mut value = String::from("multiIf(");
    for (event, state) in &states {
        let parts: Vec<String> = state.key.iter().map(|f| attr(f)).collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("concat({})", parts.join(&format!(", {sep}, ")))
        };
        key.push_str(&format!("event = {}, {joined}, ", quote_str(event)));
        value.push_str(&format!(
            "event = {}, {}, ",
            quote_str(event),
            attr(&state.value)
        ));
    }
    key.push_str("'')");
    value.push_str("'')");
    let events: Vec<String> = states.iter().map(|(e, _)| quote_str(e)).collect();
    let keyed_view = |view: &str, from: &str| {
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view} TO {db}.{KEYED_STATE_LOCAL} AS\n\
             SELECT event, {key} AS key, time_ms, {value} AS value\n\
             FROM {db}.{from} WHERE event IN ({})",
            events.join(", ")
        )
    };
    vec![
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{KEYED_STATE_LOCAL} (\n\
             \x20   event String,\n\
             \x20   key String,\n\
             \x20   time_ms UInt64,\n\
             \x20   value String\n\
             ) ENGINE = ReplicatedReplacingMergeTree({}, time_ms)\n\
             ORDER BY (event, key)",
            zk(KEYED_STATE_LOCAL)
        ),
        keyed_view(KEYED_STATE_MV, EVENTS_LOCAL),
        // Keyed state keeps the newest value per key, so it needs no fence:
        // a fenced row is an event that arrives anyway, and where a server
        // does pass view-written rows on (newer releases) a state written
        // twice is the same state.
        keyed_view(KEYED_STATE_INGEST_MV, EVENTS_INGEST),
    ]
}

/// The columns of `events_local` with their types, one per line, in
/// [`EVENT_COLUMNS`] order (`events_ingest` has them too, and one more).
const EVENT_COLUMN_TYPES: &str = "    event String,
    date Date,
    time DateTime,
    time_ms UInt64,
    dc String,
    host String,
    attr_names Array(String),
    attr_values Array(String),
    spool_segment UInt64,
    spool_offset UInt64";

/// Every statement, in the order to run them, for the servers of `dc`.
pub fn statements(topology: &Topology, dc: &Datacenter, registry: &Registry) -> Vec<String> {
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
    // The minute, hour and day states share one layout: a period's start
    // in `minute`, one row per series, period and DC, the latest version
    // kept (docs/adr/0016-pre-merged-hours-and-days.md).
    let states_table = |name: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{name} (\n\
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
            zk(name)
        )
    };
    let mut out = vec![
        format!("CREATE DATABASE IF NOT EXISTS {db}"),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{EVENTS_LOCAL} (\n{EVENT_COLUMN_TYPES}\n\
             ) ENGINE = ReplicatedMergeTree({})\n\
             PARTITION BY toYYYYMM(date)\n\
             ORDER BY (event, time, host, spool_segment, spool_offset)",
            zk(EVENTS_LOCAL)
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{SHIPPER_FENCES} (\n\
             \x20   dc String,\n\
             \x20   host String,\n\
             \x20   below UInt64,\n\
             \x20   at DateTime DEFAULT now()\n\
             ) ENGINE = ReplacingMergeTree(below)\n\
             ORDER BY (dc, host)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{EVENTS_INGEST} (\n{EVENT_COLUMN_TYPES},\n\
             \x20   {SHIPPER_EPOCH} UInt64\n\
             ) ENGINE = Null"
        ),
        format!(
            "CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{EVENTS_INGEST_MV} TO {db}.{EVENTS_LOCAL} AS\n\
             SELECT {EVENT_COLUMNS}\n\
             FROM {db}.{EVENTS_INGEST}\n\
             ANY LEFT JOIN (SELECT dc, host, max(below) AS fence_below FROM {db}.{SHIPPER_FENCES} GROUP BY dc, host) USING (dc, host)\n\
             WHERE {SHIPPER_EPOCH} >= fence_below"
        ),
        distributed(EVENTS_DC, cluster, EVENTS_LOCAL),
        distributed(EVENTS_ALL, global, EVENTS_LOCAL),
        states_table(STATES_LOCAL),
        distributed(STATES_DC, cluster, STATES_LOCAL),
        distributed(STATES_ALL, global, STATES_LOCAL),
        states_table(STATES_HOUR_LOCAL),
        distributed(STATES_HOUR_DC, cluster, STATES_HOUR_LOCAL),
        distributed(STATES_HOUR_ALL, global, STATES_HOUR_LOCAL),
        states_table(STATES_DAY_LOCAL),
        distributed(STATES_DAY_DC, cluster, STATES_DAY_LOCAL),
        distributed(STATES_DAY_ALL, global, STATES_DAY_LOCAL),
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{ROLLUP_MARKS_LOCAL} (\n\
             \x20   dc String,\n\
             \x20   step UInt32,\n\
             \x20   from_s UInt32,\n\
             \x20   through_s UInt32,\n\
             \x20   version UInt64\n\
             ) ENGINE = ReplicatedReplacingMergeTree({}, version)\n\
             ORDER BY (dc, step)",
            zk(ROLLUP_MARKS_LOCAL)
        ),
        distributed(ROLLUP_MARKS_DC, cluster, ROLLUP_MARKS_LOCAL),
        distributed(ROLLUP_MARKS_ALL, global, ROLLUP_MARKS_LOCAL),
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
    ];
    let keyed = keyed_state_statements(topology, registry, &zk);
    if !keyed.is_empty() {
        out.extend(keyed);
        out.push(distributed(KEYED_STATE_DC, cluster, KEYED_STATE_LOCAL));
        out.push(distributed(KEYED_STATE_ALL, global, KEYED_STATE_LOCAL));
    }
    out
}

/// The statements of `dc` as one SQL file, each ending in `;`.
pub fn script(topology: &Topology, dc: &Datacenter, registry: &Registry) -> String {
    let mut out = format!(
        "-- Spoolhouse schema for datacenter {}: run on each of its ClickHouse servers.\n\n",
        dc.name
    );
    for s in statements(topology, dc, registry) {
        out.push_str(&s);
        out.push_str(";\n\n");
    }
    out
}
