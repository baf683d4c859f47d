//! Reports: an event's metrics over a range of minutes, grouped by some of
//! their dimensions, from merged aggregate states (`GET /v1/report`).
//!
//! Grouping by dimensions `D` reads the roll-up of each metric that keeps
//! exactly `D` (every subset of a metric's dimensions is stored as its own
//! series family, see [`dc_config::rollup`]), and merges its states over
//! the range: a report of uniques counts distinct values over the whole
//! range, never a sum of minutes.

use std::collections::BTreeMap;

use dc_config::registry::{Metric, Registry};
use dc_config::rollup::{merged_states_sql, parse_name, rollup_filter_sql, Rollup};

use crate::ch::ClickHouse;
use crate::error::Result;
use crate::series::{bad, fetch_scoped, tsv_unescape, unix_seconds, Scope};

/// Longest range of one report: 31 days, a month of minutes of states.
pub const MAX_RANGE_S: u32 = 31 * 86_400;
/// Most groups (rows) in one report: more is refused, so one request cannot
/// build an answer of unbounded size; group by fewer dimensions instead.
pub const MAX_ROWS: usize = 10_000;

/// A checked report request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRequest<'a> {
    /// The event type.
    pub event: &'a str,
    /// The metrics reported, in registry order.
    pub metrics: Vec<&'a Metric>,
    /// Dimensions grouped by, in registry order of the first metric's.
    pub group_by: Vec<&'a str>,
    /// Range start, unix seconds, a minute start.
    pub from: u32,
    /// Range end, unix seconds, exclusive, a minute start.
    pub to: u32,
    /// Scope.
    pub scope: Scope,
}

/// A metric's name in reports: `KIND(FIELD)`, e.g. `uniq(user_id)`.
pub fn metric_label(metric: &Metric) -> String {
    format!(
        "{}({})",
        metric.kind.name(),
        metric.field.as_deref().unwrap_or("")
    )
}

