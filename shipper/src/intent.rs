//! The batch intent: before a batch is inserted, its exact spool range is
//! made durable, so that after a crash the same range (and so the same
//! insert block) is replayed, whatever else has been spooled since. Without
//! it, a batch cut short by its age limit would be replayed longer, as a
//! different block, and escape ClickHouse's block deduplication.
//!
//! ```text
//! struct Intent {          // STATE_DIR/<reader>.intent, 48 bytes, little-endian
//!     magic: [u8; 8],      // "SHINTENT"
//!     start: (u64, u64),   // first frame's position (segment, offset)
//!     end: (u64, u64),     // position after the last frame
//!     frames: u32,         // frames in the range
//!     crc32: u32,          // of the 44 bytes above
//! }
//! ```

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use spooler::Position;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"SHINTENT";
const LEN: usize = 48;

/// A planned batch: the spool range `[start, end)` holding `frames` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intent {
    /// Position of the first frame.
    pub start: Position,
    /// Position after the last frame: what the reader commits when done.
    pub end: Position,
    /// Number of frames.
    pub frames: u32,
}

fn path(state_dir: &Path, reader: &str) -> PathBuf {
    state_dir.join(format!("{reader}.intent"))
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::State {
        path: path.to_path_buf(),
        source,
    }
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
        let crc = crc32fast::hash(&b[..44]);
        b[44..].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if b.len() != LEN || &b[..8] != MAGIC {
            return None;
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let crc = u32::from_le_bytes(b[44..].try_into().expect("4 bytes"));
        if crc != crc32fast::hash(&b[..44]) {
            return None;
        }
        Some(Self {
            start: Position::new(u64_at(8), u64_at(16)),
            end: Position::new(u64_at(24), u64_at(32)),
            frames: u32::from_le_bytes(b[40..44].try_into().expect("4 bytes")),
        })
    }

    /// Durably records this intent for `reader` (temp file, fsync, rename, directory fsync).
    pub fn save(&self, state_dir: &Path, reader: &str) -> Result<()> {
        let final_path = path(state_dir, reader);
        let tmp = final_path.with_extension("intent.tmp");
        let mut f = File::create(&tmp).map_err(err(&tmp))?;
        f.write_all(&self.encode()).map_err(err(&tmp))?;
        f.sync_data().map_err(err(&tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(err(&final_path))?;
        File::open(state_dir)
            .and_then(|d| d.sync_all())
            .map_err(err(state_dir))?;
        Ok(())
    }

    /// The recorded intent of `reader`, if there is a valid one. A damaged
    /// file is treated as absent: the batch it described was not committed,
    /// so it is re-planned from the checkpoint, and the position check
    /// against ClickHouse still keeps it from being doubled.
    pub fn load(state_dir: &Path, reader: &str) -> Result<Option<Self>> {
        let p = path(state_dir, reader);
        match std::fs::read(&p) {
            Ok(b) => {
                let intent = Self::decode(&b);
                if intent.is_none() {
                    tracing::warn!(path = %p.display(), "ignoring a damaged batch intent");
                }
                Ok(intent)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(&p)(e)),
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
        };
        i.save(dir.path(), "ch").unwrap();
        assert_eq!(Intent::load(dir.path(), "ch").unwrap(), Some(i));
        let p = dir.path().join("ch.intent");
        let mut b = std::fs::read(&p).unwrap();
        b[20] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert_eq!(Intent::load(dir.path(), "ch").unwrap(), None);
    }
}
