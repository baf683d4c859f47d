//! The forwarder: an app host's shipper in relay mode sends its batches to
//! one of its DC's relays and commits each once the relay reports it
//! visible in ClickHouse (docs/adr/0017-relay-tier.md). Up to
//! [`wire::WINDOW`] batches are in flight, so the relay inserts one while
//! the next is on its way. A connection is a session: the hello carries a
//! new epoch and the range of every batch in flight, the relay takes the
//! host over and answers which of their positions ClickHouse already
//! holds; only the rest is sent. Any failure drops the session; the next
//! try connects (to the next relay after a failure) and takes over again.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dc_config::services::RelayUse;
use spooler::Position;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::wire::{self, BatchRange, Message};

/// A live session with a relay. Its answers are read by a task of their
/// own into `answers`, so waiting for one can be raced against the next
/// batch becoming ready without losing half a message.
struct Session {
    relay: String,
    wr: OwnedWriteHalf,
    answers: mpsc::UnboundedReceiver<std::result::Result<Message, String>>,
    reading: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reading.abort();
    }
}

/// What a batch looks like to the forwarder: its range for the takeover
/// and its frames.
pub struct Outgoing<'a> {
    /// Range, event types, time range.
    pub range: BatchRange,
    /// `(position, record)` per frame.
    pub frames: Vec<(Position, &'a [u8])>,
}

/// The range a takeover checks for `batches` in flight: from the first's
/// start to the last's end, every event type, the widest time range.
pub fn union_range<'a>(batches: impl IntoIterator<Item = &'a BatchRange>) -> BatchRange {
    let mut out: Option<BatchRange> = None;
    for b in batches {
        match &mut out {
            None => out = Some(b.clone()),
            Some(u) => {
                u.start = u.start.min(b.start);
                u.end = u.end.max(b.end);
                for e in &b.events {
                    if !u.events.contains(e) {
                        u.events.push(e.clone());
                    }
                }
                u.time_range = (
                    u.time_range.0.min(b.time_range.0),
                    u.time_range.1.max(b.time_range.1),
                );
            }
        }
    }
    out.unwrap_or(BatchRange {
        start: Position::new(0, 0),
        end: Position::new(0, 0),
        events: Vec::new(),
        time_range: (0, 0),
    })
}

/// The forwarder of one host.
pub struct Forwarder {
    dc: String,
    host: String,
    secret: Vec<u8>,
    relays: Vec<String>,
    /// Index into `relays` of the one to use next.
    at: usize,
    /// The host's own relay (by weight, from its name).
    home: usize,
    /// When the own relay was last health-checked (or left).
    probed: Option<Instant>,
    /// How often to check it while away.
    home_check: Duration,
    timeout: Duration,
    visible_timeout: Duration,
    session: Option<Session>,
    seq: u64,
}

/// The first relay of `host`: a weighted choice that is a pure function
/// of the host's name (FNV-1a), so hosts spread over the relays by weight
/// and a host comes back to the same relay after a restart.
pub fn first_relay(host: &str, weights: &[u32]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut pick = h % total.max(1);
    for (i, w) in weights.iter().enumerate() {
        if pick < u64::from(*w) {
            return i;
        }
        pick -= u64::from(*w);
    }
    0
}

impl Forwarder {
    /// A forwarder for `host` of `dc`, with the DC's secret read from its file.
    pub fn new(dc: &str, host: &str, config: &RelayUse) -> Result<Self> {
        let secret = dc_config::credentials::read_password(&config.secret_file)
            .map_err(|e| Error::Config(e.to_string()))?
            .into_bytes();
        let weights: Vec<u32> = config.relays.iter().map(|r| r.weight).collect();
        Ok(Self {
            dc: dc.to_string(),
            host: host.to_string(),
            secret,
            relays: config.relays.iter().map(|r| r.addr.clone()).collect(),
            at: first_relay(host, &weights),
            home: first_relay(host, &weights),
            probed: None,
            home_check: Duration::from_millis(config.home_check_ms),
            timeout: Duration::from_millis(config.timeout_ms),
            visible_timeout: Duration::from_millis(config.visible_timeout_ms),
            session: None,
            seq: 0,
        })
    }

    /// The relay in use or to use next.
    pub fn relay(&self) -> &str {
        &self.relays[self.at]
    }

