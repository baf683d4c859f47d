
// ---- Runtime: the collector's rules and its protocol (docs/protocol.md) ----

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Earliest event time the collector accepts, in milliseconds.
pub const MIN_TIME_MS: u64 = @MIN_TIME_MS@;
/// Latest event time the collector accepts, in milliseconds.
pub const MAX_TIME_MS: u64 = @MAX_TIME_MS@;

/// An event breaks a registry rule: the collector would reject it with the
/// same field, rule code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// `attrs.NAME`, `time`, or empty.
    pub field: String,
    /// The rule's stable code.
    pub rule: String,
    /// The message, without the field.
    pub message: String,
}

impl std::fmt::Display for ValidationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}` {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

fn invalid(field: &str, rule: &str, message: String) -> ValidationError {
    ValidationError {
        field: field.to_string(),
        rule: rule.to_string(),
        message,
    }
}

/// What a send can end in besides success.
#[derive(Debug)]
pub enum SendError {
    /// An event breaks a rule (nothing was sent).
    Invalid(ValidationError),
    /// The collector rejected lines (the others are stored): its answers.
    Rejected(Vec<serde_json::Value>),
    /// Events not stored within the timeout; send them again.
    NotStored(String),
    /// Appending to the inbox failed.
    Io(std::io::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "{e}"),
            Self::Rejected(r) => write!(f, "{} line(s) rejected: {r:?}", r.len()),
            Self::NotStored(why) => write!(f, "not stored: {why}"),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {}

/// One typed event of the registry.
pub trait Event {
    /// Checks the event against the collector's rules and returns it as one
    /// line of the protocol.
    fn line(&self) -> Result<String, ValidationError>;
}

// Unused in a registry without float fields.
#[allow(dead_code)]
fn check_float(field: &str, v: f64) -> Result<f64, ValidationError> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(invalid(&format!("attrs.{field}"), "wrong_type", "must be a number".into()))
    }
}

// Unused in a registry without string fields.
#[allow(dead_code)]
fn check_string<'a>(field: &str, v: &'a str, max_len: usize) -> Result<&'a str, ValidationError> {
    if v.len() > max_len {
        return Err(invalid(
            &format!("attrs.{field}"),
            "too_long",
            format!("is longer than its max_len of {max_len} bytes"),
        ));
    }
    if v.contains('\u{1f}') {
        return Err(invalid(
            &format!("attrs.{field}"),
            "key_separator",
            "may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)".into(),
        ));
    }
    Ok(v)
}

fn check_time(t: Option<u64>, past_s: u64, future_s: u64) -> Result<u64, ValidationError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let Some(t) = t else {
        return Ok(now);
    };
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&t) {
        return Err(invalid("time", "time_out_of_range", format!("must be milliseconds since the Unix epoch, from {MIN_TIME_MS} (2000-01-01) to {MAX_TIME_MS} (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000")));
    }
    if t < now.saturating_sub(past_s * 1000) {
        return Err(invalid("time", "time_too_old", format!("is more than {past_s} s before the collector's clock (the event type's accept_past_s); to load older history on purpose, raise the collector's limits.history_s")));
    }
    if t > now + future_s * 1000 {
        return Err(invalid("time", "time_too_new", format!("is more than {future_s} s after the collector's clock (the event type's accept_future_s); is the sender's clock right?")));
    }
    Ok(t)
}

fn to_line(event: &str, time_ms: u64, attrs: serde_json::Map<String, serde_json::Value>) -> String {
    let mut line = serde_json::json!({"event": event, "time": time_ms, "attrs": attrs}).to_string();
    line.push('\n');
    line
}

/// Where a [`Client`] sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// The collector's Unix socket: returns once acknowledged (durable).
    Socket(PathBuf),
    /// A `.log` file in the collector's inbox: no network call at all.
    Inbox(PathBuf),
}

/// Sends events to the collector on this host.
pub struct Client {
    target: Target,
    /// How long a send may take before it gives up (`NotStored`).
    pub timeout: Duration,
    conn: Option<(UnixStream, BufReader<UnixStream>)>,
    lines: usize,
}

impl Client {
    /// A client for `target`.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            timeout: Duration::from_secs(30),
            conn: None,
            lines: 0,
        }
    }

    /// The socket in `SPOOLHOUSE_SOCKET`, else the inbox in `SPOOLHOUSE_INBOX`.
    pub fn from_env() -> Result<Self, SendError> {
        if let Some(p) = std::env::var_os("SPOOLHOUSE_SOCKET") {
            return Ok(Self::new(Target::Socket(p.into())));
        }
        if let Some(p) = std::env::var_os("SPOOLHOUSE_INBOX") {
            return Ok(Self::new(Target::Inbox(
                PathBuf::from(p).join(format!("events-{}.log", std::process::id())),
            )));
        }
        Err(SendError::NotStored(
            "no collector to send to: set SPOOLHOUSE_SOCKET or SPOOLHOUSE_INBOX".into(),
        ))
    }

    /// Checks and sends the events; returns how many were stored.
    pub fn send(&mut self, events: &[&dyn Event]) -> Result<usize, SendError> {
        let lines = events
            .iter()
            .map(|e| e.line())
            .collect::<Result<Vec<_>, _>>()
            .map_err(SendError::Invalid)?;
        if lines.is_empty() {
            return Ok(0);
        }
        match self.target.clone() {
            Target::Inbox(path) => {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(SendError::Io)?;
                // One write per line: lines of several writers never interleave.
                for l in &lines {
                    f.write_all(l.as_bytes()).map_err(SendError::Io)?;
                }
                Ok(lines.len())
            }
            Target::Socket(path) => self.send_socket(&path, lines),
        }
    }

    fn send_socket(&mut self, path: &PathBuf, lines: Vec<String>) -> Result<usize, SendError> {
        let deadline = Instant::now() + self.timeout;
        let mut pending = lines;
        let mut rejected = Vec::new();
        let mut stored = 0usize;
        let mut attempt = 0u32;
        while !pending.is_empty() {
            if Instant::now() > deadline {
                return Err(SendError::NotStored(format!(
                    "{} event(s) not stored within {:?}",
                    pending.len(),
                    self.timeout
                )));
            }
            if attempt > 0 {
                let ms = (50u64 << attempt.min(6)).min(2_000);
                std::thread::sleep(Duration::from_millis(ms).min(deadline - Instant::now()));
            }
            attempt += 1;
            let mut retry = Vec::new();
            let mut settled = 0usize;
            let round: Result<(), String> = (|| {
                if self.conn.is_none() {
                    let s = UnixStream::connect(path).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(self.timeout)).map_err(|e| e.to_string())?;
                    let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
                    self.conn = Some((s, r));
                    self.lines = 0;
                }
                let (w, r) = self.conn.as_mut().expect("connected");
                // The collector numbers lines from 1 per connection.
                let base = self.lines;
                w.write_all(pending.concat().as_bytes()).map_err(|e| e.to_string())?;
                self.lines += pending.len();
                while settled < pending.len() {
                    let mut text = String::new();
                    if r.read_line(&mut text).map_err(|e| e.to_string())? == 0 {
                        return Err("the collector closed the connection".into());
                    }
                    let a: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
                    let n = |k: &str| a[k].as_u64().unwrap_or(0) as usize;
                    if a.get("rule").is_some() {
                        rejected.push(a);
                    } else if a.get("ack").is_some() {
                        stored += n("accepted");
                        settled = n("ack") - base;
                    } else if a.get("refused").is_some() {
                        retry.extend_from_slice(&pending[n("from") - base - 1..n("through") - base]);
                        settled = n("through") - base;
                    } else if let Some(why) = a.get("closing") {
                        return Err(why.to_string());
                    }
                }
                Ok(())
            })();
            if round.is_err() {
                // Lines after the last ack or refusal were not stored: again,
                // on a new connection.
                retry.extend_from_slice(&pending[settled..]);
                self.conn = None;
            }
            pending = retry;
        }
        if rejected.is_empty() {
            Ok(stored)
        } else {
            Err(SendError::Rejected(rejected))
        }
    }
}
