//! Directory layout and the file operations every part shares: naming,
//! listing, loading (raw or zstd), quarantine, checkpoints.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{is_disk_full, Error, Result};
use crate::fileio::SpoolIo;
use crate::format::{decode_checkpoint, encode_checkpoint, Position, SEGMENT_BYTES_MAX};

/// The lifecycle stage of a segment file, in the order a segment goes
/// through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SegmentState {
    /// `NNN.open`: the one segment appends go to.
    Active,
    /// `NNN.seg`: complete and fsynced, not (yet) compressed.
    Sealed,
    /// `NNN.seg.zst`: complete, one zstd stream with checksum.
    Compressed,
}

impl SegmentState {
    fn suffix(self) -> &'static str {
        match self {
            SegmentState::Active => "open",
            SegmentState::Sealed => "seg",
            SegmentState::Compressed => "seg.zst",
        }
    }

    /// Lower-case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            SegmentState::Active => "active",
            SegmentState::Sealed => "sealed",
            SegmentState::Compressed => "compressed",
        }
    }
}

/// Where everything lives under the spool directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) root: PathBuf,
    pub(crate) segments: PathBuf,
    pub(crate) readers: PathBuf,
    pub(crate) quarantine: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            segments: root.join("segments"),
            readers: root.join("readers"),
            quarantine: root.join("quarantine"),
        }
    }

    /// True once `create_dirs` has made every directory.
    pub(crate) fn exists(&self) -> bool {
        [&self.root, &self.segments, &self.readers, &self.quarantine]
            .iter()
            .all(|d| d.is_dir())
    }

    pub(crate) fn create_dirs(&self, io: &dyn SpoolIo) -> Result<()> {
        for d in [&self.root, &self.segments, &self.readers, &self.quarantine] {
            fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        fsync_dir(io, &self.root)
    }

    pub(crate) fn segment(&self, seq: u64, state: SegmentState) -> PathBuf {
        self.segments.join(format!("{seq:020}.{}", state.suffix()))
    }

    pub(crate) fn segment_tmp(&self, seq: u64) -> PathBuf {
        self.segments.join(format!("{seq:020}.seg.zst.tmp"))
    }

    pub(crate) fn checkpoint(&self, name: &str) -> PathBuf {
        self.readers.join(format!("{name}.ckpt"))
    }

    /// Where a checkpoint is written before it is renamed into place.
    pub(crate) fn checkpoint_tmp(&self, name: &str) -> PathBuf {
        self.readers.join(format!("{name}.ckpt.tmp"))
    }
}

/// Parses a segment file name; temp files and strangers give `None`.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, SegmentState)> {
    let (num, rest) = name.split_once('.')?;
    if num.len() != 20 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let state = match rest {
        "open" => SegmentState::Active,
        "seg" => SegmentState::Sealed,
        "seg.zst" => SegmentState::Compressed,
        _ => return None,
    };
    Some((num.parse().ok()?, state))
}

/// Every segment file, by sequence number; a seq can have two files for a
/// moment while it is being compressed.
pub(crate) fn list_segments(dir: &Path) -> Result<BTreeMap<u64, Vec<SegmentState>>> {
    let mut out: BTreeMap<u64, Vec<SegmentState>> = BTreeMap::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if let Some((seq, state)) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.entry(seq).or_default().push(state);
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    Ok(out)
}

/// Makes renames, creations and deletions in `dir` durable.
pub(crate) fn fsync_dir(io: &dyn SpoolIo, dir: &Path) -> Result<()> {
    io.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Removes leftovers of interrupted compressions and checkpoint writes.
pub(crate) fn remove_temp_files(dir: &Path) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", dir, e))?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| Error::io("remove temp file", &p, e))?;
        }
    }
    Ok(())
}

/// A segment's uncompressed bytes, and why decoding stopped early if it did.
pub(crate) struct SegmentBytes {
    pub(crate) data: Vec<u8>,
    pub(crate) damage: Option<String>,
}

/// Reads a whole raw segment file.
pub(crate) fn read_raw(path: &Path) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut data = Vec::new();
    Read::by_ref(&mut f)
        .take(SEGMENT_BYTES_MAX + 1)
        .read_to_end(&mut data)?;
    Ok(data)
}

/// Decompresses a sealed segment. A damaged stream keeps the bytes decoded
/// before the damage and reports it, so the frames there are not lost.
pub(crate) fn read_compressed(path: &Path) -> io::Result<SegmentBytes> {
    let f = File::open(path)?;
    let mut data = Vec::new();
    let damage = match zstd::stream::read::Decoder::new(f) {
        Err(e) => Some(format!("zstd stream cannot start: {e}")),
        Ok(dec) => {
            let mut limited = dec.take(SEGMENT_BYTES_MAX + 1);
            match limited.read_to_end(&mut data) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => Some(format!("zstd stream damaged: {e}")),
                Ok(_) if data.len() as u64 > SEGMENT_BYTES_MAX => {
                    data.truncate(SEGMENT_BYTES_MAX as usize);
                    Some(format!(
                        "decompresses past the {SEGMENT_BYTES_MAX}-byte segment limit"
                    ))
                }
                Ok(_) => None,
            }
        }
    };
    Ok(SegmentBytes { data, damage })
}

