//! The listeners and connections: accept under a connection bound, read
//! bounded chunks, answer each batch, close idle connections, drain on shutdown.

use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dc_config::registry::Registry;
use dc_config::services::{CollectorConfig, CollectorLimits, FsyncPolicy};
use spooler::{Durability, Spool};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::ingest::{Batch, Ingest, Outcome};
use crate::metrics::{Health, Metrics};
use crate::protocol::Response;
use crate::Error;

/// How often the spool-size gauges are refreshed.
const SPOOL_GAUGE_INTERVAL: Duration = Duration::from_secs(1);
/// Most rejected lines answered in one reply; a chunk with more is
/// answered in several batches (`docs/protocol.md`).
pub const MAX_REJECTIONS_PER_REPLY: usize = 256;

/// The spool configuration the collector's config asks for.
pub fn spool_config(config: &CollectorConfig) -> spooler::Config {
    let durability = match config.limits.fsync {
        FsyncPolicy::Always => Durability::Always,
        FsyncPolicy::Group => Durability::Group,
        FsyncPolicy::Interval => Durability::Interval {
            interval_ms: config.limits.fsync_interval_ms,
        },
    };
    spooler::Config {
        durability,
        quota_bytes: config.spool_quota_bytes,
        segment_bytes: config.limits.spool_segment_bytes,
        compression: match config.limits.spool_zstd_level {
            0 => spooler::Compression::Off,
            level => spooler::Compression::Zstd { level },
        },
        ..spooler::Config::default()
    }
}

/// A collector with its spool open, not yet listening.
pub struct Collector {
    config: CollectorConfig,
    ingest: Arc<Ingest>,
}

/// Replaces a collector's registry while it runs: lines checked from then
/// on use the new one; no connection is dropped, no batch in hand changes.
#[derive(Clone)]
pub struct RegistryHandle(Arc<Ingest>);

impl RegistryHandle {
    /// Installs `registry`; returns the one it replaces.
    pub fn replace(&self, registry: Registry) -> Arc<Registry> {
        std::mem::replace(
            &mut *self.0.registry.write().expect("registry lock"),
            Arc::new(registry),
        )
    }

    /// The registry now.
    pub fn current(&self) -> Arc<Registry> {
        self.0.registry()
    }
}

/// A listening collector; [`Running::shutdown`] stops it and drains.
pub struct Running {
    /// The TCP listener's address (the real port when the config said 0).
    pub tcp_addr: SocketAddr,
    /// The Unix socket's path.
    pub socket: PathBuf,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), Error>>,
}

