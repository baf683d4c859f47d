//! A small Rust client: connect over the Unix socket or TCP, send one event
//! or a batch (pipelined), await the acknowledgements, and reconnect with
//! capped, jittered backoff, resending only what was not settled.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::ClientError;
use crate::protocol::Response;

/// Where a collector listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address (loopback).
    Tcp(SocketAddr),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    /// `unix:/path`, `tcp:127.0.0.1:17101`, a path containing `/`, or `host:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(p.into()));
        }
        let t = s.strip_prefix("tcp:").unwrap_or(s);
        match t.parse::<SocketAddr>() {
            Ok(a) => Ok(Endpoint::Tcp(a)),
            Err(_) if s.contains('/') => Ok(Endpoint::Unix(s.into())),
            Err(_) => Err(format!(
                "{s:?} is neither a socket path (unix:/path) nor a TCP address (127.0.0.1:17101)"
            )),
        }
    }
}

/// Retry and timeout bounds of a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Retries of one batch after connection failures and refusals (default 10).
    pub retries_max: u32,
    /// First backoff delay (default 50 ms); doubles per retry.
    pub backoff_initial: Duration,
    /// Backoff cap (default 5 s); each delay is drawn from its upper half (jitter).
    pub backoff_max: Duration,
    /// Longest wait for the collector's next response line (default 30 s).
    pub response_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            retries_max: 10,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
        }
    }
}

/// What became of one line of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineOutcome {
    /// Durable in the collector's spool.
    Acked,
    /// Rejected by validation; resending will not help.
    Rejected {
        /// The offending key.
        field: String,
        /// Reason code.
        rule: String,
        /// Human-readable message (its line number is the connection's).
        error: String,
    },
    /// Not stored after every retry (spool full, collector unreachable).
    Unsent {
        /// The last reason.
        reason: String,
    },
}

type Rd = BufReader<Pin<Box<dyn AsyncRead + Send + Sync>>>;
type Wr = Pin<Box<dyn AsyncWrite + Send + Sync>>;

struct Conn {
    rd: Rd,
    wr: Wr,
    /// Lines sent on this connection so far (the server numbers from 1).
    lines: u64,
}

/// A connection to a collector that reconnects as needed.
pub struct Client {
    endpoint: Endpoint,
    config: ClientConfig,
    conn: Option<Conn>,
}

