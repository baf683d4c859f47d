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

use dc_config::steps::{ceil_to, floor_to, Built, Coarse};
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
    /// The built hours and days of the DC (docs/adr/0016-pre-merged-hours-and-days.md),
    /// in [`Coarse::ALL`] order; absent in a state written before they were kept.
    #[serde(default)]
    pub built: [Option<Built>; 2],
    /// Signatures ([`metric_signatures`]) of the metrics the DC aggregates;
    /// `None` in a state written before they were kept (then the
    /// registry's metrics are taken as known: nothing is backfilled).
    #[serde(default)]
    pub metrics: Option<BTreeSet<String>>,
    /// New metrics' histories still to aggregate, oldest job first.
    #[serde(default)]
    pub backfills: Vec<Backfill>,
}

/// A new metric's history being aggregated, an hour per round, from `next_s`
/// to `to_s` (the minute it was first aggregated as it closed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backfill {
    /// Its event type.
    pub event: String,
    /// Its base name (`EVENT.KIND(FIELD)`): the series it writes.
    pub metric: String,
    /// First minute not backfilled yet.
    pub next_s: u32,
    /// End of the backfill (exclusive).
    pub to_s: u32,
}

/// Seconds of history a round backfills at most: an hour, so a backfill
/// delays the minutes closing meanwhile by one statement's time at most.
pub const BACKFILL_CHUNK_S: u32 = 3_600;

/// Each metric of `registry` by its signature (base name and dimensions:
/// a metric that gains a dimension has new roll-ups, so it is new), with
/// its event type and base name.
pub fn metric_signatures(
    registry: &dc_config::registry::Registry,
) -> BTreeMap<String, (String, String)> {
    dc_config::rollup::aggregated_events(registry)
        .flat_map(|(name, ev)| {
            ev.metric.iter().map(move |m| {
                let base = m.base_name(name);
                (
                    format!("{base}[{}]", m.dimensions.join(",")),
                    (name.to_string(), base),
                )
            })
        })
        .collect()
}

/// The known metrics and backfill jobs after a round that saw `current`
/// ([`metric_signatures`]) with every minute before `settled_s` aggregated:
/// each metric not known before gets a job over `[from_s, settled_s)`
/// (docs/adr/0016-pre-merged-hours-and-days.md). A state without known
/// metrics takes the current ones as known.
pub fn track_metrics(
    state: &AggState,
    current: &BTreeMap<String, (String, String)>,
    settled_s: u32,
    from_s: u32,
) -> (BTreeSet<String>, Vec<Backfill>) {
    let now: BTreeSet<String> = current.keys().cloned().collect();
    let mut jobs = state.backfills.clone();
    // A metric gone from the registry is not backfilled any more.
    jobs.retain(|b| {
        current
            .values()
            .any(|(e, m)| *e == b.event && *m == b.metric)
    });
    if let Some(known) = &state.metrics {
        for sig in now.difference(known) {
            let (event, metric) = &current[sig];
            if from_s < settled_s
                && !jobs
                    .iter()
                    .any(|b| b.event == *event && b.metric == *metric)
            {
                jobs.push(Backfill {
                    event: event.clone(),
                    metric: metric.clone(),
                    next_s: from_s - from_s % 60,
                    to_s: settled_s - settled_s % 60,
                });
            }
        }
    }
    (now, jobs)
}

/// The minutes the first job backfills this round: from the minute of its
/// first event left (`first_event_s`, `None` when it has none left: the job
/// is done), at most [`BACKFILL_CHUNK_S`] of them; and the jobs after it.
/// Empty history costs nothing.
pub fn backfill_step(
    jobs: &[Backfill],
    first_event_s: Option<u32>,
) -> Option<(Backfill, Vec<u32>, Vec<Backfill>)> {
    let job = jobs.first()?.clone();
    let mut after = jobs.to_vec();
    let start = first_event_s.map(|t| (t - t % 60).max(job.next_s));
    let Some(start) = start.filter(|s| *s < job.to_s) else {
        after.remove(0);
        return Some((job, Vec::new(), after));
    };
    let end = job.to_s.min(start.saturating_add(BACKFILL_CHUNK_S));
    let minutes: Vec<u32> = (start..end).step_by(60).collect();
    if end >= job.to_s {
        after.remove(0);
    } else {
        after[0].next_s = end;
    }
    Some((job, minutes, after))
}

