//! The two pipelines of a shipper, each a named spool reader on its own
//! thread: `clickhouse` (batches into `events_local`) and `redis` (latest
//! keyed state). Each commits its checkpoint only after its sink
//! acknowledged, so a crash anywhere replays, and never skips, what was not
//! acknowledged. Neither waits for the other: Redis being down never holds
//! up ClickHouse, and the spool keeps what the slower one still needs.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dc_config::event::now_ms;
use dc_config::record::{Record, RecordView};
use dc_config::registry::Registry;
use dc_config::row::{write_row_binary, SpoolPosition};
use dc_config::services::{ShipperConfig, ShipperLimits};
use dc_config::steps::{self, Built, Coarse};
use rand::Rng;
use spooler::{Position, Reader};

use crate::aggregate::{self, Pending, Progress};
use crate::error::{Error, Result};
use crate::forward::{Forwarder, Outgoing};
use crate::intent::Intent;
use crate::metrics::{label, Health, Metrics, SinkHealth};
use crate::sink::{IngestBody, SchemaCheck, Sink, Writers};
use crate::wire::{self, BatchRange, Message};

mod aggregation;
use dc_config::state_store::{state_write, StateStore};

/// Name of the spool reader feeding ClickHouse.
pub const CLICKHOUSE_READER: &str = "clickhouse";
/// Name of the spool reader feeding Redis.
pub const REDIS_READER: &str = "redis";
/// Longest time applied Redis state goes without a checkpoint: what a crash
/// makes the Redis pipeline redo (harmlessly).
const REDIS_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest single wait before the shutdown flag is looked at again.
const WAIT_SLICE: Duration = Duration::from_millis(200);

/// Switches for tests that prove each guard against duplicates on its own.
#[derive(Debug, Clone)]
pub struct Guards {
    /// Ask ClickHouse which positions it holds before sending a batch again
    /// (default on).
    pub verify_positions: bool,
    /// ClickHouse block deduplication (`insert_deduplicate`, default on).
    pub deduplicate: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self {
            verify_positions: true,
            deduplicate: true,
        }
    }
}

/// A shipper for one host's spool.
pub struct Shipper {
    config: ShipperConfig,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    guards: Guards,
    shutdown: Arc<AtomicBool>,
    progress: Progress,
    /// The epoch rows carry now ([`crate::epoch`]); 0 until `run` took one.
    epoch: AtomicU64,
}

/// What the preparing stage hands over: a batch and whether an earlier
/// run may have sent it, or the error that ended the stage.
type Prepared = tokio::sync::mpsc::Receiver<Result<(Batch, bool)>>;

/// A batch in the forwarder's window (relay mode).
struct Flight {
    batch: Batch,
    range: BatchRange,
    /// Its sequence number in the live session, once sent in it.
    seq: Option<u64>,
    appended: bool,
    visible: bool,
    /// When it was sent, or appended: its next answer is due from here.
    since: Instant,
    /// When it joined the window.
    started: Instant,
}

impl Flight {
    fn outgoing(&self) -> Outgoing<'_> {
        Outgoing {
            range: self.range.clone(),
            frames: self
                .batch
                .rows
                .iter()
                .map(|(p, r)| {
                    (
                        Position::new(p.segment, p.offset),
                        &self.batch.body[r.clone()],
                    )
                })
                .collect(),
        }
    }
}

/// One batch ready to insert: RowBinary rows and where each row's bytes are.
struct Batch {
    intent: Intent,
    body: Vec<u8>,
    rows: Vec<(SpoolPosition, Range<usize>)>,
    events: Vec<String>,
    time_range: (u32, u32),
    oldest_ms: u64,
    /// Minutes of events whose type has metrics: pending aggregation once inserted.
    minutes: BTreeSet<u32>,
}

/// The body of an insert into `events_ingest`: the batch's rows not in
/// `held`, each followed by `epoch`; and the CRC32 of the rows without
/// their epochs, as `events_local` gets them (the deduplication token's).
fn ingest_body(batch: &Batch, held: Option<&HashSet<(u64, u64)>>, epoch: u64) -> (Vec<u8>, u32) {
    let mut body = Vec::with_capacity(batch.body.len() + 8 * batch.rows.len());
    let mut crc = crc32fast::Hasher::new();
    for (pos, range) in &batch.rows {
        if held.is_some_and(|h| h.contains(&(pos.segment, pos.offset))) {
            continue;
        }
        let row = &batch.body[range.clone()];
        crc.update(row);
        body.extend_from_slice(row);
        body.extend_from_slice(&epoch.to_le_bytes());
    }
    (body, crc.finalize())
}

/// Capped exponential backoff with ±25 % jitter, so shippers (and relays)
/// that failed together do not retry together.
pub(crate) fn backoff(l: &ShipperLimits, attempt: u32) -> Duration {
    let base = l
        .retry_initial_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(l.retry_max_ms);
    let jitter = rand::rng().random_range(0.75..1.25);
    Duration::from_millis((base as f64 * jitter) as u64)
}

