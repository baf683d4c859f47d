//! The one bounded wait of the harness: poll a condition until it holds,
//! a time limit passes, or Ctrl-C arrives ([`crate::INTERRUPTED`]). The
//! demo, the benches and the process tests all wait through it, each
//! turning a failure into its own kind of error.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often the condition is looked at.
pub const POLL: Duration = Duration::from_millis(100);

/// Why a wait ended without its condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// The limit passed first.
    #[error("{what} did not happen within {} s", limit.as_secs())]
    TimedOut {
        /// What was waited for.
        what: String,
        /// The limit.
        limit: Duration,
    },
    /// Ctrl-C arrived.
    #[error("interrupted while waiting for {0}")]
    Interrupted(String),
}

/// Polls `ok` every [`POLL`] until it holds; fails after `limit` or on
/// Ctrl-C.
pub fn until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<(), WaitError> {
    let deadline = Instant::now() + limit;
    while !ok() {
        if crate::INTERRUPTED.load(Ordering::SeqCst) {
            return Err(WaitError::Interrupted(what.to_string()));
        }
        if Instant::now() > deadline {
            return Err(WaitError::TimedOut {
                what: what.to_string(),
                limit,
            });
        }
        std::thread::sleep(POLL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_once_or_times_out() {
        assert_eq!(until("now", Duration::ZERO, || true), Ok(()));
        let mut n = 0;
        assert_eq!(
            until("the third look", Duration::from_secs(5), || {
                n += 1;
                n == 3
            }),
            Ok(())
        );
        assert!(matches!(
            until("never", Duration::from_millis(150), || false),
            Err(WaitError::TimedOut { .. })
        ));
    }
}
