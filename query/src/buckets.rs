//! Every series of an event (or the named ones), merged per bucket from the
//! aggregate states: the one read drop and anomaly detection share. A
//! bucket is a step (hour, 5 min, …) or a whole window. Raw
//! events are never scanned: minutes' states are merged (`countMerge`,
//! `uniqMerge`, …) per bucket, so a bucket of uniques is distinct values.

use std::collections::BTreeMap;

use dc_config::registry::{MetricKind, Registry};
use dc_config::rollup::{merged_states_sql, parse_name, ParsedName};
use dc_config::sql::quote_str;

use crate::ch::{ClickHouse, Coverage};
use crate::error::{Error, Result};
use crate::series::{bad, fetch_scoped, tsv_unescape, Scope};

/// Most (series, bucket) rows one read may return: bounds the memory and
/// the work of one request; an event with more asks for `metric=` filters.
pub const MAX_ROWS: usize = 2_000_000;

/// Which series a read covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every series of this event.
    Event(String),
    /// These series (checked names).
    Names(Vec<String>),
}

/// One series as read: its name taken apart and its figure per bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData<'r> {
    /// Series name.
    pub name: String,
    /// The name checked against the registry.
    pub parsed: ParsedName<'r>,
    /// Figure per bucket (absent: no state in that bucket).
    pub values: BTreeMap<u32, f64>,
}

impl SeriesData<'_> {
    /// The metric kind.
    pub fn kind(&self) -> MetricKind {
        self.parsed.rollup.metric.kind
    }

    /// The metric's base name, e.g. `vote.count()`.
    pub fn base_name(&self) -> String {
        self.parsed
            .rollup
            .metric
            .base_name(self.parsed.rollup.event)
    }

    /// The dimensions as a JSON object.
    pub fn dims_json(&self) -> serde_json::Value {
        let dims: serde_json::Map<String, serde_json::Value> = self
            .parsed
            .rollup
            .dims
            .iter()
            .zip(&self.parsed.values)
            .map(|(d, v)| (d.to_string(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::Value::Object(dims)
    }
}

/// Longest window or evaluation range a request may name (31 days): bounds
/// the states one request merges.
pub const MAX_RANGE_S: u32 = 31 * 86_400;
/// With no `to`, a window ends this long before the current minute starts:
/// a shipper aggregates a minute only once its watermark has passed it (plus
/// a few seconds' grace), so the newest minutes may not be merged yet and
/// would look like a drop.
pub const SETTLE_S: u32 = 120;

/// Checks the `event` parameter: an event type of `registry` with metrics.
pub fn parse_event(registry: &Registry, v: &str) -> Result<String> {
    if registry.get(v).is_none_or(|e| e.metric.is_empty()) {
        return Err(bad(
            "event",
            "the name of an event type of the registry that has metrics",
        ));
    }
    Ok(v.to_string())
}

/// Parses the `limit` parameter: 1 to `max`.
pub fn parse_limit(v: &str, max: usize) -> Result<usize> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| bad("limit", &format!("1 to {max}")))
}

/// Parses a duration such as `90m`, `1h`, `2d` (whole minutes, at most
/// [`MAX_RANGE_S`]) into seconds.
pub fn parse_duration(parameter: &str, s: &str) -> Result<u32> {
    let rule = "a duration in whole minutes such as 30m, 1h or 2d, at most 31d";
    // The unit is the last character, which need not be one byte long.
    let last = s.char_indices().last().map_or(0, |(i, _)| i);
    let (n, unit) = s.split_at(last);
    let n: u32 = n.parse().map_err(|_| bad(parameter, rule))?;
    let seconds = match unit {
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3_600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| (60..=MAX_RANGE_S).contains(s))
    .ok_or_else(|| bad(parameter, rule))?;
    Ok(seconds)
}

