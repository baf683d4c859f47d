//! The relay protocol (docs/adr/0017-relay-tier.md): what an app host's
//! forwarder and its DC's relay say to each other over TCP, and the record
//! a relay keeps in its spool for each forwarded frame.
//!
//! ```text
//! message = len: u32 (of kind + body, at most MESSAGE_MAX) | kind: u8 | body
//! relay -> forwarder   Challenge { nonce: [u8; 32] }
//! forwarder -> relay   Hello { version: u8, dc: str, host: str, epoch: u64,
//!                              mac: [u8; 32], batch: BatchRange }
//! relay -> forwarder   Welcome { held: u32 count, (segment: u64, offset: u64)* }
//!                    | EpochTooLow { fence: u64 } | Refused { config: u8, reason: str }
//! forwarder -> relay   Batch { seq: u64, more: u8, raw_len: u32, crc: u32, zstd(frames) }
//!                      frames = (segment: u64, offset: u64, len: u32, payload)*
//! relay -> forwarder   Appended { seq } | Visible { seq } | Ended { reason: str }
//! str = len: u16 | UTF-8
//! ```
//!
//! Everything a peer sends is checked before use: lengths against what is
//! left and against [`MESSAGE_MAX`] / [`BATCH_RAW_MAX`], the frames' CRC32
//! over their uncompressed bytes, the decompressed size against the one
//! announced. A malformed message is an error, never a panic.

use std::io::Read;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use spooler::Position;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version in [`Message::Hello`].
pub const VERSION: u8 = 1;
/// Largest message on the wire (kind and body).
pub const MESSAGE_MAX: usize = 80 << 20;
/// Largest uncompressed frames section of one batch.
pub const BATCH_RAW_MAX: usize = 80 << 20;
/// Most batches a forwarder has sent in a session and not yet seen
/// `Visible`: one being inserted while the next is on its way. A relay
/// whose every session has this many waiting ships without waiting out
/// its batch age (nothing more can come first).
pub const WINDOW: usize = 2;
/// Longest DC or host name.
pub const NAME_MAX: usize = 255;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("relay connection: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not a valid message.
    #[error("malformed relay message: {0}")]
    Malformed(String),
}

fn bad<T>(what: impl Into<String>) -> Result<T, WireError> {
    Err(WireError::Malformed(what.into()))
}

/// The spool range, event types and time range of the batch a forwarder
/// has in hand: what the relay's takeover checks (the direct shipper's
/// position check asks the same).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BatchRange {
    /// First frame.
    pub start: Position,
    /// End of the last frame.
    pub end: Position,
    /// Event types in the batch.
    pub events: Vec<String>,
    /// Least and greatest event time, seconds.
    pub time_range: (u32, u32),
}

/// One message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The relay's challenge, first on every connection.
    Challenge {
        /// Random bytes the forwarder's MAC covers.
        nonce: [u8; 32],
    },
    /// The forwarder's session request.
    Hello {
        /// [`VERSION`].
        version: u8,
        /// The forwarder's datacenter.
        dc: String,
        /// The forwarder's host: the rows' origin.
        host: String,
        /// The session's epoch, new for each connection.
        epoch: u64,
        /// [`mac`] of the DC's secret over the challenge, DC, host, epoch.
        mac: [u8; 32],
        /// The batch in hand.
        batch: BatchRange,
    },
    /// Session taken over: these positions of the batch in hand are in ClickHouse.
    Welcome {
        /// Held positions `(segment, offset)`.
        held: Vec<(u64, u64)>,
    },
    /// A replica fences the host at `fence`: reconnect with a higher epoch.
    EpochTooLow {
        /// The highest fence seen.
        fence: u64,
    },
    /// Session refused.
    Refused {
        /// Why, for the forwarder's log.
        reason: String,
        /// Whether only a change of the forwarder's config can help (a
        /// wrong secret, DC or version), not a retry.
        config: bool,
    },
    /// A batch of frames.
    Batch {
        /// The forwarder's number for it, echoed by `Appended` and `Visible`.
        seq: u64,
        /// Another batch is ready to follow at once. False: the forwarder
        /// has nothing more in hand, and the relay need not wait for it
        /// before inserting (ADR 0017).
        more: bool,
        /// `(position, payload)` per frame, in spool order.
        frames: Vec<(Position, Vec<u8>)>,
    },
    /// The batch is in the relay's spool.
    Appended {
        /// The batch.
        seq: u64,
    },
    /// The batch is in ClickHouse.
    Visible {
        /// The batch.
        seq: u64,
    },
    /// The relay ended the session (the forwarder reconnects).
    Ended {
        /// Why.
        reason: String,
    },
}

