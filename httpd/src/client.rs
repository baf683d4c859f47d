//! The one HTTP GET client of the workspace: the query service reading
//! each service's `/metrics` for pipeline health, the benches holding
//! keep-alive connections, and the harness and demo (blocking, through
//! [`get_blocking`]) reading admin ports and the query API. Every GET is
//! bounded in time and in the bytes it reads: the answer comes from another
//! process, possibly a stuck or hostile one.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// Why a GET got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GetError {
    /// Nothing accepted the connection (service down, or its host cut off).
    #[error("no connection to {addr}: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// The system's reason.
        reason: String,
    },
    /// The connection or the answer took longer than allowed.
    #[error("no answer from {addr} within {} ms", timeout.as_millis())]
    Timeout {
        /// Where.
        addr: SocketAddr,
        /// The bound that passed.
        timeout: Duration,
    },
    /// The answer was not HTTP, broke off, or was larger than allowed.
    #[error("bad answer from {addr}: {reason}")]
    Answer {
        /// Where.
        addr: SocketAddr,
        /// What was wrong with it.
        reason: String,
    },
}

/// A keep-alive HTTP/1.1 connection to one server.
pub struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
}

impl Conn {
    /// Connects to `addr` (no delay on small writes: GETs are latency-bound).
    pub async fn connect(addr: SocketAddr) -> Result<Self, GetError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| GetError::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| GetError::Answer {
                addr,
                reason: e.to_string(),
            })?;
        // Ends when the sender is dropped or the server closes.
        tokio::spawn(conn);
        Ok(Self { addr, sender })
    }

    /// True once the server closed the connection or it failed.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// `GET path` with `Host: host`: the status and at most `max_bytes`
    /// of body (a longer body is an error). Not bounded in time: see
    /// [`get`] or wrap it in a timeout.
    pub async fn get(
        &mut self,
        host: &str,
        path: &str,
        max_bytes: usize,
    ) -> Result<(u16, Bytes), GetError> {
        let addr = self.addr;
        let answer = |reason: String| GetError::Answer { addr, reason };
        self.sender
            .ready()
            .await
            .map_err(|e| answer(e.to_string()))?;
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, host)
            .body(Empty::new())
            .map_err(|e| answer(format!("request for {path:?}: {e}")))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| answer(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| answer(format!("reading the body: {e}")))?
            .to_bytes();
        Ok((status, body))
    }
}

/// One `GET path` on a new connection to `addr` (`Host` is the address),
/// connection included within `timeout`: the status and at most
/// `max_bytes` of body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<(u16, Bytes), GetError> {
    let exchange = async {
        let mut conn = Conn::connect(addr).await?;
        conn.get(&addr.to_string(), path, max_bytes).await
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(GetError::Timeout { addr, timeout }),
    }
}

thread_local! {
    /// The runtime [`get_blocking`] runs its requests on, one per calling
    /// thread, built on first use: the harness polls every 100 ms, and a
    /// runtime per request would be most of each poll's cost.
    static RUNTIME: std::cell::OnceCell<tokio::runtime::Runtime> = const { std::cell::OnceCell::new() };
}

/// Largest body [`get_blocking`] reads.
pub const BLOCKING_MAX_BYTES: usize = 64 << 20;

/// [`get`] for code that is not async (the harness, the demo's polling):
/// the status and the body as text (lossy UTF-8), at most
/// [`BLOCKING_MAX_BYTES`].
pub fn get_blocking(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), GetError> {
    let run = || {
        RUNTIME.with(|cell| {
            let rt = match cell.get() {
                Some(rt) => rt,
                None => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_io()
                        .enable_time()
                        .build()
                        .map_err(|e| GetError::Connect {
                            addr,
                            reason: format!("no runtime for the request: {e}"),
                        })?;
                    cell.get_or_init(|| rt)
                }
            };
            let (status, body) = rt.block_on(get(addr, path, timeout, BLOCKING_MAX_BYTES))?;
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
    };
    // A runtime cannot start inside another one's thread: from async code
    // (a test's, say) the request runs on a thread of its own.
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(run).join().expect("the GET thread does not panic"))
    } else {
        run()
    }
}
