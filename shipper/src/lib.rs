//! The shipper: spool to this datacenter's ClickHouse, exactly once in effect.
//!
//! It owns tailing the spool with a named reader, deterministic batches,
//! idempotent inserts into `events_local` with retries, checkpoints after
//! acknowledgement, the latest keyed state in Redis, and per-minute
//! aggregation into aggregate-state tables.
//!
//! Not yet built: see the "Shipper" issue.
