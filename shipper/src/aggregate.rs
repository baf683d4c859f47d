//! Per-minute aggregation: this host's pending minutes and watermark, and
//! the statements a round runs.
//!
//! Every batch the shipper inserts records the minutes its events fall in as
//! *pending*, durably, before its checkpoint is committed; the shipper
//! publishes them with its watermark to the DC's ZooKeeper, and the DC's one
//! aggregator aggregates a minute once every live host's watermark has
//! passed its end plus `grace_ms` (docs/adr/0014-fleet-watermark-and-one-aggregator.md,
//! [`crate::fleet`]). Aggregating runs one `INSERT … SELECT` per metric over
//! the DC's events (`events_dc`) into `metric_states_local` of a shard
//! chosen from the minute, with a version (wall-clock ms, always
//! increasing, across aggregators too). The states table keeps the highest
//! version per (series, minute, DC)
//! (docs/adr/0002-aggregation-versions-and-watermark.md), so:
//!
//! - a late event (its minute already aggregated) makes the minute pending
//!   again, and the next round replaces the minute with an exact one;
//! - a crash after the insert and before the minute leaves the pending set
//!   re-aggregates it: replaced, never counted twice;
//! - a crash before the pending set is saved replays the batch (its
//!   checkpoint was not committed), which records the minute again.
//!
//! A host drops a pending minute once a round covered its newest touch.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use dc_config::registry::Registry;
use dc_config::services::ShipperConfig;
use serde::{Deserialize, Serialize};
use spooler::Position;

use crate::error::{Error, Result};

/// Pending minutes and the last version used, as saved in
/// `STATE_DIR/aggregation.json` (temp file, fsync, rename, directory fsync).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Minutes (unix seconds, multiples of 60) shipped but not aggregated
    /// since, each with a touch count: a minute touched again while it is
    /// being aggregated stays pending for another round.
    pub minutes: BTreeMap<u32, u64>,
    /// The highest aggregation version this host used when each shipper
    /// aggregated on its own (before docs/adr/0014); read, no longer written.
    #[serde(default)]
    pub last_version: u64,
}

const FILE: &str = "aggregation.json";

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
}

impl Pending {
    /// Loads the saved state; none saved yet is an empty one.
    pub fn load(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::State {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(state_err(&path)(e)),
        }
    }

    /// Saves durably.
    pub fn save(&self, state_dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).expect("plain data serializes");
        crate::state::write_durably(state_dir, FILE, &bytes)
    }
}

/// Most drain samples kept. The ClickHouse pipeline is at most two batches
/// (one shipping, one preparing) ahead of its checkpoint, with a handful of
/// samples per batch; should more pile up, the oldest go, which only makes
/// the watermark wait for a newer sample.
const DRAINED_SAMPLES_MAX: usize = 64;

/// What the aggregator shares with the ClickHouse pipeline.
#[derive(Debug, Default)]
pub struct Progress {
    /// Pending minutes, saved before each checkpoint commit.
    pub pending: Mutex<Pending>,
    /// Moments (wall-clock ms) the reader found the spool drained, oldest
    /// first, each with the end of the last frame read by then: every frame
    /// appended before that moment lies before that position. Several, not
    /// only the newest: under steady load the newest is always in a batch
    /// not yet committed, and the watermark would never move.
    drained: Mutex<VecDeque<(u64, Position)>>,
    /// The committed position of the ClickHouse reader.
    pub committed: Mutex<Position>,
    /// The newest watermark found so far.
    watermark: Mutex<Option<u64>>,
}

impl Progress {
    /// Records that the spool was found drained at `t_ms`, read up to `pos`.
    pub fn record_drained(&self, t_ms: u64, pos: Position) {
        let mut d = self.drained.lock().expect("progress lock");
        match d.back_mut() {
            // Same position, a later moment: the later sample says more.
            Some(last) if last.1 == pos => last.0 = last.0.max(t_ms),
            _ => d.push_back((t_ms, pos)),
        }
        if d.len() > DRAINED_SAMPLES_MAX {
            d.pop_front();
        }
    }

    /// The watermark: a moment (ms) before which every appended frame is in
    /// ClickHouse, if the pipeline has been caught up since it started: the
    /// newest drain sample whose position is committed.
    pub fn watermark_ms(&self) -> Option<u64> {
        let committed = *self.committed.lock().expect("progress lock");
        let mut d = self.drained.lock().expect("progress lock");
        let mut wm = self.watermark.lock().expect("progress lock");
        while let Some(&(t, pos)) = d.front() {
            if pos > committed {
                break;
            }
            *wm = Some(wm.map_or(t, |w| w.max(t)));
            d.pop_front();
        }
        *wm
    }

    /// Records `minutes` as pending and saves, if any is new. Called after
    /// a batch is inserted and before its checkpoint is committed.
    pub fn add_minutes(&self, minutes: &BTreeSet<u32>, state_dir: &Path) -> Result<()> {
        let mut p = self.pending.lock().expect("progress lock");
        let mut next = p.clone();
        let mut new = false;
        for m in minutes {
            let touches = next.minutes.entry(*m).or_insert_with(|| {
                new = true;
                0
            });
            *touches += 1;
        }
        // A minute already pending is already saved: only new ones cost a sync.
        if new {
            next.save(state_dir)?;
        }
        *p = next;
        Ok(())
    }

