//! The shipper's epoch: a number every row it inserts carries (the
//! `shipper_epoch` column of `events_ingest`). It only grows: each run of
//! the shipper takes a new one, and so does each position check, after
//! which the replicas checked are fenced at it, so that no insert of an
//! earlier epoch, still under way or not yet arrived, can add rows the
//! check did not see (docs/adr/0009-fenced-inserts.md).
//!
//! Saved in `STATE_DIR/clickhouse.epoch` (decimal text) before it is used.
//! A new epoch is above the saved one and at least the wall clock in
//! milliseconds, so a lost state folder still gives a higher epoch; should
//! the clock also have gone back, the fence a replica reports raises it
//! further ([`crate::sink::Sink::fence`]).

use std::path::Path;

use crate::error::{Error, Result};

const FILE: &str = "clickhouse.epoch";

/// The saved epoch; 0 when none is saved or the file is damaged (a new
/// epoch is at least the clock, and fences report anything higher).
pub fn load(state_dir: &Path) -> Result<u64> {
    let path = state_dir.join(FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text.trim().parse().unwrap_or_else(|_| {
            tracing::warn!(path = %path.display(), "ignoring a damaged epoch file");
            0
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(Error::State { path, source }),
    }
}

/// The epoch after `last`, not below `floor` nor the clock `now_ms`.
pub fn next(last: u64, floor: u64, now_ms: u64) -> u64 {
    (last + 1).max(floor).max(now_ms)
}

/// Saves `epoch` durably: only then may rows carry it or a fence name it.
pub fn save(state_dir: &Path, epoch: u64) -> Result<()> {
    crate::state::write_durably(state_dir, FILE, format!("{epoch}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), 0);
        let e = next(0, 0, 1_000);
        assert_eq!(e, 1_000);
        save(dir.path(), e).unwrap();
        assert_eq!(load(dir.path()).unwrap(), 1_000);
        // The clock went back: still above the last one.
        assert_eq!(next(1_000, 0, 10), 1_001);
        // A replica's fence is above both.
        assert_eq!(next(1_000, 5_000, 10), 5_000);
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(load(dir.path()).unwrap(), 0);
    }
}
