//! Series: one or many metric series over a range at a step. Every step,
//! the minute too, merges the aggregate states of the minutes it covers
//! (`countMerge`, `uniqMerge`, …), globally or for this DC: an hour of
//! uniques is the number of distinct values in the hour, never a sum or an
//! average of minutes.

use dc_config::registry::{MetricKind, Registry};
use dc_config::rollup::parse_name;
use dc_config::schema::table;
use dc_config::steps::{self, Built};

use crate::ch::{ClickHouse, Coverage};
use crate::error::{Error, Result};

/// Most series in one request.
pub const MAX_SERIES: usize = 50;
/// Most points per series in one request (two weeks of minutes is 20 160).
pub const MAX_POINTS: u32 = 100_000;

/// A step of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// 1 minute.
    Minute,
    /// 5 minutes.
    FiveMinutes,
    /// 1 hour.
    Hour,
    /// 1 day (UTC).
    Day,
}

impl Step {
    /// Seconds per step.
    pub fn seconds(self) -> u32 {
        match self {
            Step::Minute => 60,
            Step::FiveMinutes => 300,
            Step::Hour => 3_600,
            Step::Day => 86_400,
        }
    }

    /// The name in requests.
    pub fn name(self) -> &'static str {
        match self {
            Step::Minute => "minute",
            Step::FiveMinutes => "5min",
            Step::Hour => "hour",
            Step::Day => "day",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "minute" => Step::Minute,
            "5min" => Step::FiveMinutes,
            "hour" => Step::Hour,
            "day" => Step::Day,
            _ => return Err(bad("step", "one of minute, 5min, hour, day")),
        })
    }
}

/// Where a read looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every datacenter, states merged.
    Global,
    /// This datacenter only.
    Dc,
}

impl Scope {
    /// Parses the `scope` parameter.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        match s {
            "global" => Ok(Scope::Global),
            "dc" => Ok(Scope::Dc),
            _ => Err(bad("scope", "global or dc")),
        }
    }

    /// The name in requests and answers.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Dc => "dc",
        }
    }

    /// The aggregate-state table this scope reads.
    pub fn states_table(self) -> &'static str {
        match self {
            Scope::Global => table::STATES_ALL,
            Scope::Dc => table::STATES_DC,
        }
    }
}

/// Runs the statement `sql_for` gives for `scope`: a global read reports
/// its coverage (and falls back to this DC's statement when the others are
/// too slow, see [`ClickHouse::fetch_global`]); a DC read covers this DC
/// only, so nothing is missing.
pub(crate) async fn fetch_scoped(
    ch: &ClickHouse,
    scope: Scope,
    sql_for: impl Fn(Scope) -> String,
) -> Result<(Vec<u8>, Coverage)> {
    match scope {
        Scope::Global => {
            ch.fetch_global(&sql_for(Scope::Global), &sql_for(Scope::Dc))
                .await
        }
        Scope::Dc => Ok((
            ch.fetch(&sql_for(Scope::Dc), &[]).await?,
            Coverage::default(),
        )),
    }
}

/// Parses unix seconds for `parameter`.
pub(crate) fn unix_seconds(parameter: &str, v: &str) -> Result<u32> {
    v.parse::<u32>()
        .map_err(|_| bad(parameter, "unix seconds (0 to 4294967295)"))
}

pub(crate) fn bad(parameter: &str, rule: &str) -> Error {
    Error::BadParameter {
        parameter: parameter.to_string(),
        rule: rule.to_string(),
    }
}

/// A checked series request.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesRequest {
    /// Series names, checked against the registry, with their kinds.
    pub series: Vec<(String, MetricKind)>,
    /// Range start, unix seconds (rounded down to the step).
    pub from: u32,
    /// Range end, unix seconds, exclusive.
    pub to: u32,
    /// Step.
    pub step: Step,
    /// Scope.
    pub scope: Scope,
    /// Each series once per datacenter (`split=dc`) instead of merged
    /// across them.
    pub split_dc: bool,
}

