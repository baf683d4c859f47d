//! Plain readiness probes and a small blocking ClickHouse HTTP client: just
//! enough for the launcher to know a server serves and to apply the schema.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one probe may take; a probe is retried by the caller.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Sends `request` to `addr` and returns what the server sent before closing
/// or going quiet (at most 64 KiB).
fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    s.set_read_timeout(Some(PROBE_TIMEOUT))?;
    s.set_write_timeout(Some(PROBE_TIMEOUT))?;
    s.write_all(request)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                // Redis keeps the connection open: stop at the end of one reply.
                if request.starts_with(b"*") && resp_complete(&buf) {
                    break;
                }
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// True once `buf` holds a whole RESP simple, error, integer or bulk reply.
fn resp_complete(buf: &[u8]) -> bool {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return false;
    };
    if buf[0] != b'$' {
        return true;
    }
    match std::str::from_utf8(&buf[1..eol])
        .ok()
        .and_then(|n| n.parse::<i64>().ok())
    {
        Some(n) if n >= 0 => buf.len() >= eol + 2 + n as usize + 2,
        _ => true,
    }
}

/// ZooKeeper serves (not merely answers `ruok`): `srvr` reports a mode.
/// After a restart `ruok` says `imok` before the server serves; `srvr`
/// only shows `Mode:` once it does.
pub fn zookeeper_serving(addr: SocketAddr) -> bool {
    exchange(addr, b"srvr").is_ok_and(|r| {
        r.lines().any(|l| {
            l.starts_with("Mode: standalone")
                || l.starts_with("Mode: leader")
                || l.starts_with("Mode: follower")
        })
    })
}

/// ZooKeeper's `srvr` figures as `(key, value)` pairs (`Received`,
/// `Sent`, `Zxid`, `Node count`, …): what a benchmark reads of a server's
/// load.
pub fn zookeeper_srvr(addr: SocketAddr) -> std::io::Result<Vec<(String, String)>> {
    Ok(exchange(addr, b"srvr")?
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// Sends one Redis command (given as its words) and returns the reply line.
pub fn redis_command(addr: SocketAddr, words: &[&str]) -> std::io::Result<String> {
    let mut req = format!("*{}\r\n", words.len());
    for w in words {
        req.push_str(&format!("${}\r\n{}\r\n", w.len(), w));
    }
    exchange(addr, req.as_bytes())
}

/// Redis answers `PING` with `PONG`.
pub fn redis_ready(addr: SocketAddr) -> bool {
    redis_command(addr, &["PING"]).is_ok_and(|r| r.starts_with("+PONG"))
}

/// A ClickHouse server's HTTP interface.
#[derive(Clone)]
pub struct ClickHouseHttp {
    base_url: String,
    agent: ureq::Agent,
    /// User and password sent with every request (ClickHouse's
    /// `X-ClickHouse-User` / `X-ClickHouse-Key` headers).
    login: Option<(String, String)>,
}

/// The URL and the user; never the password.
impl std::fmt::Debug for ClickHouseHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseHttp")
            .field("url", &self.base_url)
            .field("user", &self.login.as_ref().map(|(user, _)| user))
            .finish()
    }
}

/// A failed ClickHouse HTTP request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The server could not be reached or the connection broke.
    #[error("ClickHouse at {url} is unreachable: {reason}")]
    Unreachable {
        /// Base URL tried.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server answered with an error.
    #[error("ClickHouse at {url} refused the query (HTTP {status}): {body}")]
    Refused {
        /// Base URL tried.
        url: String,
        /// HTTP status.
        status: u16,
        /// ClickHouse's error text.
        body: String,
    },
}

impl ClickHouseHttp {
    /// A client for the server at `base_url` (`http://host:port`), with a
    /// per-request timeout.
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .new_agent();
        Self {
            base_url: base_url.into(),
            agent,
            login: None,
        }
    }

    /// The same server, asked as `user` with `password`.
    pub fn with_login(mut self, user: &str, password: &str) -> Self {
        self.login = Some((user.to_string(), password.to_string()));
        self
    }

    /// A POST to the server, with the login if there is one.
    fn post(&self) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let req = self.agent.post(&self.base_url);
        match &self.login {
            Some((user, password)) => req
                .header("X-ClickHouse-User", user)
                .header("X-ClickHouse-Key", password),
            None => req,
        }
    }

    /// Base URL of the server.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// Runs `sql` with `settings` (name, value) as URL parameters and returns
    /// the response body.
    pub fn query_with(&self, sql: &str, settings: &[(&str, &str)]) -> Result<String, HttpError> {
        let mut req = self.post();
        for (k, v) in settings {
            req = req.query(*k, *v);
        }
        self.finish(req.send(sql))
    }

    /// Runs `sql` (an `INSERT … FORMAT …`) with `data` as the request body.
    pub fn insert(&self, sql: &str, data: &[u8]) -> Result<String, HttpError> {
        let req = self.post().query("query", sql);
        self.finish(req.send(data))
    }

    /// Inserts `events` of datacenter `dc`, as recorded by app host `host`,
    /// into this server's `DATABASE.events_local` as RowBinary, at spool
    /// positions (segment 1, `first_offset` + i): how tests and benchmarks
    /// load events without a collector and shipper.
    pub fn insert_events<E: std::borrow::Borrow<dc_config::event::ValidEvent>>(
        &self,
        database: &str,
        dc: &str,
        host: &str,
        first_offset: u64,
        events: impl IntoIterator<Item = E>,
    ) -> Result<String, HttpError> {
        use dc_config::{
            row::{EventRow, SpoolPosition},
            schema::column::EVENT_COLUMNS,
        };
        let mut body = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            let position = SpoolPosition {
                segment: 1,
                offset: first_offset + i as u64,
            };
            EventRow::new(e.borrow(), dc, host, position).write_row_binary(&mut body);
        }
        self.insert(
            &format!("INSERT INTO {database}.events_local ({EVENT_COLUMNS}) FORMAT RowBinary"),
            &body,
        )
    }

    fn finish(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<String, HttpError> {
        let body = self.finish_bytes(sent)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn finish_bytes(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Vec<u8>, HttpError> {
        let unreachable = |e: ureq::Error| HttpError::Unreachable {
            url: self.base_url.clone(),
            reason: e.to_string(),
        };
        let resp = sent.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_vec()
            .map_err(unreachable)?;
        if status == 200 {
            Ok(body)
        } else {
            Err(HttpError::Refused {
                url: self.base_url.clone(),
                status,
                body: String::from_utf8_lossy(&body).trim().to_string(),
            })
        }
    }

    /// Runs `sql` and returns the response body as bytes (for binary formats).
    pub fn query_bytes(&self, sql: &str) -> Result<Vec<u8>, HttpError> {
        self.finish_bytes(self.post().send(sql))
    }

    /// Runs `sql` and returns the response body.
    pub fn query(&self, sql: &str) -> Result<String, HttpError> {
        self.query_with(sql, &[])
    }

    /// True when the server answers `SELECT 1`.
    pub fn ready(&self) -> bool {
        self.query("SELECT 1").is_ok_and(|b| b.trim() == "1")
    }

    /// True when no replicated table of the server is read-only (no
    /// ZooKeeper session yet, or an expired one): after a restart of the
    /// server or of its ZooKeeper, inserts fail until this holds.
    pub fn replicas_writable(&self) -> bool {
        self.query("SELECT count() FROM system.replicas WHERE is_readonly OR is_session_expired")
            .is_ok_and(|b| b.trim() == "0")
    }
}
