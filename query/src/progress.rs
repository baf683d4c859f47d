//! Watch progress, the KION store: the newest `video_time` per (user, video).
//! Reads try this DC's Redis first; on a miss, this DC's ClickHouse, then the
//! global table (every DC); what ClickHouse finds is written back to Redis
//! with the registry's TTL (newer wins, so a concurrent write of a newer
//! event by the shipper is never undone). Writes go through the collector.
//!
//! Issue 8 (`spoolhouse bench progress`): Redis hits share one multiplexed
//! connection, cloned per request, instead of taking turns behind a lock;
//! at most `progress_lookups_max` misses scan ClickHouse at once, and a miss
//! beyond that gets a 503 to retry at once rather than a place in a queue;
//! a key no DC has is remembered for [`NEGATIVE_TTL`] in a bounded
//! [`NegativeCache`] so asking again does not rescan ClickHouse.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dc_config::registry::{FieldType, Registry, State};
use dc_config::schema::table;
use dc_config::sql::quote_str;
use dc_config::state_store::{StateStore, StateWrite};
use dc_config::topology::Redis;

use crate::ch::{ClickHouse, Coverage};
use crate::error::{Error, Result};

/// The event type whose state the progress endpoints read.
pub const PROGRESS_EVENT: &str = "watch_progress";

/// Where an answer came from (also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This DC's Redis.
    Redis,
    /// This DC's ClickHouse.
    ClickHouseDc,
    /// Every DC's ClickHouse through the global table.
    ClickHouseGlobal,
    /// The negative cache: no DC had the key when last looked for, within
    /// [`NEGATIVE_TTL`], and Redis has no state for it now.
    NegativeCache,
}

impl Source {
    /// Name in answers and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::ClickHouseDc => "clickhouse_dc",
            Source::ClickHouseGlobal => "clickhouse_global",
            Source::NegativeCache => "negative_cache",
        }
    }
}

/// One progress answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The newest value and its event time, if any DC has one.
    pub found: Option<(u64, String)>,
    /// Where the answer came from (for a miss: the last place looked).
    pub source: Source,
    /// Which DCs a global read could not reach.
    pub coverage: Coverage,
}

/// How long a key that no datacenter had stays "known absent". Short, as a
/// write in another DC reaches only that DC's Redis and this DC sees it
/// through ClickHouse: such a write can be hidden at most this long (a
/// write into this DC's Redis never is: a read checks the real key first).
pub const NEGATIVE_TTL: Duration = Duration::from_secs(60);

/// Most keys the negative cache holds (about 100 bytes each: ~10 MB). At the
/// benchmark's 25 misses/s, 60 s of misses take 1 500.
pub const NEGATIVE_KEYS_MAX: usize = 100_000;

/// Keys no datacenter had, each for a while: in process, bounded, oldest
/// out first.
///
/// In process rather than a Redis key with a TTL: it costs no second Redis
/// round trip on a miss (nor a second hash slot in a cluster, where the two
/// keys could not share a pipeline), it keeps working while Redis is down,
/// and it takes no room from the real states in Redis. The price is one scan
/// per query-service process per key per [`NEGATIVE_TTL`] instead of one per
/// DC, which the lookup bound already covers.
#[derive(Debug)]
pub struct NegativeCache {
    ttl: Duration,
    max_keys: usize,
    /// When each key was found absent.
    at: HashMap<String, Instant>,
    /// Keys in insertion order, for eviction; a key re-inserted sits here
    /// twice, and only the entry matching `at` counts.
    order: VecDeque<(String, Instant)>,
}

