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
//! Drop detection (`GET /v1/drops`, [`drops`]) ranks the changes of every
//! series of an event between two windows by significance ([`stats`];
//! ADR 0004), from states merged per window ([`buckets`]). Anomaly
//! detection (`GET /v1/anomalies`, [`anomalies`]) predicts each series from
//! its own seasonal history, flags steps outside the band, reports one
//! alert per cause over the roll-up hierarchy, and applies the config's
//! threshold rules.
//!
//! Reports (`GET /v1/report`, [`report`]) merge an event's metrics over a
//! range, grouped by some of their dimensions (the matching roll-ups).
//!
//! Analysts' read-only SQL (`POST /v1/sql`, [`sql`]): one checked SELECT,
//! run as the read-only user within the limits of
//! [`dc_config::services::SqlLimits`].
//!
//! Pipeline health (`GET /v1/pipeline`, [`pipeline`]): every DC's
//! collector, shipper and query service `/metrics`, reduced to the figures
//! an operator watches, and which DCs answered.
//!
//! The web console (`GET /console/`, [`console`]): a page built into the
//! binary that charts the API's answers in the browser.
//!
//! Every route is listed once, in [`api::ROUTES`]; `docs/openapi.yaml`
//! documents the same set (a test holds them equal).

pub mod anomalies;
pub mod api;
pub mod buckets;
pub mod ch;
pub mod console;
pub mod drops;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod series;
pub mod sql;
pub mod stats;

pub use api::{serve, QueryService};
pub use error::{Error, Result};