const K_CHALLENGE: u8 = 1;
const K_HELLO: u8 = 2;
const K_WELCOME: u8 = 3;
const K_EPOCH: u8 = 4;
const K_REFUSED: u8 = 5;
const K_BATCH: u8 = 6;
const K_APPENDED: u8 = 7;
const K_VISIBLE: u8 = 8;
const K_ENDED: u8 = 9;

fn keyed(secret: &[u8], nonce: &[u8; 32], dc: &str, host: &str, epoch: u64) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(nonce);
    for name in [dc, host] {
        m.update(&(name.len() as u16).to_le_bytes());
        m.update(name.as_bytes());
    }
    m.update(&epoch.to_le_bytes());
    m
}

/// HMAC-SHA256 of `secret` over the challenge, DC, host and epoch.
pub fn mac(secret: &[u8], nonce: &[u8; 32], dc: &str, host: &str, epoch: u64) -> [u8; 32] {
    keyed(secret, nonce, dc, host, epoch)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `got` is the MAC `secret` gives (compared in constant time).
pub fn mac_ok(
    secret: &[u8],
    nonce: &[u8; 32],
    dc: &str,
    host: &str,
    epoch: u64,
    got: &[u8; 32],
) -> bool {
    keyed(secret, nonce, dc, host, epoch)
        .verify_slice(got)
        .is_ok()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s);
}

impl Message {
    /// The message as sent: length, kind, body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; 4];
        match self {
            Message::Challenge { nonce } => {
                out.push(K_CHALLENGE);
                out.extend_from_slice(nonce);
            }
            Message::Hello {
                version,
                dc,
                host,
                epoch,
                mac,
                batch,
            } => {
                out.push(K_HELLO);
                out.push(*version);
                put_str(&mut out, dc);
                put_str(&mut out, host);
                out.extend_from_slice(&epoch.to_le_bytes());
                out.extend_from_slice(mac);
                for v in [
                    batch.start.segment,
                    batch.start.offset,
                    batch.end.segment,
                    batch.end.offset,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
                out.extend_from_slice(&batch.time_range.0.to_le_bytes());
                out.extend_from_slice(&batch.time_range.1.to_le_bytes());
                out.extend_from_slice(&(batch.events.len() as u16).to_le_bytes());
                for e in &batch.events {
                    put_str(&mut out, e);
                }
            }
            Message::Welcome { held } => {
                out.push(K_WELCOME);
                out.extend_from_slice(&(held.len() as u32).to_le_bytes());
                for (s, o) in held {
                    out.extend_from_slice(&s.to_le_bytes());
                    out.extend_from_slice(&o.to_le_bytes());
                }
            }
            Message::EpochTooLow { fence } => {
                out.push(K_EPOCH);
                out.extend_from_slice(&fence.to_le_bytes());
            }
            Message::Refused { reason, config } => {
                out.push(K_REFUSED);
                out.push(u8::from(*config));
                put_str(&mut out, reason);
            }
            Message::Batch { seq, more, frames } => {
                out.push(K_BATCH);
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(u8::from(*more));
                let mut raw = Vec::with_capacity(frames.iter().map(|f| f.1.len() + 20).sum());
                for (p, payload) in frames {
                    raw.extend_from_slice(&p.segment.to_le_bytes());
                    raw.extend_from_slice(&p.offset.to_le_bytes());
                    raw.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                    raw.extend_from_slice(payload);
                }
                out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                out.extend_from_slice(&crc32fast::hash(&raw).to_le_bytes());
                // Level 1: the forwarder runs on app hosts, where CPU is
                // scarce; spool records compress well even so.
                out.extend_from_slice(&zstd::bulk::compress(&raw, 1).expect("zstd into memory"));
            }
            Message::Appended { seq } => {
                out.push(K_APPENDED);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Message::Visible { seq } => {
                out.push(K_VISIBLE);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Message::Ended { reason } => {
                out.push(K_ENDED);
                put_str(&mut out, reason);
            }
        }
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_le_bytes());
        out
    }

    /// Decodes one message's kind and body (without the length prefix).
    pub fn decode(buf: &[u8]) -> Result<Message, WireError> {
        let mut c = Cursor { buf, at: 0 };
        let kind = c.u8()?;
        let msg = match kind {
            K_CHALLENGE => Message::Challenge { nonce: c.array()? },
            K_HELLO => {
                let version = c.u8()?;
                let dc = c.str()?;
                let host = c.str()?;
                let epoch = c.u64()?;
                let mac = c.array()?;
                let start = Position::new(c.u64()?, c.u64()?);
                let end = Position::new(c.u64()?, c.u64()?);
                let time_range = (c.u32()?, c.u32()?);
                let n = c.u16()?;
                let events = (0..n).map(|_| c.str()).collect::<Result<Vec<_>, _>>()?;
                Message::Hello {
                    version,
                    dc,
                    host,
                    epoch,
                    mac,
                    batch: BatchRange {
                        start,
                        end,
                        events,
                        time_range,
                    },
                }
            }
            K_WELCOME => {
                let n = c.u32()? as usize;
                if n > c.left() / 16 {
                    return bad(format!(
                        "welcome announces {n} positions in {} bytes",
                        c.left()
                    ));
                }
                let held = (0..n)
                    .map(|_| Ok((c.u64()?, c.u64()?)))
                    .collect::<Result<Vec<_>, WireError>>()?;
                Message::Welcome { held }
            }
            K_EPOCH => Message::EpochTooLow { fence: c.u64()? },
            K_REFUSED => Message::Refused {
                config: c.u8()? != 0,
                reason: c.str()?,
            },
            K_BATCH => {
                let seq = c.u64()?;
                let more = match c.u8()? {
                    0 => false,
                    1 => true,
                    b => return bad(format!("batch flag {b} (0 or 1)")),
                };
                let raw_len = c.u32()? as usize;
                let crc = c.u32()?;
                if raw_len > BATCH_RAW_MAX {
                    return bad(format!(
                        "batch of {raw_len} bytes uncompressed (at most {BATCH_RAW_MAX})"
                    ));
                }
                let mut raw = Vec::with_capacity(raw_len);
                // Reads at most one byte past the announced size, so a
                // decompression bomb costs no more than the announcement.
                zstd::stream::read::Decoder::new(c.rest())
                    .map_err(|e| WireError::Malformed(format!("zstd: {e}")))?
                    .take(raw_len as u64 + 1)
                    .read_to_end(&mut raw)
                    .map_err(|e| WireError::Malformed(format!("zstd: {e}")))?;
                if raw.len() != raw_len {
                    return bad(format!(
                        "batch decompresses to {} bytes, {raw_len} announced",
                        raw.len()
                    ));
                }
                if crc32fast::hash(&raw) != crc {
                    return bad("batch CRC32 mismatch");
                }
                let mut f = Cursor { buf: &raw, at: 0 };
                let mut frames = Vec::new();
                while f.left() > 0 {
                    let p = Position::new(f.u64()?, f.u64()?);
                    let len = f.u32()? as usize;
                    frames.push((p, f.bytes(len)?.to_vec()));
                }
                return Ok(Message::Batch { seq, more, frames });
            }
            K_APPENDED => Message::Appended { seq: c.u64()? },
            K_VISIBLE => Message::Visible { seq: c.u64()? },
            K_ENDED => Message::Ended { reason: c.str()? },
            k => return bad(format!("unknown message kind {k}")),
        };
        if c.left() != 0 {
            return bad(format!(
                "{} trailing bytes after message kind {kind}",
                c.left()
            ));
        }
        Ok(msg)
    }
}

/// Writes one message.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &Message) -> Result<(), WireError> {
    w.write_all(&m.encode()).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; `None` at a clean end of stream before it.
pub async fn recv<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Message>, WireError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MESSAGE_MAX {
        return bad(format!("message of {len} bytes (1 to {MESSAGE_MAX})"));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Message::decode(&buf).map(Some)
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.left() {
            return bad(format!("{n} bytes wanted, {} left", self.left()));
        }
        let b = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(b)
    }
    fn rest(&mut self) -> &'a [u8] {
        let b = &self.buf[self.at..];
        self.at = self.buf.len();
        b
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.bytes(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn str(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.bytes(n)?.to_vec())
            .map_err(|_| WireError::Malformed("a name is not UTF-8".into()))
    }
}

