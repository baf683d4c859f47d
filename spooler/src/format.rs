//! The bytes on disk: segment header, frames, checkpoint records, and the
//! scanner that decodes a segment and resynchronises after corruption.
//!
//! Everything here is pure (no I/O) so the fuzz target and the arbitrary-bytes
//! proptest can hammer exactly the code recovery and readers run.

use std::fmt;

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SPOOLSEG";

/// Magic at the start of every reader checkpoint file.
pub const CHECKPOINT_MAGIC: [u8; 8] = *b"SPOOLCKP";

/// Version of the segment and checkpoint layout; bumped on any change to it.
pub const FORMAT_VERSION: u32 = 1;

/// Size of the segment header; the first frame starts at this offset.
pub const SEGMENT_HEADER_LEN: usize = 32;

/// Size of a checkpoint file.
pub const CHECKPOINT_LEN: usize = 32;

/// Bytes that open every frame, so a reader can find the next frame after a
/// damaged one. Why these: 0xF7 can never occur in UTF-8, so JSON or text
/// payloads can never contain the marker and fool the resynchronisation.
pub const FRAME_MARKER: [u8; 4] = [0xF7, 0x5E, 0xC9, 0x1D];

/// Marker + length + CRC32.
pub const FRAME_HEADER_LEN: usize = 12;

/// Largest payload one frame may carry (16 MiB). Why: events are hundreds of
/// bytes to a few KiB; the bound lets a reader reject a corrupt length before
/// trusting it, and caps what one frame can cost a reader in memory.
pub const FRAME_PAYLOAD_MAX: usize = 16 << 20;

/// Largest a segment may grow, header included (1 GiB). Why: readers hold a
/// whole sealed segment in memory after decompressing it, and a fixed bound
/// lets them refuse a corrupt or hostile zstd stream that would inflate
/// without end.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

/// A place in the spool: segment sequence number and byte offset in the
/// uncompressed segment. Ordered by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// Segment sequence number (file name), starting at 1.
    pub segment: u64,
    /// Byte offset in the uncompressed segment.
    pub offset: u64,
}

impl Position {
    /// Builds a position.
    pub const fn new(segment: u64, offset: u64) -> Self {
        Position { segment, offset }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// The segment header, 32 bytes, little-endian:
///
/// ```text
/// struct SegmentHeader {
///     magic:           [u8; 8],  // "SPOOLSEG"
///     version:         u32,      // FORMAT_VERSION
///     seq:             u64,      // segment sequence number, equals the file name
///     created_unix_ms: u64,      // wall-clock creation time, drives age rotation
///     crc32:           u32,      // CRC32 of the 28 bytes above
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Segment sequence number.
    pub seq: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// Why a segment header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderProblem {
    /// Fewer than `SEGMENT_HEADER_LEN` bytes: a segment torn while created.
    Short,
    /// The magic is not "SPOOLSEG".
    BadMagic,
    /// The header's CRC does not match its bytes.
    BadCrc,
    /// A version this build does not read.
    UnknownVersion(u32),
}

impl fmt::Display for HeaderProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderProblem::Short => write!(f, "segment header is truncated"),
            HeaderProblem::BadMagic => write!(f, "segment header magic is wrong"),
            HeaderProblem::BadCrc => write!(f, "segment header checksum mismatch"),
            HeaderProblem::UnknownVersion(v) => write!(f, "unknown segment format version {v}"),
        }
    }
}

impl SegmentHeader {
    /// Encodes the header into its 32 on-disk bytes.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(&SEGMENT_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.seq.to_le_bytes());
        b[20..28].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        let crc = crc32fast::hash(&b[0..28]);
        b[28..32].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<SegmentHeader, HeaderProblem> {
        if buf.len() < SEGMENT_HEADER_LEN {
            return Err(HeaderProblem::Short);
        }
        if buf[0..8] != SEGMENT_MAGIC {
            return Err(HeaderProblem::BadMagic);
        }
        if crc32fast::hash(&buf[0..28]) != read_u32(buf, 28) {
            return Err(HeaderProblem::BadCrc);
        }
        let version = read_u32(buf, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderProblem::UnknownVersion(version));
        }
        Ok(SegmentHeader {
            seq: read_u64(buf, 12),
            created_unix_ms: read_u64(buf, 20),
        })
    }
}

