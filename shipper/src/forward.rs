//! The forwarder: an app host's shipper in relay mode sends each batch to
//! one of its DC's relays and waits until the relay reports it visible in
//! ClickHouse (docs/adr/0017-relay-tier.md). A connection is a session:
//! the hello carries a new epoch and the batch in hand, the relay takes
//! the host over and answers which positions of that batch ClickHouse
//! already holds; only the rest is sent. Any failure drops the session;
//! the next try connects (to the next relay after a failure) and takes
//! over again.

use std::collections::HashSet;
use std::time::Duration;

use dc_config::services::RelayUse;
use spooler::Position;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::error::{Error, Result};
use crate::wire::{self, BatchRange, Message};

/// A live session with a relay.
struct Session {
    relay: String,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
}

/// What a batch looks like to the forwarder: its range for the takeover
/// and its frames.
pub struct Outgoing<'a> {
    /// Range, event types, time range.
    pub range: BatchRange,
    /// `(position, record)` per frame.
    pub frames: Vec<(Position, &'a [u8])>,
    /// Whether an earlier run may have sent it: it then gets a takeover
    /// of its own, whose position check covers it.
    pub verify: bool,
}

/// The forwarder of one host.
pub struct Forwarder {
    dc: String,
    host: String,
    secret: Vec<u8>,
    relays: Vec<String>,
    /// Index into `relays` of the one to use next.
    at: usize,
    timeout: Duration,
    visible_timeout: Duration,
    session: Option<Session>,
    seq: u64,
}

/// The first relay of `host`: a weighted choice that is a pure function
/// of the host's name (FNV-1a), so hosts spread over the relays by weight
/// and a host comes back to the same relay after a restart.
fn first_relay(host: &str, weights: &[u32]) -> usize {
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
        self.at = (self.at + 1) % self.relays.len();
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

    /// Connects and takes the host over for `range` with an epoch from
    /// `epoch(floor)`; returns the positions ClickHouse holds.
    async fn connect(
        &mut self,
        range: &BatchRange,
        epoch: &mut dyn FnMut(u64) -> Result<Option<u64>>,
    ) -> Result<HashSet<(u64, u64)>> {
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
                    self.session = Some(Session {
                        relay: addr,
                        rd,
                        wr,
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

    /// Sends `batch` and waits until it is visible in ClickHouse. Rows the
    /// takeover found held are not sent. On error the session is dropped.
    pub async fn forward(
        &mut self,
        batch: &Outgoing<'_>,
        epoch: &mut dyn FnMut(u64) -> Result<Option<u64>>,
    ) -> Result<()> {
        if batch.verify {
            self.session = None;
        }
        let result = self.try_forward(batch, epoch).await;
        if result.is_err() {
            self.session = None;
        }
        result
    }

    async fn try_forward(
        &mut self,
        batch: &Outgoing<'_>,
        epoch: &mut dyn FnMut(u64) -> Result<Option<u64>>,
    ) -> Result<()> {
        let held = if self.session.is_none() {
            self.connect(&batch.range, epoch).await?
        } else {
            HashSet::new()
        };
        self.seq += 1;
        let seq = self.seq;
        let msg = Message::Batch {
            seq,
            frames: batch
                .frames
                .iter()
                .filter(|(p, _)| !held.contains(&(p.segment, p.offset)))
                .map(|(p, r)| (*p, r.to_vec()))
                .collect(),
        };
        let (timeout, visible_timeout) = (self.timeout, self.visible_timeout);
        let session = self.session.as_mut().expect("connected");
        let relay = session.relay.clone();
        let fail = |message: String| Error::Relay {
            relay: relay.clone(),
            message,
            config: false,
        };
        match tokio::time::timeout(timeout, wire::send(&mut session.wr, &msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(fail(format!("sending a batch: {e}"))),
            Err(_) => {
                return Err(fail(format!(
                    "sending a batch: not taken within {timeout:?}"
                )))
            }
        }
        let mut appended = false;
        loop {
            let limit = if appended { visible_timeout } else { timeout };
            let m = match tokio::time::timeout(limit, wire::recv(&mut session.rd)).await {
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => return Err(fail("closed the session".into())),
                Ok(Err(e)) => return Err(fail(e.to_string())),
                Err(_) => {
                    let what = if appended { "visible" } else { "appended" };
                    return Err(fail(format!("batch not {what} within {limit:?}")));
                }
            };
            match m {
                Message::Appended { seq: s } if s == seq => appended = true,
                Message::Visible { seq: s } if s == seq => return Ok(()),
                Message::Ended { reason } => {
                    return Err(fail(format!("ended the session: {reason}")))
                }
                other => return Err(fail(format!("unexpected {other:?}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
