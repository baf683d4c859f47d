//! The DC's fleet as ZooKeeper holds it (docs/adr/0014-fleet-watermark-and-one-aggregator.md):
//! what each app host's shipper publishes (its watermark and its pending
//! minutes, [`HostRecord`]), what the one aggregator keeps ([`AggState`]),
//! and the decisions made from them, which are pure functions here and
//! tested as such: which minutes a round aggregates ([`Round::plan`]), and
//! which pending minutes a host may drop ([`covered_minutes`]).
//!
//! Every comparison of "before" and "after" is by ZooKeeper's zxid, the
//! total order of all writes to the ensemble, never by two hosts' clocks:
//! a host's pending minute was listed by a write with zxid `t` made after
//! the minute's events were in ClickHouse; a round that took its sync point
//! `z` before reading the hosts covers that touch when `t < z`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Root of the aggregation's nodes in the DC's ZooKeeper.
pub const ROOT: &str = "/spoolhouse/aggregation";
/// Each host's [`HostRecord`]: `HOSTS/<host>`.
pub const HOSTS: &str = "/spoolhouse/aggregation/hosts";
/// The candidates for aggregator (ephemeral, sequential): the lowest leads.
pub const CANDIDATES: &str = "/spoolhouse/aggregation/candidates";
/// The aggregator's [`AggState`].
pub const STATE: &str = "/spoolhouse/aggregation/state";
/// Prefix of a candidate's node name.
pub const CANDIDATE_PREFIX: &str = "c-";

/// Most minutes one round aggregates: a backlog (an outage, a history
/// load) is taken in steps, so a round's state write comes often.
pub const ROUND_MINUTES_MAX: usize = 120;
/// Versions reserved per write of the ceiling (ms of wall clock): ten
/// minutes of rounds per ZooKeeper write.
pub const VERSION_BLOCK: u64 = 600_000;

/// A run of consecutive minutes (unix seconds, multiples of 60, both ends
/// included) sharing one zxid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// First minute.
    pub from: u32,
    /// Last minute.
    pub to: u32,
    /// The zxid: of the host's write that listed these minutes (0: the
    /// write holding this record, whose zxid its stat gives), or of the
    /// round that covered them.
    pub zxid: i64,
}

/// `(minute, zxid)` pairs, in minute order, as runs.
pub fn to_runs(minutes: impl IntoIterator<Item = (u32, i64)>) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for (m, z) in minutes {
        match runs.last_mut() {
            Some(r) if r.zxid == z && r.to + 60 == m => r.to = m,
            _ => runs.push(Run {
                from: m,
                to: m,
                zxid: z,
            }),
        }
    }
    runs
}

/// The `(minute, zxid)` pairs of `runs`; a zxid of 0 becomes `own`.
pub fn from_runs(runs: &[Run], own: i64) -> impl Iterator<Item = (u32, i64)> + '_ {
    runs.iter().flat_map(move |r| {
        let z = if r.zxid == 0 { own } else { r.zxid };
        (r.from..=r.to).step_by(60).map(move |m| (m, z))
    })
}

/// What one app host's shipper publishes at `HOSTS/<host>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// Its watermark (its own clock, ms): every event it spooled before
    /// this is in ClickHouse. `None` until it has caught up once.
    pub watermark_ms: Option<u64>,
    /// Its pending minutes with the zxid of the write that listed their
    /// newest touch.
    pub pending: Vec<Run>,
}

/// What the aggregator keeps at [`STATE`], written only with
/// compare-and-set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggState {
    /// Incremented by each new aggregator.
    pub term: u64,
    /// No aggregator uses a version above this before raising it; a new
    /// one starts above it, so versions only grow across aggregators.
    pub version_ceiling: u64,
    /// Minutes covered by a round, with the round's sync point: a touch
    /// listed with a zxid below it is in that round.
    pub covered: Vec<Run>,
}

impl AggState {
    /// The sync point of the last round of each covered minute.
    pub fn covered_map(&self) -> BTreeMap<u32, i64> {
        from_runs(&self.covered, 0).collect()
    }
}

/// Minutes of `pending` (minute -> zxid of the write that listed its
/// newest touch) that `state` covers: the host may drop them.
pub fn covered_minutes(pending: &BTreeMap<u32, i64>, state: &AggState) -> Vec<u32> {
    let covered = state.covered_map();
    pending
        .iter()
        .filter(|(m, t)| covered.get(m).is_some_and(|z| *z > **t))
        .map(|(m, _)| *m)
        .collect()
}