    /// Drops the session and moves on to the next relay.
    pub fn fail_over(&mut self) {
        self.session = None;
        if self.at == self.home {
            self.probed = Some(Instant::now());
        }
        self.at = (self.at + 1) % self.relays.len();
    }

    /// Away from the host's own relay, and due to check it again: hosts
    /// come back after their relay recovers, so they stay spread by weight.
    pub fn home_due(&self) -> bool {
        self.at != self.home && self.probed.is_none_or(|t| t.elapsed() >= self.home_check)
    }

    /// Health check of the host's own relay while away from it: a relay
    /// that answers a connection with its challenge within the timeout
    /// serves (the connection is closed before a hello, which the relay
    /// counts as a probe). If it does, the session ends and the next one is
    /// taken there. Call it with nothing in flight.
    pub async fn check_home(&mut self) -> bool {
        self.probed = Some(Instant::now());
        let addr = self.relays[self.home].clone();
        let serves = tokio::time::timeout(self.timeout, async {
            let conn = TcpStream::connect(&addr).await.ok()?;
            let (mut rd, _wr) = conn.into_split();
            match wire::recv(&mut rd).await {
                Ok(Some(Message::Challenge { .. })) => Some(()),
                _ => None,
            }
        })
        .await
        .ok()
        .flatten()
        .is_some();
        if serves {
            tracing::info!(relay = %addr, from = %self.relay(), "own relay serves again; going back to it");
            self.session = None;
            self.at = self.home;
        }
        serves
    }

    /// Drops the session (the next send takes the host over again, at the
    /// same relay).
    pub fn drop_session(&mut self) {
        self.session = None;
    }

    /// Whether a session is live.
    pub fn connected(&self) -> bool {
        self.session.is_some()
    }

    /// The answer timeout: a batch not appended within it fails the session.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long an appended batch may wait to be visible.
    pub fn visible_timeout(&self) -> Duration {
        self.visible_timeout
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Relay {
            relay: self.relay().to_string(),
            message: message.into(),
            config: false,
        }
    }

