//! The shipper's part in its DC's aggregation (docs/adr/0014-fleet-watermark-and-one-aggregator.md):
//! it publishes its watermark and pending minutes to the DC's ZooKeeper,
//! drops the minutes a round covered, and, when elected, is the DC's one
//! aggregator. The decisions are [`crate::fleet`]'s; this file is their
//! I/O: the ZooKeeper session, compare-and-set writes, ClickHouse rounds.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use dc_config::event::now_ms;
use zookeeper_client as zk;

use super::Shipper;
use crate::aggregate;
use crate::error::{Error, Result};
use crate::fleet::{self, AggState, HostRecord, HostView, Round};
use crate::metrics::{label, SinkHealth};
use crate::sink::Sink;

/// Longest wait for a ZooKeeper session, or one request.
const ZK_TIMEOUT: Duration = Duration::from_secs(10);

/// A ZooKeeper error as the shipper's (retriable: the session is dropped
/// and made anew).
fn zk_err(what: &str) -> impl FnOnce(zk::Error) -> Error + '_ {
    move |e| Error::ZooKeeper(format!("{what}: {e}"))
}

/// Runs one ZooKeeper request to its end on `rt`, bounded by [`ZK_TIMEOUT`].
fn wait<T>(
    rt: &tokio::runtime::Handle,
    what: &str,
    request: impl std::future::Future<Output = std::result::Result<T, zk::Error>>,
) -> std::result::Result<std::result::Result<T, zk::Error>, Error> {
    // The timer is made inside the runtime: it needs its time driver.
    rt.block_on(async move { tokio::time::timeout(ZK_TIMEOUT, request).await })
        .map_err(|_| Error::ZooKeeper(format!("{what}: no answer within {ZK_TIMEOUT:?}")))
}

/// One ZooKeeper session and this shipper's candidacy in it.
struct Session {
    client: zk::Client,
    /// This shipper's candidate node (`c-NNNNNNNNNN`), if it is a candidate.
    candidate: Option<String>,
    /// The candidate just before ours, once known: when it goes, we look again.
    predecessor: Option<String>,
}

/// What the aggregator keeps between rounds.
struct Leadership {
    /// The state as last written, and the node version of that write.
    state: AggState,
    state_version: i32,
    /// The last aggregation version used, and the floor this term started at.
    last_version: u64,
    floor: u64,
    /// Per host: the last record zxid seen and when it changed (this
    /// shipper's clock; only durations are taken from it).
    seen: HashMap<String, (i64, Instant)>,
}

/// Per pending minute: its touch count and the zxid of the write that
/// listed that touch.
type Published = BTreeMap<u32, (u64, i64)>;