impl Collector {
    /// Opens the spool (blocking: recovery may scan the active segment).
    pub fn open(
        config: CollectorConfig,
        registry: Registry,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Result<Self, Error> {
        let spool = Spool::open(&config.spool_dir, spool_config(&config))?;
        metrics
            .spool_quota_bytes
            .set(config.spool_quota_bytes as i64);
        let ingest = Arc::new(Ingest {
            spool: Arc::new(spool),
            registry: std::sync::RwLock::new(Arc::new(registry)),
            metrics,
            health,
            line_bytes_max: config.limits.line_bytes_max,
            history_s: config.limits.history_s,
            quarantine: crate::quarantine::Quarantine::new(
                config.quarantine_dir(),
                config.limits.quarantine_bytes_max,
            ),
        });
        Ok(Self { config, ingest })
    }

    /// The spool this collector appends to.
    pub fn spool(&self) -> Arc<Spool> {
        self.ingest.spool.clone()
    }

    /// A handle that replaces the registry of the running collector.
    pub fn registry_handle(&self) -> RegistryHandle {
        RegistryHandle(self.ingest.clone())
    }

    /// Binds the socket and TCP listener, starts the inbox tailer and serves
    /// until [`Running::shutdown`].
    pub async fn start(self) -> Result<Running, Error> {
        let cfg = &self.config;
        if !cfg.tcp.ip().is_loopback() {
            return Err(Error::NotLoopback(cfg.tcp));
        }
        let unix = bind_unix(&cfg.socket, cfg.socket_mode, cfg.socket_group.as_deref())?;
        let tcp = TcpListener::bind(cfg.tcp)
            .await
            .map_err(|source| Error::Bind {
                what: "tcp",
                addr: cfg.tcp.to_string(),
                source,
            })?;
        let tcp_addr = tcp.local_addr().map_err(|source| Error::Bind {
            what: "tcp",
            addr: cfg.tcp.to_string(),
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let limits = Arc::new(cfg.limits.clone());
        // Apart per transport: TCP clients must not lock out the socket's.
        let unix_permits = Arc::new(Semaphore::new(limits.max_connections));
        let tcp_permits = Arc::new(Semaphore::new(limits.max_tcp_connections));
        let inbox = crate::inbox::start(
            self.ingest.clone(),
            cfg.inbox.clone(),
            limits.clone(),
            stopped.clone(),
        )?;
        let ingest = self.ingest.clone();
        let socket = cfg.socket.clone();
        let socket_for_task = socket.clone();
        let task = tokio::spawn(async move {
            let unix_loop = tokio::spawn(accept_unix(
                unix,
                ingest.clone(),
                limits.clone(),
                (unix_permits.clone(), limits.max_connections),
                stopped.clone(),
            ));
            let tcp_loop = tokio::spawn(accept_tcp(
                tcp,
                ingest.clone(),
                limits.clone(),
                (tcp_permits.clone(), limits.max_tcp_connections),
                stopped.clone(),
            ));
            let gauges = tokio::spawn(spool_gauges(ingest.clone(), stopped.clone()));
            let mut stopped = stopped;
            crate::until_stopped(&mut stopped).await;
            let _ = tokio::join!(unix_loop, tcp_loop, gauges);
            // Every connection holds a permit until it has answered its last
            // batch: holding them all means the connections have drained.
            let grace = Duration::from_millis(limits.shutdown_grace_ms);
            let all = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
            let drained = async {
                let unix = unix_permits.acquire_many(all(limits.max_connections)).await;
                let tcp = tcp_permits
                    .acquire_many(all(limits.max_tcp_connections))
                    .await;
                (unix, tcp)
            };
            if tokio::time::timeout(grace, drained).await.is_err() {
                tracing::warn!(
                    grace_ms = limits.shutdown_grace_ms,
                    "connections still busy after the shutdown grace; their unacknowledged lines are not stored"
                );
            }
            let inbox_result = match tokio::time::timeout(grace, inbox).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(Error::Task(e.to_string())),
                Err(_) => {
                    tracing::warn!("inbox still busy after the shutdown grace");
                    Ok(())
                }
            };
            let _ = std::fs::remove_file(&socket_for_task);
            let spool = ingest.spool.clone();
            tokio::task::spawn_blocking(move || spool.flush())
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            inbox_result
        });
        tracing::info!(socket = %socket.display(), tcp = %tcp_addr, "collector listening");
        Ok(Running {
            tcp_addr,
            socket,
            stop,
            task,
        })
    }
}

impl Running {
    /// Stops accepting, lets every connection finish and answer the batch in
    /// hand (within `shutdown_grace_ms`), checkpoints the inbox and flushes the spool.
    pub async fn shutdown(self) -> Result<(), Error> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the collector has stopped (after a shutdown from elsewhere).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.map_err(|e| Error::Task(e.to_string()))?
    }

    /// A handle that starts the shutdown when `send(true)` is called on it.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Binds the Unix socket, replacing a stale socket file left by a crash but
/// never one a live collector still answers on.
fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, Error> {
    let err = |source| Error::Bind {
        what: "unix socket",
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another collector is answering on this socket",
            )));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    if let Some(group) = group {
        let gid = group_id(group).map_err(err)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

/// The id of group `name` (a name from the group database, or a number).
fn group_id(name: &str) -> std::io::Result<u32> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let cname = std::ffi::CString::new(name).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "group name contains NUL")
    })?;
    // SAFETY: `group` and `buf` outlive the call; getgrnam_r writes only into
    // them and sets `result` to null or to `&group`.
    unsafe {
        let mut group: libc::group = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = libc::getgrnam_r(
            cname.as_ptr(),
            &mut group,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no group named {name:?} (socket_group)"),
            ));
        }
        Ok(group.gr_gid)
    }
}

async fn spool_gauges(ingest: Arc<Ingest>, mut stopped: watch::Receiver<bool>) {
    loop {
        let spool = ingest.spool.clone();
        if let Ok(Ok(stats)) = tokio::task::spawn_blocking(move || spool.stats()).await {
            ingest.metrics.spool_bytes.set(stats.bytes_on_disk as i64);
        }
        tokio::select! {
            _ = crate::until_stopped(&mut stopped) => return,
            _ = tokio::time::sleep(SPOOL_GAUGE_INTERVAL) => {}
        }
    }
}

macro_rules! accept_loop {
    ($name:ident, $listener:ty, $endpoint:expr, $setup:expr) => {
        async fn $name(
            listener: $listener,
            ingest: Arc<Ingest>,
            limits: Arc<CollectorLimits>,
            (permits, max): (Arc<Semaphore>, usize),
            mut stopped: watch::Receiver<bool>,
        ) {
            loop {
                let stream = tokio::select! {
                    _ = crate::until_stopped(&mut stopped) => return,
                    r = listener.accept() => match r {
                        Ok((s, _)) => s,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, endpoint = $endpoint, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                #[allow(clippy::redundant_closure_call)]
                ($setup)(&stream);
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    ingest.metrics.connections_refused.inc();
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let line = Response::Closing {
                            closing: format!(
                                "too many {} connections (max {max}); retry later",
                                $endpoint
                            ),
                        }
                        .to_line();
                        let _ = stream.write_all(&line).await;
                        let _ = stream.shutdown().await;
                    });
                    continue;
                };
                let ingest = ingest.clone();
                let limits = limits.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let gauge = ingest
                        .metrics
                        .connections_open
                        .get_or_create(&vec![("endpoint", $endpoint.to_string())])
                        .clone();
                    gauge.inc();
                    serve(stream, &ingest, &limits, $endpoint, stopped).await;
                    gauge.dec();
                    drop(permit);
                });
            }
        }
    };
}

