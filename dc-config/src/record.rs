//! The payload of one spool frame: one validated event, in a compact binary
//! form the collector writes and the shipper reads. It carries names, not
//! registry indexes, so a spooled event stays readable after the registry
//! changes.
//!
//! ```text
//! struct Record {            // little-endian
//!     version: u8,           // RECORD_VERSION
//!     flags: u8,             // bit 0: `inbox` present; bit 1: its `tail`; others zero
//!     time_ms: u64,
//!     event_len: u8, event: [u8; event_len],          // UTF-8
//!     inbox: Option<{ file: u64, end_offset: u64 }>,  // if flags bit 0
//!     tail: Option<{ len: u8, crc: u32 }>,            // if flags bit 1
//!     attr_count: u16,
//!     attrs: [Attr; attr_count],
//! }
//! struct Attr {
//!     name_len: u8, name: [u8; name_len],             // UTF-8
//!     tag: u8,               // 1 u64, 2 i64, 3 f64, 4 bool (u8 0/1), 5 string
//!     value: [u8],           // 8 bytes; 1 byte for bool; u32 length + UTF-8 for string
//! }
//! ```

use crate::event::{ValidEvent, Value, ValueRef};

/// Version byte of the current record format.
pub const RECORD_VERSION: u8 = 1;

const FLAG_INBOX: u8 = 1;
const FLAG_INBOX_TAIL: u8 = 2;
const TAG_UINT: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_FLOAT: u8 = 3;
const TAG_BOOL: u8 = 4;
const TAG_STR: u8 = 5;

/// Where in an inbox file an event's line ended: lets the collector resume
/// an inbox file from the spool itself after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InboxSource {
    /// Identity of the inbox file (chosen by the collector, e.g. from dev and inode).
    pub file: u64,
    /// Byte offset just past the event's line.
    pub end_offset: u64,
    /// The last bytes of the line, newline included, up to `end_offset`.
    pub tail: TailPrint,
}

/// A fingerprint of the bytes just before an offset of an inbox file: how
/// many (at most [`TailPrint::MAX_LEN`]) and their CRC-32. The collector
/// checks it before reading a file on from that offset: a file truncated
/// and written past the offset again holds other bytes there, however long
/// it has grown. Empty (`len` 0) when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TailPrint {
    /// Number of bytes fingerprinted.
    pub len: u8,
    /// Their CRC-32.
    pub crc: u32,
}

impl TailPrint {
    /// Most bytes fingerprinted.
    pub const MAX_LEN: usize = 64;

    /// The fingerprint of the last (at most [`TailPrint::MAX_LEN`]) bytes
    /// of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        let tail = &bytes[bytes.len().saturating_sub(Self::MAX_LEN)..];
        Self {
            len: tail.len() as u8,
            crc: crc32fast::hash(tail),
        }
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// One spooled event.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The event.
    pub event: ValidEvent,
    /// Where it came from, for events read from an inbox file.
    pub inbox: Option<InboxSource>,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end inside the record.
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    /// A version this build cannot read.
    #[error("record version {0} is not supported (this build reads {RECORD_VERSION})")]
    Version(u8),
    /// Unknown flag bits.
    #[error("record flags {0:#04x} carry unknown bits")]
    Flags(u8),
    /// Unknown value tag.
    #[error("unknown value tag {tag} at byte {at}")]
    Tag {
        /// The tag.
        tag: u8,
        /// Its offset.
        at: usize,
    },
    /// A name or string that is not UTF-8.
    #[error("text at byte {0} is not UTF-8")]
    Utf8(usize),
    /// Bytes after the last attribute.
    #[error("{0} unexpected bytes after the record")]
    Trailing(usize),
    /// A name longer than 255 bytes or more than 65535 attributes; the
    /// registry's limits make this unreachable for a validated event.
    #[error("record field too large to encode: {0}")]
    TooLarge(&'static str),
}

impl Record {
    /// Appends the encoded record to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        let ev = &self.event;
        out.push(RECORD_VERSION);
        out.push(match self.inbox {
            None => 0,
            Some(src) if src.tail.is_empty() => FLAG_INBOX,
            Some(_) => FLAG_INBOX | FLAG_INBOX_TAIL,
        });
        out.extend_from_slice(&ev.time_ms.to_le_bytes());
        put_name(out, &ev.event, "event name")?;
        if let Some(src) = self.inbox {
            out.extend_from_slice(&src.file.to_le_bytes());
            out.extend_from_slice(&src.end_offset.to_le_bytes());
            if !src.tail.is_empty() {
                out.push(src.tail.len);
                out.extend_from_slice(&src.tail.crc.to_le_bytes());
            }
        }
        let n = u16::try_from(ev.attrs.len()).map_err(|_| RecordError::TooLarge("attributes"))?;
        out.extend_from_slice(&n.to_le_bytes());
        for (name, v) in &ev.attrs {
            put_name(out, name, "attribute name")?;
            match v {
                Value::UInt(x) => {
                    out.push(TAG_UINT);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Int(x) => {
                    out.push(TAG_INT);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Float(x) => {
                    out.push(TAG_FLOAT);
                    out.extend_from_slice(&x.to_le_bytes());
                }
                Value::Bool(b) => {
                    out.push(TAG_BOOL);
                    out.push(u8::from(*b));
                }
                Value::Str(s) => {
                    out.push(TAG_STR);
                    let len =
                        u32::try_from(s.len()).map_err(|_| RecordError::TooLarge("string"))?;
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
        Ok(())
    }

    /// The encoded record.
    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut v = Vec::with_capacity(64);
        self.encode_into(&mut v)?;
        Ok(v)
    }

    /// Decodes one record; every byte must belong to it.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        let view = RecordView::parse(bytes)?;
        let attrs = view
            .attrs()
            .map(|a| a.map(|(n, v)| (n.to_string(), v.to_owned())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            event: ValidEvent {
                event: view.event.to_string(),
                time_ms: view.time_ms,
                attrs,
            },
            inbox: view.inbox,
        })
    }
}

/// A record read in place: names and strings borrow from the frame's bytes,
/// so the shipper turns frames into rows without allocating per attribute.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    /// Event time in ms.
    pub time_ms: u64,
    /// Event type name.
    pub event: &'a str,
    /// Inbox source, if any.
    pub inbox: Option<InboxSource>,
    attr_count: u16,
    attrs: &'a [u8],
    attrs_at: usize,
}

impl<'a> RecordView<'a> {
    /// Checks every byte of `bytes` and returns the view, also appending
    /// every attribute to `attrs` in the same pass (the shipper's hot path:
    /// one parse per frame, no allocation once `attrs` has grown).
    pub fn parse_into(
        bytes: &'a [u8],
        attrs: &mut Vec<(&'a str, ValueRef<'a>)>,
    ) -> Result<Self, RecordError> {
        let view = Self::header(bytes)?;
        let mut it = view.attrs();
        for a in it.by_ref() {
            attrs.push(a?);
        }
        view.finish(&it)
    }

