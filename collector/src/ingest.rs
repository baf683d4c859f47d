//! The path every endpoint shares: lines → validated records → one spool
//! append → an outcome to acknowledge or refuse.

use std::sync::Arc;

use dc_config::event::{validate, Event, ValidationError};
use dc_config::record::{InboxSource, Record};
use dc_config::registry::Registry;
use spooler::Spool;

use crate::metrics::{Health, Metrics};
use crate::protocol::{Response, RULE_LINE_TOO_LONG};
use crate::Error;

/// Label of rejected lines whose event type is not in the registry (bounds
/// the label's cardinality to the registry's types).
const UNKNOWN_EVENT_LABEL: &str = "unknown";

/// What the endpoints share: the spool, the registry and the metrics.
pub(crate) struct Ingest {
    pub spool: Arc<Spool>,
    /// The registry lines are checked against; replaced whole on a reload
    /// (SIGHUP), each line reading the one current when it is checked.
    pub registry: std::sync::RwLock<Arc<Registry>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub line_bytes_max: usize,
    /// `limits.history_s`: how far back events are accepted whatever the
    /// registry's `accept_past_s` (a deliberate load of history).
    pub history_s: u64,
    /// Where invalid inbox lines are kept.
    pub quarantine: crate::quarantine::Quarantine,
}

/// The lines read in one go: valid ones encoded back to back for one append,
/// bad ones as responses.
pub(crate) struct Batch {
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Valid events per event type, counted once the append succeeds.
    by_event: Vec<(String, u64)>,
    /// One `Rejected` per bad line, in line order.
    pub rejected: Vec<Response>,
    /// First line number of the batch.
    pub first_line: u64,
    /// Last line number seen (blank lines included).
    pub last_line: u64,
}

/// What became of a batch's valid lines.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// All durable.
    Stored(u64),
    /// None stored; the reason for the client.
    Refused(String),
}

impl Batch {
    /// An empty batch whose first line will be `first_line`.
    pub fn new(first_line: u64) -> Self {
        Self {
            buf: Vec::new(),
            ends: Vec::new(),
            by_event: Vec::new(),
            rejected: Vec::new(),
            first_line,
            last_line: first_line.saturating_sub(1),
        }
    }

    /// Valid lines in the batch.
    pub fn valid(&self) -> usize {
        self.ends.len()
    }

    /// Whether any line (valid, bad or blank) was added.
    pub fn is_empty(&self) -> bool {
        self.last_line < self.first_line
    }

    /// Validates line `line_no` (newline excluded) and adds it as a record
    /// or a rejection.
    pub fn add_line(
        &mut self,
        ingest: &Ingest,
        endpoint: &'static str,
        line_no: u64,
        line: &[u8],
        inbox: Option<InboxSource>,
    ) {
        self.last_line = line_no;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if line.len() > ingest.line_bytes_max {
            self.reject_too_long(ingest, endpoint, line_no, line.len());
            return;
        }
        let parsed = match Event::parse_line(line) {
            Ok(ev) => ev,
            Err(e) => return self.reject(ingest, line_no, UNKNOWN_EVENT_LABEL, &e),
        };
        let now_ms = dc_config::event::now_ms();
        let registry = ingest.registry();
        let checked = validate(&parsed, &registry).and_then(|valid| {
            dc_config::event::check_time_window(&valid, &registry, now_ms, ingest.history_s)
                .map(|()| valid)
        });
        match checked {
            Ok(valid) => {
                let record = Record {
                    event: valid,
                    inbox,
                };
                if let Err(e) = record.encode_into(&mut self.buf) {
                    // The registry's limits make this unreachable; if a
                    // registry change ever allows it, reject rather than panic.
                    let start = self.ends.last().copied().unwrap_or(0);
                    self.buf.truncate(start);
                    let err = ValidationError {
                        field: String::new(),
                        rule: dc_config::event::Rule::NotJson(e.to_string()),
                    };
                    return self.reject(ingest, line_no, &parsed.event, &err);
                }
                self.ends.push(self.buf.len());
                match self.by_event.iter_mut().find(|(n, _)| *n == parsed.event) {
                    Some((_, c)) => *c += 1,
                    None => self.by_event.push((parsed.event, 1)),
                }
            }
            Err(e) => {
                let label = if registry.get(&parsed.event).is_some() {
                    parsed.event.as_str()
                } else {
                    UNKNOWN_EVENT_LABEL
                };
                self.reject(ingest, line_no, label, &e)
            }
        }
    }