impl NegativeCache {
    /// An empty cache of at most `max_keys` keys (at least 1), each kept `ttl`.
    pub fn new(ttl: Duration, max_keys: usize) -> Self {
        Self {
            ttl,
            max_keys: max_keys.max(1),
            at: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Whether `key` was found absent less than the TTL before `now`.
    pub fn contains(&self, key: &str, now: Instant) -> bool {
        self.at
            .get(key)
            .is_some_and(|&t| now.saturating_duration_since(t) < self.ttl)
    }

    /// Notes `key` absent at `now`, dropping expired keys and, over the
    /// bound, the oldest.
    pub fn insert(&mut self, key: &str, now: Instant) {
        self.at.insert(key.to_string(), now);
        self.order.push_back((key.to_string(), now));
        while let Some((k, t)) = self.order.front() {
            let current = self.at.get(k) == Some(t);
            let expired = now.saturating_duration_since(*t) >= self.ttl;
            if current && !expired && self.at.len() <= self.max_keys {
                break;
            }
            let (k, _) = self.order.pop_front().expect("front exists");
            if current {
                self.at.remove(&k);
            }
        }
        // Re-inserted keys leave stale entries behind; keep `order` bounded too.
        if self.order.len() > 2 * self.max_keys {
            let at = &self.at;
            self.order.retain(|(k, t)| at.get(k) == Some(t));
        }
    }

    /// Forgets `key` (a value for it was found).
    pub fn remove(&mut self, key: &str) {
        self.at.remove(key);
    }

    /// Keys held (expired ones included until pushed out).
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

/// The shared Redis connection and its generation, so a request whose read
/// failed drops only the connection it used, not a newer one.
#[derive(Default)]
struct StoreSlot {
    generation: u64,
    store: Option<StateStore>,
}

/// The progress reader.
pub struct ProgressService {
    state: State,
    value_type: FieldType,
    ch: Arc<ClickHouse>,
    redis: Redis,
    /// Held only to clone or replace the connection, never across an await.
    store: std::sync::Mutex<StoreSlot>,
    /// One (re)connection at a time; requests arriving meanwhile wait for it
    /// (bounded by the Redis timeout) rather than each dialing.
    connecting: tokio::sync::Mutex<()>,
    redis_timeout: Duration,
    lookups: Arc<tokio::sync::Semaphore>,
    lookups_max: usize,
    negative: std::sync::Mutex<NegativeCache>,
}

impl ProgressService {
    /// A reader for `registry`'s `watch_progress` state; `None` if the
    /// registry declares no such state.
    /// At most `lookups_max` Redis misses look in ClickHouse at once.
    pub fn new(
        registry: &Registry,
        ch: Arc<ClickHouse>,
        redis: Redis,
        redis_timeout: Duration,
        lookups_max: usize,
    ) -> Option<Self> {
        let ev = registry.get(PROGRESS_EVENT)?;
        let state = ev.state.clone()?;
        let value_type = ev.fields.get(&state.value)?.ty;
        Some(Self {
            state,
            value_type,
            ch,
            redis,
            store: std::sync::Mutex::new(StoreSlot::default()),
            connecting: tokio::sync::Mutex::new(()),
            redis_timeout,
            lookups: Arc::new(tokio::sync::Semaphore::new(lookups_max)),
            lookups_max,
            negative: std::sync::Mutex::new(NegativeCache::new(NEGATIVE_TTL, NEGATIVE_KEYS_MAX)),
        })
    }

    /// Misses looking in ClickHouse right now.
    pub fn lookups_in_flight(&self) -> usize {
        self.lookups_max
            .saturating_sub(self.lookups.available_permits())
    }

    /// The key fields, in order (the path parameters).
    pub fn key_fields(&self) -> &[String] {
        &self.state.key
    }

    /// The value as JSON: a number for numeric fields, else a string.
    pub fn value_json(&self, text: &str) -> serde_json::Value {
        if self.value_type.is_numeric() {
            if let Ok(n) = text.parse::<i128>() {
                if let Ok(u) = u64::try_from(n) {
                    return serde_json::json!(u);
                }
                if let Ok(i) = i64::try_from(n) {
                    return serde_json::json!(i);
                }
            }
            if let Ok(f) = text.parse::<f64>() {
                return serde_json::json!(f);
            }
        }
        serde_json::json!(text)
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, StoreSlot> {
        self.store.lock().expect("Redis slot lock")
    }

    fn cached_store(&self) -> Option<(u64, StateStore)> {
        let slot = self.slot();
        slot.store.clone().map(|s| (slot.generation, s))
    }

    /// A clone of the shared connection, connecting first if there is none.
    async fn store(&self) -> Option<(u64, StateStore)> {
        if let Some(s) = self.cached_store() {
            return Some(s);
        }
        let _one = self.connecting.lock().await;
        if let Some(s) = self.cached_store() {
            return Some(s);
        }
        match StateStore::connect(&self.redis, self.redis_timeout).await {
            Ok(s) => {
                let mut slot = self.slot();
                slot.generation += 1;
                slot.store = Some(s.clone());
                Some((slot.generation, s))
            }
            Err(e) => {
                tracing::warn!(error = %e, "Redis unavailable; reading ClickHouse");
                None
            }
        }
    }

    /// Drops connection `generation` after it failed; the next request
    /// connects again.
    fn forget(&self, generation: u64) {
        let mut slot = self.slot();
        if slot.generation == generation {
            slot.store = None;
        }
    }

    /// The state in Redis; `None` when Redis could not be asked.
    async fn redis_get(&self, key: &str) -> Option<Option<(u64, String)>> {
        let (generation, mut store) = self.store().await?;
        match store.get(key).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %e, "Redis read failed; reading ClickHouse");
                self.forget(generation);
                None
            }
        }
    }

    async fn refill(&self, key: &str, time_ms: u64, value: &str) {
        let Some((generation, mut store)) = self.cached_store() else {
            return;
        };
        let write = StateWrite {
            key: key.to_string(),
            time_ms,
            value: value.to_string(),
            ttl_ms: self.state.ttl_s.saturating_mul(1000),
        };
        if let Err(e) = store.apply(&[write]).await {
            tracing::warn!(error = %e, "refilling Redis failed");
            self.forget(generation);
        }
    }

    fn negative(&self) -> std::sync::MutexGuard<'_, NegativeCache> {
        self.negative.lock().expect("negative cache lock")
    }

