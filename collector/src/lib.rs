//! The collector: the ingest edge of a host.
//!
//! It owns the endpoints apps hand events to (a Unix socket, a loopback TCP
//! listener and an LSD-style inbox directory), the JSON-lines wire protocol,
//! validation of each line against the registry from `dc-config`,
//! acknowledgements sent only once the spool holds a batch durably, and
//! backpressure when the spool is full. It never calls the network beyond
//! loopback: its only dependency is the local disk, through `spooler`.
//!
//! Not yet built: see the "Collector" issue.