/// The range `[from, to)` a request names, aligned down to `align_s`:
/// `from` and `to`, or `window` ending at `to` (default: [`SETTLE_S`] before
/// the current minute, `now_s`). At most [`MAX_RANGE_S`].
pub fn time_range(
    from: Option<u32>,
    to: Option<u32>,
    window: Option<u32>,
    align_s: u32,
    now_s: u32,
) -> Result<(u32, u32)> {
    let down = |t: u32| t - t % align_s;
    let (from, to) = match (from, window) {
        (Some(_), Some(_)) => return Err(bad("window", "give either from and to, or window")),
        (Some(from), None) => {
            let to = to.ok_or_else(|| bad("to", "required with from: unix seconds"))?;
            (from, to)
        }
        (None, Some(w)) => {
            let to = to.unwrap_or_else(|| down(now_s - now_s % 60).saturating_sub(SETTLE_S));
            (to.saturating_sub(w), to)
        }
        (None, None) => {
            return Err(bad(
                "window",
                "required: a window such as window=1h, or from and to",
            ))
        }
    };
    let (from, to) = (down(from), down(to));
    if to <= from {
        return Err(bad(
            "to",
            &format!("must be at least {align_s} s after from (after alignment)"),
        ));
    }
    if to - from > MAX_RANGE_S {
        return Err(bad("to", "the range may span at most 31 days"));
    }
    Ok((from, to))
}

/// The kinds `selection` can hold, from the registry.
fn kinds(registry: &Registry, selection: &Selection) -> Vec<MetricKind> {
    let mut kinds: Vec<MetricKind> = match selection {
        Selection::Event(e) => registry
            .get(e)
            .map(|ev| ev.metric.iter().map(|m| m.kind).collect())
            .unwrap_or_default(),
        Selection::Names(names) => names
            .iter()
            .filter_map(|n| parse_name(registry, n).ok())
            .map(|p| p.rollup.metric.kind)
            .collect(),
    };
    kinds.sort_by_key(|k| k.name());
    kinds.dedup();
    kinds
}