    /// The newest value of the key in `table_name` (a keyed-state table):
    /// a lookup by its sorting key, one granule, however many events exist.
    fn latest_sql(&self, table_name: &str, key_values: &[String]) -> String {
        format!(
            "SELECT time_ms, value FROM {}.{table_name} WHERE event = {} AND key = {} ORDER BY time_ms DESC LIMIT 1 FORMAT TSV",
            self.ch.database(),
            quote_str(PROGRESS_EVENT),
            quote_str(&dc_config::state_key::table_key(key_values))
        )
    }

    fn parse_latest(body: &[u8]) -> Option<(u64, String)> {
        let text = String::from_utf8_lossy(body);
        let line = text.lines().next()?;
        let (t, v) = line.split_once('\t')?;
        Some((t.parse().ok()?, v.to_string()))
    }

    /// The newest value for the key (canonical column text of each key
    /// field, in `key_fields` order). A miss past the lookup bound is
    /// [`Error::Busy`].
    pub async fn get(&self, key_values: &[String]) -> Result<Answer> {
        let key = dc_config::state_key::redis_key(PROGRESS_EVENT, key_values);
        let redis = self.redis_get(&key).await;
        if let Some(Some(hit)) = redis {
            return Ok(Answer {
                found: Some(hit),
                source: Source::Redis,
                coverage: Coverage::default(),
            });
        }
        // Only when Redis answered "no such key": with Redis down, a write
        // may have reached ClickHouse alone since the key was found absent.
        if redis.is_some() && self.negative().contains(&key, Instant::now()) {
            return Ok(Answer {
                found: None,
                source: Source::NegativeCache,
                coverage: Coverage::default(),
            });
        }
        let Ok(_permit) = self.lookups.clone().try_acquire_owned() else {
            return Err(Error::Busy(format!(
                "{} progress lookups in ClickHouse (Redis misses) already running; retry shortly",
                self.lookups_max
            )));
        };
        let local = self
            .ch
            .fetch(&self.latest_sql(table::KEYED_STATE_DC, key_values), &[])
            .await?;
        if let Some(found) = Self::parse_latest(&local) {
            self.refill(&key, found.0, &found.1).await;
            return Ok(Answer {
                found: Some(found),
                source: Source::ClickHouseDc,
                coverage: Coverage::default(),
            });
        }
        let (global, coverage) = self
            .ch
            .fetch_global(
                &self.latest_sql(table::KEYED_STATE_ALL, key_values),
                &self.latest_sql(table::KEYED_STATE_DC, key_values),
            )
            .await?;
        let found = Self::parse_latest(&global);
        match &found {
            Some(f) => {
                self.refill(&key, f.0, &f.1).await;
                self.negative().remove(&key);
            }
            // Absent only if every DC answered: a partial "no" may be wrong.
            None if !coverage.partial => self.negative().insert(&key, Instant::now()),
            None => {}
        }
        Ok(Answer {
            found,
            source: Source::ClickHouseGlobal,
            coverage,
        })
    }
}