/// Reads the next batch: up to the row and byte limits, or what has come
/// within `batch_age_ms` of its first frame. `None`: nothing came (or
/// shutdown). The reader is locked per step, never across a wait longer
/// than [`WAIT_SLICE`], so the commit of the batch in flight is not held
/// up. Each time the reader is drained, `drained` gets the end of the last
/// frame read (`handed`, the end of the last frame handed over before this
/// batch, when none was). `settled`: nothing more can come before this
/// batch ships (a relay whose every session waits for it): once the reader
/// is drained after `settled` said so, the batch goes without waiting out
/// its age. The shipper's and the relay's batches.
pub(crate) fn read_batch(
    reader: &Mutex<Reader>,
    l: &ShipperLimits,
    handed: Position,
    stopping: &dyn Fn() -> bool,
    settled: &dyn Fn() -> bool,
    drained: &mut dyn FnMut(Position),
) -> Result<Option<Vec<spooler::Frame>>> {
    let age = Duration::from_millis(l.batch_age_ms);
    let mut out: Vec<spooler::Frame> = Vec::new();
    let mut bytes = 0usize;
    let mut first_at: Option<Instant> = None;
    loop {
        // Asked before reading: what was appended before it said so is
        // read by this step.
        let settled_before = settled();
        let got = reader.lock().expect("reader lock").next(
            l.batch_rows_max - out.len(),
            l.batch_bytes_max.saturating_sub(bytes).max(1),
        )?;
        if !got.is_empty() {
            first_at.get_or_insert_with(Instant::now);
            bytes += got.iter().map(|r| r.payload.len()).sum::<usize>();
            out.extend(got);
            if out.len() >= l.batch_rows_max || bytes >= l.batch_bytes_max {
                break;
            }
            continue;
        }
        // Drained up to the end of the last frame read, not to the
        // reader's cursor: past the last frame of a sealed segment the
        // cursor moves on to the next one, a position no commit reaches
        // until new frames come, and the watermark would wait for them.
        drained(out.last().map_or(handed, |r| r.next));
        if settled_before && !out.is_empty() {
            break;
        }
        let wait = match first_at {
            None if stopping() => return Ok(None),
            None => WAIT_SLICE,
            Some(t) => {
                let left = age.saturating_sub(t.elapsed());
                if left.is_zero() || stopping() {
                    break;
                }
                left.min(WAIT_SLICE)
            }
        };
        if !reader.lock().expect("reader lock").wait(wait)? && first_at.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

impl Shipper {
    /// A shipper; `shutdown` set to true makes both pipelines finish the
    /// batch in hand and return.
    pub fn new(
        config: ShipperConfig,
        registry: Registry,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        guards: Guards,
        shutdown: Arc<AtomicBool>,
    ) -> Self {
        Self {
            config,
            registry: Arc::new(registry),
            metrics,
            health,
            guards,
            shutdown,
            progress: Progress::default(),
            epoch: AtomicU64::new(0),
        }
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Runs both pipelines until shutdown; returns the first fatal error.
    pub fn run(self: Arc<Self>, runtime: tokio::runtime::Handle) -> Result<()> {
        std::fs::create_dir_all(&self.config.state_dir).map_err(|source| Error::State {
            path: self.config.state_dir.clone(),
            source,
        })?;
        let sink = Sink::new(&self.config)?;
        let first = self.check_schema(&runtime, &sink, &SchemaCheck::default());
        *self.progress.pending.lock().expect("progress lock") =
            Pending::load(&self.config.state_dir)?;
        // A new epoch for this run, above every earlier run's.
        if self.raise_epoch(0)?.is_none() {
            return Ok(());
        }
        self.explain_registry_changes();
        let stateful = self.registry.event.values().any(|e| e.state.is_some());
        let aggregating = self.registry.event.values().any(|e| !e.metric.is_empty());
        // One thread per pipeline, each with its own handle on the runtime.
        type Loop = fn(&Shipper, &tokio::runtime::Handle) -> Result<()>;
        let spawn = |name: &str, pipeline: Loop| {
            let me = self.clone();
            let rt = runtime.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || pipeline(&me, &rt))
                .expect("spawning a thread")
        };
        // A replica that did not answer (ClickHouse down or cut off at
        // start) or showed a problem is asked again until all is well:
        // `/healthz` reports what the answers say, not a stale outage.
        let schema = (!first.settled()).then(|| {
            let me = self.clone();
            let rt = runtime.clone();
            std::thread::Builder::new()
                .name("ship-schema".into())
                .spawn(move || me.schema_loop(&rt, sink, first))
                .expect("spawning a thread")
        });
        let agg = aggregating.then(|| spawn("ship-aggregate", Shipper::aggregate_loop));
        let ch = spawn("ship-clickhouse", Shipper::clickhouse_loop);
        let redis = stateful.then(|| spawn("ship-redis", Shipper::redis_loop));
        let first = ch.join().expect("clickhouse pipeline panicked");
        if first.is_err() {
            self.shutdown.store(true, Ordering::SeqCst);
        }
        let second = redis
            .map(|h| h.join().expect("redis pipeline panicked"))
            .unwrap_or(Ok(()));
        let third = agg
            .map(|h| h.join().expect("aggregation panicked"))
            .unwrap_or(Ok(()));
        if let Some(h) = schema {
            h.join().expect("schema check panicked");
        }
        first.and(second).and(third)
    }

    /// Marks the minutes of `[from_s, to_s)` for re-aggregation (saved, so
    /// the request survives a restart); the running shipper aggregates them
    /// once closed.
    pub fn reaggregate(&self, from_s: u32, to_s: u32) -> Result<usize> {
        let minutes = aggregate::minutes_between(from_s, to_s).map_err(Error::Config)?;
        std::fs::create_dir_all(&self.config.state_dir).map_err(|source| Error::State {
            path: self.config.state_dir.clone(),
            source,
        })?;
        let mut p = Pending::load(&self.config.state_dir)?;
        for m in &minutes {
            *p.minutes.entry(*m).or_insert(0) += 1;
        }
        p.save(&self.config.state_dir)?;
        Ok(minutes.len())
    }

    /// Logs what a registry change since the last run means for aggregation
    /// and state, then remembers this registry (best effort: failing to
    /// remember it only loses the next run's explanation).
    fn explain_registry_changes(&self) {
        let path = self.config.state_dir.join(aggregate::LAST_REGISTRY_FILE);
        let text = toml::to_string(&*self.registry).expect("a registry serializes");
        if let Ok(old_text) = std::fs::read_to_string(&path) {
            match toml::from_str::<Registry>(&old_text) {
                Ok(old) => {
                    for msg in aggregate::registry_changes(&old, &self.registry) {
                        tracing::warn!(change = %msg, "registry changed since the last run");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot read the registry of the last run; changes are not explained")
                }
            }
        }
        if let Err(e) = std::fs::write(&path, text) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remember this registry; the next run will not explain changes to it");
        }
    }

    /// Opens a named reader, waiting for the collector to create the spool
    /// if it has not yet (a shipper may start first). `None` on shutdown.
    fn open_reader(&self, name: &str) -> Result<Option<Reader>> {
        let mut waited = false;
        loop {
            if Reader::spool_exists(&self.config.spool_dir) {
                // A new reader writes its first checkpoint: on a full disk,
                // that waits for space like every other state write.
                return self.durably("checkpoint", || {
                    Ok(Reader::open(&self.config.spool_dir, name)?)
                });
            }
            if !waited {
                tracing::info!(spool = %self.config.spool_dir.display(), "waiting for the collector to create the spool");
                waited = true;
            }
            if !self.sleep(WAIT_SLICE) {
                return Ok(None);
            }
        }
    }

    /// Sleeps `d` in slices, returning early (false) on shutdown.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            std::thread::sleep(WAIT_SLICE.min(until - Instant::now()));
        }
        !self.stopping()
    }

    /// Checks the schema of every replica ([`Sink::check_schema`]) and
    /// shows the problems in `/healthz`; logs what changed since `last`.
    fn check_schema(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        last: &SchemaCheck,
    ) -> SchemaCheck {
        let check = rt.block_on(sink.check_schema());
        for p in check.problems.iter().filter(|p| !last.problems.contains(p)) {
            tracing::error!(problem = %p, "ClickHouse schema check failed; inserts into that replica fail until it is fixed (checked again every blocked_retry_ms)");
        }
        for u in check
            .unanswered
            .iter()
            .filter(|u| !last.unanswered.contains(u))
        {
            tracing::warn!(replica = %u, "ClickHouse did not answer the schema check; asking again");
        }
        if check.settled() && !last.settled() {
            tracing::info!("ClickHouse schema checked on every replica");
        }
        *self.health.schema_problems.lock().expect("health lock") = check.problems.clone();
        check
    }

    /// Checks the schema again until every replica answered without a
    /// problem or the shipper stops: unanswered replicas after the retry
    /// backoff's cap, problems after `blocked_retry_ms` (an operator's fix).
    fn schema_loop(&self, rt: &tokio::runtime::Handle, sink: Sink, mut last: SchemaCheck) {
        while !last.settled() {
            let l = &self.config.limits;
            let wait = if last.unanswered.is_empty() {
                l.blocked_retry_ms
            } else {
                l.retry_max_ms
            };
            if !self.sleep(Duration::from_millis(wait)) {
                return;
            }
            last = self.check_schema(rt, &sink, &last);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        backoff(&self.config.limits, attempt)
    }

    /// Runs a write of the shipper's state (or a spool checkpoint) until it
    /// succeeds, waiting out a full disk: logged once per episode, shown in
    /// `/metrics` and `/healthz`, over by itself when space returns
    /// ([`crate::state`]). `None` on shutdown while waiting; other errors
    /// are returned.
    fn durably<T>(&self, what: &str, mut write: impl FnMut() -> Result<T>) -> Result<Option<T>> {
        let mut attempt = 0u32;
        loop {
            match write() {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(what, "the state disk has space again; going on");
                        self.metrics.state_disk_full.set(0);
                        *self.health.state_disk.lock().expect("health lock") = None;
                    }
                    return Ok(Some(v));
                }
                Err(e) if e.is_disk_full() => {
                    if attempt == 0 {
                        tracing::error!(error = %e, what, "no space left to write shipper state; waiting for space (nothing is lost, shipping resumes by itself)");
                        self.metrics.state_disk_full.set(1);
                        *self.health.state_disk.lock().expect("health lock") =
                            Some(format!("{what}: {e}"));
                    }
                    self.metrics.state_disk_full_waits.inc();
                    if !self.sleep(self.backoff(attempt.min(4))) {
                        return Ok(None);
                    }
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes a new epoch above the current one and `floor`, saved before it
    /// is used. `None` on shutdown while the disk is full.
    fn raise_epoch(&self, floor: u64) -> Result<Option<u64>> {
        let state = &self.config.state_dir;
        let last = crate::epoch::load(state)?.max(self.epoch.load(Ordering::SeqCst));
        let next = crate::epoch::next(last, floor, now_ms());
        if self
            .durably("epoch", || crate::epoch::save(state, next))?
            .is_none()
        {
            return Ok(None);
        }
        self.epoch.store(next, Ordering::SeqCst);
        Ok(Some(next))
    }

    // ---- ClickHouse ------------------------------------------------------

    /// Two stages overlap: this thread ships batch `k` while a preparing
    /// thread reads and encodes batch `k + 1` (bounded to one batch ahead).
    /// Commits stay in order and happen here, before the next intent is
    /// recorded, so the intent on disk always starts at the checkpoint or
    /// at the batch right after it. In relay mode the intent spans the
    /// forwarder's window instead ([`Shipper::forward_loop`]).
    fn clickhouse_loop(&self, rt: &tokio::runtime::Handle) -> Result<()> {
        let Some(reader) = self.open_reader(CLICKHOUSE_READER)? else {
            return Ok(());
        };
        *self.progress.committed.lock().expect("progress lock") = reader.committed();
        let reader = Mutex::new(reader);
        let mut forwarder = match &self.config.relay {
            Some(r) => Some(Forwarder::new(&self.config.dc, &self.config.host, r)?),
            None => None,
        };
        let sink = match forwarder {
            Some(_) => None,
            None => Some(Sink::new(&self.config)?),
        };
        std::thread::scope(|scope| {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Batch, bool)>>(1);
            let reader = &reader;
            let prep = std::thread::Builder::new()
                .name("ship-prepare".into())
                .spawn_scoped(scope, move || self.prepare(reader, tx))
                .expect("spawning a thread");
            let result = match (forwarder.as_mut(), &sink) {
                (Some(f), _) => self.forward_loop(rt, f, &mut rx, reader),
                (None, Some(sink)) => self.direct_loop(rt, sink, &mut rx, reader),
                (None, None) => unreachable!("a sink when there is no forwarder"),
            };
            // Whatever ended shipping ends preparing too.
            self.shutdown.store(true, Ordering::SeqCst);
            drop(rx);
            prep.join().expect("batch preparation panicked");
            result
        })
    }

    /// Direct mode: each batch into ClickHouse, then committed.
    fn direct_loop(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        rx: &mut Prepared,
        reader: &Mutex<Reader>,
    ) -> Result<()> {
        let lag = label("sink", "clickhouse");
        while let Some(item) = rx.blocking_recv() {
            let (mut batch, verify) = item?;
            self.metrics
                .lag_frames
                .get_or_create(&lag)
                .set(i64::from(batch.intent.frames));
            if !self.ship(rt, sink, &mut batch, verify)? || !self.commit(reader, &batch)? {
                break;
            }
        }
        Ok(())
    }

    /// After `batch` is in ClickHouse: its pending minutes saved, then the
    /// checkpoint moved past it. False on shutdown while the state disk is full.
    fn commit(&self, reader: &Mutex<Reader>, batch: &Batch) -> Result<bool> {
        let state = &self.config.state_dir;
        let lag = label("sink", "clickhouse");
        // Pending minutes are saved before the checkpoint moves:
        // a crash between the two replays the batch, never loses a minute.
        let saved = self.durably("pending minutes", || {
            self.progress.add_minutes(&batch.minutes, state)
        })?;
        let committed = saved.is_some()
            && self
                .durably("checkpoint", || {
                    Ok(reader
                        .lock()
                        .expect("reader lock")
                        .commit(batch.intent.end)?)
                })?
                .is_some();
        if !committed {
            return Ok(false);
        }
        *self.progress.committed.lock().expect("progress lock") = batch.intent.end;
        self.metrics.lag_frames.get_or_create(&lag).set(0);
        self.metrics.lag_seconds.get_or_create(&lag).set(0.0);
        self.metrics
            .batches
            .get_or_create(&label("sink", "clickhouse"))
            .inc();
        Ok(true)
    }

    /// The preparing stage: plans batches (first the replay of a recorded
    /// intent, if one starts at the checkpoint), encodes them, and hands them
    /// over with whether an earlier run may have sent them (then the
    /// position check runs before they are sent); an error is handed over
    /// too, and ends the stage.
    fn prepare(
        &self,
        reader: &Mutex<Reader>,
        tx: tokio::sync::mpsc::Sender<Result<(Batch, bool)>>,
    ) {
        let committed = reader.lock().expect("reader lock").committed();
        // The recorded batch was sent, or about to be, and not committed if
        // it ends past the checkpoint. (It starts at the checkpoint or, when
        // the checkpoint is the end of a sealed segment, at the first frame
        // of the next one: comparing starts missed those, and such a batch
        // went out again unchecked.)
        let mut replay = match Intent::load(&self.config.state_dir, CLICKHOUSE_READER) {
            Ok(i) => i.filter(|i| i.end > committed),
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        // Every batch starting before the recorded one's end may overlap
        // what an earlier run sent (the recorded range itself, or batches
        // planned afresh when the spool no longer holds it): each is checked
        // on the replicas the record names.
        let horizon = replay.map(|i| (i.end, i.replicas));
        // The end of the last frame handed over: what the watermark waits
        // to see committed.
        let mut handed = committed;
        while !self.stopping() {
            let started = Instant::now();
            // Relay mode's intent spans the forwarder's window, more than
            // one batch may carry: its batches are planned afresh, and each
            // one starting before its end is checked by a takeover.
            let next = match replay.take().filter(|_| self.config.relay.is_none()) {
                Some(i) => self.read_exact(reader, i).and_then(|r| match r {
                    Some(records) => Ok(Some(records)),
                    None => self.plan(reader, handed),
                }),
                None => self.plan(reader, handed),
            };
            let item = match next {
                Ok(None) => continue,
                Ok(Some(records)) => {
                    let start = records[0].position;
                    let earlier = horizon
                        .filter(|(end, _)| start < *end)
                        .map(|(_, replicas)| replicas);
                    let intent = Intent {
                        start,
                        end: records.last().expect("non-empty").next,
                        frames: records.len() as u32,
                        replicas: earlier.unwrap_or(0),
                    };
                    handed = intent.end;
                    let built = match self.build(intent, &records) {
                        Ok(Some(b)) => Ok((b, earlier.is_some())),
                        Ok(None) => return,
                        Err(e) => Err(e),
                    };
                    self.metrics
                        .prepare_seconds
                        .observe(started.elapsed().as_secs_f64());
                    built
                }
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    }

    /// The next batch ([`read_batch`]); each time the reader is drained the
    /// progress records it, for the watermark. `handed` is the end of the
    /// last frame handed over before this batch.
    fn plan(
        &self,
        reader: &Mutex<Reader>,
        handed: Position,
    ) -> Result<Option<Vec<spooler::Frame>>> {
        read_batch(
            reader,
            &self.config.limits,
            handed,
            &|| self.stopping(),
            &|| false,
            &mut |at| self.progress.record_drained(now_ms(), at),
        )
    }

    /// Re-reads exactly the frames of `intent`. `None` if the spool no longer
    /// holds that range (recovery cut it): the batch is re-planned, and the
    /// position check still keeps rows single.
    fn read_exact(
        &self,
        reader: &Mutex<Reader>,
        intent: Intent,
    ) -> Result<Option<Vec<spooler::Frame>>> {
        let mut reader = reader.lock().expect("reader lock");
        let mut out: Vec<spooler::Frame> = Vec::with_capacity(intent.frames as usize);
        while out.len() < intent.frames as usize {
            let got = reader.next(intent.frames as usize - out.len(), usize::MAX)?;
            if got.is_empty() {
                break;
            }
            out.extend(got);
        }
        if out.len() == intent.frames as usize
            && out.first().map(|r| r.position) == Some(intent.start)
            && out.last().map(|r| r.next) == Some(intent.end)
        {
            tracing::info!(start = ?intent.start, frames = intent.frames, "replaying the batch in flight at the last stop");
            return Ok(Some(out));
        }
        tracing::warn!(
            ?intent,
            read = out.len(),
            "the spool no longer matches the recorded batch; planning afresh"
        );
        reader.rewind();
        Ok(None)
    }

    /// Decodes frames into rows; a frame that is not a record goes to the
    /// dead-letter folder (counted and logged), never silently away.
    /// `None` on shutdown while a dead letter waits for disk space.
    fn build(&self, intent: Intent, records: &[spooler::Frame]) -> Result<Option<Batch>> {
        let mut body = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 32).sum());
        let mut rows = Vec::with_capacity(records.len());
        let mut events: Vec<String> = Vec::new();
        let mut time_range = (u32::MAX, 0u32);
        let mut oldest_ms = u64::MAX;
        let mut minutes = BTreeSet::new();
        let mut attrs = Vec::with_capacity(16);
        for rec in records {
            let pos = SpoolPosition {
                segment: rec.position.segment,
                offset: rec.position.offset,
            };
            attrs.clear();
            match RecordView::parse_into(&rec.payload, &mut attrs) {
                Ok(r) => {
                    let start = body.len();
                    if self.config.relay.is_some() {
                        // Relay mode: the relay writes the rows from the
                        // records (docs/adr/0017).
                        body.extend_from_slice(&rec.payload);
                    } else {
                        write_row_binary(
                            &mut body,
                            r.event,
                            r.time_ms,
                            &self.config.dc,
                            &self.config.host,
                            attrs.iter().copied(),
                            pos,
                        );
                    }
                    rows.push((pos, start..body.len()));
                    if !events.iter().any(|e| e == r.event) {
                        events.push(r.event.to_string());
                    }
                    let secs = (r.time_ms / 1000) as u32;
                    time_range = (time_range.0.min(secs), time_range.1.max(secs));
                    oldest_ms = oldest_ms.min(r.time_ms);
                    if self
                        .registry
                        .get(r.event)
                        .is_some_and(|t| !t.metric.is_empty())
                    {
                        minutes.insert(secs - secs % 60);
                    }
                }
                Err(e) => {
                    if !self.dead_letter(rec.position, &rec.payload, &e.to_string())? {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(Batch {
            intent,
            body,
            rows,
            events,
            time_range,
            oldest_ms,
            minutes,
        }))
    }

    /// Keeps an undecodable frame in the dead-letter folder before its batch
    /// can be committed. False on shutdown while the disk is full.
    fn dead_letter(&self, pos: Position, payload: &[u8], why: &str) -> Result<bool> {
        let dir = self.config.state_dir.join("dead-letter");
        let path: PathBuf = dir.join(format!("{}-{}.bad", pos.segment, pos.offset));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&dir)?;
            let mut f = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut f, payload)?;
            f.sync_all()
        };
        let kept = self.durably("dead letter", || {
            write().map_err(|source| Error::State {
                path: path.clone(),
                source,
            })
        })?;
        if kept.is_none() {
            return Ok(false);
        }
        self.metrics.dead_letters.inc();
        tracing::error!(segment = pos.segment, offset = pos.offset, reason = %why, file = %path.display(), "spool frame is not an event record; kept as a dead letter");
        Ok(true)
    }

    /// Inserts `batch` until ClickHouse acknowledges it. Returns false on
    /// shutdown before that (nothing is committed then). `verify`: an
    /// earlier run may have sent the batch (a replay).
    ///
    /// Before each attempt the intent records the replica it goes to. Before
    /// an attempt that may repeat an earlier one (a replay, or a retry after
    /// an attempt that may have landed), and with the position check on,
    /// [`Shipper::fence_and_check`] finds what the replicas already hold,
    /// and only the rest is sent.
    fn ship(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        batch: &mut Batch,
        verify: bool,
    ) -> Result<bool> {
        let state = self.config.state_dir.clone();
        let shard = sink.shard_for(batch.intent.start);
        let mut check = verify && self.guards.verify_positions;
        let lag = label("sink", "clickhouse");
        let mut saved: Option<u32> = None;
        for attempt in 0u32.. {
            let replica = sink.replica_for(shard, batch.intent.start, attempt);
            let bit = 1u32 << replica.min(31);
            let new_bit = batch.intent.replicas & bit == 0;
            batch.intent.replicas |= bit;
            // Saved before the first attempt (what a replay replays) and
            // whenever an attempt may reach a replica not yet named.
            if saved != Some(batch.intent.replicas) {
                let intent = batch.intent;
                if self
                    .durably("batch intent", || intent.save(&state, CLICKHOUSE_READER))?
                    .is_none()
                {
                    return Ok(false);
                }
                saved = Some(intent.replicas);
            }
            if batch.rows.is_empty() {
                return Ok(true);
            }
            self.metrics
                .lag_seconds
                .get_or_create(&lag)
                .set(now_ms().saturating_sub(batch.oldest_ms) as f64 / 1000.0);
            let started = Instant::now();
            let result = rt.block_on(async {
                let held = if check {
                    let held = self.fence_and_check(sink, shard, batch).await?;
                    self.metrics.replay_rows_skipped.inc_by(held.len() as u64);
                    if !held.is_empty() {
                        tracing::info!(
                            held = held.len(),
                            rows = batch.rows.len(),
                            "ClickHouse already holds part of this batch; sending only the rest"
                        );
                    }
                    Some(held)
                } else {
                    None
                };
                let epoch = self.epoch.load(Ordering::SeqCst);
                let (body, rows_crc) = ingest_body(batch, held.as_ref(), epoch);
                if body.is_empty() {
                    return Ok(0);
                }
                let n = body.len();
                let body = IngestBody {
                    range: (batch.intent.start, batch.intent.end),
                    epoch,
                    rows: Bytes::from(body),
                    rows_crc,
                };
                sink.insert(shard, replica, body, self.guards.deduplicate)
                    .await?;
                Ok::<usize, Error>(n)
            });
            match result {
                Ok(sent) => {
                    self.record_shipped(started, batch.rows.len(), sent);
                    return Ok(true);
                }
                Err(Error::Stopping) => return Ok(false),
                Err(e) => {
                    self.metrics
                        .errors
                        .get_or_create(&label("kind", e.kind()))
                        .inc();
                    // A refused connection sent nothing: that replica need
                    // not be fenced for it (the saved intent may still name
                    // it, which only costs a look). Any other failed attempt
                    // may still land: look before sending again.
                    if matches!(e, Error::ClickHouse { unsent: true, .. }) {
                        if new_bit {
                            batch.intent.replicas &= !bit;
                        }
                    } else {
                        check = self.guards.verify_positions;
                    }
                    let delay = if e.retriable() {
                        tracing::warn!(error = %e, attempt, shard = shard + 1, "insert failed; retrying");
                        *self.health.clickhouse.lock().expect("health lock") =
                            SinkHealth::Retrying(e.to_string());
                        self.backoff(attempt)
                    } else {
                        tracing::error!(error = %e, shard = shard + 1, start = ?batch.intent.start, "batch blocked by a non-retriable error; it is kept and retried, never skipped");
                        self.metrics.blocked.set(1);
                        *self.health.clickhouse.lock().expect("health lock") =
                            SinkHealth::Blocked(e.to_string());
                        Duration::from_millis(self.config.limits.blocked_retry_ms)
                    };
                    if !self.sleep(delay) {
                        return Ok(false);
                    }
                }
            }
        }
        unreachable!("the attempt counter does not run out")
    }

    /// A batch is in ClickHouse (inserted here, or made visible by a
    /// relay): its time since `started`, rows and bytes counted, the sink
    /// healthy again.
    fn record_shipped(&self, started: Instant, rows: usize, bytes: usize) {
        self.metrics
            .insert_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.rows.inc_by(rows as u64);
        self.metrics.bytes.inc_by(bytes as u64);
        self.metrics.blocked.set(0);
        *self.health.clickhouse.lock().expect("health lock") = SinkHealth::Ok;
    }

    /// Relay mode (docs/adr/0017): up to [`wire::WINDOW`] batches in flight
    /// to a relay, each committed, in order, once the relay reports it
    /// visible in ClickHouse. Before a batch joins the window the intent
    /// on disk grows to span the window, so a restart checks every batch
    /// that may have been sent. A failure drops the session and moves to
    /// the next relay, whose takeover covers every batch in flight; all
    /// are sent again without what ClickHouse holds.
    fn forward_loop(
        &self,
        rt: &tokio::runtime::Handle,
        forwarder: &mut Forwarder,
        rx: &mut Prepared,
        reader: &Mutex<Reader>,
    ) -> Result<()> {
        let lag = label("sink", "clickhouse");
        rt.block_on(async {
            let mut window: VecDeque<Flight> = VecDeque::new();
            let mut attempt = 0u32;
            // Whether the preparing stage still hands batches over.
            let mut open = true;
            loop {
                while window.front().is_some_and(|f| f.visible) {
                    let f = window.pop_front().expect("a front");
                    if !f.batch.rows.is_empty() {
                        self.record_shipped(f.started, f.batch.rows.len(), f.batch.body.len());
                    }
                    if !self.commit(reader, &f.batch)? {
                        return Ok(());
                    }
                    attempt = 0;
                }
                if self.stopping() || (!open && window.is_empty()) {
                    return Ok(());
                }
                if window.is_empty() && forwarder.home_due() {
                    forwarder.check_home().await;
                }
                self.metrics.lag_frames.get_or_create(&lag).set(
                    window
                        .iter()
                        .map(|f| i64::from(f.batch.intent.frames))
                        .sum(),
                );
                if let Some(f) = window.front() {
                    self.metrics
                        .lag_seconds
                        .get_or_create(&lag)
                        .set(now_ms().saturating_sub(f.batch.oldest_ms) as f64 / 1000.0);
                }
                if window.iter().any(|f| !f.visible) && !forwarder.connected() {
                    match self.take_over(forwarder, &mut window).await {
                        Ok(()) => {}
                        Err(Error::Stopping) => return Ok(()),
                        Err(e) => {
                            if !self.relay_failed(forwarder, &mut window, e, attempt).await {
                                return Ok(());
                            }
                            attempt += 1;
                        }
                    }
                    continue;
                }
                // The answer due first, and whether it is the visible one:
                // appended within the timeout of being sent, visible within
                // the visible timeout after.
                let due = window
                    .iter()
                    .filter(|f| f.seq.is_some() && !f.visible)
                    .map(|f| {
                        let limit = if f.appended {
                            forwarder.visible_timeout()
                        } else {
                            forwarder.timeout()
                        };
                        (f.since + limit, f.appended, limit)
                    })
                    .min_by_key(|d| d.0);
                let room = open && window.len() < wire::WINDOW;
                let failed = tokio::select! {
                    item = rx.recv(), if room => match item {
                        None => {
                            open = false;
                            None
                        }
                        Some(item) => {
                            let (batch, verify) = item?;
                            // Another one ready: the relay need not insert before it comes.
                            let more = !rx.is_empty();
                            match self.enter(forwarder, &mut window, batch, verify, more).await {
                                Ok(true) => None,
                                Ok(false) => return Ok(()),
                                Err(e) => Some(e),
                            }
                        }
                    },
                    answer = forwarder.answer(), if due.is_some() => match answer {
                        Ok(Message::Appended { seq }) => {
                            if let Some(f) = window.iter_mut().find(|f| f.seq == Some(seq)) {
                                f.appended = true;
                                f.since = Instant::now();
                            }
                            None
                        }
                        Ok(Message::Visible { seq }) => {
                            if let Some(f) = window.iter_mut().find(|f| f.seq == Some(seq)) {
                                f.visible = true;
                            }
                            None
                        }
                        Ok(other) => Some(Error::Relay {
                            relay: forwarder.relay().to_string(),
                            message: format!("unexpected {other:?}"),
                            config: false,
                        }),
                        Err(e) => Some(e),
                    },
                    _ = tokio::time::sleep_until(due.map_or_else(Instant::now, |d| d.0).into()), if due.is_some() => {
                        let (_, appended, limit) = due.expect("guarded");
                        let what = if appended { "visible" } else { "appended" };
                        Some(Error::Relay {
                            relay: forwarder.relay().to_string(),
                            message: format!("batch not {what} within {limit:?}"),
                            config: false,
                        })
                    }
                    // To see a shutdown while nothing happens.
                    _ = tokio::time::sleep(WAIT_SLICE) => None,
                };
                if let Some(e) = failed {
                    if !self.relay_failed(forwarder, &mut window, e, attempt).await {
                        return Ok(());
                    }
                    attempt += 1;
                }
            }
        })
    }

    /// `batch` joins the window: the intent grows to cover it, then it is
    /// sent if a session is live (a batch an earlier run may have sent
    /// drops the session instead: the next takeover's check covers it).
    /// `more`: the next batch is ready too. False on shutdown while the
    /// state disk is full.
    async fn enter(
        &self,
        forwarder: &mut Forwarder,
        window: &mut VecDeque<Flight>,
        batch: Batch,
        verify: bool,
        more: bool,
    ) -> Result<bool> {
        let intent = Intent {
            start: window
                .front()
                .map_or(batch.intent.start, |f| f.batch.intent.start),
            end: batch.intent.end,
            frames: window.iter().map(|f| f.batch.intent.frames).sum::<u32>() + batch.intent.frames,
            replicas: 0,
        };
        let state = &self.config.state_dir;
        if self
            .durably("batch intent", || intent.save(state, CLICKHOUSE_READER))?
            .is_none()
        {
            return Ok(false);
        }
        let now = Instant::now();
        window.push_back(Flight {
            range: BatchRange {
                start: batch.intent.start,
                end: batch.intent.end,
                events: batch.events.clone(),
                time_range: batch.time_range,
            },
            // A batch of dead letters only is done once its intent is saved.
            visible: batch.rows.is_empty(),
            batch,
            seq: None,
            appended: false,
            since: now,
            started: now,
        });
        if verify {
            forwarder.drop_session();
        } else if forwarder.connected() {
            let f = window.back_mut().expect("just pushed");
            if !f.visible {
                f.seq = Some(forwarder.send(&f.outgoing(), &HashSet::new(), more).await?);
            }
        }
        Ok(true)
    }

    /// A new session whose takeover covers every batch in the window not
    /// yet visible; each is sent again without what ClickHouse holds (a
    /// batch it holds whole is visible as it stands).
    async fn take_over(
        &self,
        forwarder: &mut Forwarder,
        window: &mut VecDeque<Flight>,
    ) -> Result<()> {
        let range =
            crate::forward::union_range(window.iter().filter(|f| !f.visible).map(|f| &f.range));
        let held = forwarder
            .connect(&range, &mut |floor| self.raise_epoch(floor))
            .await?;
        for f in window.iter_mut().filter(|f| !f.visible) {
            f.appended = false;
            f.seq = None;
            if f.batch
                .rows
                .iter()
                .all(|(p, _)| held.contains(&(p.segment, p.offset)))
            {
                f.visible = true;
            }
        }
        let last = window.iter().rposition(|f| !f.visible);
        for (i, f) in window.iter_mut().enumerate().filter(|(_, f)| !f.visible) {
            f.seq = Some(
                forwarder
                    .send(&f.outgoing(), &held, Some(i) != last)
                    .await?,
            );
            f.since = Instant::now();
        }
        Ok(())
    }

    /// After a failed session: counted, logged, health set; the next relay
    /// is taken after a backoff, and the window's batches wait to be sent
    /// again. False on shutdown during the backoff.
    async fn relay_failed(
        &self,
        forwarder: &mut Forwarder,
        window: &mut VecDeque<Flight>,
        e: Error,
        attempt: u32,
    ) -> bool {
        self.metrics
            .errors
            .get_or_create(&label("kind", e.kind()))
            .inc();
        tracing::warn!(error = %e, attempt, in_flight = window.len(), "forwarding failed; taking the next relay");
        // A refused secret or DC blocks until the config changes.
        *self.health.clickhouse.lock().expect("health lock") =
            if matches!(e, Error::Relay { config: true, .. }) {
                SinkHealth::Blocked(e.to_string())
            } else {
                SinkHealth::Retrying(e.to_string())
            };
        forwarder.fail_over();
        for f in window.iter_mut() {
            f.seq = None;
            f.appended = false;
        }
        let until = Instant::now() + self.backoff(attempt);
        while Instant::now() < until {
            if self.stopping() {
                return false;
            }
            tokio::time::sleep(WAIT_SLICE.min(until - Instant::now())).await;
        }
        !self.stopping()
    }

    /// The position check, exact under any timing of earlier attempts
    /// (docs/adr/0009-fenced-inserts.md). On every replica the intent
    /// names: raise this host's fence to a new epoch (an insert of an older
    /// epoch reaching the replica from then on stores nothing), wait until
    /// none of this host's inserts runs there (those that started before
    /// the fence have landed or failed), then read which of the batch's
    /// positions it holds. Returns the union.
    async fn fence_and_check(
        &self,
        sink: &Sink,
        shard: usize,
        batch: &Batch,
    ) -> Result<HashSet<(u64, u64)>> {
        let replicas: Vec<usize> = (0..sink.replicas(shard))
            .filter(|r| batch.intent.replicas & (1u32 << (*r).min(31)) != 0)
            .collect();
        let on: Vec<(usize, usize)> = replicas.iter().map(|&r| (shard, r)).collect();
        let mut floor = 0;
        let epoch = loop {
            let Some(epoch) = self.raise_epoch(floor)? else {
                return Err(Error::Stopping);
            };
            let above = sink.fence_all(&on, &self.config.host, epoch).await?;
            if above <= epoch {
                break epoch;
            }
            tracing::warn!(epoch, fence = above, "a replica fences this host above the new epoch (state folder lost and the clock set back?); taking a higher one");
            floor = above;
        };
        self.metrics.fences.inc();
        let timeout = Duration::from_millis(self.config.limits.clickhouse_timeout_ms);
        let range = BatchRange {
            start: batch.intent.start,
            end: batch.intent.end,
            events: batch.events.clone(),
            time_range: batch.time_range,
        };
        let mut held = HashSet::new();
        for &(s, r) in &on {
            held.extend(
                sink.held_after_earlier_inserts(
                    s,
                    r,
                    Writers::Host,
                    &self.config.host,
                    &range,
                    timeout,
                    &|| self.stopping(),
                )
                .await?,
            );
        }
        tracing::debug!(
            epoch,
            ?replicas,
            held = held.len(),
            "fenced earlier inserts and checked positions"
        );
        Ok(held)
    }

    // ---- Aggregation --------------------------------------------------------

    /// Runs `run` (given a try's version and replica of `shard`) until it
    /// succeeds; each try has a new version from `version` (the
    /// aggregator's), so a try that inserted part of its rows is replaced
    /// by the next one. Errors are counted, logged with `what` and shown in
    /// the aggregation's health. `None` on shutdown before success.
    fn until_done<T>(
        &self,
        sink: &Sink,
        shard: usize,
        what: &str,
        version: &mut dyn FnMut() -> Result<Option<u64>>,
        mut run: impl FnMut(u64, usize) -> Result<T>,
    ) -> Result<Option<T>> {
        for attempt in 0u32.. {
            let Some(version) = version()? else {
                return Ok(None);
            };
            let replica = attempt as usize % sink.replicas(shard);
            match run(version, replica) {
                Ok(done) => {
                    *self.health.aggregation.lock().expect("health lock") = SinkHealth::Ok;
                    return Ok(Some(done));
                }
                Err(e) => {
                    self.metrics
                        .errors
                        .get_or_create(&label("kind", e.kind()))
                        .inc();
                    tracing::warn!(error = %e, what, attempt, "aggregation statement failed; retrying with a new version");
                    *self.health.aggregation.lock().expect("health lock") = if e.retriable() {
                        SinkHealth::Retrying(e.to_string())
                    } else {
                        SinkHealth::Blocked(e.to_string())
                    };
                    let delay = if e.retriable() {
                        self.backoff(attempt)
                    } else {
                        Duration::from_millis(self.config.limits.blocked_retry_ms)
                    };
                    if !self.sleep(delay) {
                        return Ok(None);
                    }
                }
            }
        }
        unreachable!("the attempt counter does not run out")
    }

    /// Aggregates `minutes` (sorted, each once, all placed on `shard` by
    /// [`aggregate::shard_for_minute`]) until it succeeds: one statement per
    /// event type over all of them, so a backlog is caught up many minutes
    /// per scan (ADR 0015). With `only` (an event type and a metric's base
    /// name), that metric alone: a new metric's backfill, which leaves
    /// every other series as it was and counts its minutes apart. Returns
    /// false on shutdown before success.
    pub(super) fn aggregate_minutes(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        shard: usize,
        minutes: &[u32],
        only: Option<(&str, &str)>,
        version: &mut dyn FnMut() -> Result<Option<u64>>,
    ) -> Result<bool> {
        let (first, last) = match (minutes.first(), minutes.last()) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Ok(true),
        };
        let started = Instant::now();
        let done = self.until_done(sink, shard, "aggregating minutes", version, |version, replica| {
            let statements = aggregate::minutes_statements(
                &self.config,
                &self.registry,
                minutes,
                version,
                only,
            );
            let (points, folded) = rt.block_on(async {
                for sql in &statements {
                    sink.execute(shard, replica, sql).await?;
                }
                let mut folded = Vec::new();
                // A backfill's folds were counted when those minutes closed.
                let counted = if only.is_some() {
                    Vec::new()
                } else {
                    aggregate::folded_values_statements(&self.config, &self.registry, minutes)
                };
                for (event, dim, sql) in counted {
                    let values = sink.query_u64(shard, replica, &sql).await?;
                    folded.push((event, dim, values));
                }
                let points = format!(
                    "SELECT count() FROM {}.{} WHERE minute >= toDateTime({first}) AND minute <= toDateTime({last}) AND version = {version} AND dc = {}",
                    self.config.database,
                    dc_config::schema::table::STATES_LOCAL,
                    dc_config::sql::quote_str(&self.config.dc)
                );
                Ok::<_, Error>((sink.query_u64(shard, replica, &points).await?, folded))
            })?;
            Ok((version, points, folded))
        })?;
        let Some((version, points, folded)) = done else {
            return Ok(false);
        };
        for (event, dimension, values) in folded.into_iter().filter(|f| f.2 > 0) {
            self.metrics
                .dimension_values_folded
                .get_or_create(&vec![
                    ("event".into(), event.into()),
                    ("dimension".into(), dimension.into()),
                ])
                .inc_by(values);
            tracing::warn!(
                first,
                last,
                event,
                dimension,
                values,
                "distinct values over the registry's max_values_per_minute in the minutes first..=last (summed over them) were counted under `other`"
            );
        }
        self.metrics
            .aggregation_seconds
            .observe(started.elapsed().as_secs_f64());
        match only {
            None => self.metrics.aggregation_rounds.inc_by(minutes.len() as u64),
            Some(_) => self
                .metrics
                .backfill_aggregations
                .inc_by(minutes.len() as u64),
        };
        self.metrics.series_points.inc_by(points);
        tracing::debug!(
            first,
            last,
            minutes = minutes.len(),
            version,
            points,
            "minutes aggregated"
        );
        Ok(true)
    }

    /// Builds `periods` of `coarse` (sorted, each once, all placed on
    /// `shard`) from the finer states until it succeeds, only one metric's
    /// series with `only` (docs/adr/0016-pre-merged-hours-and-days.md).
    /// False on shutdown.
    pub(super) fn build_periods(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        shard: usize,
        (coarse, periods): (Coarse, &[u32]),
        only: Option<(&str, &str)>,
        version: &mut dyn FnMut() -> Result<Option<u64>>,
    ) -> Result<bool> {
        let started = Instant::now();
        let done = self.until_done(
            sink,
            shard,
            "building hours and days",
            version,
            |version, replica| {
                let sql = steps::build_sql(
                    &self.config.database,
                    &self.config.dc,
                    coarse,
                    periods,
                    version,
                    only,
                );
                match sql {
                    Some(sql) => rt.block_on(sink.execute(shard, replica, &sql)),
                    None => Ok(()),
                }
            },
        )?;
        if done.is_some() {
            self.metrics
                .periods_built
                .get_or_create(&label("step", coarse.name()))
                .inc_by(periods.len() as u64);
            tracing::debug!(
                step = coarse.name(),
                periods = periods.len(),
                seconds = started.elapsed().as_secs_f64(),
                "periods built"
            );
        }
        Ok(done.is_some())
    }

    /// Records the DC's built ranges for readers, on the first shard.
    pub(super) fn record_built(
        &self,
        rt: &tokio::runtime::Handle,
        sink: &Sink,
        built: &[Option<Built>; 2],
        version: &mut dyn FnMut() -> Result<Option<u64>>,
    ) -> Result<bool> {
        let done = self.until_done(
            sink,
            0,
            "recording built hours and days",
            version,
            |version, replica| match steps::marks_insert_sql(
                &self.config.database,
                &self.config.dc,
                built,
                version,
            ) {
                Some(sql) => rt.block_on(sink.execute(0, replica, &sql)),
                None => Ok(()),
            },
        )?;
        Ok(done.is_some())
    }

    // ---- Redis -------------------------------------------------------------

    fn redis_loop(&self, rt: &tokio::runtime::Handle) -> Result<()> {
        let Some(mut reader) = self.open_reader(REDIS_READER)? else {
            return Ok(());
        };
        let timeout = Duration::from_millis(self.config.limits.redis_timeout_ms);
        let lag = label("sink", "redis");
        let mut store: Option<StateStore> = None;
        // Replaying state writes is harmless (newer wins), so the checkpoint
        // is written at most every REDIS_COMMIT_INTERVAL rather than per
        // round: per-round fsyncs would compete with ClickHouse's for the disk.
        let mut last_commit = Instant::now();
        let mut done: Option<Position> = None;
        while !self.stopping() {
            if let Some(p) = done {
                if last_commit.elapsed() >= REDIS_COMMIT_INTERVAL {
                    if self
                        .durably("checkpoint", || Ok(reader.commit(p)?))?
                        .is_none()
                    {
                        return Ok(());
                    }
                    done = None;
                    last_commit = Instant::now();
                }
            }
            let records = reader.next(self.config.limits.redis_batch_max, usize::MAX)?;
            if records.is_empty() {
                self.metrics.lag_seconds.get_or_create(&lag).set(0.0);
                reader.wait(WAIT_SLICE)?;
                continue;
            }
            let mut writes = Vec::new();
            let mut oldest_ms = u64::MAX;
            for r in &records {
                // Only event types with a state are decoded; undecodable
                // frames are the ClickHouse pipeline's to dead-letter.
                let stateful = RecordView::peek_event(&r.payload)
                    .is_ok_and(|e| self.registry.get(e).is_some_and(|t| t.state.is_some()));
                if !stateful {
                    continue;
                }
                if let Ok(rec) = Record::decode(&r.payload) {
                    if let Some(w) = state_write(&self.registry, &rec.event) {
                        oldest_ms = oldest_ms.min(w.time_ms);
                        writes.push(w);
                    }
                }
            }
            let mut attempt = 0u32;
            loop {
                if !writes.is_empty() {
                    self.metrics
                        .lag_seconds
                        .get_or_create(&lag)
                        .set(now_ms().saturating_sub(oldest_ms) as f64 / 1000.0);
                }
                let result = rt.block_on(async {
                    if store.is_none() {
                        store = Some(StateStore::connect(&self.config.redis, timeout).await?);
                    }
                    Ok::<_, Error>(
                        store
                            .as_mut()
                            .expect("just connected")
                            .apply(&writes)
                            .await?,
                    )
                });
                match result {
                    Ok(changed) => {
                        let m = &self.metrics.redis_states;
                        m.get_or_create(&label("outcome", "written"))
                            .inc_by(changed);
                        m.get_or_create(&label("outcome", "kept"))
                            .inc_by(writes.len() as u64 - changed);
                        *self.health.redis.lock().expect("health lock") = SinkHealth::Ok;
                        break;
                    }
                    Err(e) => {
                        self.metrics
                            .errors
                            .get_or_create(&label("kind", e.kind()))
                            .inc();
                        tracing::warn!(error = %e, attempt, "Redis state write failed; retrying (ClickHouse shipping goes on)");
                        *self.health.redis.lock().expect("health lock") =
                            SinkHealth::Retrying(e.to_string());
                        if matches!(e, Error::Redis(dc_config::state_store::Error::Timeout(_))) {
                            store = None;
                        }
                        if !self.sleep(self.backoff(attempt)) {
                            return Ok(());
                        }
                        attempt += 1;
                    }
                }
            }
            done = Some(records.last().expect("non-empty").next);
            self.metrics
                .batches
                .get_or_create(&label("sink", "redis"))
                .inc();
        }
        if let Some(p) = done {
            // At shutdown a full disk only means this stretch is redone.
            match reader.commit(p) {
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(error = %e, "no space for the Redis checkpoint at shutdown; the last second of state writes will be redone")
                }
                other => other?,
            }
        }
        Ok(())
    }
}