/// A forwarded frame as a relay keeps it in its spool: the origin's
/// identity, the session's epoch, the batch it came in (and whether it is
/// the batch's last frame, whose insert makes the batch visible), then the
/// origin's spool record unchanged.
///
/// ```text
/// tag: u8 = RELAYED_TAG | flags: u8 (bit 0: last of batch) | host: str
/// epoch: u64 | seq: u64 | segment: u64 | offset: u64 | record: [u8]
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed<'a> {
    /// Origin host.
    pub host: &'a str,
    /// Session epoch: the rows' epoch.
    pub epoch: u64,
    /// The forwarder's batch number.
    pub seq: u64,
    /// Whether this is the batch's last frame.
    pub last: bool,
    /// Origin spool position.
    pub position: Position,
    /// The origin's spool record.
    pub record: &'a [u8],
}

/// First byte of a relay spool frame. An origin record starts with its
/// version byte (1), so the two are never confused.
pub const RELAYED_TAG: u8 = 0xA7;

impl<'a> Relayed<'a> {
    /// Encodes into `out` (cleared first).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.push(RELAYED_TAG);
        out.push(u8::from(self.last));
        put_str(out, self.host);
        for v in [
            self.epoch,
            self.seq,
            self.position.segment,
            self.position.offset,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(self.record);
    }

