//! The collector: the ingest edge of a host.
//!
//! It owns the endpoints apps hand events to (a Unix socket, a loopback TCP
//! listener and an LSD-style inbox directory), the JSON-lines wire protocol
//! (`docs/protocol.md`), validation of each line against the registry from
//! `dc-config`, acknowledgements sent only once the spool holds a batch as
//! durably as its fsync policy promises, and backpressure when the spool is
//! full. It never calls the network beyond loopback: its only dependency is
//! the local disk, through `spooler`. The event model and the spool record
//! format belong to `dc-config`; the spool's files to `spooler`.
//!
//! Main types: [`Collector`] (opens the spool, then [`Collector::start`]
//! binds and serves, returning a [`Running`] to shut down and drain),
//! [`protocol::Response`] (what the collector answers), [`Client`] (the
//! Rust client library with reconnects), [`Metrics`] and [`Health`]
//! (`/metrics`, `/healthz`), [`Error`] and [`ClientError`].
//!
//! Per connection: read up to `read_buffer_bytes`, validate every complete
//! line, append the valid ones as one spool batch, answer one `Rejected`
//! per bad line and one `Ack` (or `Refused` when the spool is full). Every
//! bound lives in `dc_config::services::CollectorLimits`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), collector::ClientError> {
//! use collector::{Client, ClientConfig, Endpoint, LineOutcome};
//! let endpoint: Endpoint = "unix:/var/lib/spoolhouse/dc1/collector.sock".parse().unwrap();
//! let mut client = Client::connect(endpoint, ClientConfig::default()).await?;
//! let line = br#"{"event":"vote","time":1700000000000,"attrs":{"user_id":1,"target_user_id":2,"vote":"yes","country_id":7}}"#;
//! assert_eq!(client.send(line).await?, LineOutcome::Acked);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod inbox;
mod ingest;
pub mod metrics;
pub mod protocol;
pub mod quarantine;
mod server;

pub use client::{Client, ClientConfig, Endpoint, LineOutcome};
pub use error::{ClientError, Error};
pub use metrics::{Health, Metrics};
pub use server::{spool_config, Collector, RegistryHandle, Running, MAX_REJECTIONS_PER_REPLY};

/// Resolves once `stopped` holds `true` (or its sender is gone); the value's
/// guard is dropped inside, so the future stays `Send`.
pub(crate) async fn until_stopped(stopped: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stopped.wait_for(|s| *s).await;
}