impl Shipper {
    /// The aggregation thread: publish, drop covered minutes, and lead a
    /// round when elected; until shutdown. ZooKeeper or ClickHouse being
    /// away never stops shipping; it only waits here.
    pub(super) fn aggregate_loop(&self, rt: &tokio::runtime::Handle) -> Result<()> {
        let sink = Sink::new(&self.config)?;
        let weights = sink.weights();
        // The registry does not change while the shipper runs.
        let metrics = fleet::metric_signatures(&self.registry);
        let mut session: Option<Session> = None;
        let mut published = Published::new();
        let mut lead: Option<Leadership> = None;
        let mut last_publish: Option<Instant> = None;
        let mut attempt = 0u32;
        let interval = Duration::from_millis(self.config.limits.publish_interval_ms);
        while !self.stopping() {
            let mut step = || -> Result<()> {
                let s = match session.as_mut() {
                    Some(s) => s,
                    None => session.insert(self.open_session(rt)?),
                };
                let changed = self.pending_changed(&published);
                if changed || last_publish.is_none_or(|t| t.elapsed() >= interval) {
                    self.publish(rt, s, &mut published)?;
                    last_publish = Some(Instant::now());
                }
                if self.is_aggregator(rt, s)? {
                    self.lead_round(rt, s, &mut lead, &sink, &weights, &metrics)
                } else {
                    if lead.take().is_some() {
                        tracing::info!("no longer the DC's aggregator");
                    }
                    self.metrics.aggregator.set(0);
                    Ok(())
                }
            };
            match step() {
                Ok(()) => {
                    attempt = 0;
                    *self.health.zookeeper.lock().expect("health lock") = SinkHealth::Ok;
                    self.sleep(aggregate::ROUND_INTERVAL);
                }
                Err(Error::Stopping) => break,
                Err(e @ (Error::ZooKeeper(_) | Error::ClickHouse { .. })) => {
                    self.metrics
                        .errors
                        .get_or_create(&label("kind", e.kind()))
                        .inc();
                    if matches!(e, Error::ZooKeeper(_)) {
                        // A new session: a new candidacy, and a new
                        // aggregator proves itself with a new term.
                        session = None;
                        lead = None;
                        self.metrics.aggregator.set(0);
                    }
                    tracing::warn!(error = %e, attempt, "aggregation step failed; trying again");
                    *self.health.zookeeper.lock().expect("health lock") =
                        SinkHealth::Retrying(e.to_string());
                    if !self.sleep(self.backoff(attempt.min(6))) {
                        break;
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
        // A clean stop hands the aggregation over at once, not after the
        // session times out: this shipper's candidate node goes first.
        if let Some(Session {
            client,
            candidate: Some(c),
            ..
        }) = &session
        {
            let path = format!("{}/{c}", fleet::CANDIDATES);
            let left = match wait(rt, "leaving the candidates", client.delete(&path, None)) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match left {
                Ok(()) => tracing::info!("left the aggregator candidates"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not leave the aggregator candidates; the session's end will")
                }
            }
        }
        Ok(())
    }

    /// A session with the DC's ensemble, its nodes made, and (if this
    /// shipper may aggregate) its candidate node.
    fn open_session(&self, rt: &tokio::runtime::Handle) -> Result<Session> {
        let cluster = self.config.zookeeper.join(",");
        let connect = zk::Client::connector()
            .with_session_timeout(ZK_TIMEOUT)
            .with_connection_timeout(ZK_TIMEOUT)
            .connect(&cluster);
        let client = wait(rt, "connecting", connect)?.map_err(zk_err("connecting"))?;
        let dir = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        for path in [fleet::HOSTS, fleet::CANDIDATES] {
            wait(rt, "making the aggregation nodes", client.mkdir(path, &dir))?
                .map_err(zk_err("making the aggregation nodes"))?;
        }
        let candidate = if self.config.aggregator {
            let opts = zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());
            let path = format!("{}/{}", fleet::CANDIDATES, fleet::CANDIDATE_PREFIX);
            let (_, seq) = wait(
                rt,
                "becoming a candidate",
                client.create(&path, self.config.host.as_bytes(), &opts),
            )?
            .map_err(zk_err("becoming a candidate"))?;
            Some(format!("{}{seq}", fleet::CANDIDATE_PREFIX))
        } else {
            None
        };
        tracing::info!(zookeeper = %cluster, candidate = ?candidate, "ZooKeeper session for aggregation");
        Ok(Session {
            client,
            candidate,
            predecessor: None,
        })
    }

    /// Whether the pending set has minutes or touches not yet published.
    fn pending_changed(&self, published: &Published) -> bool {
        let p = self.progress.pending.lock().expect("progress lock");
        p.minutes.len() != published.len()
            || p.minutes
                .iter()
                .any(|(m, t)| published.get(m).is_none_or(|(pt, _)| pt != t))
    }

    /// Writes this host's record (its watermark, its pending minutes),
    /// then drops the pending minutes the aggregator's state covers.
    fn publish(
        &self,
        rt: &tokio::runtime::Handle,
        s: &Session,
        published: &mut Published,
    ) -> Result<()> {
        let pending = self
            .progress
            .pending
            .lock()
            .expect("progress lock")
            .minutes
            .clone();
        self.metrics.aggregations_pending.set(pending.len() as i64);
        let listed: Vec<(u32, i64)> = pending
            .iter()
            .map(|(m, t)| match published.get(m) {
                Some((pt, z)) if pt == t => (*m, *z),
                _ => (*m, 0),
            })
            .collect();
        let record = HostRecord {
            watermark_ms: self.progress.watermark_ms(),
            pending: fleet::to_runs(listed.iter().copied()),
        };
        if let Some(wm) = record.watermark_ms {
            self.metrics
                .watermark_delay_seconds
                .set(now_ms().saturating_sub(wm) as f64 / 1000.0);
        }
        let bytes = serde_json::to_vec(&record).expect("plain data serializes");
        let path = format!("{}/{}", fleet::HOSTS, self.config.host);
        let what = "writing this host's record";
        let stat = match wait(rt, what, s.client.set_data(&path, &bytes, None))? {
            Err(zk::Error::NoNode) => {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                wait(rt, what, s.client.create(&path, &bytes, &opts))?
                    .map(|(stat, _)| stat)
                    .map_err(zk_err(what))?
            }
            other => other.map_err(zk_err(what))?,
        };
        for (m, z) in &listed {
            if *z == 0 {
                published.insert(*m, (pending[m], stat.mzxid));
            }
        }
        published.retain(|m, _| pending.contains_key(m));
        let state = read_state(rt, &s.client)?.0;
        let by_zxid: BTreeMap<u32, i64> = published.iter().map(|(m, (_, z))| (*m, *z)).collect();
        for m in fleet::covered_minutes(&by_zxid, &state) {
            let touches = published[&m].0;
            let dropped = self.durably("pending minutes", || {
                self.progress.done(m, touches, &self.config.state_dir)
            })?;
            match dropped {
                None => return Err(Error::Stopping),
                Some(true) => {
                    published.remove(&m);
                }
                Some(false) => {}
            }
        }
        Ok(())
    }

    /// Whether this shipper's candidate is the lowest: the aggregator. Looks
    /// at the whole list only when its predecessor is gone.
    fn is_aggregator(&self, rt: &tokio::runtime::Handle, s: &mut Session) -> Result<bool> {
        let Some(mine) = s.candidate.clone() else {
            return Ok(false);
        };
        let what = "watching the candidates";
        if let Some(p) = &s.predecessor {
            let path = format!("{}/{p}", fleet::CANDIDATES);
            if wait(rt, what, s.client.check_stat(&path))?
                .map_err(zk_err(what))?
                .is_some()
            {
                return Ok(false);
            }
        }
        let mut names =
            wait(rt, what, s.client.list_children(fleet::CANDIDATES))?.map_err(zk_err(what))?;
        names.sort();
        if !names.contains(&mine) {
            // Our ephemeral node is gone: the session ended under us.
            return Err(Error::ZooKeeper(
                "this shipper's candidate node is gone".into(),
            ));
        }
        s.predecessor = names.iter().take_while(|n| **n < mine).last().cloned();
        Ok(s.predecessor.is_none())
    }

    /// One round of the DC's aggregator; the first of a term takes over
    /// the state. A refused compare-and-set means another aggregator wrote
    /// the state: this one steps down.
    fn lead_round(
        &self,
        rt: &tokio::runtime::Handle,
        s: &Session,
        lead: &mut Option<Leadership>,
        sink: &Sink,
        weights: &[u32],
        metrics: &BTreeMap<String, (String, String)>,
    ) -> Result<()> {
        let l = match lead.as_mut() {
            Some(l) => l,
            None => {
                let (state, version) = read_state(rt, &s.client)?;
                let next = AggState {
                    term: state.term + 1,
                    ..state.clone()
                };
                let Some(stat) = write_state(rt, &s.client, &next, version)? else {
                    return Ok(());
                };
                tracing::info!(
                    term = next.term,
                    versions_above = state.version_ceiling,
                    "this shipper is now the DC's aggregator"
                );
                lead.insert(Leadership {
                    floor: state.version_ceiling + 1,
                    state: next,
                    state_version: stat.version,
                    last_version: 0,
                    seen: HashMap::new(),
                })
            }
        };
        self.metrics.aggregator.set(1);
        // The sync point: every host write before it is seen by the reads
        // below, and every event those writes announced is in ClickHouse.
        let Some(sync) = write_state(rt, &s.client, &l.state, l.state_version)? else {
            *lead = None;
            return Ok(());
        };
        l.state_version = sync.version;
        let hosts = self.read_hosts(rt, &s.client, &mut l.seen)?;
        let grace = self.config.limits.aggregation_grace_ms;
        let round = Round::plan(&hosts, &l.state, grace);
        let live = hosts.iter().filter(|h| h.live).count();
        self.metrics
            .fleet_hosts
            .get_or_create(&label("state", "live"))
            .set(live as i64);
        self.metrics
            .fleet_hosts
            .get_or_create(&label("state", "silent"))
            .set(round.silent.len() as i64);
        *self.health.silent_hosts.lock().expect("health lock") = round.silent.clone();
        if let Some(wm) = round.watermark_ms {
            self.metrics
                .dc_watermark_delay_seconds
                .set(now_ms().saturating_sub(wm) as f64 / 1000.0);
        }
        // Hours and days to build: newly settled ones, and those holding
        // a minute this round re-aggregates; metrics new since the last
        // round and the next hour of the oldest backfill (ADR 0016).
        let back = self
            .config
            .limits
            .rollup_backfill_days
            .saturating_mul(86_400);
        let work = round.settled_s.map(|settled| {
            fleet::coarse_work(
                &l.state,
                &round.minutes,
                settled,
                settled.saturating_sub(back),
            )
        });
        let coarse_todo = work.as_ref().is_some_and(|w| {
            w.built != l.state.built || w.builds.iter().any(|(_, p)| !p.is_empty())
        });
        let tracked = round.settled_s.map(|settled| {
            fleet::track_metrics(&l.state, metrics, settled, settled.saturating_sub(back))
        });
        let backfill = match tracked.as_ref().and_then(|(_, jobs)| jobs.first()) {
            Some(job) => {
                let first = self.first_event_s(rt, sink, &job.event, job.next_s, job.to_s)?;
                fleet::backfill_step(&tracked.as_ref().expect("a job").1, first)
            }
            None => None,
        };
        let metrics_changed = tracked.as_ref().is_some_and(|(known, jobs)| {
            l.state.metrics.as_ref() != Some(known) || *jobs != l.state.backfills
        });
        if round.minutes.is_empty() && !coarse_todo && !metrics_changed && backfill.is_none() {
            return Ok(());
        }
        let built = work.as_ref().map_or(l.state.built, |w| w.built);
        let mut version = || -> Result<Option<u64>> {
            let v = fleet::next_version(l.last_version, l.floor, now_ms());
            if v > l.state.version_ceiling {
                l.state.version_ceiling = v + fleet::VERSION_BLOCK;
                match write_state(rt, &s.client, &l.state, l.state_version)? {
                    Some(stat) => l.state_version = stat.version,
                    None => return Err(Error::ZooKeeper("another aggregator took over".into())),
                }
            }
            l.last_version = v;
            Ok(Some(v))
        };
        // Each shard's minutes of the round in one statement per event type
        // (the round's minutes are sorted and each once, so each shard's are);
        // then each shard's periods per step, hours before the days merged
        // from them.
        for (shard, minutes) in by_shard(weights, &round.minutes) {
            if !self.aggregate_minutes(rt, sink, shard, &minutes, None, &mut version)? {
                return Err(Error::Stopping);
            }
        }
        if let Some(work) = work.as_ref().filter(|_| coarse_todo) {
            for (coarse, periods) in &work.builds {
                for (shard, periods) in by_shard(weights, periods) {
                    if !self.build_periods(
                        rt,
                        sink,
                        shard,
                        (*coarse, &periods),
                        None,
                        &mut version,
                    )? {
                        return Err(Error::Stopping);
                    }
                }
            }
            if !self.record_built(rt, sink, &work.built, &mut version)? {
                return Err(Error::Stopping);
            }
        }
        // A new metric's history: its series alone, then its hours and
        // days where built; every other series stays as it was.
        if let Some((job, minutes, _)) = backfill.as_ref().filter(|b| !b.1.is_empty()) {
            let only = Some((job.event.as_str(), job.metric.as_str()));
            for (shard, minutes) in by_shard(weights, minutes) {
                if !self.aggregate_minutes(rt, sink, shard, &minutes, only, &mut version)? {
                    return Err(Error::Stopping);
                }
            }
            for (coarse, periods) in fleet::periods_of(minutes, &built) {
                for (shard, periods) in by_shard(weights, &periods) {
                    if !self.build_periods(
                        rt,
                        sink,
                        shard,
                        (coarse, &periods),
                        only,
                        &mut version,
                    )? {
                        return Err(Error::Stopping);
                    }
                }
            }
            tracing::info!(
                metric = %job.metric,
                from = minutes.first().copied().unwrap_or(0),
                minutes = minutes.len(),
                until = job.to_s,
                "backfilled part of a new metric's history"
            );
        }
        let mut next = fleet::after_round(&l.state, &round.minutes, sync.mzxid, &hosts);
        if let Some(work) = work {
            next.built = work.built;
        }
        if let Some((known, jobs)) = tracked {
            next.metrics = Some(known);
            next.backfills = match backfill {
                Some((_, _, after)) => after,
                None => jobs,
            };
        }
        match write_state(rt, &s.client, &next, l.state_version)? {
            Some(stat) => {
                l.state = next;
                l.state_version = stat.version;
                tracing::debug!(
                    minutes = round.minutes.len(),
                    waiting = round.waiting,
                    "aggregation round done"
                );
                Ok(())
            }
            None => {
                *lead = None;
                Ok(())
            }
        }
    }

    /// The time of the DC's first `event` in `[from_s, to_s)` (any replica
    /// of the first shard answers, reading the DC through `events_dc`);
    /// `None` when there is none.
    fn first_event_s(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        event: &str,
        from_s: u32,
        to_s: u32,
    ) -> Result<Option<u32>> {
        let sql = format!(
            "SELECT toUInt64(min(time)) FROM {db}.{events} WHERE event = {event} \
             AND date >= toDate(toDateTime({from_s})) AND date <= toDate(toDateTime({last})) \
             AND time >= toDateTime({from_s}) AND time < toDateTime({to_s})",
            db = self.config.database,
            events = dc_config::schema::table::EVENTS_DC,
            event = dc_config::sql::quote_str(event),
            last = to_s.saturating_sub(1),
        );
        let mut last_error = None;
        for replica in 0..sink.replicas(0) {
            match rt.block_on(sink.query_u64(0, replica, &sql)) {
                Ok(0) => return Ok(None),
                Ok(t) => return Ok(Some(t.min(u64::from(u32::MAX)) as u32)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("a shard has a replica"))
    }

    /// Every host's record, each marked live or silent by how long ago its
    /// record last changed.
    fn read_hosts(
        &self,
        rt: &tokio::runtime::Handle,
        client: &zk::Client,
        seen: &mut HashMap<String, (i64, Instant)>,
    ) -> Result<Vec<HostView>> {
        let silent_after = Duration::from_millis(self.config.limits.host_silent_ms);
        let what = "reading the hosts' records";
        let names = wait(rt, what, client.list_children(fleet::HOSTS))?.map_err(zk_err(what))?;
        let mut hosts = Vec::with_capacity(names.len());
        for name in names {
            let path = format!("{}/{name}", fleet::HOSTS);
            let (data, stat) = match wait(rt, what, client.get_data(&path))? {
                Ok(v) => v,
                Err(zk::Error::NoNode) => continue,
                Err(e) => return Err(zk_err(what)(e)),
            };
            let record: HostRecord = serde_json::from_slice(&data).unwrap_or_else(|e| {
                tracing::warn!(host = %name, error = %e, "unreadable host record; taken as empty");
                HostRecord::default()
            });
            let entry = seen
                .entry(name.clone())
                .or_insert((stat.mzxid, Instant::now()));
            if entry.0 != stat.mzxid {
                *entry = (stat.mzxid, Instant::now());
            }
            hosts.push(HostView {
                live: entry.1.elapsed() < silent_after,
                name,
                record,
                mzxid: stat.mzxid,
            });
        }
        Ok(hosts)
    }
}

/// `periods` (minutes, hours or days; sorted, each once) by the shard
/// [`aggregate::shard_for_minute`] places each on, each shard's sorted.
fn by_shard(weights: &[u32], periods: &[u32]) -> BTreeMap<usize, Vec<u32>> {
    let mut out: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
    for &p in periods {
        out.entry(aggregate::shard_for_minute(weights, p))
            .or_default()
            .push(p);
    }
    out
}

/// The aggregator's state and its node version (-1 when there is none yet:
/// the first write creates it).
fn read_state(rt: &tokio::runtime::Handle, client: &zk::Client) -> Result<(AggState, i32)> {
    let what = "reading the aggregator's state";
    match wait(rt, what, client.get_data(fleet::STATE))? {
        Ok((data, stat)) => Ok((
            serde_json::from_slice(&data).unwrap_or_default(),
            stat.version,
        )),
        Err(zk::Error::NoNode) => Ok((AggState::default(), -1)),
        Err(e) => Err(zk_err(what)(e)),
    }
}

/// Writes the state if its node is still at `version` (-1: creates it);
/// `None` when another aggregator wrote in between.
fn write_state(
    rt: &tokio::runtime::Handle,
    client: &zk::Client,
    state: &AggState,
    version: i32,
) -> Result<Option<zk::Stat>> {
    let what = "writing the aggregator's state";
    let bytes = serde_json::to_vec(state).expect("plain data serializes");
    let written = if version < 0 {
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        wait(rt, what, client.create(fleet::STATE, &bytes, &opts))?.map(|(stat, _)| stat)
    } else {
        wait(
            rt,
            what,
            client.set_data(fleet::STATE, &bytes, Some(version)),
        )?
    };
    match written {
        Ok(stat) => Ok(Some(stat)),
        Err(zk::Error::BadVersion | zk::Error::NodeExists) => {
            tracing::warn!(
                "the aggregator's state was written by another aggregator; stepping down"
            );
            Ok(None)
        }
        Err(e) => Err(zk_err(what)(e)),
    }
}
