//! Counters the services export as metrics. Plain values; the services name
//! them `spoolhouse_spooler_<thing>_<unit>` and serve them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::format::Position;

/// Upper bounds of the fsync latency histogram buckets, in microseconds; a
/// last, unbounded bucket follows. Why these: a local SSD syncs in 50 µs to
/// 1 ms, a busy or network disk in tens of ms, and a stall beyond 1 s is the
/// case to alert on.
pub const FSYNC_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 100_000, 250_000, 1_000_000,
];

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appends: AtomicU64,
    pub(crate) appended_frames: AtomicU64,
    pub(crate) appended_bytes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) fsync_buckets: [AtomicU64; FSYNC_BUCKETS_US.len() + 1],
    pub(crate) fsync_sum_us: AtomicU64,
    pub(crate) corrupt_regions: AtomicU64,
    pub(crate) corrupt_bytes: AtomicU64,
    pub(crate) quarantined_bytes: AtomicU64,
    pub(crate) torn_tail_bytes: AtomicU64,
    pub(crate) stale_checkpoints: AtomicU64,
    pub(crate) full_rejections: AtomicU64,
    pub(crate) segments_rotated: AtomicU64,
    pub(crate) segments_compressed: AtomicU64,
    pub(crate) segments_deleted: AtomicU64,
}

impl Counters {
    pub(crate) fn record_fsync(&self, took: Duration) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let i = FSYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(FSYNC_BUCKETS_US.len());
        self.fsync_buckets[i].fetch_add(1, Relaxed);
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_sum_us.fetch_add(us, Relaxed);
    }
}

/// A reader's position and how far behind the durable end it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderLag {
    /// Reader name.
    pub name: String,
    /// Committed position; `None` if its checkpoint file is corrupt.
    pub committed: Option<Position>,
    /// Uncompressed bytes between the checkpoint and the durable end.
    pub lag_bytes: u64,
    /// Segments between the checkpoint's segment and the active one.
    pub lag_segments: u64,
}

/// A snapshot of the spool's counters (monotonic since open) and gauges.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Successful append calls.
    pub appends: u64,
    /// Frames appended.
    pub appended_frames: u64,
    /// Bytes appended, frame headers included.
    pub appended_bytes: u64,
    /// fdatasync calls on segment files.
    pub fsyncs: u64,
    /// fsync latency histogram: per-bucket (not cumulative) counts; bucket
    /// `i` counts syncs of at most `FSYNC_BUCKETS_US[i]` µs, the last one the
    /// rest.
    pub fsync_latency_buckets: Vec<u64>,
    /// Sum of all fsync latencies, µs.
    pub fsync_latency_sum_us: u64,
    /// Damaged regions found (each skips at least one frame).
    pub corrupt_regions: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
    /// Bytes newly copied into the quarantine directory.
    pub quarantined_bytes: u64,
    /// Bytes cut from torn tails by recovery (never acknowledged appends).
    pub torn_tail_bytes: u64,
    /// Checkpoints found ahead of the data and moved back to its end.
    pub stale_checkpoints: u64,
    /// Appends refused with `Error::Full`.
    pub full_rejections: u64,
    /// Rotations of the active segment.
    pub segments_rotated: u64,
    /// Segments compressed by sealing.
    pub segments_compressed: u64,
    /// Segments deleted by retention.
    pub segments_deleted: u64,
    /// Segments on disk now.
    pub segments: u64,
    /// Bytes the segment files take on disk now.
    pub bytes_on_disk: u64,
    /// Durable end of the spool.
    pub durable: Position,
    /// Per reader lag.
    pub readers: Vec<ReaderLag>,
}

impl SpoolStats {
    /// Cumulative `(le_us, count)` pairs as Prometheus histograms want them;
    /// the last bound is `u64::MAX` for `+Inf`.
    pub fn fsync_latency_cumulative(&self) -> Vec<(u64, u64)> {
        let mut acc = 0;
        self.fsync_latency_buckets
            .iter()
            .enumerate()
            .map(|(i, c)| {
                acc += c;
                (FSYNC_BUCKETS_US.get(i).copied().unwrap_or(u64::MAX), acc)
            })
            .collect()
    }
}

/// How a metric behaves, in Prometheus terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// Only goes up while the spool is open.
    Counter,
    /// Goes up and down.
    Gauge,
}

