//! The state the writer shares with in-process readers: the durable
//! watermark, and a generation counter readers block on instead of polling.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::format::Position;

/// Wakes waiting readers when data may have arrived. A generation counter,
/// not a flag, so a wake-up between a reader's check and its wait is not
/// lost.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.lock().expect("signal mutex poisoned")
    }

    pub(crate) fn notify(&self) {
        let mut g = self.generation.lock().expect("signal mutex poisoned");
        *g = g.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Blocks until the generation differs from `seen` or `timeout` passes;
    /// true if it changed.
    pub(crate) fn wait_changed(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.generation.lock().expect("signal mutex poisoned");
        while *g == seen {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .expect("signal mutex poisoned")
                .0;
        }
        true
    }
}

/// Group-commit state: how far the spool is known durable, and whether a sync
/// is in flight.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    pub(crate) durable: Position,
    pub(crate) syncing: bool,
    pub(crate) poisoned: bool,
}

/// Shared between a `Spool` and the readers it hands out; outlives neither's
/// files.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) sync: Mutex<SyncState>,
    pub(crate) sync_cv: Condvar,
    pub(crate) signal: Signal,
}

impl Shared {
    pub(crate) fn durable(&self) -> Position {
        self.sync.lock().expect("sync mutex poisoned").durable
    }

    pub(crate) fn publish_durable(&self, pos: Position) {
        let mut st = self.sync.lock().expect("sync mutex poisoned");
        if pos > st.durable {
            st.durable = pos;
        }
        drop(st);
        self.sync_cv.notify_all();
        self.signal.notify();
    }
}
