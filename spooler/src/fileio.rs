//! The seam under every file operation of the spool that decides what a
//! crash leaves behind ([`SpoolIo`]), and the real one ([`StdIo`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The spool's file operations that decide what survives a crash: every
/// frame write and fdatasync of a segment and of a compressed copy (streamed
/// through [`SeamWriter`]), every rename (sealing, a
/// compressed copy moved in, a checkpoint put in place), every directory
/// sync, and every small file written whole (a checkpoint's temp file). Tests
/// replace it to fail or tear any of them and check that nothing
/// unconfirmed is acknowledged and that reopening recovers (raft-engine's
/// `FileSystem` seam, narrowed to what the spool does).
pub trait SpoolIo: Send + Sync {
    /// Writes all of `buf` at `offset` (a partial write must return an error).
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&self, file: &File) -> io::Result<()>;
    /// Renames `from` to `to` (atomic on one file system).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    /// Makes renames, creations and deletions in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    /// Writes `bytes` as the whole content of the file at `path` (created or
    /// truncated), durably.
    fn write_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
}

/// The real thing: `pwrite` (blocks reserved first), `fdatasync`, `rename`,
/// `fsync` of directories.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdIo;

impl SpoolIo for StdIo {
    /// Reserves the blocks first (`fallocate`, size unchanged), so a full
    /// disk refuses the append before any byte of it is written: a reader in
    /// another process, which sees bytes as they are written, never sees
    /// part of an append that then fails and is cut off (it could take the
    /// frames of a refused batch, or lose its place when the next append
    /// writes other bytes there). File systems without `fallocate` write
    /// directly, as before.
    fn write_at(&self, file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if !buf.is_empty() {
            // SAFETY: fallocate on a file descriptor this call borrows.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    buf.len() as libc::off_t,
                )
            };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if crate::error::is_disk_full(&e) {
                    return Err(e);
                }
                // EOPNOTSUPP and the like: nothing reserved, write anyway.
            }
        }
        file.write_all_at(buf, offset)
    }

    fn sync_data(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }
}

/// A [`Write`] that appends to `file` through a seam's [`SpoolIo::write_at`],
/// so a file streamed in pieces (a compressed copy, which may be as large as
/// a segment and is never held whole in memory) fails and tears where a
/// test's seam says.
pub(crate) struct SeamWriter<'a> {
    io: &'a dyn SpoolIo,
    file: File,
    pos: u64,
}

impl<'a> SeamWriter<'a> {
    /// Writes `file` from its start.
    pub(crate) fn new(io: &'a dyn SpoolIo, file: File) -> Self {
        SeamWriter { io, file, pos: 0 }
    }

    /// fdatasyncs what was written through the seam and gives the file back.
    pub(crate) fn sync(self) -> io::Result<File> {
        self.io.sync_data(&self.file)?;
        Ok(self.file)
    }
}

impl Write for SeamWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.io.write_at(&self.file, buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