    /// Drops `minute` from the pending set if nothing touched it since
    /// `touches` was read, and saves; true if dropped.
    pub fn done(&self, minute: u32, touches: u64, state_dir: &Path) -> Result<bool> {
        let mut p = self.pending.lock().expect("progress lock");
        if p.minutes.get(&minute) != Some(&touches) {
            return Ok(false);
        }
        let mut next = p.clone();
        next.minutes.remove(&minute);
        next.save(state_dir)?;
        *p = next;
        Ok(true)
    }
}

/// The shard a minute's states go to: a pure function of the minute, so a
/// re-aggregation lands where the first one did and `FINAL` replaces it.
pub fn shard_for_minute(weights: &[u32], minute_s: u32) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum::<u64>().max(1);
    let mut pick = (u64::from(minute_s / 60).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % total;
    for (i, &w) in weights.iter().enumerate() {
        if pick < u64::from(w) {
            return i;
        }
        pick -= u64::from(w);
    }
    unreachable!("pick < total")
}

/// The statements aggregating `minutes` (sorted, each once, all placed on
/// one shard) of this shipper's DC: one per event type with metrics, each
/// one scan of those minutes (docs/adr/0015-one-pass-aggregation.md); with
/// `only` (an event type and a metric's base name), one statement for that
/// metric alone.
pub fn minutes_statements(
    config: &ShipperConfig,
    registry: &Registry,
    minutes: &[u32],
    version: u64,
    only: Option<(&str, &str)>,
) -> Vec<String> {
    dc_config::rollup::aggregated_events(registry)
        .filter(|(name, _)| only.is_none_or(|(event, _)| event == *name))
        .flat_map(|(name, ev)| {
            let mut ev = std::borrow::Cow::Borrowed(ev);
            if let Some((_, base)) = only {
                ev.to_mut().metric.retain(|m| m.base_name(name) == base);
            }
            dc_config::rollup::aggregate_minutes_sql(
                &config.database,
                &config.dc,
                name,
                &ev,
                minutes,
                version,
            )
        })
        .collect()
}

/// Per event type and bounded dimension of its metrics: the query counting
/// the values `minutes` (sorted, each once) of this DC fold into `other`,
/// summed over the minutes.
pub fn folded_values_statements<'a>(
    config: &ShipperConfig,
    registry: &'a Registry,
    minutes: &[u32],
) -> Vec<(&'a str, &'a str, String)> {
    dc_config::rollup::aggregated_events(registry)
        .flat_map(|(name, ev)| {
            dc_config::rollup::folded_values_sql(&config.database, name, ev, minutes)
                .into_iter()
                .map(move |(dim, sql)| (name, dim, sql))
        })
        .collect()
}

/// How long to wait between aggregation rounds when nothing is closed.
pub const ROUND_INTERVAL: Duration = Duration::from_millis(500);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watermark_moves_under_steady_load() {
        let p = Progress::default();
        let at = |offset| Position::new(1, offset);
        assert_eq!(p.watermark_ms(), None, "never drained yet");
        // Batch 1 (to 10) shipping while batch 2 (to 20) is read: the
        // newest sample is always past the checkpoint.
        p.record_drained(100, at(10));
        p.record_drained(150, at(10));
        p.record_drained(200, at(20));
        assert_eq!(p.watermark_ms(), None);
        *p.committed.lock().unwrap() = at(10);
        assert_eq!(p.watermark_ms(), Some(150));
        p.record_drained(300, at(30));
        assert_eq!(p.watermark_ms(), Some(150), "kept while batch 2 ships");
        *p.committed.lock().unwrap() = at(20);
        assert_eq!(p.watermark_ms(), Some(200));
        *p.committed.lock().unwrap() = at(30);
        assert_eq!(p.watermark_ms(), Some(300));
        // Caught up: each new sample at the committed position counts at once.
        p.record_drained(400, at(30));
        assert_eq!(p.watermark_ms(), Some(400));
    }

    #[test]
    fn drain_samples_are_bounded() {
        let p = Progress::default();
        for i in 0..1_000u64 {
            p.record_drained(i, Position::new(1, i + 1));
        }
        assert_eq!(p.drained.lock().unwrap().len(), DRAINED_SAMPLES_MAX);
        *p.committed.lock().unwrap() = Position::new(1, 1_000);
        assert_eq!(p.watermark_ms(), Some(999));
    }

    #[test]
    fn minute_shard_is_stable_and_weighted() {
        let mut counts = [0u32; 2];
        for m in 0..4000u32 {
            let s = shard_for_minute(&[1, 1], m * 60);
            assert_eq!(s, shard_for_minute(&[1, 1], m * 60));
            counts[s] += 1;
        }
        assert!(counts[0] > 1600 && counts[1] > 1600, "{counts:?}");
    }

    #[test]
    fn pending_saves_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Pending::load(dir.path()).unwrap(), Pending::default());
        let progress = Progress::default();
        progress
            .add_minutes(&[60, 120].into_iter().collect(), dir.path())
            .unwrap();
        let loaded = Pending::load(dir.path()).unwrap();
        assert_eq!(loaded.minutes, [(60, 1), (120, 1)].into_iter().collect());
        // Touched again while being aggregated: stays pending.
        progress
            .add_minutes(&[60].into_iter().collect(), dir.path())
            .unwrap();
        assert!(!progress.done(60, 1, dir.path()).unwrap());
        assert!(progress.done(60, 2, dir.path()).unwrap());
        assert!(progress.done(120, 1, dir.path()).unwrap());
        assert!(Pending::load(dir.path()).unwrap().minutes.is_empty());
    }
}