/// One host as a round reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Host name.
    pub name: String,
    /// Its record.
    pub record: HostRecord,
    /// The zxid of its record's last write.
    pub mzxid: i64,
    /// False when its record has not changed for longer than the
    /// configured silence: left out of the watermark.
    pub live: bool,
}

/// What a round does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Minutes to aggregate, oldest first (at most [`ROUND_MINUTES_MAX`]).
    pub minutes: Vec<u32>,
    /// Minutes pending somewhere but not closed yet.
    pub waiting: usize,
    /// The DC's watermark: the smallest of the live hosts' (ms).
    pub watermark_ms: Option<u64>,
    /// Hosts left out as silent.
    pub silent: Vec<String>,
}

impl Round {
    /// Decides a round: a minute pending on any host (live or silent) and
    /// not covered since its newest touch is aggregated once every live
    /// host's watermark has passed its end plus `grace_ms`. No live host,
    /// or one that has never caught up, closes nothing.
    pub fn plan(hosts: &[HostView], state: &AggState, grace_ms: u64) -> Round {
        let covered = state.covered_map();
        let live: Vec<&HostView> = hosts.iter().filter(|h| h.live).collect();
        let watermark_ms = if live.is_empty() {
            None
        } else {
            live.iter()
                .map(|h| h.record.watermark_ms)
                .collect::<Option<Vec<u64>>>()
                .and_then(|w| w.into_iter().min())
        };
        let mut todo = BTreeSet::new();
        for h in hosts {
            for (m, t) in from_runs(&h.record.pending, h.mzxid) {
                if covered.get(&m).is_none_or(|z| *z <= t) {
                    todo.insert(m);
                }
            }
        }
        let closes =
            |m: u32| watermark_ms.is_some_and(|wm| (u64::from(m) + 60) * 1000 + grace_ms <= wm);
        let minutes: Vec<u32> = todo
            .iter()
            .copied()
            .filter(|m| closes(*m))
            .take(ROUND_MINUTES_MAX)
            .collect();
        Round {
            waiting: todo.len() - minutes.len(),
            minutes,
            watermark_ms,
            silent: hosts
                .iter()
                .filter(|h| !h.live)
                .map(|h| h.name.clone())
                .collect(),
        }
    }
}

/// `state` after a round with sync point `z` aggregated `minutes`, keeping
/// only minutes some host still lists (a minute no host lists needs no
/// memory: a new touch of it is aggregated whatever it was).
pub fn after_round(state: &AggState, minutes: &[u32], z: i64, hosts: &[HostView]) -> AggState {
    let listed: BTreeSet<u32> = hosts
        .iter()
        .flat_map(|h| from_runs(&h.record.pending, h.mzxid).map(|(m, _)| m))
        .collect();
    let mut covered = state.covered_map();
    for m in minutes {
        covered.insert(*m, z);
    }
    covered.retain(|m, _| listed.contains(m));
    AggState {
        covered: to_runs(covered),
        ..state.clone()
    }
}