    /// Decodes a relay spool frame.
    pub fn decode(buf: &'a [u8]) -> Result<Relayed<'a>, WireError> {
        let mut c = Cursor { buf, at: 0 };
        if c.u8()? != RELAYED_TAG {
            return bad("not a relayed frame");
        }
        let flags = c.u8()?;
        let n = c.u16()? as usize;
        let host = std::str::from_utf8(c.bytes(n)?)
            .map_err(|_| WireError::Malformed("host is not UTF-8".into()))?;
        Ok(Relayed {
            host,
            last: flags & 1 != 0,
            epoch: c.u64()?,
            seq: c.u64()?,
            position: Position::new(c.u64()?, c.u64()?),
            record: c.rest(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Message> {
        vec![
            Message::Challenge { nonce: [7; 32] },
            Message::Hello {
                version: VERSION,
                dc: "dc1".into(),
                host: "app-1".into(),
                epoch: 42,
                mac: [9; 32],
                batch: BatchRange {
                    start: Position::new(1, 32),
                    end: Position::new(2, 64),
                    events: vec!["a".into(), "b".into()],
                    time_range: (10, 20),
                },
            },
            Message::Welcome {
                held: vec![(1, 32), (1, 90)],
            },
            Message::EpochTooLow { fence: 77 },
            Message::Refused {
                reason: "no".into(),
                config: true,
            },
            Message::Batch {
                seq: 3,
                more: true,
                frames: vec![
                    (Position::new(1, 32), b"abc".to_vec()),
                    (Position::new(1, 47), vec![]),
                ],
            },
            Message::Batch {
                seq: 4,
                more: false,
                frames: vec![],
            },
            Message::Appended { seq: 3 },
            Message::Visible { seq: 3 },
            Message::Ended {
                reason: "insert may have landed".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let bytes = m.encode();
            let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(Message::decode(&bytes[4..]).unwrap(), m);
        }
    }

    #[test]
    fn truncated_or_padded_messages_are_errors_not_panics() {
        for m in all() {
            let bytes = m.encode();
            for cut in 4..bytes.len() {
                let _ = Message::decode(&bytes[4..cut]);
            }
            let mut padded = bytes[4..].to_vec();
            padded.push(0);
            assert!(
                Message::decode(&padded).is_err(),
                "{m:?} with a trailing byte"
            );
        }
        assert!(Message::decode(&[200]).is_err());
    }

    #[test]
    fn a_flipped_bit_in_a_batch_is_caught() {
        let m = Message::Batch {
            seq: 1,
            more: false,
            frames: vec![(Position::new(1, 32), vec![5u8; 1000])],
        };
        let bytes = m.encode();
        for i in 4 + 1 + 8..bytes.len() {
            let mut b = bytes[4..].to_vec();
            b[i - 4] ^= 0x10;
            // Refused, or (a flip zstd's frame header does not use) the
            // very same frames: never different data accepted.
            if let Ok(got) = Message::decode(&b) {
                assert_eq!(got, m, "flip at byte {i} accepted");
            }
        }
    }

    #[test]
    fn an_announced_size_bounds_decompression() {
        let raw = vec![0u8; 1 << 20];
        let mut body = vec![K_BATCH];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&100u32.to_le_bytes());
        body.extend_from_slice(&crc32fast::hash(&raw).to_le_bytes());
        body.extend_from_slice(&zstd::bulk::compress(&raw, 1).unwrap());
        let e = Message::decode(&body).unwrap_err().to_string();
        assert!(e.contains("announced"), "{e}");
    }

    #[test]
    fn macs_bind_the_secret_the_challenge_and_the_identity() {
        let n = [1u8; 32];
        let m = mac(b"secret", &n, "dc1", "app-1", 5);
        assert!(mac_ok(b"secret", &n, "dc1", "app-1", 5, &m));
        assert!(!mac_ok(b"other", &n, "dc1", "app-1", 5, &m));
        assert!(!mac_ok(b"secret", &[2; 32], "dc1", "app-1", 5, &m));
        assert!(!mac_ok(b"secret", &n, "dc1", "app-2", 5, &m));
        assert!(!mac_ok(b"secret", &n, "dc1", "app-1", 6, &m));
    }

    #[test]
    fn relayed_frames_round_trip() {
        let r = Relayed {
            host: "app-1",
            epoch: 9,
            seq: 4,
            last: true,
            position: Position::new(3, 4096),
            record: b"\x01record",
        };
        let mut out = Vec::new();
        r.encode_into(&mut out);
        assert_eq!(Relayed::decode(&out).unwrap(), r);
        assert!(Relayed::decode(b"\x01record").is_err());
        assert!(Relayed::decode(&out[..10]).is_err());
    }
}
