//! Everything operators declare, once: the topology and the event registry,
//! and the facts every service derives from them (the event model, the
//! schema's names, keyed-state keys, metric roll-ups and their SQL, service
//! configs, rendering). Nothing here starts a process or opens a socket
//! except the keyed-state store client behind the `state-store` feature.
//!
//! Words used across the crates:
//!
//! - a **metric** is a registry definition (`count`, `uniq(user_id)`, … with
//!   its dimensions);
//! - a **roll-up** is one subset of a metric's dimensions it is kept by
//!   ([`rollup::rollups`]);
//! - a **series** is one roll-up at one set of dimension values, named
//!   `EVENT.KIND(FIELD){DIM=VALUE,…}` ([`rollup::series_name`]), whose
//!   points are per-minute aggregate states (`metric_states_*`) and their
//!   finalized values (`series_*`); the query service's `/v1/series` merges
//!   the states over any step.
pub mod app_hosts;
pub mod check;
pub mod codegen;
pub mod credentials;
pub mod declared;
pub mod error;
pub mod event;
pub mod examples;
pub mod locate;
pub mod record;
pub mod registry;
pub mod registry_diff;
pub mod render;
pub mod rollup;
pub mod row;
pub mod schema;
pub mod services;
pub mod sql;
pub mod state_key;
#[cfg(feature = "state-store")]
pub mod state_store;
pub mod steps;
pub mod topology;

pub use declared::Declared;
