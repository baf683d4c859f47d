//! The latest keyed state in Redis: for each event type whose registry entry
//! declares a `state`, the value field of the newest event per key, with a
//! TTL. One server-side script makes "newer event time wins" a single atomic
//! step, so an out-of-order older event never overwrites, and replaying a
//! batch after a crash changes nothing.
//!
//! Each key is a hash `{t: event time in ms, v: value}`. In Redis Cluster a
//! pipeline must stay within one hash slot, so each round is split by slot.
//!
//! The shipper writes through this module and the query service reads and
//! refills through it (cargo feature `state-store`), so both agree on keys,
//! layout and the newer-wins rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::event::ValidEvent;
use crate::registry::Registry;
use crate::topology::{Redis, RedisMode};
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;

/// Why a state operation failed; Redis errors are worth retrying (state
/// writes are idempotent).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis refused or the connection broke.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A round took longer than its timeout.
    #[error("Redis did not answer within {0} ms")]
    Timeout(u64),
}

/// Result of a state operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Sets `KEYS[1]` to (`ARGV[1]` = time ms, `ARGV[2]` = value) unless it already
/// holds a time at least as new; (re)arms the TTL (`ARGV[3]` ms) on write.
/// Returns 1 if written, 0 if an equal or newer state was kept.
pub const NEWER_WINS: &str = r#"
local cur = redis.call('HGET', KEYS[1], 't')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 't', ARGV[1], 'v', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// One state write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// Redis key (see [`crate::state_key::redis_key`]).
    pub key: String,
    /// Event time in ms.
    pub time_ms: u64,
    /// The value field, as column text.
    pub value: String,
    /// TTL in ms.
    pub ttl_ms: u64,
}

/// The state write for `event`, if its type declares a state.
pub fn state_write(registry: &Registry, event: &ValidEvent) -> Option<StateWrite> {
    let st = registry.get(&event.event)?.state.as_ref()?;
    Some(StateWrite {
        key: event.redis_state_key(st)?,
        time_ms: event.time_ms,
        value: event.attr(&st.value)?.to_column_text(),
        ttl_ms: st.ttl_s.saturating_mul(1000),
    })
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A connection to this DC's Redis, single node or cluster.
///
/// Cheap to clone, and clones share one multiplexed connection (redis'
/// `ConnectionManager` / cluster connection): a reader clones it per request
/// instead of taking turns behind a lock (issue 8).
#[derive(Clone)]
pub struct StateStore {
    conn: Conn,
    script: redis::Script,
    /// Whether every master has the script; reset after any error, since a
    /// restarted Redis has lost it. Shared by the clones, which share the
    /// connection.
    script_loaded: Arc<AtomicBool>,
    timeout: Duration,
}

impl StateStore {
    /// Connects to `redis`; fails if it does not answer within `timeout`.
    pub async fn connect(redis_cfg: &Redis, timeout: Duration) -> Result<Self> {
        let urls: Vec<String> = redis_cfg
            .nodes
            .iter()
            .map(|n| format!("redis://{n}/"))
            .collect();
        let connect = async {
            Ok::<_, redis::RedisError>(match redis_cfg.mode {
                RedisMode::Single => {
                    let client = redis::Client::open(urls[0].as_str())?;
                    Conn::Single(ConnectionManager::new(client).await?)
                }
                RedisMode::Cluster => {
                    let client = redis::cluster::ClusterClient::new(urls)?;
                    Conn::Cluster(client.get_async_connection().await?)
                }
            })
        };
        let conn = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| Error::Timeout(timeout.as_millis() as u64))??;
        Ok(Self {
            conn,
            script: redis::Script::new(NEWER_WINS),
            script_loaded: Arc::new(AtomicBool::new(false)),
            timeout,
        })
    }

    /// Applies `writes`, newer-wins, in pipelines of one slot each (cluster)
    /// or one pipeline (single node). Returns how many changed a key.
    pub async fn apply(&mut self, writes: &[StateWrite]) -> Result<u64> {
        if writes.is_empty() {
            return Ok(0);
        }
        let mut groups: HashMap<Option<Slot>, Vec<&StateWrite>> = HashMap::new();
        for w in writes {
            let slot = match self.conn {
                Conn::Single(_) => None,
                Conn::Cluster(_) => Some(Slot::for_key(&w.key)),
            };
            groups.entry(slot).or_default().push(w);
        }
        let timeout = self.timeout;
        let mut changed = 0u64;
        for group in groups.values() {
            let round = async {
                if !self.script_loaded.load(Ordering::Acquire) {
                    self.load_script().await?;
                    self.script_loaded.store(true, Ordering::Release);
                }
                let mut pipe = redis::pipe();
                for w in group {
                    pipe.cmd("EVALSHA")
                        .arg(self.script.get_hash())
                        .arg(1)
                        .arg(&w.key)
                        .arg(w.time_ms)
                        .arg(&w.value)
                        .arg(w.ttl_ms);
                }
                let results: Vec<i64> = self.query(&pipe).await?;
                Ok::<_, Error>(results.iter().filter(|&&r| r == 1).count() as u64)
            };
            let done = tokio::time::timeout(timeout, round)
                .await
                .map_err(|_| Error::Timeout(timeout.as_millis() as u64))
                .and_then(|r| r);
            match done {
                Ok(n) => changed += n,
                Err(e) => {
                    self.script_loaded.store(false, Ordering::Release);
                    return Err(e);
                }
            }
        }
        Ok(changed)
    }

    async fn query<T: redis::FromRedisValue>(&mut self, pipe: &redis::Pipeline) -> Result<T> {
        Ok(match &mut self.conn {
            Conn::Single(c) => pipe.query_async(c).await?,
            Conn::Cluster(c) => pipe.query_async(c).await?,
        })
    }

    /// Loads the script on every master (`SCRIPT LOAD` is idempotent).
    async fn load_script(&mut self) -> Result<()> {
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(NEWER_WINS);
        match &mut self.conn {
            Conn::Single(c) => {
                let _: String = load.query_async(c).await?;
            }
            Conn::Cluster(c) => {
                let routing = redis::cluster_routing::RoutingInfo::MultiNode((
                    redis::cluster_routing::MultipleNodeRoutingInfo::AllMasters,
                    None,
                ));
                let _ = c.route_command(load, routing).await?;
            }
        }
        Ok(())
    }

    /// Reads the state at `key`: (event time ms, value); fails if Redis
    /// does not answer within the timeout.
    pub async fn get(&mut self, key: &str) -> Result<Option<(u64, String)>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(key).arg("t").arg("v");
        let read = async {
            Ok::<(Option<u64>, Option<String>), redis::RedisError>(match &mut self.conn {
                Conn::Single(c) => cmd.query_async(c).await?,
                Conn::Cluster(c) => cmd.query_async(c).await?,
            })
        };
        let (t, v) = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| Error::Timeout(self.timeout.as_millis() as u64))??;
        Ok(t.zip(v))
    }
}