/// The SQL: one [`merged_states_sql`] per metric kind, `UNION ALL`, each
/// at most [`MAX_ROWS`] + 1 rows; per step start `t` with `step_s`, else
/// one figure per series over the whole range.
pub fn sql(
    registry: &Registry,
    database: &str,
    scope: Scope,
    selection: &Selection,
    (from, to): (u32, u32),
    step_s: Option<u32>,
) -> String {
    let which = match selection {
        Selection::Event(e) => format!("event = {}", quote_str(e)),
        Selection::Names(names) => format!(
            "metric_hash IN ({})",
            names
                .iter()
                .map(|n| format!("cityHash64({})", quote_str(n)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let selects: Vec<String> = kinds(registry, selection)
        .into_iter()
        .map(|kind| {
            let filter = format!("{which} AND kind = {}", quote_str(kind.name()));
            format!(
                "{} LIMIT {}",
                merged_states_sql(
                    database,
                    scope.states_table(),
                    kind,
                    &filter,
                    from,
                    to,
                    step_s
                ),
                MAX_ROWS + 1
            )
        })
        .collect();
    format!("{} FORMAT TSV", selects.join(" UNION ALL "))
}

/// Parses the TSV answer of [`sql`] (with a `t` column when `stepped`,
/// else every figure at bucket 0): series in name order; names the registry
/// no longer knows (a metric since removed) are skipped. Fails when the
/// answer holds more than [`MAX_ROWS`] rows.
pub fn parse<'r>(
    registry: &'r Registry,
    body: &[u8],
    stepped: bool,
) -> Result<Vec<SeriesData<'r>>> {
    let text = String::from_utf8_lossy(body);
    let mut by_name: BTreeMap<String, BTreeMap<u32, f64>> = BTreeMap::new();
    let mut rows = 0usize;
    for line in text.lines() {
        let mut f = line.split('\t');
        let Some(name) = f.next() else { continue };
        let t = if stepped {
            match f.next().map(str::parse::<u32>) {
                Some(Ok(t)) => t,
                _ => continue,
            }
        } else {
            0
        };
        let Some(Ok(v)) = f.next().map(str::parse::<f64>) else {
            continue;
        };
        rows += 1;
        if rows > MAX_ROWS {
            return Err(Error::TooLarge(format!(
                "more than {MAX_ROWS} series × buckets; name the series with `metric=`, \
                 narrow the range or take a coarser step"
            )));
        }
        by_name.entry(tsv_unescape(name)).or_default().insert(t, v);
    }
    Ok(by_name
        .into_iter()
        .filter_map(|(name, values)| {
            let parsed = parse_name(registry, &name).ok()?;
            Some(SeriesData {
                name,
                parsed,
                values,
            })
        })
        .collect())
}

/// Reads `selection` over `range`, per step or whole, globally (with the
/// coverage) or in this DC.
pub async fn read<'r>(
    ch: &ClickHouse,
    registry: &'r Registry,
    scope: Scope,
    selection: &Selection,
    range: (u32, u32),
    step_s: Option<u32>,
) -> Result<(Vec<SeriesData<'r>>, Coverage)> {
    if kinds(registry, selection).is_empty() {
        return Ok((Vec::new(), Coverage::default()));
    }
    let (body, coverage) = fetch_scoped(ch, scope, |s| {
        sql(registry, ch.database(), s, selection, range, step_s)
    })
    .await?;
    Ok((parse(registry, &body, step_s.is_some())?, coverage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_per_kind() {
        let r = dc_config::examples::declared().registry;
        let sql = sql(
            &r,
            "spoolhouse",
            Scope::Global,
            &Selection::Event("vote".into()),
            (0, 600),
            None,
        );
        assert_eq!(sql.matches("UNION ALL").count(), 1);
        assert!(sql.contains("(event = 'vote' AND kind = 'count')"));
        assert!(sql.contains("metric_states_all FINAL"));
        assert!(sql.ends_with("GROUP BY metric LIMIT 2000001 FORMAT TSV"));
        let sql = super::sql(
            &r,
            "spoolhouse",
            Scope::Dc,
            &Selection::Names(vec!["vote.count(){vote=it's}".into()]),
            (0, 7200),
            Some(3600),
        );
        assert!(sql.contains("metric_hash IN (cityHash64('vote.count(){vote=it\\'s}'))"));
        assert!(sql.contains("intDiv(toUInt32(minute), 3600) * 3600 AS t"));
        assert!(sql.contains("metric_states_dc FINAL"));
        assert!(!sql.contains("UNION ALL"));
    }

    #[test]
    fn ranges_and_durations() {
        assert_eq!(parse_duration("window", "90m").unwrap(), 5_400);
        assert_eq!(parse_duration("window", "2d").unwrap(), 172_800);
        for bad in [
            "",
            "h",
            "0m",
            "1s",
            "32d",
            "-1h",
            "1.5h",
            "99999999999d",
            "1☃",
            "名前 ☃ \u{202e}",
        ] {
            assert!(parse_duration("window", bad).is_err(), "{bad}");
        }
        assert_eq!(
            time_range(Some(61), Some(250), None, 60, 0).unwrap(),
            (60, 240)
        );
        assert_eq!(
            time_range(None, None, Some(3_600), 3_600, 10_000 * 3_600 + 59).unwrap(),
            (9_998 * 3_600, 9_999 * 3_600),
            "the settle delay moves the end back to a whole step"
        );
        assert_eq!(
            time_range(None, Some(7_200), Some(3_600), 60, 0).unwrap(),
            (3_600, 7_200)
        );
        assert!(time_range(Some(1), Some(2), Some(60), 60, 0).is_err());
        assert!(time_range(Some(120), Some(60), None, 60, 0).is_err());
        assert!(time_range(None, None, None, 60, 0).is_err());
        assert!(time_range(Some(0), Some(40 * 86_400), None, 60, 0).is_err());
    }

    #[test]
    fn answers_parse_and_unknown_names_are_skipped() {
        let r = dc_config::examples::declared().registry;
        let body = b"vote.count()\t0\t5\nvote.count(){vote=yes}\t1\t2\nvote.gone()\t0\t1\nvote.count()\t1\t7\n";
        let s = parse(&r, body, true).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "vote.count()");
        assert_eq!(s[0].values, BTreeMap::from([(0, 5.0), (1, 7.0)]));
        assert_eq!(s[1].dims_json(), serde_json::json!({"vote": "yes"}));
        assert_eq!(s[1].base_name(), "vote.count()");
        let s = parse(&r, b"vote.count()\t5\n", false).unwrap();
        assert_eq!(s[0].values, BTreeMap::from([(0, 5.0)]));
    }
}
