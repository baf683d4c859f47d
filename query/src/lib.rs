//! The query service: the HTTP API over Redis and ClickHouse.
//!
//! It owns the read side: watch-progress lookups (this DC's Redis first,
//! then this DC's ClickHouse, then every DC's through the global table, and
//! a refill of Redis), with answers that say where they came from and which
//! datacenters did not answer (`"partial": true, "missing": [...]`).
//!
//! Main types: [`api::QueryService`] (routing, parameter checks, metrics),
//! [`progress::ProgressService`], [`ch::ClickHouse`] (reads as the read-only
//! user, global reads with their [`ch::Coverage`]).
//!
//! Series (`GET /v1/series`) merge aggregate states per step, globally or
//! per DC ([`series`]).
//!
//! Not yet built (see the "Query service" issue): reports, drop and anomaly
//! detection, read-only SQL.

pub mod api;
pub mod ch;
pub mod error;
pub mod progress;
pub mod series;
pub mod stats;

pub use api::{serve, QueryService};
pub use error::{Error, Result};
