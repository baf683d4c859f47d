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
}