impl SeriesRequest {
    /// Parses and checks a query string:
    /// `metric=NAME` (1 to 50, repeatable), `from`, `to` (unix seconds),
    /// `step` (minute, 5min, hour, day; default minute), `scope` (global or dc; default global),
    /// `split` (none or dc; default none).
    pub fn parse(registry: &Registry, query: &str) -> Result<Self> {
        let mut series = Vec::new();
        let (mut from, mut to, mut step, mut scope) = (None, None, Step::Minute, Scope::Global);
        let mut split_dc = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "metric" => {
                    let parsed =
                        parse_name(registry, &v).map_err(|e| bad("metric", &e.to_string()))?;
                    series.push((v.to_string(), parsed.rollup.metric.kind));
                }
                "from" => from = Some(unix_seconds("from", &v)?),
                "to" => to = Some(unix_seconds("to", &v)?),
                "step" => step = Step::parse(&v)?,
                "scope" => scope = Scope::parse(&v)?,
                "split" => {
                    split_dc = match v.as_ref() {
                        "none" => false,
                        "dc" => true,
                        _ => return Err(bad("split", "none or dc")),
                    }
                }
                other => {
                    return Err(bad(
                        other,
                        "not a parameter of /v1/series (metric, from, to, step, scope, split)",
                    ))
                }
            }
        }
        if series.is_empty() || series.len() > MAX_SERIES {
            return Err(bad(
                "metric",
                &format!("1 to {MAX_SERIES} series names, e.g. metric=registration.count()"),
            ));
        }
        let from = from.ok_or_else(|| bad("from", "required: unix seconds"))?;
        let to = to.ok_or_else(|| bad("to", "required: unix seconds"))?;
        let from = from - from % step.seconds();
        if to <= from {
            return Err(bad("to", "must be after from"));
        }
        if (to - from).div_ceil(step.seconds()) > MAX_POINTS {
            return Err(bad("to", &format!("at most {MAX_POINTS} points per series: narrow the range or take a coarser step")));
        }
        if split_dc && scope == Scope::Dc {
            return Err(bad(
                "split",
                "split=dc reads every datacenter: use it with scope=global",
            ));
        }
        Ok(Self {
            series,
            from,
            to,
            step,
            scope,
            split_dc,
        })
    }

    /// The SQL over `scope` (the request's own, or this DC's when a global
    /// read falls back): per metric kind, merged states per step, each part
    /// of the range from the coarsest states `built` in every DC read
    /// (docs/adr/0016-pre-merged-hours-and-days.md).
    pub fn sql(&self, database: &str, scope: Scope, built: [Option<Built>; 2]) -> String {
        let tables = match scope {
            Scope::Global => steps::ALL_TABLES,
            Scope::Dc => steps::DC_TABLES,
        };
        let step = self.step.seconds();
        let parts = steps::parts(self.from, self.to, step, built);
        let mut selects = Vec::new();
        for kind in [
            MetricKind::Count,
            MetricKind::Uniq,
            MetricKind::Sum,
            MetricKind::Min,
            MetricKind::Max,
        ] {
            let names: Vec<String> = self
                .series
                .iter()
                .filter(|(_, k)| *k == kind)
                .map(|(n, _)| n.clone())
                .collect();
            selects.extend(steps::read_sql(
                database,
                tables,
                kind,
                &names,
                &parts,
                step,
                self.split_dc,
            ));
        }
        format!("{} FORMAT TSV", selects.join(" UNION ALL "))
    }
}

/// The coarse periods built in every DC `scope` reads (`None` per step
/// where one has none, or did not answer: minutes are read there).
async fn built(ch: &ClickHouse, scope: Scope) -> Result<[Option<Built>; 2]> {
    let marks_table = |s: Scope| match s {
        Scope::Global => table::ROLLUP_MARKS_ALL,
        Scope::Dc => table::ROLLUP_MARKS_DC,
    };
    let (body, _) = fetch_scoped(ch, scope, |s| {
        steps::marks_sql(ch.database(), marks_table(s))
    })
    .await?;
    let marks = steps::parse_marks(&String::from_utf8_lossy(&body));
    let dcs: Vec<&str> = match scope {
        Scope::Global => ch.datacenter_names().collect(),
        Scope::Dc => vec![ch.dc()],
    };
    Ok(steps::built_in_all(&marks, &dcs))
}

/// Undoes TSV escaping of a field.
pub(crate) fn tsv_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// A series of an answer: its name, and its datacenter with `split=dc`.
type SeriesKey = (String, Option<String>);

