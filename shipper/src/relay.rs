//! A relay (docs/adr/0017-relay-tier.md): takes the batches of its DC's
//! app hosts' forwarders into its own spool and ships them into the DC's
//! ClickHouse in large inserts, each row with its origin's identity and
//! its session's epoch.
//!
//! Two halves share the sessions table (one live session per host):
//! - the listener: per connection a challenge, the hello (DC, host, epoch,
//!   MAC of the DC's secret), the **takeover** (fence the host on every
//!   replica, wait for the DC's inserts running then, read which positions
//!   of the forwarder's batch in hand ClickHouse holds), then batches
//!   appended to the spool and acknowledged (`Appended`);
//! - the shipping loop: reads the spool in batches of many hosts' rows,
//!   skips rows whose session ended, inserts, and tells each live session
//!   which of its batches became `Visible`. An insert that may have landed
//!   is never repeated: the sessions of its hosts are ended instead, and
//!   their forwarders take over again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dc_config::record::RecordView;
use dc_config::row::{write_row_binary, SpoolPosition};
use dc_config::services::RelayConfig;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use rand::Rng;
use spooler::{Durability, Spool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::metrics::{label, Label};
use crate::ship::read_batch;
use crate::sink::{IngestBody, Sink, SinkTarget, Writers};
use crate::wire::{self, BatchRange, Message, Relayed};

/// The relay's spool reader.
pub const READER: &str = "clickhouse";
/// Longest wait for a connection's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections a relay holds at once (a DC has hundreds of app hosts
/// over a few relays); past it a connection is closed at once and counted
/// as refused (`busy`): a flood costs a bounded amount of memory.
pub const CONNECTIONS_MAX: usize = 4_096;

/// Sample names other programs read (the query service's pipeline health):
/// `tests/metrics_lint.rs` holds its copies equal to these.
pub mod names {
    /// Live sessions (gauge).
    pub const SESSIONS: &str = "spoolhouse_relay_sessions";
    /// Frames taken into the relay's spool (counter).
    pub const INFLOW_FRAMES_TOTAL: &str = "spoolhouse_relay_inflow_frames_total";
    /// Bytes of the relay's spool segment files (gauge).
    pub const SPOOL_BYTES: &str = "spoolhouse_relay_spool_bytes";
    /// Rows inserted into ClickHouse (counter).
    pub const ROWS_TOTAL: &str = "spoolhouse_relay_rows_total";
}

/// Every metric of a relay, all named `spoolhouse_relay_*`.
pub struct RelayMetrics {
    /// Live sessions (connected forwarders).
    pub sessions: Gauge,
    /// Sessions taken over (accepted connections).
    pub takeovers: Counter,
    /// Connections closed after the challenge, before a hello: forwarders'
    /// health checks.
    pub probes: Counter,
    /// Connections refused, by `reason` (`auth`, `dc`, `version`, `protocol`, `takeover`, `busy`).
    pub refused: Family<Label, Counter>,
    /// Sessions the relay ended, by `reason` (`uncertain_insert`, `spool`, `replaced`, `protocol`).
    pub ended: Family<Label, Counter>,
    /// Frames taken into the spool.
    pub inflow_frames: Counter,
    /// Bytes of records taken into the spool.
    pub inflow_bytes: Counter,
    /// Bytes of the relay's spool segment files.
    pub spool_bytes: Gauge,
    /// Rows inserted into ClickHouse.
    pub rows: Counter,
    /// Rows skipped because their session had ended.
    pub skipped_rows: Counter,
    /// Inserts done, by `shard` (1-based).
    pub inserts: Family<Label, Counter>,
    /// Seconds per insert.
    pub insert_seconds: Histogram,
    /// Failed attempts, by kind.
    pub errors: Family<Label, Counter>,
}

impl RelayMetrics {
    /// Registers every metric under `spoolhouse_relay`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self {
            sessions: Gauge::default(),
            takeovers: Counter::default(),
            probes: Counter::default(),
            refused: Family::default(),
            ended: Family::default(),
            inflow_frames: Counter::default(),
            inflow_bytes: Counter::default(),
            spool_bytes: Gauge::default(),
            rows: Counter::default(),
            skipped_rows: Counter::default(),
            inserts: Family::default(),
            insert_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            errors: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("spoolhouse_relay");
        r.register("sessions", "Live forwarder sessions", m.sessions.clone());
        r.register(
            "takeovers",
            "Sessions taken over (connections accepted)",
            m.takeovers.clone(),
        );
        r.register(
            "probes",
            "Connections closed after the challenge without a hello (forwarders' health checks)",
            m.probes.clone(),
        );
        r.register(
            "refused",
            "Connections refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "sessions_ended",
            "Sessions the relay ended, by reason",
            m.ended.clone(),
        );
        r.register(
            "inflow_frames",
            "Frames taken into the relay's spool",
            m.inflow_frames.clone(),
        );
        r.register(
            "inflow_bytes",
            "Record bytes taken into the relay's spool",
            m.inflow_bytes.clone(),
        );
        r.register(
            "spool_bytes",
            "Bytes of the relay's spool segment files",
            m.spool_bytes.clone(),
        );
        r.register("rows", "Rows inserted into ClickHouse", m.rows.clone());
        r.register("skipped_rows", "Rows skipped because their session had ended (their forwarder resends what ClickHouse lacks)", m.skipped_rows.clone());
        r.register(
            "inserts",
            "Inserts into ClickHouse, by shard",
            m.inserts.clone(),
        );
        r.register(
            "insert_seconds",
            "Seconds per insert",
            m.insert_seconds.clone(),
        );
        r.register(
            "errors",
            "Failed insert attempts, by kind",
            m.errors.clone(),
        );
        m
    }
}