    /// The event type name alone, reading only the record's head: lets a
    /// consumer skip events it has no use for without parsing them.
    pub fn peek_event(bytes: &'a [u8]) -> Result<&'a str, RecordError> {
        Ok(Self::header(bytes)?.event)
    }

    /// Checks every byte of `bytes` and returns the view.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let view = Self::header(bytes)?;
        let mut it = view.attrs();
        for a in it.by_ref() {
            a?;
        }
        view.finish(&it)
    }

    fn finish(self, it: &Attrs<'a>) -> Result<Self, RecordError> {
        if it.cursor.at != self.attrs.len() {
            return Err(RecordError::Trailing(self.attrs.len() - it.cursor.at));
        }
        Ok(self)
    }

    /// Reads everything before the attributes.
    fn header(bytes: &'a [u8]) -> Result<Self, RecordError> {
        let mut r = Cursor { b: bytes, at: 0 };
        let version = r.u8()?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let flags = r.u8()?;
        if flags & !(FLAG_INBOX | FLAG_INBOX_TAIL) != 0
            || flags & (FLAG_INBOX | FLAG_INBOX_TAIL) == FLAG_INBOX_TAIL
        {
            return Err(RecordError::Flags(flags));
        }
        let time_ms = r.u64()?;
        let event = r.name()?;
        let inbox = if flags & FLAG_INBOX != 0 {
            let (file, end_offset) = (r.u64()?, r.u64()?);
            let tail = if flags & FLAG_INBOX_TAIL != 0 {
                let len = r.u8()?;
                let crc = u32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes"));
                if len == 0 || usize::from(len) > TailPrint::MAX_LEN {
                    return Err(RecordError::Flags(flags));
                }
                TailPrint { len, crc }
            } else {
                TailPrint::default()
            };
            Some(InboxSource {
                file,
                end_offset,
                tail,
            })
        } else {
            None
        };
        let attr_count = r.u16()?;
        Ok(Self {
            time_ms,
            event,
            inbox,
            attr_count,
            attrs: &bytes[r.at..],
            attrs_at: r.at,
        })
    }

    /// Number of attributes.
    pub fn attr_count(&self) -> usize {
        self.attr_count as usize
    }

    /// The attributes, in stored order, for a view that [`RecordView::parse`]
    /// has checked (so none can fail).
    pub fn checked_attrs(
        &self,
    ) -> impl ExactSizeIterator<Item = (&'a str, ValueRef<'a>)> + Clone + 'a {
        self.attrs()
            .map(|a| a.expect("RecordView::parse checked every attribute"))
    }

