//! The names of the ClickHouse schema, in one place for every crate that
//! reads or writes it: tables, column lists and users. The renderer
//! creates what these name ([`crate::render::ddl`],
//! [`crate::render::clickhouse`]); the shipper and the query service use
//! them in their statements. A ground-floor module: it imports nothing.

/// Tables, per server and over clusters.
pub mod table {
    /// The generic events table on each server.
    pub const EVENTS_LOCAL: &str = "events_local";
    /// What the shipper inserts into: a Null table whose view passes the
    /// rows of unfenced epochs on to [`EVENTS_LOCAL`].
    pub const EVENTS_INGEST: &str = "events_ingest";
    /// The view from [`EVENTS_INGEST`] to [`EVENTS_LOCAL`].
    pub const EVENTS_INGEST_MV: &str = "events_ingest_mv";
    /// Per server: `(dc, host, below)`, rows of epochs below `below` from
    /// that host are dropped by [`EVENTS_INGEST_MV`].
    pub const SHIPPER_FENCES: &str = "shipper_fences";
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
    /// Hour states on each server: each row the merge of its hour's minute
    /// states, built once the hour is settled
    /// (docs/adr/0016-pre-merged-hours-and-days.md); `minute` holds the
    /// hour's start.
    pub const STATES_HOUR_LOCAL: &str = "metric_states_hour_local";
    /// Hour states over this DC's cluster.
    pub const STATES_HOUR_DC: &str = "metric_states_hour_dc";
    /// Hour states over every DC.
    pub const STATES_HOUR_ALL: &str = "metric_states_hour_all";
    /// Day states (UTC days) on each server, merged from the hour states;
    /// `minute` holds the day's start.
    pub const STATES_DAY_LOCAL: &str = "metric_states_day_local";
    /// Day states over this DC's cluster.
    pub const STATES_DAY_DC: &str = "metric_states_day_dc";
    /// Day states over every DC.
    pub const STATES_DAY_ALL: &str = "metric_states_day_all";
    /// Per DC and coarse step: the range of periods whose states are built
    /// (`from_s`, `through_s`), written by the DC's aggregator; a reader
    /// takes the coarse states inside it and the finer ones outside.
    pub const ROLLUP_MARKS_LOCAL: &str = "rollup_marks_local";
    /// The marks over this DC's cluster.
    pub const ROLLUP_MARKS_DC: &str = "rollup_marks_dc";
    /// The marks over every DC.
    pub const ROLLUP_MARKS_ALL: &str = "rollup_marks_all";
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
    /// The newest value of each keyed state (one row per event and key
    /// once merged), ordered for lookups by key: what a Redis miss reads.
    pub const KEYED_STATE_LOCAL: &str = "keyed_state_local";
    /// Keyed states over this DC's cluster.
    pub const KEYED_STATE_DC: &str = "keyed_state_dc";
    /// Keyed states over every DC.
    pub const KEYED_STATE_ALL: &str = "keyed_state_all";
    /// The materialized view feeding the keyed-state table from the events
    /// inserted into [`EVENTS_LOCAL`] directly (loads of history).
    pub const KEYED_STATE_MV: &str = "keyed_state_mv";
    /// The materialized view feeding the keyed-state table from what the
    /// shipper inserts into [`EVENTS_INGEST`]: on 18.16 rows a view writes
    /// into a table do not reach that table's own views.
    pub const KEYED_STATE_INGEST_MV: &str = "keyed_state_ingest_mv";
}

/// Column lists, in the order the shipper's RowBinary rows carry them.
pub mod column {
    /// The column list of `events_local`, in the order [`crate::row::EventRow::write_row_binary`] writes.
    pub const EVENT_COLUMNS: &str =
        "event, date, time, time_ms, dc, host, attr_names, attr_values, spool_segment, spool_offset";

    /// The column of `events_ingest` after [`EVENT_COLUMNS`]: the epoch of the
    /// shipper that sent the row (docs/adr/0009-fenced-inserts.md).
    pub const SHIPPER_EPOCH: &str = "shipper_epoch";

    /// The column list of `events_ingest`: [`EVENT_COLUMNS`], then [`SHIPPER_EPOCH`]
    /// (a little-endian `u64` after each row's RowBinary bytes).
    pub const INGEST_COLUMNS: &str = "event, date, time, time_ms, dc, host, attr_names, attr_values, spool_segment, spool_offset, shipper_epoch";
}

/// ClickHouse users (docs/adr/0012-clickhouse-users-with-passwords.md).
pub mod user {
    /// User the shipper and the schema step connect as: the only user that may
    /// write. There is no `default` user: a client that names none is refused.
    pub const WRITER_USER: &str = "spoolhouse_shipper";
    /// User the servers connect to each other as (Distributed tables, named in
    /// `remote_servers`): `readonly = 2`, so a forwarded read may carry its
    /// settings but nothing written reaches another server this way. Its
    /// password is in `config.xml`, which is therefore mode 0600.
    pub const CLUSTER_USER: &str = "spoolhouse_cluster";
    /// Read-only user of the query service's own reads (`readonly = 2`: it
    /// may still set per-query settings such as `skip_unavailable_shards`).
    /// Its statements are the service's, never an analyst's.
    pub const QUERY_USER: &str = "spoolhouse_query";
    /// User of analysts' statements (`POST /v1/sql`): `readonly = 1`, so a
    /// statement can change no setting and call no table function (18.16
    /// forbids both in that mode), with the topology's [`SqlLimits`] as its
    /// profile and quota, and at most `max_concurrent` statements at once.
    ///
    /// [`SqlLimits`]: crate::services::SqlLimits
    pub const SQL_USER: &str = "spoolhouse_sql";
}