/// A batch of the relay's spool ready to insert.
struct Prepared {
    start: spooler::Position,
    end: spooler::Position,
    /// RowBinary rows of live sessions, each followed by its epoch.
    body: Bytes,
    /// CRC32 of the rows without their epochs.
    crc: u32,
    rows: u64,
    hosts: HashSet<String>,
    /// Per (host, epoch): the batches whose last frame is in it.
    completes: BTreeMap<(String, u64), Vec<u64>>,
}

/// Whether sessions, as (batches in the spool not yet visible, the last
/// batch said more follow), send nothing more before the next insert.
fn settled(mut sessions: impl ExactSizeIterator<Item = (usize, bool)>) -> bool {
    sessions.len() > 0
        && sessions.all(|(waiting, more)| waiting >= wire::WINDOW || (waiting > 0 && !more))
}

/// One forwarder's live session.
struct Session {
    epoch: u64,
    tx: mpsc::UnboundedSender<Message>,
    /// Batches appended and not yet visible: at [`wire::WINDOW`] the
    /// forwarder sends nothing more until one is.
    waiting: usize,
    /// The last batch said another follows at once.
    more: bool,
}

/// A relay; `shutdown` set to true stops both halves.
pub struct Relay {
    config: RelayConfig,
    secret: Vec<u8>,
    spool: Spool,
    sink: Sink,
    sessions: Mutex<HashMap<String, Session>>,
    metrics: Arc<RelayMetrics>,
    shutdown: Arc<AtomicBool>,
    /// The last insert's failure, until an insert succeeds: `/healthz`.
    insert_error: Mutex<Option<String>>,
}

