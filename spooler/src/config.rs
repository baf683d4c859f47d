//! Spool configuration: every bound with its default.

use crate::error::{Error, Result};
use crate::format::{SEGMENT_BYTES_MAX, SEGMENT_HEADER_LEN};

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every append calls fdatasync before it returns. Nothing acknowledged
    /// is lost on a crash or power failure; the slowest policy.
    Always,
    /// Concurrent appends share one fdatasync (group commit): an append
    /// returns once a sync that started after its write has finished. Same
    /// promise as `Always`, at a fraction of the syncs under concurrency.
    Group,
    /// Appends return after the write reaches the kernel; a background thread
    /// syncs every `interval_ms`. A power failure or kernel crash can lose
    /// what was appended in the last `interval_ms` plus one sync's duration;
    /// a crash of the process alone loses nothing. Readers in the same
    /// process see frames only once synced.
    Interval {
        /// Time between background syncs, in milliseconds.
        interval_ms: u64,
    },
}

/// What happens to a segment when it is sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Sealed segments stay raw.
    Off,
    /// Sealed segments are rewritten as one zstd stream (with its checksum).
    Zstd {
        /// zstd level, 1..=22; 3 is zstd's own default.
        level: i32,
    },
}

/// Spool configuration. `Config::default()` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Durability policy. Default: `Group`.
    pub durability: Durability,
    /// Rotate the active segment once it would exceed this many bytes.
    /// Default 64 MiB; at least 4 KiB, at most `SEGMENT_BYTES_MAX`.
    pub segment_bytes: u64,
    /// Rotate the active segment once it is this old and holds a frame, in
    /// milliseconds; 0 disables age rotation. Default 60 000 (one minute, so
    /// shipping never waits long for a segment to seal).
    pub segment_age_ms: u64,
    /// Compression of sealed segments. Default: zstd level 3.
    pub compression: Compression,
    /// Seal (compress) segments on a background thread. Default: true. Off,
    /// sealing happens only through `Spool::seal_pending`.
    pub background_seal: bool,
    /// Refuse appends (`Error::Full`) that would take the segment files past
    /// this many bytes. Default 10 GiB; at least 2 × `segment_bytes`.
    pub quota_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            durability: Durability::Group,
            segment_bytes: 64 << 20,
            segment_age_ms: 60_000,
            compression: Compression::Zstd { level: 3 },
            background_seal: true,
            quota_bytes: 10 << 30,
        }
    }
}

/// Smallest segment size accepted: below this the header and per-segment
/// fsyncs dominate.
pub const SEGMENT_BYTES_MIN: u64 = 4096;

/// Longest interval accepted for `Durability::Interval` (10 s): beyond that
/// the loss window stops being a "window".
pub const INTERVAL_MS_MAX: u64 = 10_000;

impl Config {
    /// Checks the config; the error names the parameter and the rule.
    pub fn validate(&self) -> Result<()> {
        if self.segment_bytes < SEGMENT_BYTES_MIN || self.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(Error::Config(format!(
                "segment_bytes = {} must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if self.quota_bytes < 2 * self.segment_bytes {
            return Err(Error::Config(format!(
                "quota_bytes = {} must be at least 2 x segment_bytes ({}), so a full active segment can rotate",
                self.quota_bytes, self.segment_bytes
            )));
        }
        if let Durability::Interval { interval_ms } = self.durability {
            if interval_ms == 0 || interval_ms > INTERVAL_MS_MAX {
                return Err(Error::Config(format!(
                    "durability interval_ms = {interval_ms} must be between 1 and {INTERVAL_MS_MAX}"
                )));
            }
        }
        if let Compression::Zstd { level } = self.compression {
            if !(1..=22).contains(&level) {
                return Err(Error::Config(format!(
                    "compression zstd level = {level} must be between 1 and 22"
                )));
            }
        }
        debug_assert!(SEGMENT_BYTES_MIN as usize > SEGMENT_HEADER_LEN);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_bad_values_name_their_parameter() {
        Config::default().validate().unwrap();
        let c = Config {
            segment_bytes: 10,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("segment_bytes"));
        let c = Config {
            quota_bytes: 1,
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("quota_bytes"));
        let c = Config {
            durability: Durability::Interval { interval_ms: 0 },
            ..Config::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("interval_ms"));
        let c = Config {
            compression: Compression::Zstd { level: 99 },
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("level"));
    }
}