/// One sample, named `spoolhouse_spooler_<thing>_<unit>` as every crate's
/// metrics are, ready for a service to register with its exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct Stat {
    /// Full metric name (for a histogram: `…_bucket`, `…_sum`, `…_count`).
    pub name: &'static str,
    /// One-line help text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: StatKind,
    /// Label pairs (`reader`, or `le` for histogram buckets).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl SpoolStats {
    /// Every figure as a named sample; the fsync histogram in seconds as
    /// cumulative `_bucket{le}` samples plus `_sum` and `_count`.
    pub fn figures(&self) -> Vec<Stat> {
        use StatKind::{Counter, Gauge};
        let plain = |name, help, kind, value: u64| Stat {
            name,
            help,
            kind,
            labels: Vec::new(),
            value: value as f64,
        };
        let mut m = vec![
            plain(
                "spoolhouse_spooler_appends_total",
                "Successful append calls.",
                Counter,
                self.appends,
            ),
            plain(
                "spoolhouse_spooler_appended_frames_total",
                "Frames appended.",
                Counter,
                self.appended_frames,
            ),
            plain(
                "spoolhouse_spooler_appended_bytes_total",
                "Bytes appended, frame headers included.",
                Counter,
                self.appended_bytes,
            ),
            plain(
                "spoolhouse_spooler_corrupt_regions_total",
                "Damaged regions found by recovery.",
                Counter,
                self.corrupt_regions,
            ),
            plain(
                "spoolhouse_spooler_corrupt_bytes_total",
                "Bytes in damaged regions found by recovery.",
                Counter,
                self.corrupt_bytes,
            ),
            plain(
                "spoolhouse_spooler_quarantined_bytes_total",
                "Bytes copied to the quarantine directory.",
                Counter,
                self.quarantined_bytes,
            ),
            plain(
                "spoolhouse_spooler_torn_tail_bytes_total",
                "Unacknowledged bytes cut from torn tails.",
                Counter,
                self.torn_tail_bytes,
            ),
            plain(
                "spoolhouse_spooler_stale_checkpoints_total",
                "Checkpoints found past the data and moved back.",
                Counter,
                self.stale_checkpoints,
            ),
            plain(
                "spoolhouse_spooler_full_rejections_total",
                "Appends refused because the quota would be exceeded.",
                Counter,
                self.full_rejections,
            ),
            plain(
                "spoolhouse_spooler_segments_rotated_total",
                "Active segment rotations.",
                Counter,
                self.segments_rotated,
            ),
            plain(
                "spoolhouse_spooler_segments_compressed_total",
                "Segments compressed by sealing.",
                Counter,
                self.segments_compressed,
            ),
            plain(
                "spoolhouse_spooler_segments_deleted_total",
                "Segments deleted by retention.",
                Counter,
                self.segments_deleted,
            ),
            plain(
                "spoolhouse_spooler_segments",
                "Segment files on disk.",
                Gauge,
                self.segments,
            ),
            plain(
                "spoolhouse_spooler_disk_bytes",
                "Bytes the segment files take on disk.",
                Gauge,
                self.bytes_on_disk,
            ),
        ];
        for (le, count) in self.fsync_latency_cumulative() {
            let le = if le == u64::MAX {
                "+Inf".to_string()
            } else {
                (le as f64 / 1e6).to_string()
            };
            m.push(Stat {
                name: "spoolhouse_spooler_fsync_duration_seconds_bucket",
                help: "fdatasync latency of segment files.",
                kind: Counter,
                labels: vec![("le", le)],
                value: count as f64,
            });
        }
        m.push(Stat {
            name: "spoolhouse_spooler_fsync_duration_seconds_sum",
            help: "fdatasync latency of segment files.",
            kind: Counter,
            labels: Vec::new(),
            value: self.fsync_latency_sum_us as f64 / 1e6,
        });
        m.push(plain(
            "spoolhouse_spooler_fsync_duration_seconds_count",
            "fdatasync latency of segment files.",
            Counter,
            self.fsyncs,
        ));
        // One family after the other, each with a sample per reader: a
        // family's samples must be together (a second HELP line for a name
        // is a parse error to Prometheus).
        type LagOf = fn(&ReaderLag) -> u64;
        let lags: [(&'static str, &'static str, LagOf); 2] = [
            (
                "spoolhouse_spooler_reader_lag_bytes",
                "Uncompressed bytes between a reader's checkpoint and the durable end.",
                |r| r.lag_bytes,
            ),
            (
                "spoolhouse_spooler_reader_lag_segments",
                "Segments between a reader's checkpoint and the active one.",
                |r| r.lag_segments,
            ),
        ];
        for (name, help, value) in lags {
            for r in &self.readers {
                m.push(Stat {
                    name,
                    help,
                    kind: Gauge,
                    labels: vec![("reader", r.name.clone())],
                    value: value(r) as f64,
                });
            }
        }
        m
    }
}

