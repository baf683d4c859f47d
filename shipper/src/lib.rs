//! The shipper: a host's spool into its datacenter's ClickHouse, exactly
//! once in effect, and the latest keyed state into its Redis.
//!
//! Main types: [`Shipper`] runs two pipelines, each a named spool reader:
//! `clickhouse` inserts deterministic batches into `events_local` (through
//! `events_ingest`) on one
//! replica of a shard chosen from the batch ([`sink::Sink`]), and `redis`
//! keeps the newest value per key (`dc_config::state_store`).
//!
//! Exactly once in effect = at-least-once delivery + idempotent inserts:
//! - a batch is a fixed spool range, recorded durably before it is sent
//!   ([`intent`]), so a replay after a crash sends the same rows in the same
//!   order, as the same block;
//! - ClickHouse's replicated block deduplication drops a repeated block;
//! - before sending a batch again, the shipper fences its earlier inserts
//!   ([`epoch`]: an insert of an older epoch that lands later stores
//!   nothing), waits until none runs, asks the replicas the batch may have
//!   reached which of its spool positions they hold, and sends only the
//!   rest — this guard has no window, unlike deduplication's last 100
//!   blocks, and holds under any timing (docs/adr/0009-fenced-inserts.md);
//! - the checkpoint is committed only after ClickHouse acknowledged.
//!
//! Relay mode (docs/adr/0017-relay-tier.md): an app host's shipper sends
//! its batches to one of its DC's relays instead ([`forward`], over the
//! protocol in [`wire`]) and commits a batch once the relay reports it
//! visible; a [`relay::Relay`] takes many hosts' batches into its spool
//! and inserts them in large batches, each row with its origin's identity
//! and epoch, guarded by a takeover per connection.
//!
//! Nothing is ever skipped: transient errors retry with capped, jittered
//! backoff forever; non-retriable ones (missing table, refused data) block
//! the batch, retried slowly, with an error in the log, a metric and
//! `/healthz`, until an operator fixes the cause. A frame that is not an
//! event record goes to `STATE_DIR/dead-letter/`, counted and logged.

pub mod aggregate;
pub mod epoch;
pub mod error;
pub mod fleet;
pub mod forward;
pub mod intent;
pub mod metrics;
pub mod relay;
pub mod ship;
pub mod sink;
pub mod state;
pub mod wire;

pub use error::{Error, Result};
pub use metrics::{Health, Metrics};
pub use ship::{Guards, Shipper};