impl Relay {
    /// Opens the relay's spool and reads its secrets; listens only in [`Relay::run`].
    pub fn open(
        config: RelayConfig,
        metrics: Arc<RelayMetrics>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self> {
        let secret = dc_config::credentials::read_password(&config.secret_file)
            .map_err(|e| Error::Config(e.to_string()))?
            .into_bytes();
        let sink = Sink::open(
            SinkTarget {
                dc: &config.dc,
                writer: &config.name,
                database: &config.database,
                shards: &config.shards,
                compression: config.compression,
                timeout_ms: config.limits.clickhouse_timeout_ms,
            },
            &config.clickhouse_password_file,
        )?;
        // Group commit: a batch is acknowledged once written and synced with
        // whatever else came meanwhile. (The forwarders keep their frames
        // until visible, so this is for the relay's own restarts' sake.)
        // Segments of at most an eighth of the quota: a full spool frees
        // space as shipped segments are sealed and deleted, instead of
        // waiting for one segment as large as the quota to rotate.
        // Sealed segments stay raw: a relay's segments live seconds (read
        // right behind the writer, deleted once shipped), and compressing
        // each took a tenth of the relay's CPU in `bench shipper`; a
        // backlog here costs only the quota, the forwarders keep theirs.
        let defaults = spooler::Config::default();
        let spool = Spool::open(
            &config.spool_dir,
            spooler::Config {
                durability: Durability::Group,
                compression: spooler::Compression::Off,
                quota_bytes: config.spool_quota_bytes,
                segment_bytes: defaults
                    .segment_bytes
                    .min(config.spool_quota_bytes / 8)
                    .max(1 << 16),
                ..defaults
            },
        )?;
        Ok(Self {
            config,
            secret,
            spool,
            sink,
            sessions: Mutex::new(HashMap::new()),
            metrics,
            shutdown,
            insert_error: Mutex::new(None),
        })
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Listens on `config.listen` and ships until shutdown.
    pub fn run(self: Arc<Self>, rt: tokio::runtime::Handle) -> Result<()> {
        let listener = rt
            .block_on(TcpListener::bind(self.config.listen))
            .map_err(|e| {
                Error::Config(format!(
                    "relay listener {}: {e}; is another relay running there?",
                    self.config.listen
                ))
            })?;
        self.run_on(listener, rt)
    }

    /// As [`Relay::run`], on a bound listener (tests bind port 0).
    pub fn run_on(
        self: Arc<Self>,
        listener: TcpListener,
        rt: tokio::runtime::Handle,
    ) -> Result<()> {
        let accepting = {
            let relay = self.clone();
            rt.spawn(async move { relay.accept(listener).await })
        };
        let result = self.ship_loop(&rt);
        accepting.abort();
        // Sessions end with the relay: their forwarders take over elsewhere.
        self.sessions.lock().expect("sessions lock").clear();
        result
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
        loop {
            match listener.accept().await {
                Ok((conn, peer)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        self.refuse("busy");
                        drop(conn);
                        continue;
                    };
                    let _ = conn.set_nodelay(true);
                    let relay = self.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        if let Err(e) = relay.serve(conn).await {
                            tracing::info!(%peer, error = %e, "forwarder connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a forwarder connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn refuse(&self, reason: &str) {
        self.metrics
            .refused
            .get_or_create(&label("reason", reason))
            .inc();
    }

    /// One connection: handshake, takeover, then batches until it closes.
    async fn serve(self: Arc<Self>, conn: TcpStream) -> std::result::Result<(), String> {
        let (mut rd, mut wr) = conn.into_split();
        let mut nonce = [0u8; 32];
        rand::rng().fill(&mut nonce);
        wire::send(&mut wr, &Message::Challenge { nonce })
            .await
            .map_err(|e| e.to_string())?;
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, wire::recv(&mut rd)).await {
            Ok(Ok(Some(m))) => m,
            Ok(Ok(None)) => {
                // A forwarder's health check of this relay (the challenge
                // shows it serves), or a port scan: either way, no session.
                self.metrics.probes.inc();
                return Ok(());
            }
            Ok(Err(e)) => {
                self.refuse("protocol");
                return Err(e.to_string());
            }
            Err(_) => {
                self.refuse("protocol");
                return Err(format!("no hello within {HELLO_TIMEOUT:?}"));
            }
        };
        let Message::Hello {
            version,
            dc,
            host,
            epoch,
            mac,
            batch,
        } = hello
        else {
            self.refuse("protocol");
            return Err("the first message was not a hello".into());
        };
        let refusal = if version != wire::VERSION {
            Some((
                "version",
                format!(
                    "protocol version {version}; this relay speaks {}",
                    wire::VERSION
                ),
            ))
        } else if !wire::mac_ok(&self.secret, &nonce, &dc, &host, epoch, &mac) {
            Some((
                "auth",
                "the DC's relay secret does not match: check the forwarder's relay.secret_file"
                    .to_string(),
            ))
        } else if dc != self.config.dc {
            Some((
                "dc",
                format!("this relay serves {}, not {dc}", self.config.dc),
            ))
        } else if host.is_empty() || host.len() > wire::NAME_MAX || host.contains('/') {
            Some((
                "protocol",
                "a host name is 1 to 255 bytes without `/`".to_string(),
            ))
        } else {
            None
        };
        if let Some((why, reason)) = refusal {
            self.refuse(why);
            tracing::warn!(%host, %dc, reason = %reason, "forwarder refused");
            let refused = Message::Refused {
                reason: reason.clone(),
                config: why != "protocol",
            };
            let _ = wire::send(&mut wr, &refused).await;
            return Err(reason);
        }
        let answer = match self.takeover(&host, epoch, &batch).await {
            Ok(Ok(held)) => Message::Welcome {
                held: held.into_iter().collect(),
            },
            Ok(Err(fence)) => Message::EpochTooLow { fence },
            Err(e) => {
                self.refuse("takeover");
                Message::Refused {
                    reason: format!("takeover failed: {e}"),
                    config: false,
                }
            }
        };
        let welcomed = matches!(answer, Message::Welcome { .. });
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        if welcomed {
            let old = self.sessions.lock().expect("sessions lock").insert(
                host.clone(),
                Session {
                    epoch,
                    tx: tx.clone(),
                    waiting: 0,
                    more: false,
                },
            );
            if let Some(old) = old {
                self.metrics
                    .ended
                    .get_or_create(&label("reason", "replaced"))
                    .inc();
                let _ = old.tx.send(Message::Ended {
                    reason: "a newer session of this host".into(),
                });
            }
            self.metrics.takeovers.inc();
            self.metrics.sessions.set(self.live_sessions());
            tracing::info!(%host, epoch, "session taken over");
        }
        wire::send(&mut wr, &answer)
            .await
            .map_err(|e| e.to_string())?;
        if !welcomed {
            return Ok(());
        }
        // Writes what the shipping loop and this task send, in order; an
        // `Ended` is the last thing the session hears.
        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let last = matches!(m, Message::Ended { .. });
                if wire::send(&mut wr, &m).await.is_err() || last {
                    break;
                }
            }
        });
        let result = self.session(&host, epoch, &mut rd, &tx).await;
        if let Err(e) = &result {
            let _ = tx.send(Message::Ended { reason: e.clone() });
        }
        self.end_session(&host, epoch);
        drop(tx);
        let _ = writer.await;
        result
    }

    /// What `/healthz` shows: whether the last insert succeeded (or none
    /// was needed), the error if not, and the live sessions' hosts and epochs.
    pub fn health(&self) -> (bool, serde_json::Value) {
        let error = self.insert_error.lock().expect("health lock").clone();
        let sessions = self.sessions.lock().expect("sessions lock");
        let mut hosts: Vec<(&String, u64)> = sessions.iter().map(|(h, s)| (h, s.epoch)).collect();
        hosts.sort();
        let ok = error.is_none();
        (
            ok,
            serde_json::json!({
                "ok": ok,
                "dc": self.config.dc,
                "relay": self.config.name,
                "clickhouse": match &error {
                    None => serde_json::json!({"state": "ok"}),
                    Some(e) => serde_json::json!({"state": "retrying", "error": e}),
                },
                "sessions": hosts.iter().map(|(h, e)| serde_json::json!({"host": h, "epoch": e})).collect::<Vec<_>>(),
            }),
        )
    }

    fn live_sessions(&self) -> i64 {
        self.sessions.lock().expect("sessions lock").len() as i64
    }

    /// Removes `host`'s session if it is still the one of `epoch`.
    fn end_session(&self, host: &str, epoch: u64) {
        let mut sessions = self.sessions.lock().expect("sessions lock");
        if sessions.get(host).is_some_and(|s| s.epoch == epoch) {
            sessions.remove(host);
        }
        self.metrics.sessions.set(sessions.len() as i64);
    }

    /// A batch of `host`'s session of `epoch` is in the spool; `more`, as
    /// the batch said.
    fn appended(&self, host: &str, epoch: u64, more: bool) {
        if let Some(s) = self
            .sessions
            .lock()
            .expect("sessions lock")
            .get_mut(host)
            .filter(|s| s.epoch == epoch)
        {
            s.waiting += 1;
            s.more = more;
        }
    }

    /// Every live session has batches in the spool and sends no more
    /// before one is visible (its window is full, or it said it has
    /// nothing more in hand): waiting out the batch age would only add
    /// latency. A session with nothing in the spool may send any moment,
    /// and is waited for, up to the age: that keeps inserts large.
    fn all_waiting(&self) -> bool {
        let sessions = self.sessions.lock().expect("sessions lock");
        settled(sessions.values().map(|s| (s.waiting, s.more)))
    }

    fn is_live(&self, host: &str, epoch: u64) -> bool {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(host)
            .is_some_and(|s| s.epoch == epoch)
    }

    /// A live session's batches, appended to the spool as they come.
    async fn session(
        &self,
        host: &str,
        epoch: u64,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
        tx: &mpsc::UnboundedSender<Message>,
    ) -> std::result::Result<(), String> {
        loop {
            let m = match wire::recv(rd).await {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => {
                    self.metrics
                        .ended
                        .get_or_create(&label("reason", "protocol"))
                        .inc();
                    return Err(e.to_string());
                }
            };
            if !self.is_live(host, epoch) {
                return Ok(());
            }
            let Message::Batch { seq, more, frames } = m else {
                self.metrics
                    .ended
                    .get_or_create(&label("reason", "protocol"))
                    .inc();
                return Err("only batches are expected in a session".into());
            };
            let mut attrs = Vec::new();
            let mut out = Vec::with_capacity(frames.len());
            for (i, (position, record)) in frames.iter().enumerate() {
                attrs.clear();
                if let Err(e) = RecordView::parse_into(record, &mut attrs) {
                    self.metrics
                        .ended
                        .get_or_create(&label("reason", "protocol"))
                        .inc();
                    return Err(format!("frame at {position:?} is not an event record: {e}"));
                }
                let mut buf = Vec::with_capacity(record.len() + host.len() + 40);
                Relayed {
                    host,
                    epoch,
                    seq,
                    last: i + 1 == frames.len(),
                    position: *position,
                    record,
                }
                .encode_into(&mut buf);
                out.push(buf);
            }
            if !out.is_empty() {
                let bytes: usize = frames.iter().map(|f| f.1.len()).sum();
                let spool = &self.spool;
                // The spool's append writes and syncs: off the async workers.
                let appended = tokio::task::block_in_place(|| spool.append(&out));
                if let Err(e) = appended {
                    self.metrics
                        .ended
                        .get_or_create(&label("reason", "spool"))
                        .inc();
                    tracing::warn!(%host, error = %e, "relay spool refused a batch; ending the session (the forwarder keeps its frames)");
                    return Err(format!("relay spool: {e}"));
                }
                self.metrics.inflow_frames.inc_by(out.len() as u64);
                self.metrics.inflow_bytes.inc_by(bytes as u64);
            }
            if !out.is_empty() {
                self.appended(host, epoch, more);
            }
            let _ = tx.send(Message::Appended { seq });
            if out.is_empty() {
                // Everything of it was already held: visible as it stands.
                let _ = tx.send(Message::Visible { seq });
            }
        }
    }

    /// The takeover of `host` for `epoch` (docs/adr/0017): `Ok(held)`, or
    /// `Err(fence)` when a replica fences the host above `epoch`.
    async fn takeover(
        &self,
        host: &str,
        epoch: u64,
        batch: &BatchRange,
    ) -> Result<std::result::Result<HashSet<(u64, u64)>, u64>> {
        let sink = &self.sink;
        let every: Vec<(usize, usize)> = (0..sink.shards())
            .flat_map(|s| (0..sink.replicas(s)).map(move |r| (s, r)))
            .collect();
        let above = sink.fence_all(&every, host, epoch).await?;
        if above > epoch {
            return Ok(Err(above));
        }
        let timeout = Duration::from_millis(self.config.limits.clickhouse_timeout_ms);
        let mut held = HashSet::new();
        for &(s, r) in &every {
            held.extend(
                sink.held_after_earlier_inserts(s, r, Writers::Dc, host, batch, timeout, &|| {
                    self.stopping()
                })
                .await?,
            );
        }
        Ok(Ok(held))
    }

    // ---- Shipping ------------------------------------------------------------

    /// Two stages overlap, as in the shipper: a preparing thread reads and
    /// encodes batch `k + 1` while this one inserts batch `k`; commits stay
    /// in order, here.
    fn ship_loop(&self, rt: &tokio::runtime::Handle) -> Result<()> {
        let reader = Mutex::new(self.spool.reader(READER)?);
        // Ends the preparing stage when this one ends, shutdown or not.
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Prepared>>(1);
            let (reader, done) = (&reader, &done);
            let prep = std::thread::Builder::new()
                .name("relay-prepare".into())
                .spawn_scoped(scope, move || {
                    let stop = || self.stopping() || done.load(Ordering::SeqCst);
                    let mut handed = reader.lock().expect("reader lock").committed();
                    while !stop() {
                        if let Ok(stats) = self.spool.stats() {
                            self.metrics.spool_bytes.set(stats.bytes_on_disk as i64);
                        }
                        let item = match read_batch(
                            reader,
                            &self.config.limits,
                            handed,
                            &stop,
                            &|| self.all_waiting(),
                            &mut |_| {},
                        ) {
                            Ok(None) => continue,
                            Ok(Some(frames)) => Ok(self.prepare(&frames)),
                            Err(e) => Err(e),
                        };
                        if let Ok(p) = &item {
                            handed = p.end;
                        }
                        let failed = item.is_err();
                        if tx.send(item).is_err() || failed {
                            return;
                        }
                    }
                })
                .expect("spawning a thread");
            let result = (|| {
                while let Ok(item) = rx.recv() {
                    let prepared = item?;
                    let end = prepared.end;
                    self.ship(rt, prepared)?;
                    // Past it, whatever became of its rows: those not in
                    // ClickHouse are still their forwarders' to resend.
                    reader.lock().expect("reader lock").commit(end)?;
                }
                Ok(())
            })();
            done.store(true, Ordering::SeqCst);
            drop(rx);
            prep.join().expect("relay batch preparation panicked");
            result
        })
    }

