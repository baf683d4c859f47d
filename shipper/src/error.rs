//! The shipper's errors, kept apart by what the caller can do about them.

use std::path::PathBuf;

/// What went wrong while shipping.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spool could not be read or a checkpoint not written: the
    /// pipeline stops; nothing was committed past what was shipped.
    #[error("spool: {0}")]
    Spool(#[from] spooler::Error),
    /// The shipper's own state (intent file, dead letters) could not be
    /// read or written.
    #[error("shipper state {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// ClickHouse failed; `retriable` says whether trying again can help.
    #[error("ClickHouse at {url}: {message}")]
    ClickHouse {
        /// Replica tried.
        url: String,
        /// The error text, with ClickHouse's code when it gave one.
        message: String,
        /// Whether the same request may succeed later unchanged.
        retriable: bool,
        /// Stable label for metrics.
        kind: &'static str,
        /// The request never reached a server (connection refused), so it
        /// cannot land later.
        unsent: bool,
    },
    /// Redis failed or timed out; always retried (the state is idempotent).
    #[error("{0}")]
    Redis(#[from] dc_config::state_store::Error),
    /// ZooKeeper failed or timed out (aggregation's publishing and
    /// election); always retried with a new session.
    #[error("ZooKeeper: {0}")]
    ZooKeeper(String),
    /// A relay could not be reached, refused the session, ended it or
    /// stayed silent (relay mode, docs/adr/0017): the forwarder takes the
    /// next relay and over again.
    #[error("relay {relay}: {message}")]
    Relay {
        /// The relay's address.
        relay: String,
        /// What happened.
        message: String,
        /// The relay refused this host's config (secret, DC, version):
        /// retries go on, but only a config change can help.
        config: bool,
    },
    /// The config breaks a rule.
    #[error("{0}")]
    Config(String),
    /// Shutdown came while waiting (for disk space): nothing was done.
    #[error("shutting down")]
    Stopping,
}

impl Error {
    /// Whether trying the same operation again may succeed.
    pub fn retriable(&self) -> bool {
        match self {
            Error::ClickHouse { retriable, .. } => *retriable,
            Error::Redis(_) | Error::ZooKeeper(_) | Error::Relay { .. } => true,
            Error::Spool(_) | Error::State { .. } | Error::Config(_) | Error::Stopping => false,
        }
    }

    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Spool(_) => "spool",
            Error::State { .. } => "state",
            Error::ClickHouse { kind, .. } => kind,
            Error::Redis(dc_config::state_store::Error::Redis(_)) => "redis",
            Error::Redis(dc_config::state_store::Error::Timeout(_)) => "redis_timeout",
            Error::ZooKeeper(_) => "zookeeper",
            Error::Relay { .. } => "relay",
            Error::Config(_) => "config",
            Error::Stopping => "stopping",
        }
    }
}

/// Result with the shipper's error.
pub type Result<T> = std::result::Result<T, Error>;