impl<'a> ReportRequest<'a> {
    /// Parses and checks a query string: `event` (required), `metric`
    /// (`KIND(FIELD)`, repeatable; default every metric of the event that
    /// has the `group_by` dimensions), `group_by` (comma-separated
    /// dimensions, default none), `from`, `to` (unix seconds, minute
    /// starts, at most [`MAX_RANGE_S`] apart), `scope` (global or dc).
    pub fn parse(registry: &'a Registry, query: &str) -> Result<Self> {
        let (mut event, mut from, mut to, mut scope) = (None, None, None, Scope::Global);
        let mut labels: Vec<String> = Vec::new();
        let mut group_by: Option<Vec<String>> = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "event" => event = Some(v.into_owned()),
                "metric" => labels.push(v.into_owned()),
                // Empty: no grouping, the whole event.
                "group_by" if v.is_empty() => group_by = Some(Vec::new()),
                "group_by" => group_by = Some(v.split(',').map(str::to_string).collect()),
                "from" => from = Some(unix_seconds("from", &v)?),
                "to" => to = Some(unix_seconds("to", &v)?),
                "scope" => scope = Scope::parse(&v)?,
                other => {
                    return Err(bad(
                        other,
                        "not a parameter of /v1/report (event, metric, group_by, from, to, scope)",
                    ))
                }
            }
        }
        let with_metrics = || {
            let names: Vec<&str> = dc_config::rollup::aggregated_events(registry)
                .map(|(n, _)| n)
                .collect();
            format!(
                "required: an event type with metrics ({})",
                names.join(", ")
            )
        };
        let event = event.ok_or_else(|| bad("event", &with_metrics()))?;
        let (event, ev) = registry
            .event
            .get_key_value(event.as_str())
            .filter(|(_, e)| !e.metric.is_empty())
            .ok_or_else(|| bad("event", &with_metrics()))?;
        let group_by = group_by.unwrap_or_default();
        if group_by.iter().any(String::is_empty) {
            return Err(bad(
                "group_by",
                "comma-separated dimension names, none empty",
            ));
        }
        let has_dims = |m: &Metric| group_by.iter().all(|g| m.dimensions.contains(g));
        let all_labels: Vec<String> = ev.metric.iter().map(metric_label).collect();
        let metrics: Vec<&Metric> = if labels.is_empty() {
            let m: Vec<&Metric> = ev.metric.iter().filter(|m| has_dims(m)).collect();
            if m.is_empty() {
                return Err(bad(
                    "group_by",
                    &format!(
                        "no metric of `{event}` has all of these dimensions; its metrics' dimensions: {}",
                        dimensions_of(&ev.metric)
                    ),
                ));
            }
            m
        } else {
            let mut m = Vec::new();
            for label in &labels {
                let found = ev
                    .metric
                    .iter()
                    .find(|d| metric_label(d) == *label)
                    .ok_or_else(|| {
                        bad(
                            "metric",
                            &format!("a metric of `{event}`: one of {}", all_labels.join(", ")),
                        )
                    })?;
                if !has_dims(found) {
                    return Err(bad(
                        "group_by",
                        &format!(
                            "a subset of the dimensions of `{label}`: {}",
                            found.dimensions.join(", ")
                        ),
                    ));
                }
                if !m.contains(&found) {
                    m.push(found);
                }
            }
            m
        };
        // Registry order, so the roll-up's series names match.
        let dims: Vec<&str> = metrics[0]
            .dimensions
            .iter()
            .filter(|d| group_by.contains(d))
            .map(String::as_str)
            .collect();
        if dims.len() != group_by.len() {
            return Err(bad("group_by", "each dimension at most once"));
        }
        let from = from.ok_or_else(|| bad("from", "required: unix seconds, a minute start"))?;
        let to = to.ok_or_else(|| bad("to", "required: unix seconds, a minute start"))?;
        if !from.is_multiple_of(60) {
            return Err(bad("from", "a minute start (a multiple of 60)"));
        }
        if !to.is_multiple_of(60) {
            return Err(bad("to", "a minute start (a multiple of 60)"));
        }
        if to <= from {
            return Err(bad("to", "must be after from"));
        }
        if to - from > MAX_RANGE_S {
            return Err(bad(
                "to",
                &format!("at most {MAX_RANGE_S} seconds (31 days) after from"),
            ));
        }
        Ok(Self {
            event,
            metrics,
            group_by: dims,
            from,
            to,
            scope,
        })
    }

    fn rollup(&self, metric: &'a Metric) -> Rollup<'a> {
        Rollup {
            event: self.event,
            metric,
            // Each metric's own registry order of the grouped dimensions.
            dims: metric
                .dimensions
                .iter()
                .map(String::as_str)
                .filter(|d| self.group_by.contains(d))
                .collect(),
        }
    }

    /// The SQL: per metric, its roll-up's series merged over the range, at
    /// most [`MAX_ROWS`] + 1 each (one more tells the answer would be too big).
    pub fn sql(&self, database: &str, scope: Scope) -> String {
        let selects: Vec<String> = self
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "SELECT * FROM ({}) LIMIT {}",
                    merged_states_sql(
                        database,
                        scope.states_table(),
                        m.kind,
                        &rollup_filter_sql(&self.rollup(m)),
                        self.from,
                        self.to,
                        None,
                    ),
                    MAX_ROWS + 1
                )
            })
            .collect();
        format!("{} FORMAT TSV", selects.join(" UNION ALL "))
    }
}