/// File keeping the registry the shipper last ran with, to tell operators
/// what a registry change does to aggregation.
pub const LAST_REGISTRY_FILE: &str = "registry.last.toml";

/// What changed between the registry of the last run and this one, as
/// messages for the operator: new and removed metrics, changed state keys.
pub fn registry_changes(old: &Registry, new: &Registry) -> Vec<String> {
    let bases = |r: &Registry| -> BTreeSet<String> {
        dc_config::rollup::aggregated_events(r)
            .flat_map(|(name, ev)| ev.metric.iter().map(move |m| m.base_name(name)))
            .collect()
    };
    let (before, after) = (bases(old), bases(new));
    let mut out = Vec::new();
    for m in after.difference(&before) {
        out.push(format!(
            "metric {m} is new: the DC's aggregator aggregates it from now on and backfills its history back `limits.rollup_backfill_days` days, an hour of minutes per round, writing that metric's series only; `spoolhouse shipper --config FILE --reaggregate-from SECS --reaggregate-to SECS` re-aggregates older minutes (every metric)"
        ));
    }
    for m in before.difference(&after) {
        out.push(format!(
            "metric {m} is no longer in the registry: it is no longer aggregated; its stored states and series keep their history"
        ));
    }
    for (name, ev) in &new.event {
        let old_key = old.get(name).and_then(|e| e.state.as_ref()).map(|s| &s.key);
        if let (Some(before), Some(after)) = (old_key, ev.state.as_ref().map(|s| &s.key)) {
            if before != after {
                out.push(format!(
                    "the state of {name} changed its key from {before:?} to {after:?}: values stored under the old keys are not moved and expire with their TTL; reads of the new keys miss until new events arrive"
                ));
            }
        }
    }
    out
}

/// Minutes of `[from_s, to_s)` (unix seconds), at most [`REAGGREGATE_MINUTES_MAX`].
pub fn minutes_between(from_s: u32, to_s: u32) -> std::result::Result<BTreeSet<u32>, String> {
    let first = from_s - from_s % 60;
    if to_s <= first {
        return Err(format!(
            "--reaggregate-to ({to_s}) must be after --reaggregate-from ({from_s})"
        ));
    }
    let n = (to_s - first).div_ceil(60);
    if n > REAGGREGATE_MINUTES_MAX {
        return Err(format!(
            "{n} minutes asked; at most {REAGGREGATE_MINUTES_MAX} (31 days) per run, to bound the work: split the range"
        ));
    }
    Ok((0..n).map(|i| first + 60 * i).collect())
}

/// Most minutes one `--reaggregate` run may ask for (31 days).
pub const REAGGREGATE_MINUTES_MAX: u32 = 31 * 1440;

#[cfg(test)]
mod change_tests {
    use super::*;

    #[test]
    fn registry_changes_are_explained() {
        let old = dc_config::examples::declared().registry;
        let mut new = old.clone();
        new.event["vote"].metric.pop();
        new.event["screen_view"]
            .metric
            .push(dc_config::registry::Metric {
                kind: dc_config::registry::MetricKind::Uniq,
                field: Some("user_id".into()),
                dimensions: vec![],
            });
        new.event["watch_progress"].state.as_mut().unwrap().key = vec!["user_id".into()];
        let msgs = registry_changes(&old, &new);
        assert_eq!(msgs.len(), 3, "{msgs:?}");
        assert!(msgs[0].starts_with("metric screen_view.uniq(user_id) is new"));
        assert!(msgs[1].starts_with("metric vote.uniq(user_id) is no longer in the registry"));
        assert!(msgs[2].starts_with("the state of watch_progress changed its key"));
        assert!(registry_changes(&old, &old).is_empty());
    }

    #[test]
    fn reaggregation_ranges_are_bounded() {
        assert_eq!(
            minutes_between(90, 200)
                .unwrap()
                .into_iter()
                .collect::<Vec<_>>(),
            vec![60, 120, 180]
        );
        assert!(minutes_between(100, 50).is_err());
        assert!(minutes_between(0, 32 * 86_400)
            .unwrap_err()
            .contains("at most 44640"));
    }
}
