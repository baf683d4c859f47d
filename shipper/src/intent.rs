//! The batch intent: before a batch is inserted, its exact spool range is
//! made durable, so that after a crash the same range (and so the same
//! insert block) is replayed, whatever else has been spooled since. Without
//! it, a batch cut short by its age limit would be replayed longer, as a
//! different block, and escape ClickHouse's block deduplication.
//!
//! It also records which replicas an attempt of the batch may have
//! reached: the replicas a replay must fence and ask before it sends again
//! (docs/adr/0009-fenced-inserts.md).
//!
//! ```text
//! struct Intent {          // STATE_DIR/<reader>.intent, 52 bytes, little-endian
//!     magic: [u8; 8],      // "SHINTNT2" (48-byte "SHINTENT" files, without
//!                          //  the replica set, read as "any replica")
//!     start: (u64, u64),   // first frame's position (segment, offset)
//!     end: (u64, u64),     // position after the last frame
//!     frames: u32,         // frames in the range
//!     replicas: u32,       // bit r: replica r of the shard may hold the batch
//!     crc32: u32,          // of the bytes above
//! }
//! ```

use std::path::Path;

use spooler::Position;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SHINTNT2";
const LEN: usize = 52;
const MAGIC_V1: &[u8; 8] = b"SHINTENT";
const LEN_V1: usize = 48;

/// A planned batch: the spool range `[start, end)` holding `frames` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// Position of the first frame.
    pub start: Position,
    /// Position after the last frame: what the reader commits when done.
    pub end: Position,
    /// Number of frames.
    pub frames: u32,
    /// Bit `r` set: an attempt may have sent the batch to replica `r` of its
    /// shard (set before the attempt is made).
    pub replicas: u32,
}

fn file_name(reader: &str) -> String {
    format!("{reader}.intent")
}

impl Intent {
    fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.start.segment.to_le_bytes());
        b[16..24].copy_from_slice(&self.start.offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.end.segment.to_le_bytes());
        b[32..40].copy_from_slice(&self.end.offset.to_le_bytes());
        b[40..44].copy_from_slice(&self.frames.to_le_bytes());
        b[44..48].copy_from_slice(&self.replicas.to_le_bytes());
        let crc = crc32fast::hash(&b[..48]);
        b[48..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (len, replicas_at) = match b.get(..8)? {
            m if m == MAGIC => (LEN, Some(44)),
            m if m == MAGIC_V1 => (LEN_V1, None),
            _ => return None,
        };
        if b.len() != len {
            return None;
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        if u32_at(len - 4) != crc32fast::hash(&b[..len - 4]) {
            return None;
        }
        Some(Self {
            start: Position::new(u64_at(8), u64_at(16)),
            end: Position::new(u64_at(24), u64_at(32)),
            frames: u32_at(40),
            replicas: replicas_at.map_or(u32::MAX, u32_at),
        })
    }

    /// Durably records this intent for `reader`.
    pub fn save(&self, state_dir: &Path, reader: &str) -> Result<()> {
        crate::state::write_durably(state_dir, &file_name(reader), &self.encode())
    }

    /// The recorded intent of `reader`, if there is a valid one. A damaged
    /// file is treated as absent: the batch it described was not committed,
    /// so it is re-planned from the checkpoint, and the position check
    /// against ClickHouse still keeps it from being doubled.
    pub fn load(state_dir: &Path, reader: &str) -> Result<Option<Self>> {
        let p = state_dir.join(file_name(reader));
        match std::fs::read(&p) {
            Ok(b) => {
                let intent = Self::decode(&b);
                if intent.is_none() {
                    tracing::warn!(path = %p.display(), "ignoring a damaged batch intent");
                }
                Ok(intent)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::State { path: p, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_and_rejects_damage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Intent::load(dir.path(), "ch").unwrap(), None);
        let i = Intent {
            start: Position::new(3, 32),
            end: Position::new(4, 100),
            frames: 17,
            replicas: 0b10,
        };
        i.save(dir.path(), "ch").unwrap();
        assert_eq!(Intent::load(dir.path(), "ch").unwrap(), Some(i));
        let p = dir.path().join("ch.intent");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(Intent::load(dir.path(), "ch").unwrap(), None);
        // A file of the earlier format reads as reaching any replica.
        let mut v1 = i.encode()[..44].to_vec();
        v1[..8].copy_from_slice(MAGIC_V1);
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        std::fs::write(&p, &v1).unwrap();
        let old = Intent::load(dir.path(), "ch").unwrap().unwrap();
        assert_eq!((old.start, old.end, old.frames), (i.start, i.end, i.frames));
        assert_eq!(old.replicas, u32::MAX);
    }
}