/// The version a round uses: the clock in ms, above the last one used and
/// above `floor` (a new aggregator's start).
pub fn next_version(last: u64, floor: u64, now_ms: u64) -> u64 {
    now_ms.max(last + 1).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(
        name: &str,
        wm: Option<u64>,
        pending: &[(u32, i64)],
        mzxid: i64,
        live: bool,
    ) -> HostView {
        HostView {
            name: name.into(),
            record: HostRecord {
                watermark_ms: wm,
                pending: to_runs(pending.iter().copied()),
            },
            mzxid,
            live,
        }
    }

    #[test]
    fn runs_round_trip_and_stay_small() {
        let minutes: Vec<(u32, i64)> = (0..4680).map(|i| (i * 60, 7)).collect();
        let runs = to_runs(minutes.clone());
        assert_eq!(runs.len(), 1, "a history load is one run");
        assert_eq!(from_runs(&runs, 0).collect::<Vec<_>>(), minutes);
        let mixed = vec![(60, 5), (120, 5), (180, 0), (300, 0)];
        let runs = to_runs(mixed.clone());
        assert_eq!(runs.len(), 3);
        assert_eq!(
            from_runs(&runs, 9).collect::<Vec<_>>(),
            vec![(60, 5), (120, 5), (180, 9), (300, 9)]
        );
    }

    #[test]
    fn a_minute_closes_when_every_live_host_has_passed_it() {
        let grace = 5_000;
        let hosts = vec![
            host("a", Some(200_000), &[(60, 10), (120, 10)], 10, true),
            host("b", Some(130_000), &[(120, 11)], 11, true),
        ];
        let r = Round::plan(&hosts, &AggState::default(), grace);
        assert_eq!(r.watermark_ms, Some(130_000));
        assert_eq!(
            r.minutes,
            vec![60],
            "120 ends at 180 s + grace: b has not passed it"
        );
        assert_eq!(r.waiting, 1);
        // b catches up: both close, each once however many hosts list it.
        let hosts = vec![
            host("a", Some(200_000), &[(60, 10), (120, 10)], 10, true),
            host("b", Some(190_000), &[(120, 11)], 11, true),
        ];
        assert_eq!(
            Round::plan(&hosts, &AggState::default(), grace).minutes,
            vec![60, 120]
        );
    }

    #[test]
    fn a_silent_host_is_left_out_of_the_watermark_but_its_minutes_count() {
        let hosts = vec![
            host("a", Some(500_000), &[(60, 10)], 10, true),
            host("b", Some(1_000), &[(120, 11)], 11, false),
        ];
        let r = Round::plan(&hosts, &AggState::default(), 0);
        assert_eq!(r.minutes, vec![60, 120]);
        assert_eq!(r.silent, vec!["b".to_string()]);
        // A live host that never caught up holds everything.
        let hosts = vec![
            host("a", Some(500_000), &[(60, 10)], 10, true),
            host("c", None, &[], 12, true),
        ];
        assert!(Round::plan(&hosts, &AggState::default(), 0)
            .minutes
            .is_empty());
        // No live host at all: nothing closes.
        let hosts = vec![host("b", Some(1_000_000), &[(60, 11)], 11, false)];
        assert!(Round::plan(&hosts, &AggState::default(), 0)
            .minutes
            .is_empty());
    }

    #[test]
    fn a_touch_after_a_rounds_sync_point_is_aggregated_again() {
        let hosts = vec![host("a", Some(500_000), &[(60, 10)], 10, true)];
        let state = after_round(&AggState::default(), &[60], 20, &hosts);
        // Listed at 10, covered at 20: done, and the host may drop it.
        assert!(Round::plan(&hosts, &state, 0).minutes.is_empty());
        let pending: BTreeMap<u32, i64> = [(60, 10)].into_iter().collect();
        assert_eq!(covered_minutes(&pending, &state), vec![60]);
        // A late event, listed by a write at 25 (after the sync point).
        let hosts = vec![host("a", Some(500_000), &[(60, 0)], 25, true)];
        assert_eq!(Round::plan(&hosts, &state, 0).minutes, vec![60]);
        let pending: BTreeMap<u32, i64> = [(60, 25)].into_iter().collect();
        assert!(covered_minutes(&pending, &state).is_empty());
        // A touch listed at exactly the sync point cannot be: zxids are
        // unique; a touch at the sync point's value would still be redone.
        let hosts = vec![host("a", Some(500_000), &[(60, 20)], 20, true)];
        assert_eq!(Round::plan(&hosts, &state, 0).minutes, vec![60]);
    }

    #[test]
    fn covered_minutes_are_forgotten_once_no_host_lists_them() {
        let hosts = vec![host("a", Some(500_000), &[(60, 10), (120, 10)], 10, true)];
        let s = after_round(&AggState::default(), &[60, 120], 20, &hosts);
        assert_eq!(s.covered.len(), 1);
        let hosts = vec![host("a", Some(500_000), &[(120, 10)], 30, true)];
        let s = after_round(&s, &[], 40, &hosts);
        assert_eq!(s.covered_map(), [(120, 20)].into_iter().collect());
        let s = after_round(&s, &[], 50, &[]);
        assert!(s.covered.is_empty());
    }

    #[test]
    fn a_backlog_is_taken_in_bounded_rounds() {
        let pending: Vec<(u32, i64)> = (1..=500).map(|i| (i * 60, 3)).collect();
        let hosts = vec![host("a", Some(u64::MAX / 2), &pending, 3, true)];
        let r = Round::plan(&hosts, &AggState::default(), 0);
        assert_eq!(r.minutes.len(), ROUND_MINUTES_MAX);
        assert_eq!(r.minutes[0], 60, "oldest first");
        assert_eq!(r.waiting, 500 - ROUND_MINUTES_MAX);
    }

    #[test]
    fn versions_only_grow_across_aggregators() {
        assert_eq!(next_version(0, 0, 1_000), 1_000);
        assert_eq!(next_version(1_000, 0, 10), 1_001, "the clock went back");
        assert_eq!(
            next_version(1_000, 5_000, 10),
            5_000,
            "a new aggregator's floor"
        );
    }
}