accept_loop!(
    accept_unix,
    UnixListener,
    "unix",
    |_: &tokio::net::UnixStream| {}
);
accept_loop!(
    accept_tcp,
    TcpListener,
    "tcp",
    |s: &tokio::net::TcpStream| {
        // Acks are small and awaited: do not let Nagle hold them back.
        let _ = s.set_nodelay(true);
    }
);

/// Serves one connection until EOF, idleness, an I/O error or shutdown.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    ingest: &Ingest,
    limits: &CollectorLimits,
    endpoint: &'static str,
    mut stopped: watch::Receiver<bool>,
) {
    let (mut rd, mut wr) = tokio::io::split(stream);
    let chunk = limits.read_buffer_bytes;
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    let received = ingest
        .metrics
        .received_bytes
        .get_or_create(&vec![("endpoint", endpoint.to_string())])
        .clone();
    // Holds at most one partial line (<= line_bytes_max) plus one chunk.
    let mut buf: Vec<u8> = Vec::with_capacity(chunk);
    let mut line_no = 0u64;
    // Inside a line already rejected as too long: drop bytes up to its newline.
    let mut discarding = false;
    let mut out = Vec::new();
    let closing = loop {
        if *stopped.borrow() {
            break Some("collector shutting down".to_string());
        }
        let start = buf.len();
        buf.resize(start + chunk, 0);
        let read = tokio::select! {
            biased;
            _ = crate::until_stopped(&mut stopped) => {
                buf.truncate(start);
                break Some("collector shutting down".to_string());
            }
            r = tokio::time::timeout(idle, rd.read(&mut buf[start..])) => r,
        };
        let n = match read {
            Err(_) => {
                ingest.metrics.idle_timeouts.inc();
                break Some(format!(
                    "idle for {} ms; reconnect to send more",
                    limits.idle_timeout_ms
                ));
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, endpoint, "connection read failed");
                return;
            }
            Ok(Ok(n)) => n,
        };
        buf.truncate(start + n);
        received.inc_by(n as u64);
        let eof = n == 0;
        let t0 = Instant::now();
        let mut from = 0;
        if discarding {
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    from = i + 1;
                    discarding = false;
                }
                None => {
                    buf.clear();
                    if eof {
                        break None;
                    }
                    continue;
                }
            }
        }
        let complete = buf[from..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(from, |i| from + i + 1);
        let mut pos = from;
        // One batch per [`MAX_REJECTIONS_PER_REPLY`] bad lines at most: a
        // chunk of tiny bad lines would otherwise hold a rejection (≈100 B)
        // per 2 B read until the whole chunk is answered.
        loop {
            let mut batch = Batch::new(line_no + 1);
            while pos < complete && batch.rejected.len() < MAX_REJECTIONS_PER_REPLY {
                let end = pos
                    + buf[pos..complete]
                        .iter()
                        .position(|&b| b == b'\n')
                        .expect("the complete region ends with a newline");
                line_no += 1;
                batch.add_line(ingest, endpoint, line_no, &buf[pos..end], None);
                pos = end + 1;
            }
            let last = pos >= complete;
            if last {
                let rest_len = buf.len() - complete;
                if eof && rest_len > 0 {
                    // An unterminated last line at EOF is complete: the
                    // writer is done.
                    line_no += 1;
                    let rest = &buf[complete..];
                    batch.add_line(ingest, endpoint, line_no, rest, None);
                    buf.clear();
                } else if rest_len > limits.line_bytes_max {
                    line_no += 1;
                    batch.reject_too_long(ingest, endpoint, line_no, rest_len);
                    buf.clear();
                    discarding = true;
                } else {
                    buf.drain(..complete);
                }
            }
            if !batch.is_empty() {
                let outcome = match ingest.commit(&mut batch, endpoint).await {
                    Ok(o) => o,
                    Err(e) => Outcome::Refused(format!("collector error: {e}; retry later")),
                };
                out.clear();
                for r in &batch.rejected {
                    out.extend_from_slice(&r.to_line());
                }
                let reply = match outcome {
                    Outcome::Stored(accepted) => Response::Ack {
                        ack: batch.last_line,
                        accepted,
                    },
                    Outcome::Refused(refused) => Response::Refused {
                        refused,
                        from: batch.first_line,
                        through: batch.last_line,
                    },
                };
                out.extend_from_slice(&reply.to_line());
                ingest
                    .metrics
                    .ack_latency_seconds
                    .observe(t0.elapsed().as_secs_f64());
                // A client that does not read its answers must not hold its
                // slot and this buffer forever.
                match tokio::time::timeout(idle, wr.write_all(&out)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        ingest.metrics.write_timeouts.inc();
                        tracing::debug!(endpoint, "client not reading its answers; closing");
                        return;
                    }
                }
            }
            if last {
                break;
            }
        }
        if eof {
            break None;
        }
    };
    if let Some(closing) = closing {
        let line = Response::Closing { closing }.to_line();
        let _ = tokio::time::timeout(idle, wr.write_all(&line)).await;
    }
    let _ = tokio::time::timeout(idle, wr.shutdown()).await;
}