    fn reject(&mut self, ingest: &Ingest, line_no: u64, event: &str, e: &ValidationError) {
        ingest
            .metrics
            .events_rejected
            .get_or_create(&vec![
                ("event", event.to_string()),
                ("reason", e.code().to_string()),
            ])
            .inc();
        self.rejected.push(Response::Rejected {
            line: line_no,
            field: e.field.clone(),
            rule: e.code().to_string(),
            error: format!("line {line_no}: {e}"),
        });
    }

    /// Rejects line `line_no` as longer than `line_bytes_max`.
    pub fn reject_too_long(
        &mut self,
        ingest: &Ingest,
        endpoint: &'static str,
        line_no: u64,
        len: usize,
    ) {
        self.last_line = self.last_line.max(line_no);
        ingest
            .metrics
            .lines_too_long
            .get_or_create(&vec![("endpoint", endpoint.to_string())])
            .inc();
        ingest
            .metrics
            .events_rejected
            .get_or_create(&vec![
                ("event", UNKNOWN_EVENT_LABEL.to_string()),
                ("reason", RULE_LINE_TOO_LONG.to_string()),
            ])
            .inc();
        let max = ingest.line_bytes_max;
        self.rejected.push(Response::Rejected {
            line: line_no,
            field: String::new(),
            rule: RULE_LINE_TOO_LONG.into(),
            error: format!(
                "line {line_no}: longer than the limit of {max} bytes (at least {len} bytes read without a newline); split the event or raise limits.line_bytes_max"
            ),
        });
    }
}

impl Ingest {
    /// The registry now.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.read().expect("registry lock").clone()
    }

    /// Appends the batch's valid lines as one spool batch and returns once
    /// the durability policy holds (or the append failed).
    pub async fn commit(
        &self,
        batch: &mut Batch,
        endpoint: &'static str,
    ) -> Result<Outcome, Error> {
        let n = batch.valid() as u64;
        self.health.record(0, batch.rejected.len() as u64, 0);
        if n == 0 {
            return Ok(Outcome::Stored(0));
        }
        let buf = std::mem::take(&mut batch.buf);
        let ends = std::mem::take(&mut batch.ends);
        let spool = self.spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut start = 0;
            let slices: Vec<&[u8]> = ends
                .iter()
                .map(|&end| {
                    let s = &buf[start..end];
                    start = end;
                    s
                })
                .collect();
            spool.append(&slices).map(|_| ())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?;
        match result {
            Ok(()) => {
                self.metrics.batch_events.observe(n as f64);
                for (event, c) in &batch.by_event {
                    self.metrics
                        .events_accepted
                        .get_or_create(&vec![
                            ("event", event.clone()),
                            ("endpoint", endpoint.to_string()),
                        ])
                        .inc_by(*c);
                }
                self.health.record(n, 0, 0);
                self.health.spool_state(false, None);
                Ok(Outcome::Stored(n))
            }
            Err(spooler::Error::Full {
                quota_bytes,
                used_bytes,
                ..
            }) => {
                self.metrics.quota_refusals.inc();
                self.refused(n, "spool_full");
                self.health.spool_state(true, None);
                Ok(Outcome::Refused(format!(
                    "spool full: {used_bytes} of {quota_bytes} bytes, retry later"
                )))
            }
            Err(e) if e.is_disk_full() => {
                tracing::error!(error = %e, events = n, "the spool's disk is full; batch refused");
                self.refused(n, "disk_full");
                self.health.spool_state(true, None);
                Ok(Outcome::Refused(
                    "spool full: no space left on the spool's disk, retry later".to_string(),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, events = n, "spool append failed; batch refused");
                self.refused(n, e.code());
                self.health.spool_state(false, Some(e.to_string()));
                Ok(Outcome::Refused(format!("spool error: {e}; retry later")))
            }
        }
    }

    fn refused(&self, n: u64, reason: &str) {
        self.metrics
            .events_refused
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(n);
        self.health.record(0, 0, n);
    }
}
