//! Watch progress, the KION store: the newest `video_time` per (user, video).
//! Reads try this DC's Redis first; on a miss, this DC's ClickHouse, then the
//! global table (every DC); what ClickHouse finds is written back to Redis
//! with the registry's TTL (newer wins, so a concurrent write of a newer
//! event by the shipper is never undone). Writes go through the collector.

use std::time::Duration;

use dc_config::registry::{FieldType, Registry, State};
use dc_config::render::ddl::table;
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
}

impl Source {
    /// Name in answers and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Source::Redis => "redis",
            Source::ClickHouseDc => "clickhouse_dc",
            Source::ClickHouseGlobal => "clickhouse_global",
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

/// The progress reader.
pub struct ProgressService {
    state: State,
    value_type: FieldType,
    ch: std::sync::Arc<ClickHouse>,
    redis: Redis,
    store: tokio::sync::Mutex<Option<StateStore>>,
    redis_timeout: Duration,
}

fn attr(name: &str) -> String {
    format!("attr_values[indexOf(attr_names, {})]", quote_str(name))
}

impl ProgressService {
    /// A reader for `registry`'s `watch_progress` state; `None` if the
    /// registry declares no such state.
    pub fn new(
        registry: &Registry,
        ch: std::sync::Arc<ClickHouse>,
        redis: Redis,
        redis_timeout: Duration,
    ) -> Option<Self> {
        let ev = registry.get(PROGRESS_EVENT)?;
        let state = ev.state.clone()?;
        let value_type = ev.fields.get(&state.value)?.ty;
        Some(Self {
            state,
            value_type,
            ch,
            redis,
            store: tokio::sync::Mutex::new(None),
            redis_timeout,
        })
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

    async fn redis_get(&self, key: &str) -> Option<(u64, String)> {
        let mut guard = self.store.lock().await;
        if guard.is_none() {
            match StateStore::connect(&self.redis, self.redis_timeout).await {
                Ok(s) => *guard = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "Redis unavailable; reading ClickHouse");
                    return None;
                }
            }
        }
        match guard.as_mut().expect("just connected").get(key).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "Redis read failed; reading ClickHouse");
                *guard = None;
                None
            }
        }
    }

    async fn refill(&self, key: &str, time_ms: u64, value: &str) {
        let mut guard = self.store.lock().await;
        if let Some(store) = guard.as_mut() {
            let write = StateWrite {
                key: key.to_string(),
                time_ms,
                value: value.to_string(),
                ttl_ms: self.state.ttl_s.saturating_mul(1000),
            };
            if let Err(e) = store.apply(&[write]).await {
                tracing::warn!(error = %e, "refilling Redis failed");
                *guard = None;
            }
        }
    }

    fn latest_sql(&self, table_name: &str, key_values: &[String]) -> String {
        let mut cond = format!("event = {}", quote_str(PROGRESS_EVENT));
        for (field, value) in self.state.key.iter().zip(key_values) {
            cond.push_str(&format!(" AND {} = {}", attr(field), quote_str(value)));
        }
        format!(
            "SELECT time_ms, {} FROM {}.{table_name} WHERE {cond} ORDER BY time_ms DESC LIMIT 1 FORMAT TSV",
            attr(&self.state.value),
            self.ch.database()
        )
    }

    fn parse_latest(body: &[u8]) -> Option<(u64, String)> {
        let text = String::from_utf8_lossy(body);
        let line = text.lines().next()?;
        let (t, v) = line.split_once('\t')?;
        Some((t.parse().ok()?, v.to_string()))
    }

    /// The newest value for the key (canonical column text of each key
    /// field, in `key_fields` order).
    pub async fn get(&self, key_values: &[String]) -> Result<Answer> {
        let key = State::redis_key(PROGRESS_EVENT, key_values);
        if let Some(hit) = self.redis_get(&key).await {
            return Ok(Answer {
                found: Some(hit),
                source: Source::Redis,
                coverage: Coverage::default(),
            });
        }
        let local = self
            .ch
            .fetch(&self.latest_sql(table::EVENTS_DC, key_values), &[])
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
            .fetch_global(&self.latest_sql(table::EVENTS_ALL, key_values))
            .await?;
        let found = Self::parse_latest(&global);
        if let Some(f) = &found {
            self.refill(&key, f.0, &f.1).await;
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
        None if raw.len() <= 1024 => Ok(raw.to_string()),
        None => Err(Error::BadParameter {
            parameter: field.to_string(),
            rule: "at most 1024 bytes".into(),
        }),
    }
}
