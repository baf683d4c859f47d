//! The collector's error types: one for the service, one for the client.

use std::io;
use std::path::PathBuf;

/// Why the collector could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound; nothing was started. Fix the address
    /// or stop whatever holds it.
    #[error("binding the {what} listener at {addr}: {source}")]
    Bind {
        /// `unix socket` or `tcp`.
        what: &'static str,
        /// The address or path.
        addr: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The TCP listener must stay on loopback: the collector is a local edge.
    #[error("tcp listener {0} is not a loopback address; the collector only listens on 127.0.0.1 or ::1")]
    NotLoopback(std::net::SocketAddr),
    /// The spool failed to open, or failed in a way that stops ingest.
    #[error(transparent)]
    Spool(#[from] spooler::Error),
    /// An inbox directory or its state file could not be read or written;
    /// inbox ingest stops, the sockets keep serving.
    #[error("inbox {path}: {source}")]
    Inbox {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The inbox resume state file does not decode; delete it to rebuild
    /// the resume positions from the whole spool.
    #[error(
        "inbox state file {path} is damaged: {reason}; delete it to rebuild it from the spool"
    )]
    InboxState {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blocking spool task panicked or was cancelled: a bug.
    #[error("a spool task failed: {0}")]
    Task(String),
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting, writing or reading failed, and retries (if any) are used up.
    #[error("collector at {endpoint}: {source}")]
    Io {
        /// Where the client was connecting.
        endpoint: String,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// The collector answered something this client does not understand.
    #[error("collector sent an unexpected response line {line:?}: {reason}")]
    Protocol {
        /// The response line.
        line: String,
        /// Why it is unexpected.
        reason: String,
    },
    /// The collector kept refusing (spool full, shutting down) through every retry.
    #[error("collector refused the batch through {attempts} attempts: {reason}")]
    Refused {
        /// Attempts made.
        attempts: u32,
        /// The last refusal.
        reason: String,
    },
}
