//! Everything operators declare, once: the topology and the event registry.
pub mod check;
pub mod credentials;
pub mod declared;
pub mod error;
pub mod event;
pub mod examples;
pub mod locate;
pub mod record;
pub mod registry;
pub mod render;
pub mod row;
pub mod schema;
pub mod series;
pub mod services;
pub mod sql;
pub mod state_key;
#[cfg(feature = "state-store")]
pub mod state_store;
pub mod topology;

pub use declared::Declared;
