//! The query service: the HTTP API over Redis and ClickHouse.
//!
//! It owns watch-progress lookups (Redis first, then ClickHouse), global
//! reports merged from aggregate states across datacenters, time series,
//! drop and anomaly detection, and partial answers naming the datacenters
//! that did not answer.
//!
//! Not yet built: see the "Query service" issue.