    /// The rows of live sessions among `frames` as one insert's body, and
    /// which sessions' batches end in it.
    fn prepare(&self, frames: &[spooler::Frame]) -> Prepared {
        let mut body = Vec::with_capacity(frames.iter().map(|f| f.payload.len() + 48).sum());
        let mut crc = crc32fast::Hasher::new();
        // Per (host, epoch): the batches whose last frame is here.
        let mut completes: BTreeMap<(String, u64), Vec<u64>> = BTreeMap::new();
        let mut hosts: HashSet<String> = HashSet::new();
        let live: HashMap<String, u64> = self
            .sessions
            .lock()
            .expect("sessions lock")
            .iter()
            .map(|(h, s)| (h.clone(), s.epoch))
            .collect();
        let mut attrs = Vec::new();
        let (mut rows, mut skipped) = (0u64, 0u64);
        for f in frames {
            let r = match Relayed::decode(&f.payload) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(segment = f.position.segment, offset = f.position.offset, error = %e, "relay spool frame is not a relayed record; skipped");
                    continue;
                }
            };
            if live.get(r.host) != Some(&r.epoch) {
                skipped += 1;
                continue;
            }
            attrs.clear();
            let Ok(view) = RecordView::parse_into(r.record, &mut attrs) else {
                // Checked when it came in: only a damaged spool gets here.
                tracing::error!(host = r.host, position = ?r.position, "relayed record does not decode; skipped");
                continue;
            };
            let start = body.len();
            write_row_binary(
                &mut body,
                view.event,
                view.time_ms,
                &self.config.dc,
                r.host,
                attrs.iter().copied(),
                SpoolPosition {
                    segment: r.position.segment,
                    offset: r.position.offset,
                },
            );
            crc.update(&body[start..]);
            body.extend_from_slice(&r.epoch.to_le_bytes());
            rows += 1;
            if !hosts.contains(r.host) {
                hosts.insert(r.host.to_string());
            }
            if r.last {
                completes
                    .entry((r.host.to_string(), r.epoch))
                    .or_default()
                    .push(r.seq);
            }
        }
        self.metrics.skipped_rows.inc_by(skipped);
        tracing::debug!(
            frames = frames.len(),
            rows,
            skipped,
            completes = completes.len(),
            "relay batch built"
        );
        Prepared {
            start: frames[0].position,
            end: frames.last().expect("a batch has frames").next,
            body: Bytes::from(body),
            crc: crc.finalize(),
            rows,
            hosts,
            completes,
        }
    }

    /// Inserts a prepared batch, then tells its live sessions which of
    /// their batches are visible. An insert that may have landed ends the
    /// sessions of its hosts instead.
    fn ship(&self, rt: &tokio::runtime::Handle, p: Prepared) -> Result<()> {
        let Prepared {
            start,
            end,
            body,
            crc,
            rows,
            hosts,
            completes,
        } = p;
        if rows > 0 {
            let shard = self.sink.shard_for(start);
            for attempt in 0u32.. {
                if self.stopping() {
                    return Ok(());
                }
                let replica = self.sink.replica_for(shard, start, attempt);
                let started = Instant::now();
                let insert = IngestBody {
                    range: (start, end),
                    epoch: 0,
                    rows: body.clone(),
                    rows_crc: crc,
                };
                match rt.block_on(self.sink.insert(shard, replica, insert, true)) {
                    Ok(()) => {
                        tracing::debug!(rows, shard, "relay insert done");
                        *self.insert_error.lock().expect("health lock") = None;
                        self.metrics
                            .insert_seconds
                            .observe(started.elapsed().as_secs_f64());
                        self.metrics.rows.inc_by(rows);
                        self.metrics
                            .inserts
                            .get_or_create(&label("shard", &(shard + 1).to_string()))
                            .inc();
                        break;
                    }
                    Err(e) => {
                        *self.insert_error.lock().expect("health lock") = Some(e.to_string());
                        self.metrics
                            .errors
                            .get_or_create(&label("kind", e.kind()))
                            .inc();
                        if matches!(e, Error::ClickHouse { unsent: true, .. }) {
                            // Nothing of it was stored: the same insert again.
                            tracing::warn!(error = %e, attempt, shard = shard + 1, "relay insert refused; retrying");
                            std::thread::sleep(crate::ship::backoff(&self.config.limits, attempt));
                            continue;
                        }
                        // It may land yet: never send it again. The hosts'
                        // forwarders take over and resend what is missing.
                        tracing::warn!(error = %e, hosts = hosts.len(), "relay insert may have landed; ending its hosts' sessions");
                        let mut sessions = self.sessions.lock().expect("sessions lock");
                        for h in &hosts {
                            if let Some(s) = sessions.remove(h) {
                                let _ = s.tx.send(Message::Ended {
                                    reason: format!(
                                        "relay insert may have landed ({e}); take over again"
                                    ),
                                });
                                self.metrics
                                    .ended
                                    .get_or_create(&label("reason", "uncertain_insert"))
                                    .inc();
                            }
                        }
                        self.metrics.sessions.set(sessions.len() as i64);
                        return Ok(());
                    }
                }
            }
        }
        // Visible: only to sessions still live with the epoch the rows had.
        let mut sessions = self.sessions.lock().expect("sessions lock");
        for ((host, epoch), seqs) in completes {
            if let Some(s) = sessions.get_mut(&host).filter(|s| s.epoch == epoch) {
                s.waiting = s.waiting.saturating_sub(seqs.len());
                for seq in seqs {
                    let _ = s.tx.send(Message::Visible { seq });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_early_only_when_no_session_can_send_before_it() {
        assert!(!settled(
            std::iter::empty::<(usize, bool)>()
                .collect::<Vec<_>>()
                .into_iter()
        ));
        // A full window, or a batch with nothing more in hand.
        assert!(settled(vec![(wire::WINDOW, true), (1, false)].into_iter()));
        // One more batch announced: wait for it.
        assert!(!settled(vec![(wire::WINDOW, true), (1, true)].into_iter()));
        // A session with nothing in the spool may send any moment.
        assert!(!settled(vec![(1, false), (0, false)].into_iter()));
    }
}
