//! The one HTTP listener every Spoolhouse service serves on: the query
//! API and each service's admin port (`/metrics`, `/healthz`). It owns what
//! a client must not be able to exhaust, whatever it sends or fails to
//! read:
//!
//! - **connections**: at most [`Limits::connections`] open; one more is
//!   closed at once (counted), never queued;
//! - **headers**: read within [`Limits::header_timeout`];
//! - **body**: at most [`Limits::body_bytes`] (413 beyond, unread), read
//!   within [`Limits::body_timeout`] (408), before anything else;
//! - **requests in flight**: at most [`Limits::in_flight`], taken only
//!   once a request was read whole, so slow senders cannot hold them
//!   (503 beyond: a client may retry);
//! - **idle**: a connection that moves no byte either way for
//!   [`Limits::idle_timeout`] while no request of it runs is closed: a
//!   keep-alive left open, and a client that never reads its answer;
//! - **accept errors** (out of file descriptors) back off from 10 ms to
//!   1 s instead of spinning, logged once per episode.
//!
//! A handler gets the request head and its whole body; it answers with a
//! full response. Every refusal is a JSON `{"error": …}` saying what to do.
//!
//! [`exposition`] writes every service's `/metrics` and reads another's;
//! [`client`] is the one HTTP GET client.

pub mod client;
pub mod exposition;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What one listener allows a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub connections: usize,
    /// Requests being handled at once (after their bodies were read).
    pub in_flight: usize,
    /// Time to send a request's headers.
    pub header_timeout: Duration,
    /// Time to send a request's body.
    pub body_timeout: Duration,
    /// Largest body read.
    pub body_bytes: usize,
    /// A connection moving no byte while no request of it runs is closed
    /// after this.
    pub idle_timeout: Duration,
}

impl Limits {
    /// An admin port's: scrapers and probes are few, and it must never take
    /// resources from the data path. Bodies are not expected.
    pub const ADMIN: Limits = Limits {
        connections: 64,
        in_flight: 16,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        body_bytes: 4096,
        idle_timeout: Duration::from_secs(30),
    };
}

/// Listener figures, labelled by listener name.
#[derive(Clone, Default)]
pub struct Metrics {
    connections: Family<Listener, Gauge>,
    refused: Family<Listener, Counter>,
    timeouts: Family<Phase, Counter>,
    accept_errors: Family<Listener, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Phase {
    listener: String,
    phase: String,
}

impl Metrics {
    /// Registers the families (`spoolhouse_http_*`) in `registry`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = Self::default();
        registry.register(
            "spoolhouse_http_connections",
            "HTTP connections open, by listener",
            m.connections.clone(),
        );
        registry.register(
            "spoolhouse_http_connections_refused",
            "HTTP connections closed at accept because the listener had its limit open",
            m.refused.clone(),
        );
        registry.register(
            "spoolhouse_http_timeouts",
            "HTTP connections or requests ended by a timeout, by phase (body, idle)",
            m.timeouts.clone(),
        );
        registry.register(
            "spoolhouse_http_accept_errors",
            "Errors accepting HTTP connections (e.g. out of file descriptors)",
            m.accept_errors.clone(),
        );
        m
    }

    fn timeout(&self, listener: &str, phase: &str) {
        self.timeouts
            .get_or_create(&Phase {
                listener: listener.into(),
                phase: phase.into(),
            })
            .inc();
    }
}

/// A JSON error answer.
pub fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::json!({ "error": message }).to_string(),
        )))
        .expect("static response parts are valid")
}

/// Last byte moved on a connection, and whether a request of it is being
/// handled.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A stream that records in [`Activity`] every byte it moves.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Marks a request as being handled while alive.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::SeqCst);
        Self(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

/// Serves `handler` on `listener` within `limits` until `shutdown`
/// resolves. `name` labels the metrics and logs (`query`, `admin`).
pub async fn serve<H, F>(
    listener: tokio::net::TcpListener,
    name: &'static str,
    limits: Limits,
    metrics: Metrics,
    handler: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(hyper::http::request::Parts, Bytes) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.in_flight));
    let label = Listener {
        listener: name.into(),
    };
    let open = metrics.connections.get_or_create(&label).clone();
    let refused = metrics.refused.get_or_create(&label).clone();
    let accept_errors = metrics.accept_errors.get_or_create(&label).clone();
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::ZERO;
                    a
                }
                Err(e) => {
                    accept_errors.inc();
                    if backoff.is_zero() {
                        tracing::warn!(listener = name, error = %e, "accept failed; backing off until it works again");
                        backoff = Duration::from_millis(10);
                    } else {
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                    tokio::select! {
                        _ = &mut shutdown => return,
                        _ = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            refused.inc();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        activity.touch();
        let io = TokioIo::new(Watched {
            inner: stream,
            activity: activity.clone(),
        });
        let (handler, in_flight, m, open) = (
            handler.clone(),
            in_flight.clone(),
            metrics.clone(),
            open.clone(),
        );
        let act = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
            let (handler, in_flight, metrics, act) =
                (handler.clone(), in_flight.clone(), m.clone(), act.clone());
            async move {
                let (head, body) = req.into_parts();
                let read = tokio::time::timeout(
                    limits.body_timeout,
                    http_body_util::Limited::new(body, limits.body_bytes).collect(),
                )
                .await;
                let body = match read {
                    Ok(Ok(b)) => b.to_bytes(),
                    Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                        return Ok::<_, Infallible>(error(
                            413,
                            &format!(
                                "the body is over {} bytes; send a shorter one",
                                limits.body_bytes
                            ),
                        ));
                    }
                    Ok(Err(e)) => {
                        return Ok(error(400, &format!("the body could not be read: {e}")))
                    }
                    Err(_) => {
                        metrics.timeout(name, "body");
                        return Ok(error(
                            408,
                            &format!(
                                "the body did not arrive within {:?}; send it at once",
                                limits.body_timeout
                            ),
                        ));
                    }
                };
                let Ok(_permit) = in_flight.try_acquire_owned() else {
                    return Ok(error(
                        503,
                        &format!(
                            "over {} requests in flight; retry shortly",
                            limits.in_flight
                        ),
                    ));
                };
                let _busy = Busy::new(&act);
                Ok(handler(head, body).await)
            }
        });
        let metrics = metrics.clone();
        // Counted here, in accept order, not when the task first runs.
        open.inc();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .serve_connection(io, service);
            tokio::pin!(conn);
            let mut tick = tokio::time::interval(limits.idle_timeout / 4);
            loop {
                tokio::select! {
                    _ = &mut conn => break,
                    _ = tick.tick() => {
                        if activity.busy.load(Ordering::SeqCst) == 0
                            && activity.idle_for() >= limits.idle_timeout
                        {
                            metrics.timeout(name, "idle");
                            break;
                        }
                    }
                }
            }
            open.dec();
            drop(permit);
        });
    }
}
