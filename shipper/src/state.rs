//! The shipper's own files in `STATE_DIR` (batch intent, aggregation state,
//! epoch, dead letters) share one durable write, and one rule: a full disk
//! is weather, not a fatal error. A write that finds no space is retried
//! until space returns, and the wait shows in the log, `/metrics`
//! (`spoolhouse_shipper_state_disk_full`) and `/healthz`
//! (docs/adr/0008-a-full-disk-drains-by-itself.md).

use std::path::Path;

use crate::error::{Error, Result};

/// Writes `bytes` to `state_dir/name` so that a crash leaves the old or the
/// new content, never a torn one: temp file, fsync, rename, directory fsync.
pub fn write_durably(state_dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let path = state_dir.join(name);
    let tmp = state_dir.join(format!("{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|source| {
        // A temp file that could not be completed only takes space.
        let _ = std::fs::remove_file(&tmp);
        Error::State { path, source }
    })
}

impl Error {
    /// Whether this is the disk (or a disk quota) being full: the write did
    /// not happen, and the same write succeeds once space returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::State { source, .. } => spooler::error::is_disk_full(source),
            Error::Spool(e) => e.is_disk_full(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_disk_full_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        write_durably(dir.path(), "f", b"one").unwrap();
        write_durably(dir.path(), "f", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"two");
        assert!(!dir.path().join("f.tmp").exists());
        let full = Error::State {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::StorageFull),
        };
        assert!(full.is_disk_full());
        let other = Error::State {
            path: "x".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        assert!(!other.is_disk_full());
        let err = write_durably(&dir.path().join("missing"), "f", b"x").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