fn dimensions_of(metrics: &[Metric]) -> String {
    metrics
        .iter()
        .map(|m| format!("{}: [{}]", metric_label(m), m.dimensions.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `req`; the JSON answer: one row per combination of dimension
/// values any metric has, with every metric's value (`null` where a metric
/// has no data for that combination).
pub async fn read(
    registry: &Registry,
    ch: &ClickHouse,
    req: &ReportRequest<'_>,
) -> Result<serde_json::Value> {
    let (body, coverage) = fetch_scoped(ch, req.scope, |s| req.sql(ch.database(), s)).await?;
    let text = String::from_utf8_lossy(&body);
    let labels: Vec<String> = req.metrics.iter().map(|m| metric_label(m)).collect();
    // Dimension values in `group_by` order → one value per metric.
    let mut rows: BTreeMap<Vec<String>, Vec<Option<f64>>> = BTreeMap::new();
    let mut per_metric = vec![0usize; labels.len()];
    for line in text.lines() {
        let Some((name, v)) = line.split_once('\t') else {
            continue;
        };
        let (Ok(v), Ok(parsed)) = (v.parse::<f64>(), parse_name(registry, &tsv_unescape(name)))
        else {
            // A name the registry no longer declares (its definition
            // changed since it was aggregated) belongs to no roll-up here.
            tracing::debug!(name, "report skips a series the registry does not declare");
            continue;
        };
        let Some(i) = req
            .metrics
            .iter()
            .position(|m| std::ptr::eq(*m, parsed.rollup.metric))
        else {
            continue;
        };
        per_metric[i] += 1;
        if per_metric[i] > MAX_ROWS {
            return Err(bad(
                "group_by",
                &format!("at most {MAX_ROWS} groups per report: group by fewer dimensions or narrow the range"),
            ));
        }
        let key: Vec<String> = req
            .group_by
            .iter()
            .map(|g| {
                let at = parsed.rollup.dims.iter().position(|d| d == g);
                at.map(|a| parsed.values[a].clone()).unwrap_or_default()
            })
            .collect();
        rows.entry(key).or_insert_with(|| vec![None; labels.len()])[i] = Some(v);
    }
    let rows: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(key, values)| {
            let dims: serde_json::Map<String, serde_json::Value> = req
                .group_by
                .iter()
                .zip(key)
                .map(|(g, v)| (g.to_string(), v.into()))
                .collect();
            let values: serde_json::Map<String, serde_json::Value> = labels
                .iter()
                .zip(values)
                .map(|(l, v)| (l.clone(), v.into()))
                .collect();
            serde_json::json!({"dimensions": dims, "values": values})
        })
        .collect();
    Ok(serde_json::json!({
        "event": req.event,
        "metrics": labels,
        "group_by": req.group_by,
        "from": req.from,
        "to": req.to,
        "scope": req.scope.name(),
        "partial": coverage.partial,
        "missing": coverage.missing,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn reg() -> Registry {
        dc_config::examples::declared().registry
    }

    #[test]
    fn requests_are_checked() {
        let r = reg();
        let ok = ReportRequest::parse(
            &r,
            "event=registration&group_by=country_id,gender&from=60&to=180&scope=dc",
        )
        .unwrap();
        assert_eq!(ok.group_by, ["gender", "country_id"]);
        assert_eq!(ok.metrics.len(), 2);
        assert_eq!(ok.scope, Scope::Dc);
        let sql = ok.sql("spoolhouse", ok.scope);
        assert_eq!(sql.matches("metric_states_dc FINAL").count(), 2);
        assert!(sql.contains("toFloat64(uniqMerge(uniq_state))"));
        assert!(sql.ends_with(&format!("LIMIT {} FORMAT TSV", MAX_ROWS + 1)));

        // Without group_by: every metric, the whole-event roll-up (by name).
        let ok = ReportRequest::parse(&r, "event=vote&metric=uniq(user_id)&from=0&to=60").unwrap();
        assert_eq!(ok.metrics.len(), 1);
        assert!(ok
            .sql("db", ok.scope)
            .contains("metric_hash = cityHash64('vote.uniq(user_id)')"));
        // Only the metrics that have the dimension.
        let ok = ReportRequest::parse(&r, "event=vote&group_by=country_id&from=0&to=60").unwrap();
        assert_eq!(
            ok.metrics
                .iter()
                .map(|m| metric_label(m))
                .collect::<Vec<_>>(),
            ["count()"]
        );

        let err = |q: &str| match ReportRequest::parse(&r, q) {
            Err(Error::BadParameter { parameter, rule }) => (parameter, rule),
            other => panic!("{other:?}"),
        };
        assert_eq!(err("from=0&to=60").0, "event");
        assert_eq!(err("event=nope&from=0&to=60").0, "event");
        assert_eq!(
            err("event=registration&metric=sum(x)&from=0&to=60").0,
            "metric"
        );
        assert_eq!(
            err("event=vote&metric=uniq(user_id)&group_by=country_id&from=0&to=60").0,
            "group_by"
        );
        assert_eq!(err("event=vote&group_by=city&from=0&to=60").0, "group_by");
        assert_eq!(
            err("event=vote&group_by=vote,vote&from=0&to=60").0,
            "group_by"
        );
        assert_eq!(err("event=vote&group_by=vote,&from=0&to=60").0, "group_by");
        assert!(ReportRequest::parse(&r, "event=vote&group_by=&from=0&to=60").is_ok());
        assert_eq!(err("event=vote&from=30&to=60").0, "from");
        assert_eq!(err("event=vote&from=0&to=90").0, "to");
        assert_eq!(err("event=vote&from=60&to=60").0, "to");
        assert_eq!(err("event=vote&from=0&to=99999960").0, "to");
        assert_eq!(err("event=vote&from=x&to=60").0, "from");
        assert_eq!(err("event=vote&from=0&to=60&scope=all").0, "scope");
        assert_eq!(err("event=vote&from=0&to=60&limit=1").0, "limit");
    }
}