/// The coarse periods holding `minutes` (sorted) that are built per
/// `built`, per step, finer first: what a backfill of those minutes rebuilds.
pub fn periods_of(minutes: &[u32], built: &[Option<Built>; 2]) -> Vec<(Coarse, Vec<u32>)> {
    Coarse::ALL
        .into_iter()
        .zip(built)
        .map(|(coarse, b)| {
            let periods: BTreeSet<u32> = minutes
                .iter()
                .map(|m| floor_to(*m, coarse.seconds()))
                .filter(|p| b.is_some_and(|b| (b.from_s..b.through_s).contains(p)))
                .collect();
            (coarse, periods.into_iter().collect())
        })
        .collect()
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
    /// Every minute before this (unix seconds) is aggregated once this
    /// round's are: the watermark's closed minutes, up to the first minute
    /// still to do that the round leaves for later. `None` without a
    /// watermark.
    pub settled_s: Option<u32>,
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
        let settled_s = watermark_ms.map(|wm| {
            let closed =
                (wm.saturating_sub(grace_ms) / 60_000 * 60).min(u64::from(u32::MAX)) as u32;
            let left = todo.iter().copied().find(|m| !minutes.contains(m));
            left.map_or(closed, |m| m.min(closed))
        });
        Round {
            settled_s,
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

/// What a round builds of the coarse steps, and the built ranges after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoarseWork {
    /// Per step, finer first: the periods to build (sorted, each once).
    pub builds: Vec<(Coarse, Vec<u32>)>,
    /// The built ranges once they are, in [`Coarse::ALL`] order.
    pub built: [Option<Built>; 2],
}

/// The coarse periods a round that aggregated `minutes` builds, every
/// minute before `settled_s` being aggregated after it
/// (docs/adr/0016-pre-merged-hours-and-days.md): each step's newly settled
/// periods (an hour when all its minutes are, a day when all its hours are
/// built), and the built periods holding a finer period this round changed
/// (a re-aggregated minute's hour, that hour's day). A first build starts
/// at `floor_s` (hours) and at the first whole day of the hours.
pub fn coarse_work(state: &AggState, minutes: &[u32], settled_s: u32, floor_s: u32) -> CoarseWork {
    let mut changed: BTreeSet<u32> = minutes.iter().copied().collect();
    let mut settled = settled_s;
    let mut floor = floor_s;
    let mut work = CoarseWork::default();
    for (i, coarse) in Coarse::ALL.into_iter().enumerate() {
        let s = coarse.seconds();
        let old = state.built[i];
        let from = old.map_or(ceil_to(floor, s), |b| b.from_s);
        let old_through = old.map_or(from, |b| b.through_s.max(from));
        let through = floor_to(settled, s).max(old_through);
        let mut periods: BTreeSet<u32> = (old_through..through).step_by(s as usize).collect();
        periods.extend(
            changed
                .iter()
                .map(|c| floor_to(*c, s))
                .filter(|p| (from..old_through).contains(p)),
        );
        work.built[i] = if through > from {
            Some(Built {
                from_s: from,
                through_s: through,
            })
        } else {
            old
        };
        let built_through = work.built[i].map_or(0, |b| b.through_s);
        (settled, floor) = (built_through, from);
        changed = periods.clone();
        work.builds.push((coarse, periods.into_iter().collect()));
    }
    work
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
    fn hours_and_days_are_built_once_settled_and_again_when_a_minute_changes() {
        const H: u32 = 3_600;
        const D: u32 = 86_400;
        let t0 = 20_000 * D; // a day start
                             // First build: from the floor (rounded up to an hour) to the
                             // settled hour; no whole day yet.
        let state = AggState::default();
        let w = coarse_work(&state, &[t0 + 2 * H + 60], t0 + 3 * H + 120, t0 + 1_800);
        assert_eq!(w.builds[0], (Coarse::Hour, vec![t0 + H, t0 + 2 * H]));
        assert_eq!(w.builds[1], (Coarse::Day, vec![]));
        assert_eq!(
            w.built,
            [
                Some(Built {
                    from_s: t0 + H,
                    through_s: t0 + 3 * H
                }),
                None
            ]
        );
        // The day after: the rest of the hours, and days from the first
        // whole one (day 1; day 0 began before the hours' floor).
        let state = AggState {
            built: w.built,
            ..Default::default()
        };
        let w2 = coarse_work(&state, &[], t0 + 2 * D + 60, t0);
        assert_eq!(w2.builds[0].1.len(), (2 * D - 3 * H) as usize / H as usize);
        assert_eq!(w2.builds[1], (Coarse::Day, vec![t0 + D]));
        // A late minute in a built hour rebuilds that hour and its day,
        // nothing else; a minute before the built range builds nothing.
        let state = AggState {
            built: w2.built,
            ..Default::default()
        };
        let w3 = coarse_work(&state, &[t0 + D + 5 * H + 60, t0 + 60], t0 + 2 * D + 60, t0);
        assert_eq!(w3.builds[0], (Coarse::Hour, vec![t0 + D + 5 * H]));
        assert_eq!(w3.builds[1], (Coarse::Day, vec![t0 + D]));
        assert_eq!(w3.built, w2.built);
        // Nothing settled further, nothing changed: nothing to do.
        let w4 = coarse_work(&state, &[], t0 + 2 * D + 60, t0);
        assert!(w4.builds.iter().all(|(_, p)| p.is_empty()));
    }

    #[test]
    fn a_round_settles_up_to_its_first_minute_left_for_later() {
        let state = AggState::default();
        let wm = Some(10_000 * 1000 + 5_000);
        // No pending minute: settled where the watermark closes minutes.
        let r = Round::plan(&[host("a", wm, &[], 5, true)], &state, 5_000);
        assert_eq!(r.settled_s, Some(9_960));
        // A backlog longer than a round: settled at its first minute left.
        let backlog: Vec<(u32, i64)> = (1..=ROUND_MINUTES_MAX as u32 + 5)
            .map(|k| (60 * k, 1))
            .collect();
        let r = Round::plan(&[host("a", wm, &backlog, 5, true)], &state, 5_000);
        assert_eq!(r.minutes.len(), ROUND_MINUTES_MAX);
        assert_eq!(r.settled_s, Some(60 * (ROUND_MINUTES_MAX as u32 + 1)));
    }

    #[test]
    fn a_new_metric_backfills_its_history_a_day_per_round() {
        let reg = dc_config::examples::declared().registry;
        let current = metric_signatures(&reg);
        let d = 86_400;
        // A state from before metrics were kept: nothing to backfill.
        let (known, jobs) = track_metrics(&AggState::default(), &current, 10 * d, 3 * d);
        assert!(jobs.is_empty());
        // One metric unknown: backfilled from the bound to the settled minute.
        let mut known_before = known.clone();
        let sig = known_before
            .iter()
            .find(|s| s.starts_with("vote.count()"))
            .unwrap()
            .clone();
        known_before.remove(&sig);
        let state = AggState {
            metrics: Some(known_before),
            ..Default::default()
        };
        let (after, jobs) = track_metrics(&state, &current, 10 * d + 90, 7 * d + 30);
        assert_eq!(after, known);
        assert_eq!(
            jobs,
            vec![Backfill {
                event: "vote".into(),
                metric: "vote.count()".into(),
                next_s: 7 * d,
                to_s: 10 * d + 60
            }]
        );
        // An hour per round from the first event left, then a last minute,
        // then done.
        let (job, minutes, mut rest) = backfill_step(&jobs, Some(7 * d + 7)).unwrap();
        assert_eq!(job.metric, "vote.count()");
        assert_eq!((minutes[0], minutes.len()), (7 * d, 60));
        // No event for two days: skipped at once.
        let (_, minutes, rest2) = backfill_step(&rest, Some(9 * d + 3 * 3_600 + 1)).unwrap();
        assert_eq!(minutes[0], 9 * d + 3 * 3_600);
        rest = rest2;
        for _ in 0..20 {
            rest = backfill_step(&rest, Some(0)).unwrap().2;
        }
        let (_, minutes, rest) = backfill_step(&rest, Some(0)).unwrap();
        assert_eq!(minutes, vec![10 * d]);
        assert!(rest.is_empty());
        // No event left: done without a statement.
        let (_, minutes, rest) = backfill_step(&jobs, None).unwrap();
        assert!(minutes.is_empty() && rest.is_empty());
        // The periods it rebuilds: only built ones.
        let built = [
            Some(Built {
                from_s: 8 * d,
                through_s: 9 * d + 3_600,
            }),
            Some(Built {
                from_s: 8 * d,
                through_s: 9 * d,
            }),
        ];
        let p = periods_of(
            &[7 * d + 60, 8 * d + 60, 9 * d + 120, 9 * d + 3_600],
            &built,
        );
        assert_eq!(p[0], (Coarse::Hour, vec![8 * d, 9 * d]));
        assert_eq!(p[1], (Coarse::Day, vec![8 * d]));
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
