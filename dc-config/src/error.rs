//! Errors that point at the operator's file: which file, line, key and rule.

use std::fmt;
use std::path::PathBuf;

/// One problem in a declared file, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the key could be found in the file.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `datacenter[1].clickhouse.shard[0].weight`.
    pub key: String,
    /// The rule that was broken, phrased so the reader knows what to change.
    pub rule: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.rule)
        } else {
            write!(f, ": `{}`: {}", self.key, self.rule)
        }
    }
}

/// Every problem found in a set of declared files, reported together so an
/// operator fixes them in one pass instead of one per run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the declared configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Errors from loading a declared file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}; check the path and its permissions")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but breaks one or more rules.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}
