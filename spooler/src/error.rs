//! The spooler's one error type.

use std::io;
use std::path::PathBuf;

use crate::format::Position;

/// Everything the spooler can fail with. Corruption, I/O and a full quota are
/// separate variants because callers react differently: skip and alert,
/// retry or reopen, push back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed. The caller may retry the operation;
    /// an append that returned this was not acknowledged.
    #[error("spool I/O error while trying to {op} {path}: {source}")]
    Io {
        /// What the spooler was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what the spooler wrote. Readers and recovery skip
    /// and quarantine damaged frames themselves; this is returned only where
    /// there is nothing to skip to (for example a checkpoint file that cannot
    /// be decoded).
    #[error("corrupt spool data in {path}: {reason}")]
    Corruption {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Appending would take the spool past its disk quota. Nothing was
    /// written; push back on producers until readers commit and retention
    /// frees space, or raise `quota_bytes`.
    #[error("spool quota of {quota_bytes} bytes would be exceeded: {used_bytes} bytes used, {needed_bytes} more needed; let readers commit so retention can free segments, or raise quota_bytes")]
    Full {
        /// The configured quota.
        quota_bytes: u64,
        /// Bytes the segments take now.
        used_bytes: u64,
        /// Bytes the refused append needed.
        needed_bytes: u64,
    },
    /// A payload is larger than `FRAME_PAYLOAD_MAX`; split it.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes; split the event")]
    FrameTooLarge {
        /// Payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// One batch would not fit in a segment of `SEGMENT_BYTES_MAX`; split it.
    #[error("append batch of {len} bytes cannot fit in one segment (limit {max} bytes); split the batch")]
    BatchTooLarge {
        /// Encoded batch length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// Another process holds the spool directory for writing.
    #[error("spool directory {path} is already open for writing by another process")]
    Locked {
        /// The spool directory.
        path: PathBuf,
    },
    /// An earlier write or fsync failed, so what the kernel holds is unknown;
    /// the spool refuses appends until it is reopened and recovered.
    #[error(
        "spool refuses appends after an earlier write or fsync failure; reopen it to run recovery"
    )]
    Poisoned,
    /// A configuration value breaks a rule; names the parameter and the rule.
    #[error("invalid spool config: {0}")]
    Config(String),
    /// Reader names become file names, so they are restricted.
    #[error("invalid reader name {0:?}: use 1 to 64 characters from A-Z a-z 0-9 _ -")]
    InvalidReaderName(String),
    /// A reader was asked to commit a position it has not read up to.
    #[error("cannot commit {requested}: reader has read up to {read} and committed {committed}")]
    InvalidCommit {
        /// What the caller asked to commit.
        requested: Position,
        /// How far the reader has read.
        read: Position,
        /// What is already committed.
        committed: Position,
    },
}

impl Error {
    /// Whether this is the disk (or a disk quota) being full: nothing was
    /// written, the spool works on, and the same append succeeds once
    /// space returns.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if is_disk_full(source))
    }

    /// A short stable code for metric labels and logs; never changes once
    /// published.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::Corruption { .. } => "corruption",
            Error::Full { .. } => "full",
            Error::FrameTooLarge { .. } => "frame_too_large",
            Error::BatchTooLarge { .. } => "batch_too_large",
            Error::Locked { .. } => "locked",
            Error::Poisoned => "poisoned",
            Error::Config(_) => "config",
            Error::InvalidReaderName(_) => "invalid_reader_name",
            Error::InvalidCommit { .. } => "invalid_commit",
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Shorthand for the spooler's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whether `e` says the disk (or the user's disk quota) is full: the one
/// test of it, for the spool and for every service writing state beside it.
pub fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}