/// Checks a path parameter against its field's type; the canonical text.
pub fn key_value(registry: &Registry, field: &str, raw: &str) -> Result<String> {
    let ty = registry
        .get(PROGRESS_EVENT)
        .and_then(|e| e.fields.get(field))
        .map(|f| f.ty)
        .ok_or_else(|| Error::NotFound(format!("no field {field} in {PROGRESS_EVENT}")))?;
    match ty.int_range() {
        Some((min, max)) => {
            let n: i128 = raw.parse().map_err(|_| Error::BadParameter {
                parameter: field.to_string(),
                rule: format!("an integer from {min} to {max}"),
            })?;
            if n < min || n > max {
                return Err(Error::BadParameter {
                    parameter: field.to_string(),
                    rule: format!("an integer from {min} to {max}"),
                });
            }
            Ok(n.to_string())
        }
        None if raw.len() <= 1024 && !raw.contains(dc_config::state_key::TABLE_SEPARATOR) => {
            Ok(raw.to_string())
        }
        None => Err(Error::BadParameter {
            parameter: field.to_string(),
            rule: "at most 1024 bytes, without U+001F".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_keys_expire_after_the_ttl() {
        let t0 = Instant::now();
        let mut c = NegativeCache::new(Duration::from_secs(60), 10);
        c.insert("a", t0);
        assert!(c.contains("a", t0));
        assert!(c.contains("a", t0 + Duration::from_secs(59)));
        assert!(!c.contains("a", t0 + Duration::from_secs(60)));
        assert!(!c.contains("b", t0));
        // Expired keys leave on the next insert.
        c.insert("b", t0 + Duration::from_secs(61));
        assert_eq!(c.len(), 1);
        assert!(c.contains("b", t0 + Duration::from_secs(61)));
    }

    #[test]
    fn negative_cache_holds_at_most_its_bound_oldest_out_first() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut c = NegativeCache::new(Duration::from_secs(60), 3);
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            c.insert(k, ms(i as u64));
        }
        let now = ms(200);
        assert_eq!(c.len(), 3);
        assert!(!c.contains("a", now));
        assert!(c.contains("b", now) && c.contains("c", now) && c.contains("d", now));
        // Re-inserting refreshes a key: "b" now outlives "c".
        c.insert("b", ms(5));
        c.insert("e", ms(6));
        assert!(c.contains("b", now) && !c.contains("c", now), "{c:?}");
        // Many re-inserts of one key keep the order queue bounded.
        for i in 0..100 {
            c.insert("b", ms(7 + i));
        }
        assert!(c.order.len() <= 6, "{}", c.order.len());
        assert_eq!(c.len(), 3);
        c.remove("b");
        assert!(!c.contains("b", now));
        assert!(NegativeCache::new(Duration::from_secs(1), 0).is_empty());
    }
}