/// Uncompressed size recorded in a zstd frame header, if any.
pub(crate) fn compressed_content_size(path: &Path) -> Option<u64> {
    let mut head = [0u8; 18];
    let mut f = File::open(path).ok()?;
    let n = f.read(&mut head).ok()?;
    zstd::zstd_safe::get_frame_content_size(&head[..n])
        .ok()
        .flatten()
}

/// Copies damaged bytes into `quarantine/SEQ-OFFSET.bad`. Idempotent: the
/// same region found again (on every open, by every reader) is written once.
/// Returns the bytes newly quarantined.
pub(crate) fn quarantine(
    io: &dyn SpoolIo,
    layout: &Layout,
    seq: u64,
    offset: u64,
    bytes: &[u8],
) -> Result<u64> {
    let path = layout
        .quarantine
        .join(format!("{seq:020}-{offset:020}.bad"));
    if path.exists() {
        return Ok(0);
    }
    let tmp = path.with_extension("bad.tmp");
    io.write_file(&tmp, bytes)
        .and_then(|()| io.rename(&tmp, &path))
        .map_err(|e| Error::io("write quarantine file", &path, e))?;
    fsync_dir(io, &layout.quarantine)?;
    tracing::warn!(segment = seq, offset, bytes = bytes.len(), path = %path.display(), "quarantined corrupt spool bytes");
    Ok(bytes.len() as u64)
}

/// Reader names become file names; keep them boring.
pub(crate) fn validate_reader_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidReaderName(name.to_string()))
    }
}

/// What a checkpoint file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CheckpointRead {
    Missing,
    Corrupt,
    At(Position),
}

pub(crate) fn read_checkpoint(path: &Path) -> Result<CheckpointRead> {
    match fs::read(path) {
        Ok(b) => Ok(match decode_checkpoint(&b) {
            Some(p) => CheckpointRead::At(p),
            None => CheckpointRead::Corrupt,
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(CheckpointRead::Missing),
        Err(e) => Err(Error::io("read checkpoint", path, e)),
    }
}

/// Writes a checkpoint durably: temp file, fsync, rename, fsync directory. A
/// crash leaves either the old or the new checkpoint, never a torn one.
///
/// On a full disk the temp file cannot be written, yet a checkpoint is what
/// lets retention free space: without it a spool that filled its disk
/// could never drain. So then the existing checkpoint is overwritten in
/// place, which needs no new block. A crash during that 32-byte write could
/// at worst tear it; a torn checkpoint fails its CRC and reads as "read
/// nothing", so nothing is lost, only read again.
pub(crate) fn write_checkpoint(
    io: &dyn SpoolIo,
    layout: &Layout,
    name: &str,
    pos: Position,
) -> Result<()> {
    let path = layout.checkpoint(name);
    let tmp = layout.checkpoint_tmp(name);
    let bytes = encode_checkpoint(pos);
    match io
        .write_file(&tmp, &bytes)
        .and_then(|()| io.rename(&tmp, &path))
    {
        Ok(()) => fsync_dir(io, &layout.readers),
        Err(e) if is_disk_full(&e) => {
            let _ = fs::remove_file(&tmp);
            overwrite_in_place(&path, &bytes).map_err(|_| Error::io("write checkpoint", &path, e))
        }
        Err(e) => Err(Error::io("write checkpoint", &path, e)),
    }
}

/// Rewrites an existing file of exactly `bytes.len()` bytes in place.
fn overwrite_in_place(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    if f.metadata()?.len() != bytes.len() as u64 {
        return Err(io::Error::other("not a complete checkpoint"));
    }
    f.write_all_at(bytes, 0)?;
    f.sync_data()
}

/// Every reader with a checkpoint file.
pub(crate) fn list_readers(layout: &Layout) -> Result<Vec<(String, CheckpointRead)>> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(&layout.readers) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io("list", &layout.readers, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("list", &layout.readers, e))?;
        let fname = entry.file_name();
        let Some(name) = fname.to_str().and_then(|n| n.strip_suffix(".ckpt")) else {
            continue;
        };
        if validate_reader_name(name).is_err() {
            continue;
        }
        out.push((name.to_string(), read_checkpoint(&entry.path())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_parse_and_strangers_do_not() {
        assert_eq!(
            parse_segment_name("00000000000000000007.open"),
            Some((7, SegmentState::Active))
        );
        assert_eq!(
            parse_segment_name("00000000000000000007.seg.zst"),
            Some((7, SegmentState::Compressed))
        );
        assert_eq!(parse_segment_name("00000000000000000007.seg.zst.tmp"), None);
        assert_eq!(parse_segment_name("7.seg"), None);
        let l = Layout::new(Path::new("/x"));
        let p = l.segment(7, SegmentState::Sealed);
        assert_eq!(
            parse_segment_name(p.file_name().unwrap().to_str().unwrap()),
            Some((7, SegmentState::Sealed))
        );
    }

    #[test]
    fn reader_names_are_checked() {
        assert!(validate_reader_name("shipper-1_a").is_ok());
        assert!(validate_reader_name("").is_err());
        assert!(validate_reader_name("../x").is_err());
        assert!(validate_reader_name(&"a".repeat(65)).is_err());
    }
}