/// Runs `req`; the JSON answer.
pub async fn read(ch: &ClickHouse, req: &SeriesRequest) -> Result<serde_json::Value> {
    let built = built(ch, req.scope).await?;
    let (body, coverage) =
        fetch_scoped(ch, req.scope, |s| req.sql(ch.database(), s, built)).await?;
    let text = String::from_utf8_lossy(&body);
    // One line per series, or per series and datacenter with `split=dc`
    // (every DC of the config, so one that did not answer has no points).
    let dcs: Vec<Option<&str>> = if req.split_dc {
        ch.datacenter_names().map(Some).collect()
    } else {
        vec![None]
    };
    let mut points: std::collections::BTreeMap<SeriesKey, Vec<(u32, f64)>> = req
        .series
        .iter()
        .flat_map(|(n, _)| {
            dcs.iter()
                .map(|dc| ((n.clone(), dc.map(str::to_string)), Vec::new()))
        })
        .collect();
    for line in text.lines() {
        let mut f = line.split('\t');
        let dc = if req.split_dc { f.next() } else { None };
        let (Some(name), Some(t), Some(v)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(t), Ok(v)) = (t.parse::<u32>(), v.parse::<f64>()) else {
            continue;
        };
        let key = (tsv_unescape(name), dc.map(tsv_unescape));
        if let Some(p) = points.get_mut(&key) {
            p.push((t, v));
        }
    }
    let series: Vec<serde_json::Value> = req
        .series
        .iter()
        .flat_map(|(n, _)| dcs.iter().map(move |dc| (n, dc)))
        .map(|(n, dc)| {
            let mut p = points
                .remove(&(n.clone(), dc.map(str::to_string)))
                .unwrap_or_default();
            p.sort_by_key(|(t, _)| *t);
            match dc {
                Some(dc) => serde_json::json!({"metric": n, "dc": dc, "points": p}),
                None => serde_json::json!({"metric": n, "points": p}),
            }
        })
        .collect();
    Ok(serde_json::json!({
        "from": req.from,
        "to": req.to,
        "step": req.step.name(),
        "scope": req.scope.name(),
        "split": if req.split_dc { "dc" } else { "none" },
        "partial": coverage.partial,
        "missing": coverage.missing,
        "series": series,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        dc_config::examples::declared().registry
    }

    #[test]
    fn requests_are_checked() {
        let r = reg();
        let ok = SeriesRequest::parse(&r, "metric=vote.count()&metric=registration.uniq(user_id)%7Bgender%3Dmale%7D&from=1000&to=5000&step=hour").unwrap();
        assert_eq!(ok.series.len(), 2);
        assert_eq!(ok.series[1].0, "registration.uniq(user_id){gender=male}");
        assert_eq!(ok.from, 0);
        let sql = ok.sql("spoolhouse", ok.scope, [None, None]);
        assert!(
            sql.contains("toFloat64(countMerge(s))")
                && sql.contains("argMax(count_state, version) AS s"),
            "{sql}"
        );
        assert!(sql.contains("toFloat64(uniqMerge(s))"), "{sql}");
        assert!(sql.contains("FROM spoolhouse.metric_states_all WHERE"));
        assert!(!sql.contains("metric_states_hour_all"));
        let hours = Some(Built {
            from_s: 0,
            through_s: 3_600,
        });
        let sql = ok.sql("spoolhouse", ok.scope, [hours, None]);
        assert!(
            sql.contains("FROM spoolhouse.metric_states_hour_all WHERE"),
            "{sql}"
        );
        let err = |q: &str| match SeriesRequest::parse(&r, q) {
            Err(Error::BadParameter { parameter, .. }) => parameter,
            other => panic!("{other:?}"),
        };
        assert_eq!(err("from=1&to=2"), "metric");
        assert_eq!(err("metric=vote.count()&from=x&to=2"), "from");
        assert_eq!(err("metric=vote.count()&from=100&to=50"), "to");
        assert_eq!(
            err("metric=vote.count()&from=0&to=99999999&step=minute"),
            "to"
        );
        assert_eq!(err("metric=vote.count()&from=0&to=60&step=week"), "step");
        assert_eq!(
            err("metric=vote.count()');DROP TABLE x;--&from=0&to=60"),
            "metric"
        );
        assert_eq!(err("metric=vote.count()&from=0&to=60&limit=5"), "limit");
        assert_eq!(err("metric=vote.count()&from=0&to=60&split=host"), "split");
        assert_eq!(
            err("metric=vote.count()&from=0&to=60&split=dc&scope=dc"),
            "split"
        );
        let by_dc = SeriesRequest::parse(&r, "metric=vote.count()&from=0&to=60&split=dc").unwrap();
        assert!(by_dc.split_dc);
        let sql = by_dc.sql("spoolhouse", Scope::Global, [None, None]);
        assert!(
            sql.contains("SELECT dc, transform(metric_hash")
                && sql.contains("GROUP BY dc, metric_hash, t"),
            "{sql}"
        );
    }

    #[test]
    fn tsv_fields_unescape() {
        assert_eq!(tsv_unescape("a\\\\,b\\tc"), "a\\,b\tc");
    }
}