    /// The attributes, in stored order.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs {
            cursor: Cursor {
                b: self.attrs,
                at: 0,
            },
            base: self.attrs_at,
            left: self.attr_count,
        }
    }
}

/// Iterator over a [`RecordView`]'s attributes.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    cursor: Cursor<'a>,
    base: usize,
    left: u16,
}

impl ExactSizeIterator for Attrs<'_> {}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(&'a str, ValueRef<'a>), RecordError>;

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = &mut self.cursor;
        let base = self.base;
        let item = (|| {
            let name = r.name().map_err(|e| e.shifted(base))?;
            let at = r.at;
            let v = match r.u8().map_err(|e| e.shifted(base))? {
                TAG_UINT => ValueRef::UInt(r.u64().map_err(|e| e.shifted(base))?),
                TAG_INT => ValueRef::Int(r.u64().map_err(|e| e.shifted(base))? as i64),
                TAG_FLOAT => ValueRef::Float(f64::from_bits(r.u64().map_err(|e| e.shifted(base))?)),
                TAG_BOOL => ValueRef::Bool(r.u8().map_err(|e| e.shifted(base))? != 0),
                TAG_STR => {
                    let len = r.u32().map_err(|e| e.shifted(base))? as usize;
                    ValueRef::Str(r.text(len).map_err(|e| e.shifted(base))?)
                }
                tag => return Err(RecordError::Tag { tag, at: at + base }),
            };
            Ok((name, v))
        })();
        if item.is_err() {
            self.left = 0;
        }
        Some(item)
    }
}

impl RecordError {
    /// The same error with byte offsets moved by `by` (errors found in a
    /// sub-slice report offsets in the whole record).
    fn shifted(self, by: usize) -> Self {
        match self {
            RecordError::Truncated(at) => RecordError::Truncated(at + by),
            RecordError::Utf8(at) => RecordError::Utf8(at + by),
            RecordError::Tag { tag, at } => RecordError::Tag { tag, at: at + by },
            other => other,
        }
    }
}

fn put_name(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), RecordError> {
    let len = u8::try_from(s.len()).map_err(|_| RecordError::TooLarge(what))?;
    out.push(len);
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

#[derive(Debug, Clone)]
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(RecordError::Truncated(self.at))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self, len: usize) -> Result<&'a str, RecordError> {
        let at = self.at;
        let b = self.take(len)?;
        std::str::from_utf8(b).map_err(|_| RecordError::Utf8(at))
    }
    fn name(&mut self) -> Result<&'a str, RecordError> {
        let len = self.u8()? as usize;
        self.text(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::UInt),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::Float),
            any::<bool>().prop_map(Value::Bool),
            ".{0,40}".prop_map(Value::Str),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            "[a-z][a-z0-9_]{0,20}",
            any::<u64>(),
            proptest::collection::vec(("[a-z][a-z0-9_]{0,10}", value()), 0..8),
            proptest::option::of((
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..100),
            )),
        )
            .prop_map(|(event, time_ms, attrs, inbox)| Record {
                event: ValidEvent {
                    event,
                    time_ms,
                    attrs,
                },
                inbox: inbox.map(|(file, end_offset, line)| InboxSource {
                    file,
                    end_offset,
                    tail: if line.is_empty() {
                        TailPrint::default()
                    } else {
                        TailPrint::of(&line)
                    },
                }),
            })
    }

    proptest! {
        #[test]
        fn round_trips(r in record()) {
            let bytes = r.encode().unwrap();
            prop_assert_eq!(Record::decode(&bytes).unwrap(), r);
        }

        #[test]
        fn every_prefix_is_truncated(r in record()) {
            let bytes = r.encode().unwrap();
            for cut in 0..bytes.len() {
                prop_assert!(matches!(Record::decode(&bytes[..cut]), Err(RecordError::Truncated(_))));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Record::decode(&bytes);
        }

        #[test]
        fn flipped_bytes_never_panic(r in record(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = r.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = Record::decode(&bytes);
        }
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(Record::decode(&[9]), Err(RecordError::Version(9)));
        assert_eq!(Record::decode(&[1, 0x82]), Err(RecordError::Flags(0x82)));
        let ok = Record {
            event: ValidEvent {
                event: "vote".into(),
                time_ms: 1,
                attrs: vec![("a".into(), Value::Bool(true))],
            },
            inbox: None,
        };
        let mut b = ok.encode().unwrap();
        b.push(0);
        assert_eq!(Record::decode(&b), Err(RecordError::Trailing(1)));
        let tag_at = b.len() - 3;
        b.pop();
        b[tag_at] = 77;
        assert_eq!(
            Record::decode(&b),
            Err(RecordError::Tag {
                tag: 77,
                at: tag_at
            })
        );
    }
}