    async fn within<T>(
        &self,
        limit: Duration,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, wire::WireError>>,
    ) -> Result<T> {
        match tokio::time::timeout(limit, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.err(format!("{what}: {e}"))),
            Err(_) => Err(self.err(format!("{what}: nothing within {limit:?}"))),
        }
    }

    /// Connects and takes the host over for `range` (every batch in
    /// flight) with an epoch from `epoch(floor)`; returns the positions
    /// ClickHouse holds. On error there is no session.
    pub async fn connect(
        &mut self,
        range: &BatchRange,
        epoch: &mut dyn FnMut(u64) -> Result<Option<u64>>,
    ) -> Result<HashSet<(u64, u64)>> {
        self.session = None;
        let mut floor = 0;
        loop {
            let addr = self.relay().to_string();
            let conn = match tokio::time::timeout(self.timeout, TcpStream::connect(&addr)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(self.err(format!("connect: {e}"))),
                Err(_) => {
                    return Err(self.err(format!("connect: nothing within {:?}", self.timeout)))
                }
            };
            let _ = conn.set_nodelay(true);
            let (mut rd, mut wr) = conn.into_split();
            let nonce = match self
                .within(self.timeout, "challenge", wire::recv(&mut rd))
                .await?
            {
                Some(Message::Challenge { nonce }) => nonce,
                other => return Err(self.err(format!("expected a challenge, got {other:?}"))),
            };
            let Some(epoch) = epoch(floor)? else {
                return Err(Error::Stopping);
            };
            let hello = Message::Hello {
                version: wire::VERSION,
                dc: self.dc.clone(),
                host: self.host.clone(),
                epoch,
                mac: wire::mac(&self.secret, &nonce, &self.dc, &self.host, epoch),
                batch: range.clone(),
            };
            self.within(self.timeout, "hello", wire::send(&mut wr, &hello))
                .await?;
            // The takeover waits for inserts running on every replica: it
            // gets the longer limit.
            match self
                .within(self.visible_timeout, "takeover", wire::recv(&mut rd))
                .await?
            {
                Some(Message::Welcome { held }) => {
                    let (tx, answers) = mpsc::unbounded_channel();
                    let reading = tokio::spawn(async move {
                        loop {
                            let m = match wire::recv(&mut rd).await {
                                Ok(Some(m)) => Ok(m),
                                Ok(None) => Err("closed the session".to_string()),
                                Err(e) => Err(e.to_string()),
                            };
                            let end = m.is_err();
                            if tx.send(m).is_err() || end {
                                break;
                            }
                        }
                    });
                    self.session = Some(Session {
                        relay: addr,
                        wr,
                        answers,
                        reading,
                    });
                    return Ok(held.into_iter().collect());
                }
                Some(Message::EpochTooLow { fence }) => {
                    tracing::warn!(relay = %addr, fence, epoch, "a replica fences this host above the new epoch; taking a higher one");
                    floor = fence;
                }
                Some(Message::Refused { reason, config }) => {
                    return Err(Error::Relay {
                        relay: addr,
                        message: format!("refused: {reason}"),
                        config,
                    })
                }
                other => return Err(self.err(format!("expected a welcome, got {other:?}"))),
            }
        }
    }

    /// Sends `batch` in the live session, without the positions in
    /// `held`; `more`: another batch follows at once. Returns its sequence
    /// number, which the relay's answers name. On error the session is dropped.
    pub async fn send(
        &mut self,
        batch: &Outgoing<'_>,
        held: &HashSet<(u64, u64)>,
        more: bool,
    ) -> Result<u64> {
        let timeout = self.timeout;
        let Some(session) = self.session.as_mut() else {
            return Err(self.err("no session to send in"));
        };
        self.seq += 1;
        let seq = self.seq;
        let msg = Message::Batch {
            seq,
            more,
            frames: batch
                .frames
                .iter()
                .filter(|(p, _)| !held.contains(&(p.segment, p.offset)))
                .map(|(p, r)| (*p, r.to_vec()))
                .collect(),
        };
        let sent = match tokio::time::timeout(timeout, wire::send(&mut session.wr, &msg)).await {
            Ok(Ok(())) => Ok(seq),
            Ok(Err(e)) => Err(format!("sending a batch: {e}")),
            Err(_) => Err(format!("sending a batch: not taken within {timeout:?}")),
        };
        let relay = session.relay.clone();
        sent.map_err(|message| {
            self.session = None;
            Error::Relay {
                relay,
                message,
                config: false,
            }
        })
    }

    /// The relay's next answer in the live session (`Appended` or
    /// `Visible`); cancel-safe. An ended or broken session is an error,
    /// and dropped.
    pub async fn answer(&mut self) -> Result<Message> {
        let Some(session) = self.session.as_mut() else {
            return Err(self.err("no session"));
        };
        let got = session.answers.recv().await;
        let relay = session.relay.clone();
        let message = match got {
            Some(Ok(m @ (Message::Appended { .. } | Message::Visible { .. }))) => return Ok(m),
            Some(Ok(Message::Ended { reason })) => format!("ended the session: {reason}"),
            Some(Ok(other)) => format!("unexpected {other:?}"),
            Some(Err(e)) => e,
            None => "closed the session".into(),
        };
        self.session = None;
        Err(Error::Relay {
            relay,
            message,
            config: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_takeover_covers_every_batch_in_flight() {
        let r = |s: u64, e: u64, ev: &[&str], t: (u32, u32)| BatchRange {
            start: Position::new(1, s),
            end: Position::new(1, e),
            events: ev.iter().map(|x| x.to_string()).collect(),
            time_range: t,
        };
        let u = union_range(&[r(0, 10, &["a"], (5, 9)), r(10, 30, &["b", "a"], (3, 7))]);
        assert_eq!(u, r(0, 30, &["a", "b"], (3, 9)));
        assert_eq!(union_range(&Vec::<BatchRange>::new()).events.len(), 0);
    }

    #[test]
    fn hosts_spread_over_relays_by_weight() {
        let mut n = [0u32; 3];
        for i in 0..3000 {
            n[first_relay(&format!("dc1-app{i:04}"), &[1, 1, 2])] += 1;
        }
        assert!(n[0] > 600 && n[1] > 600 && n[2] > 1300, "{n:?}");
        assert_eq!(first_relay("a", &[5]), 0);
        assert_eq!(first_relay("a", &[0, 0]), 0);
    }
}