/// A reader checkpoint, 32 bytes, little-endian:
///
/// ```text
/// struct Checkpoint {
///     magic:   [u8; 8],  // "SPOOLCKP"
///     version: u32,      // FORMAT_VERSION
///     segment: u64,      // next position to read: segment ...
///     offset:  u64,      // ... and byte offset in it
///     crc32:   u32,      // CRC32 of the 28 bytes above
/// }
/// ```
pub fn encode_checkpoint(pos: Position) -> [u8; CHECKPOINT_LEN] {
    let mut b = [0u8; CHECKPOINT_LEN];
    b[0..8].copy_from_slice(&CHECKPOINT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..20].copy_from_slice(&pos.segment.to_le_bytes());
    b[20..28].copy_from_slice(&pos.offset.to_le_bytes());
    let crc = crc32fast::hash(&b[0..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a checkpoint; `None` if it is not a whole, valid checkpoint.
pub fn decode_checkpoint(buf: &[u8]) -> Option<Position> {
    if buf.len() != CHECKPOINT_LEN
        || buf[0..8] != CHECKPOINT_MAGIC
        || read_u32(buf, 8) != FORMAT_VERSION
        || crc32fast::hash(&buf[0..28]) != read_u32(buf, 28)
    {
        return None;
    }
    Some(Position::new(read_u64(buf, 12), read_u64(buf, 20)))
}

/// Appends one frame to `out`:
///
/// ```text
/// struct Frame {
///     marker:  [u8; 4],      // FRAME_MARKER, for resynchronisation
///     len:     u32,          // payload length, <= FRAME_PAYLOAD_MAX
///     crc32:   u32,          // CRC32 of len (4 LE bytes) then payload
///     payload: [u8; len],
/// }
/// ```
///
/// The length is inside the CRC so a zeroed or flipped length is caught.
pub fn encode_frame(out: &mut Vec<u8>, payload: &[u8]) {
    assert!(
        payload.len() <= FRAME_PAYLOAD_MAX,
        "caller must reject frames over FRAME_PAYLOAD_MAX before encoding"
    );
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    out.extend_from_slice(&FRAME_MARKER);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// Bytes a payload of `len` takes on disk.
pub const fn frame_len(len: usize) -> usize {
    FRAME_HEADER_LEN + len
}

/// One item the scanner finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned<'a> {
    /// A whole frame whose CRC checks, starting at `offset`.
    Frame {
        /// Offset of the frame's marker.
        offset: usize,
        /// The payload.
        payload: &'a [u8],
    },
    /// Bytes `offset .. offset + len` hold no valid frame but a valid frame
    /// follows them: damage in the middle of a segment.
    Corrupt {
        /// First damaged byte.
        offset: usize,
        /// Number of damaged bytes, up to the next valid frame.
        len: usize,
    },
    /// From `offset` to the end there is no whole valid frame: a torn write
    /// in an active segment, or damage at the end of a sealed one. Always the
    /// last item.
    Tail {
        /// First byte of the tail.
        offset: usize,
    },
}

enum Check {
    Ok(usize),
    Incomplete,
    Bad,
}

fn check_frame(buf: &[u8], pos: usize) -> Check {
    let rest = &buf[pos..];
    if rest.len() < FRAME_HEADER_LEN {
        let n = rest.len().min(FRAME_MARKER.len());
        return if rest[..n] == FRAME_MARKER[..n] {
            Check::Incomplete
        } else {
            Check::Bad
        };
    }
    if rest[0..4] != FRAME_MARKER {
        return Check::Bad;
    }
    let len = read_u32(rest, 4) as usize;
    if len > FRAME_PAYLOAD_MAX {
        return Check::Bad;
    }
    if rest.len() - FRAME_HEADER_LEN < len {
        return Check::Incomplete;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&rest[4..8]);
    h.update(&rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len]);
    if h.finalize() != read_u32(rest, 8) {
        return Check::Bad;
    }
    Check::Ok(len)
}

/// Walks the frames of `buf` from `start`, resynchronising on the marker after
/// damage. Never panics, whatever the bytes; each step moves forward, so it
/// ends after at most `buf.len()` items.
#[derive(Debug, Clone)]
pub struct Scanner<'a> {
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl<'a> Scanner<'a> {
    /// Scans `buf` starting at byte `start` (a frame boundary, normally
    /// `SEGMENT_HEADER_LEN`).
    pub fn new(buf: &'a [u8], start: usize) -> Self {
        Scanner {
            buf,
            pos: start.min(buf.len()),
            done: false,
        }
    }

    /// Offset the next item starts at.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn next_valid_after(&self, pos: usize) -> Option<usize> {
        let mut from = pos + 1;
        while from + FRAME_MARKER.len() <= self.buf.len() {
            let hit = self.buf[from..]
                .windows(FRAME_MARKER.len())
                .position(|w| w == FRAME_MARKER)?;
            let cand = from + hit;
            if let Check::Ok(_) = check_frame(self.buf, cand) {
                return Some(cand);
            }
            from = cand + 1;
        }
        None
    }
}

impl<'a> Iterator for Scanner<'a> {
    type Item = Scanned<'a>;

    fn next(&mut self) -> Option<Scanned<'a>> {
        if self.done || self.pos >= self.buf.len() {
            return None;
        }
        let pos = self.pos;
        match check_frame(self.buf, pos) {
            Check::Ok(len) => {
                let start = pos + FRAME_HEADER_LEN;
                self.pos = start + len;
                Some(Scanned::Frame {
                    offset: pos,
                    payload: &self.buf[start..start + len],
                })
            }
            Check::Incomplete | Check::Bad => match self.next_valid_after(pos) {
                Some(next) => {
                    self.pos = next;
                    Some(Scanned::Corrupt {
                        offset: pos,
                        len: next - pos,
                    })
                }
                None => {
                    self.done = true;
                    self.pos = self.buf.len();
                    Some(Scanned::Tail { offset: pos })
                }
            },
        }
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(payloads: &[&[u8]]) -> Vec<u8> {
        let mut v = SegmentHeader {
            seq: 1,
            created_unix_ms: 0,
        }
        .encode()
        .to_vec();
        for p in payloads {
            encode_frame(&mut v, p);
        }
        v
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = SegmentHeader {
            seq: 42,
            created_unix_ms: 1_700_000_000_000,
        };
        let mut b = h.encode();
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        assert_eq!(SegmentHeader::decode(&b[..31]), Err(HeaderProblem::Short));
        b[13] ^= 1;
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderProblem::BadCrc));
        b[0] = b'X';
        assert_eq!(SegmentHeader::decode(&b), Err(HeaderProblem::BadMagic));
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let p = Position::new(7, 1234);
        let mut b = encode_checkpoint(p);
        assert_eq!(decode_checkpoint(&b), Some(p));
        b[20] ^= 0x10;
        assert_eq!(decode_checkpoint(&b), None);
        assert_eq!(decode_checkpoint(&b[..10]), None);
    }

    #[test]
    fn scanner_reads_frames_then_reports_torn_tail() {
        let mut buf = frames(&[b"one", b"", b"three"]);
        let whole = buf.len();
        encode_frame(&mut buf, b"torn frame");
        buf.truncate(buf.len() - 3);
        let items: Vec<_> = Scanner::new(&buf, SEGMENT_HEADER_LEN).collect();
        assert_eq!(items.len(), 4);
        assert!(matches!(
            items[0],
            Scanned::Frame {
                payload: b"one",
                ..
            }
        ));
        assert!(matches!(items[1], Scanned::Frame { payload: b"", .. }));
        assert!(matches!(
            items[2],
            Scanned::Frame {
                payload: b"three",
                ..
            }
        ));
        assert_eq!(items[3], Scanned::Tail { offset: whole });
    }

    #[test]
    fn scanner_skips_a_damaged_middle_frame() {
        let buf0 = frames(&[b"a", b"bb", b"ccc"]);
        let second = SEGMENT_HEADER_LEN + frame_len(1);
        let mut buf = buf0.clone();
        buf[second + FRAME_HEADER_LEN] ^= 0xFF;
        let items: Vec<_> = Scanner::new(&buf, SEGMENT_HEADER_LEN).collect();
        assert_eq!(
            items,
            vec![
                Scanned::Frame {
                    offset: SEGMENT_HEADER_LEN,
                    payload: b"a"
                },
                Scanned::Corrupt {
                    offset: second,
                    len: frame_len(2)
                },
                Scanned::Frame {
                    offset: second + frame_len(2),
                    payload: b"ccc"
                },
            ]
        );
    }
}