impl Client {
    /// Connects to `endpoint` (with retries per `config`).
    pub async fn connect(endpoint: Endpoint, config: ClientConfig) -> Result<Self, ClientError> {
        let mut c = Self {
            endpoint,
            config,
            conn: None,
        };
        let mut attempt = 0;
        loop {
            match c.open().await {
                Ok(conn) => {
                    c.conn = Some(conn);
                    return Ok(c);
                }
                Err(e) if attempt >= c.config.retries_max => return Err(e),
                Err(_) => {
                    c.backoff(attempt).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn open(&self) -> Result<Conn, ClientError> {
        let io = |source| ClientError::Io {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let (rd, wr): (Pin<Box<dyn AsyncRead + Send + Sync>>, Wr) = match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(io)?;
                let (r, w) = s.into_split();
                (Box::pin(r), Box::pin(w))
            }
            Endpoint::Tcp(a) => {
                let s = tokio::net::TcpStream::connect(a).await.map_err(io)?;
                s.set_nodelay(true).map_err(io)?;
                let (r, w) = s.into_split();
                (Box::pin(r), Box::pin(w))
            }
        };
        Ok(Conn {
            rd: BufReader::new(rd),
            wr,
            lines: 0,
        })
    }

    async fn backoff(&self, attempt: u32) {
        let base = self.config.backoff_initial.as_secs_f64() * 2f64.powi(attempt.min(30) as i32);
        let cap = base.min(self.config.backoff_max.as_secs_f64());
        let delay = rand::rng().random_range(cap / 2.0..=cap);
        tokio::time::sleep(Duration::from_secs_f64(delay)).await;
    }

    /// Sends one event line (without newline) and waits for its outcome.
    pub async fn send(&mut self, line: &[u8]) -> Result<LineOutcome, ClientError> {
        let mut v = self.send_batch(&[line]).await?;
        Ok(v.pop().expect("one outcome per line"))
    }

    /// Sends lines (each without newline) pipelined and returns one outcome
    /// per line, in order. Lines refused or lost with a connection are
    /// resent (after backoff) up to `retries_max` times; an acknowledged
    /// line is never resent. Errors only on a protocol violation.
    pub async fn send_batch<L: AsRef<[u8]>>(
        &mut self,
        lines: &[L],
    ) -> Result<Vec<LineOutcome>, ClientError> {
        let mut outcomes: Vec<Option<LineOutcome>> = vec![None; lines.len()];
        for (i, l) in lines.iter().enumerate() {
            let l = l.as_ref();
            if l.contains(&b'\n') || l.iter().all(u8::is_ascii_whitespace) {
                outcomes[i] = Some(LineOutcome::Rejected {
                    field: String::new(),
                    rule: "not_one_line".into(),
                    error: "a line must hold one event: non-blank, no newline inside".into(),
                });
            }
        }
        let mut attempt = 0u32;
        let mut last_reason = String::new();
        loop {
            let pending: Vec<usize> = (0..lines.len())
                .filter(|&i| outcomes[i].is_none())
                .collect();
            if pending.is_empty() {
                break;
            }
            if attempt > self.config.retries_max {
                for i in pending {
                    outcomes[i] = Some(LineOutcome::Unsent {
                        reason: last_reason.clone(),
                    });
                }
                break;
            }
            if attempt > 0 {
                self.backoff(attempt - 1).await;
            }
            attempt += 1;
            if self.conn.is_none() {
                match self.open().await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        last_reason = e.to_string();
                        continue;
                    }
                }
            }
            let conn = self.conn.as_mut().expect("connected above");
            let base = conn.lines;
            conn.lines += pending.len() as u64;
            let timeout = self.config.response_timeout;
            let result = exchange(conn, base, lines, &pending, &mut outcomes, timeout).await;
            match result {
                Ok(Exchange::Settled) => attempt = 0,
                Ok(Exchange::Refused(reason)) => last_reason = reason,
                Ok(Exchange::Closed(reason)) => {
                    last_reason = reason;
                    self.conn = None;
                }
                Err(Failure::Io(e)) => {
                    last_reason = e.to_string();
                    self.conn = None;
                }
                Err(Failure::Protocol(e)) => {
                    self.conn = None;
                    return Err(e);
                }
            }
        }
        Ok(outcomes
            .into_iter()
            .map(|o| o.expect("every line settled"))
            .collect())
    }
}

enum Exchange {
    Settled,
    Refused(String),
    Closed(String),
}

enum Failure {
    Io(std::io::Error),
    Protocol(ClientError),
}

/// Writes the pending lines while reading responses (so neither side can
/// block the other on full socket buffers) until the last one is settled.
async fn exchange<L: AsRef<[u8]>>(
    conn: &mut Conn,
    base: u64,
    lines: &[L],
    pending: &[usize],
    outcomes: &mut [Option<LineOutcome>],
    timeout: Duration,
) -> Result<Exchange, Failure> {
    let Conn { rd, wr, .. } = conn;
    let write = async {
        let mut buf = Vec::with_capacity(64 << 10);
        for &i in pending {
            buf.extend_from_slice(lines[i].as_ref());
            buf.push(b'\n');
            if buf.len() >= 64 << 10 {
                wr.write_all(&buf).await?;
                buf.clear();
            }
        }
        wr.write_all(&buf).await?;
        wr.flush().await
    };
    let last = base + pending.len() as u64;
    let read = async {
        let index = |n: u64| -> Option<usize> {
            n.checked_sub(base + 1)
                .and_then(|k| pending.get(k as usize).copied())
        };
        let mut refused = None;
        // Lines up to here are acked, rejected or refused; an ack covers
        // only the lines after the previous ack or refusal.
        let mut settled = base;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = tokio::time::timeout(timeout, rd.read_until(b'\n', &mut line))
                .await
                .map_err(|_| {
                    Failure::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no response from the collector",
                    ))
                })?
                .map_err(Failure::Io)?;
            if n == 0 {
                return Ok(Exchange::Closed(
                    "connection closed by the collector".into(),
                ));
            }
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let resp = Response::parse(text).map_err(|e| {
                Failure::Protocol(ClientError::Protocol {
                    line: String::from_utf8_lossy(text).into_owned(),
                    reason: e.to_string(),
                })
            })?;
            match resp {
                Response::Rejected {
                    line: n,
                    field,
                    rule,
                    error,
                } => {
                    if let Some(i) = index(n) {
                        outcomes[i] = Some(LineOutcome::Rejected { field, rule, error });
                    }
                }
                Response::Ack { ack, .. } => {
                    for n in settled + 1..=ack.min(last) {
                        if let Some(i) = index(n) {
                            outcomes[i].get_or_insert(LineOutcome::Acked);
                        }
                    }
                    settled = settled.max(ack);
                    if ack >= last {
                        return Ok(refused.map_or(Exchange::Settled, Exchange::Refused));
                    }
                }
                Response::Refused {
                    refused: reason,
                    through,
                    ..
                } => {
                    // Refused lines stay unsettled and are resent.
                    refused = Some(reason);
                    settled = settled.max(through);
                    if through >= last {
                        return Ok(Exchange::Refused(refused.expect("just set")));
                    }
                }
                Response::Closing { closing } => return Ok(Exchange::Closed(closing)),
            }
        }
    };
    let (w, r) = tokio::join!(write, read);
    match (w, r) {
        (_, Err(f)) => Err(f),
        (Err(e), Ok(Exchange::Settled)) => Err(Failure::Io(e)),
        (_, Ok(x)) => Ok(x),
    }
}