/// What one reader has skipped, so loss is never silent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReaderStats {
    /// Frames returned.
    pub frames_read: u64,
    /// Damaged regions skipped.
    pub corrupt_regions: u64,
    /// Bytes in them.
    pub corrupt_bytes: u64,
    /// Bytes newly quarantined by this reader.
    pub quarantined_bytes: u64,
    /// Segment sequence numbers found missing and skipped.
    pub missing_segments: u64,
    /// Times the checkpoint pointed past the data and was moved back.
    pub stale_checkpoints: u64,
    /// Times the checkpoint file could not be decoded and reading restarted
    /// from the oldest segment.
    pub corrupt_checkpoints: u64,
}

impl ReaderStats {
    /// This reader's figures as samples labelled `reader = name`, for the
    /// service that owns the reader to export beside `SpoolStats::metrics`.
    pub fn figures(&self, name: &str) -> Vec<Stat> {
        [
            (
                "spoolhouse_spooler_reader_frames_read_total",
                "Frames a reader returned.",
                self.frames_read,
            ),
            (
                "spoolhouse_spooler_reader_corrupt_regions_total",
                "Damaged regions a reader skipped.",
                self.corrupt_regions,
            ),
            (
                "spoolhouse_spooler_reader_corrupt_bytes_total",
                "Bytes in damaged regions a reader skipped.",
                self.corrupt_bytes,
            ),
            (
                "spoolhouse_spooler_reader_quarantined_bytes_total",
                "Bytes a reader copied to quarantine.",
                self.quarantined_bytes,
            ),
            (
                "spoolhouse_spooler_reader_missing_segments_total",
                "Missing segments a reader skipped.",
                self.missing_segments,
            ),
            (
                "spoolhouse_spooler_reader_stale_checkpoints_total",
                "Times a reader's checkpoint was past the data.",
                self.stale_checkpoints,
            ),
            (
                "spoolhouse_spooler_reader_corrupt_checkpoints_total",
                "Times a reader's checkpoint could not be decoded.",
                self.corrupt_checkpoints,
            ),
        ]
        .into_iter()
        .map(|(metric, help, value)| Stat {
            name: metric,
            help,
            kind: StatKind::Counter,
            labels: vec![("reader", name.to_string())],
            value: value as f64,
        })
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_histogram_buckets_and_cumulates() {
        let c = Counters::default();
        c.record_fsync(Duration::from_micros(40));
        c.record_fsync(Duration::from_micros(300));
        c.record_fsync(Duration::from_secs(5));
        let s = SpoolStats {
            fsync_latency_buckets: c.fsync_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            ..SpoolStats::default()
        };
        let cum = s.fsync_latency_cumulative();
        assert_eq!(cum[0], (50, 1));
        assert_eq!(cum[3], (500, 2));
        assert_eq!(*cum.last().unwrap(), (u64::MAX, 3));
        assert_eq!(c.fsyncs.load(Relaxed), 3);
    }

    #[test]
    fn metrics_follow_the_naming_rule_and_carry_reader_labels() {
        let s = SpoolStats {
            appended_frames: 7,
            fsyncs: 2,
            fsync_latency_sum_us: 1500,
            fsync_latency_buckets: vec![0; FSYNC_BUCKETS_US.len() + 1],
            readers: vec![ReaderLag {
                name: "ship".into(),
                committed: None,
                lag_bytes: 42,
                lag_segments: 1,
            }],
            ..SpoolStats::default()
        };
        let m = s.figures();
        assert!(m.iter().all(|x| x.name.starts_with("spoolhouse_spooler_")));
        let get = |n: &str| m.iter().find(|x| x.name == n).unwrap();
        assert_eq!(get("spoolhouse_spooler_appended_frames_total").value, 7.0);
        assert_eq!(
            get("spoolhouse_spooler_fsync_duration_seconds_sum").value,
            0.0015
        );
        let lag = get("spoolhouse_spooler_reader_lag_bytes");
        assert_eq!(lag.labels, vec![("reader", "ship".to_string())]);
        assert_eq!(lag.value, 42.0);
        let inf = m
            .iter()
            .find(|x| x.labels.first().is_some_and(|l| l.1 == "+Inf"))
            .unwrap();
        assert_eq!(inf.name, "spoolhouse_spooler_fsync_duration_seconds_bucket");
        let r = ReaderStats {
            missing_segments: 2,
            ..ReaderStats::default()
        }
        .figures("ship");
        let missing = r
            .iter()
            .find(|x| x.name == "spoolhouse_spooler_reader_missing_segments_total")
            .unwrap();
        assert_eq!(missing.value, 2.0);
        assert_eq!(missing.labels, vec![("reader", "ship".to_string())]);
    }
}
