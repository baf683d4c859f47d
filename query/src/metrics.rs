//! The query service's metrics, named `spoolhouse_query_*` (its HTTP
//! listener's own are `httpd`'s).

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// Sample names other programs read (pipeline health, the benches).
pub mod names {
    /// Progress answers by `source` (`redis` = cache hit) (counter).
    pub const PROGRESS_SOURCE_TOTAL: &str = "spoolhouse_query_progress_source_total";
}

pub(crate) type Labels = Vec<(String, String)>;

/// The query service's metrics, named `spoolhouse_query_*`.
pub struct Metrics {
    pub(crate) requests: Family<Labels, Counter>,
    pub(crate) errors: Family<Labels, Counter>,
    pub(crate) seconds: Family<Labels, Histogram>,
    pub(crate) sources: Family<Labels, Counter<u64, AtomicU64>>,
    /// Redis misses looking in ClickHouse, set when `/metrics` is read.
    pub(crate) lookups: Gauge,
}

impl Metrics {
    pub(crate) fn register(r: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            errors: Family::default(),
            // 0.1 ms … ~3 s: a Redis hit takes well under a millisecond, a
            // global ClickHouse read up to the request timeout.
            seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 16))
            }),
            sources: Family::default(),
            lookups: Gauge::default(),
        };
        let r = r.sub_registry_with_prefix("spoolhouse_query");
        r.register(
            "requests",
            "Requests by endpoint and status",
            m.requests.clone(),
        );
        r.register(
            "errors",
            "Failed requests by endpoint and error kind",
            m.errors.clone(),
        );
        r.register(
            "request_seconds",
            "Request duration by endpoint",
            m.seconds.clone(),
        );
        r.register(
            "progress_source",
            "Progress answers by source (redis = cache hit)",
            m.sources.clone(),
        );
        r.register(
            "progress_lookups",
            "Progress Redis misses looking in ClickHouse now (bounded by progress_lookups_max)",
            m.lookups.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_others_read_are_exported() {
        let mut r = prometheus_client::registry::Registry::default();
        let m = Metrics::register(&mut r);
        m.sources
            .get_or_create(&vec![("source".to_string(), "redis".to_string())])
            .inc();
        let text = httpd::exposition::encode(&r).unwrap();
        let samples = httpd::exposition::samples(&text);
        assert_eq!(
            httpd::exposition::sum(&samples, names::PROGRESS_SOURCE_TOTAL, "source=\"redis\""),
            Some(1.0),
            "{text}"
        );
    }
}
