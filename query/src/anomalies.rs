//! Anomaly detection, `GET /v1/anomalies` (ADR 0004): for each series of an
//! event (or the named ones), a prediction and band per step from the
//! series' own seasonal history ([`predict`]), steps outside the band
//! flagged, series ranked by weight (deviation × volume), one alert per
//! cause over the roll-up hierarchy ([`one_per_cause`]); and the threshold
//! rules of the config ([`ThresholdRule`]).

use dc_config::registry::{MetricKind, Registry};
use dc_config::rollup::parse_name;
use dc_config::services::ThresholdRule;

use crate::buckets::{self, Selection, SeriesData};
use crate::ch::ClickHouse;
use crate::error::Result;
use crate::series::{bad, unix_seconds, Scope, Step};
use crate::stats::{self, Band};

/// Weeks of history whose same slot (time of day, day of week) predicts a step.
pub const WEEKS: u32 = 4;
/// Days of history whose same slot (time of day) predicts a step when
/// fewer than [`MIN_SAMPLES`] weeks are available.
pub const DAYS: u32 = 7;
/// Steps just before that predict a step when fewer than [`MIN_SAMPLES`]
/// days are available (the series is new).
pub const RECENT: u32 = 12;
/// Fewest samples a prediction is made from: a median of 2 is an average,
/// of 1 a guess.
pub const MIN_SAMPLES: usize = 3;
/// Half-width of the band, in standard deviations.
pub const BAND_SD: f64 = 3.0;
/// Share of a parent's deviation one child must carry to explain it.
pub const EXPLAIN_SHARE: f64 = 0.8;
/// Default evaluation range, when neither `window` nor `from` is given.
pub const DEFAULT_WINDOW_S: u32 = 6 * 3_600;
/// Most series named with `metric=`.
pub const MAX_NAMES: usize = 50;
/// Default and most anomalies in an answer.
pub const DEFAULT_LIMIT: usize = 20;
/// Most anomalies in an answer.
pub const MAX_LIMIT: usize = 200;

const WEEK_S: u32 = 7 * 86_400;
const DAY_S: u32 = 86_400;

/// Where a prediction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The same slot of the previous weeks.
    Weekly,
    /// The same slot of the previous days.
    Daily,
    /// The steps just before.
    Recent,
}

impl Method {
    /// The name in answers.
    pub fn name(self) -> &'static str {
        match self {
            Method::Weekly => "weekly",
            Method::Daily => "daily",
            Method::Recent => "recent",
        }
    }
}

/// A checked anomalies request.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomaliesRequest {
    /// Which series.
    pub selection: Selection,
    /// Evaluation range `[from, to)`, whole steps.
    pub range: (u32, u32),
    /// Step (5min or hour).
    pub step: Step,
    /// Scope.
    pub scope: Scope,
    /// Most anomalies listed.
    pub limit: usize,
}

impl AnomaliesRequest {
    /// Parses and checks a query string: `event` or `metric` (a series
    /// name, repeatable, up to [`MAX_NAMES`]); `window` (ending at `to` or
    /// just before now; default 6 h) or `from` and `to`; `step` (5min or
    /// hour; default hour); `scope`; `limit`.
    pub fn parse(registry: &Registry, query: &str, now_s: u32) -> Result<Self> {
        let (mut event, mut names) = (None::<String>, Vec::new());
        let (mut from, mut to, mut window) = (None, None, None);
        let (mut step, mut scope, mut limit) = (Step::Hour, Scope::Global, DEFAULT_LIMIT);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "event" => event = Some(buckets::parse_event(registry, &v)?),
                "metric" => {
                    parse_name(registry, &v).map_err(|e| bad("metric", &e.to_string()))?;
                    names.push(v.to_string());
                }
                "from" => from = Some(unix_seconds("from", &v)?),
                "to" => to = Some(unix_seconds("to", &v)?),
                "window" => window = Some(buckets::parse_duration("window", &v)?),
                "step" => {
                    step = match Step::parse(&v)? {
                        s @ (Step::FiveMinutes | Step::Hour) => s,
                        _ => return Err(bad("step", "5min or hour")),
                    }
                }
                "scope" => scope = Scope::parse(&v)?,
                "limit" => limit = buckets::parse_limit(&v, MAX_LIMIT)?,
                other => {
                    return Err(bad(
                        other,
                        "not a parameter of /v1/anomalies (event, metric, window, from, to, step, scope, limit)",
                    ))
                }
            }
        }
        if names.len() > MAX_NAMES {
            return Err(bad("metric", &format!("at most {MAX_NAMES} series names")));
        }
        let selection =
            match (event, names.is_empty()) {
                (None, true) => return Err(bad(
                    "event",
                    "required: an event type (event=vote) or series names (metric=vote.count())",
                )),
                (Some(e), true) => Selection::Event(e),
                (event, false) => {
                    if let Some(e) = event {
                        if names.iter().any(|n| !n.starts_with(&format!("{e}."))) {
                            return Err(bad("metric", "every series must be of `event`"));
                        }
                    }
                    Selection::Names(names)
                }
            };
        if from.is_none() && window.is_none() {
            window = Some(DEFAULT_WINDOW_S);
        }
        let range = buckets::time_range(from, to, window, step.seconds(), now_s)?;
        if range.0 < WEEKS * WEEK_S {
            return Err(bad("from", "must leave four weeks of history after 1970"));
        }
        Ok(Self {
            selection,
            range,
            step,
            scope,
            limit,
        })
    }

    /// The range read: the evaluation range and the history before it.
    pub fn read_range(&self) -> (u32, u32) {
        (self.range.0 - WEEKS * WEEK_S, self.range.1)
    }

    /// Start of each step of the evaluation range.
    pub fn steps(&self) -> impl Iterator<Item = u32> + '_ {
        (self.range.0..self.range.1).step_by(self.step.seconds() as usize)
    }
}

/// A series' figure at step `t`: the stored figure; for a counting or sum
/// series with none, 0 once its history has begun (nothing happened); else
/// none (before its first figure, or a min/max with nothing to take it of).
pub fn figure(s: &SeriesData<'_>, t: u32) -> Option<f64> {
    if let Some(v) = s.values.get(&t) {
        return Some(*v);
    }
    let first = *s.values.keys().next()?;
    match s.kind() {
        MetricKind::Min | MetricKind::Max => None,
        _ => (t >= first).then_some(0.0),
    }
}

/// The band of step `t` from the series' own history, and where it came
/// from: the same slot of the last [`WEEKS`] weeks, else of the last
/// [`DAYS`] days, else the last [`RECENT`] steps, each only with at least
/// [`MIN_SAMPLES`] figures.
pub fn predict(s: &SeriesData<'_>, t: u32, step_s: u32) -> Option<(Band, Method)> {
    let samples = |period: u32, n: u32| -> Vec<f64> {
        (1..=n)
            .filter_map(|k| t.checked_sub(k * period))
            .filter_map(|u| figure(s, u))
            .collect()
    };
    [
        (WEEK_S, WEEKS, Method::Weekly),
        (DAY_S, DAYS, Method::Daily),
        (step_s, RECENT, Method::Recent),
    ]
    .into_iter()
    .find_map(|(period, n, method)| {
        let xs = samples(period, n);
        (xs.len() >= MIN_SAMPLES)
            .then(|| stats::band(&xs, s.kind(), BAND_SD).map(|b| (b, method)))
            .flatten()
    })
}

/// One step of an evaluated series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepEval {
    /// Step start.
    pub t: u32,
    /// The figure, if any.
    pub actual: Option<f64>,
    /// The band, if the history allows one.
    pub band: Option<Band>,
    /// Outside the band, with volume.
    pub flagged: bool,
    /// Weight when flagged ([`stats::weight`]), else 0.
    pub weight: f64,
}

impl StepEval {
    /// Signed deviation from the prediction (0 without one).
    pub fn deviation(&self) -> f64 {
        match (self.actual, self.band) {
            (Some(a), Some(b)) => a - b.prediction,
            _ => 0.0,
        }
    }
}

/// A series evaluated over the range.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// Every step of the range.
    pub steps: Vec<StepEval>,
    /// The method of the first prediction made.
    pub method: Option<Method>,
    /// Sum of the flagged steps' weights.
    pub weight: f64,
}

impl Evaluated {
    /// True when any step is flagged.
    pub fn flagged(&self) -> bool {
        self.steps.iter().any(|s| s.flagged)
    }

    /// The flagged step of the largest weight.
    pub fn worst(&self) -> Option<&StepEval> {
        self.steps
            .iter()
            .filter(|s| s.flagged)
            .max_by(|a, b| a.weight.total_cmp(&b.weight))
    }
}

/// Evaluates `s` at each of `steps`.
pub fn evaluate(s: &SeriesData<'_>, steps: &[u32], step_s: u32) -> Evaluated {
    let kind = s.kind();
    let mut method = None;
    let steps: Vec<StepEval> = steps
        .iter()
        .map(|&t| {
            let actual = figure(s, t);
            let predicted = predict(s, t, step_s);
            if let Some((_, m)) = predicted {
                method.get_or_insert(m);
            }
            let band = predicted.map(|(b, _)| b);
            let flagged = match (actual, band) {
                (Some(a), Some(b)) => b.outside(a) && stats::has_volume(a, b.prediction, kind),
                _ => false,
            };
            let weight = match (flagged, actual, band) {
                (true, Some(a), Some(b)) => stats::weight(a, b.prediction, kind),
                _ => 0.0,
            };
            StepEval {
                t,
                actual,
                band,
                flagged,
                weight,
            }
        })
        .collect();
    let weight = steps.iter().map(|s| s.weight).sum();
    Evaluated {
        steps,
        method,
        weight,
    }
}

/// True when `a` is a roll-up of `s` above it: the same metric, a proper
/// subset of its dimensions, the same values for them.
pub fn is_ancestor(a: &SeriesData<'_>, s: &SeriesData<'_>) -> bool {
    let (ra, rs) = (&a.parsed.rollup, &s.parsed.rollup);
    ra.event == rs.event
        && std::ptr::eq(ra.metric, rs.metric)
        && ra.dims.len() < rs.dims.len()
        && ra.dims.iter().zip(&a.parsed.values).all(|(d, v)| {
            rs.dims
                .iter()
                .position(|x| x == d)
                .is_some_and(|i| &s.parsed.values[i] == v)
        })
}

/// One alert per cause (ADR 0004). Among the flagged series (indices into
/// `series`/`evals`), a parent is *explained* when one flagged direct child
/// carries at least [`EXPLAIN_SHARE`] of its signed deviation over the
/// parent's flagged steps; a series is reported when it is not explained
/// and no flagged ancestor is unexplained (that ancestor's deviation spreads
/// over its children and is the alert). Each suppressed series goes with
/// the heaviest reported series that shares a flagged series below or at
/// both (its ancestor, its descendant, or a sibling roll-up explained by
/// the same child), or is reported itself if there is none. The answer:
/// reported series with what they stand for, heaviest first.
pub fn one_per_cause(series: &[SeriesData<'_>], evals: &[Evaluated]) -> Vec<(usize, Vec<usize>)> {
    let flagged: Vec<usize> = (0..series.len()).filter(|&i| evals[i].flagged()).collect();
    let explained = |p: usize| -> bool {
        let steps: Vec<usize> = (0..evals[p].steps.len())
            .filter(|&k| evals[p].steps[k].flagged)
            .collect();
        let total: f64 = steps.iter().map(|&k| evals[p].steps[k].deviation()).sum();
        if total == 0.0 {
            return false;
        }
        flagged.iter().any(|&c| {
            is_ancestor(&series[p], &series[c])
                && series[c].parsed.rollup.dims.len() == series[p].parsed.rollup.dims.len() + 1
                && steps
                    .iter()
                    .map(|&k| evals[c].steps[k].deviation())
                    .sum::<f64>()
                    / total
                    >= EXPLAIN_SHARE
        })
    };
    let is_explained: Vec<bool> = (0..series.len())
        .map(|i| evals[i].flagged() && explained(i))
        .collect();
    let reported: Vec<usize> = flagged
        .iter()
        .copied()
        .filter(|&s| {
            !is_explained[s]
                && !flagged
                    .iter()
                    .any(|&a| !is_explained[a] && is_ancestor(&series[a], &series[s]))
        })
        .collect();
    let mut out: Vec<(usize, Vec<usize>)> = reported.iter().map(|&r| (r, Vec::new())).collect();
    for &s in &flagged {
        if reported.contains(&s) {
            continue;
        }
        let covers = |a: usize, d: usize| a == d || is_ancestor(&series[a], &series[d]);
        let home = out
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| flagged.iter().any(|&d| covers(s, d) && covers(*r, d)))
            .max_by(|a, b| evals[a.1 .0].weight.total_cmp(&evals[b.1 .0].weight))
            .map(|(i, _)| i);
        match home {
            Some(i) => out[i].1.push(s),
            None => out.push((s, Vec::new())),
        }
    }
    out.sort_by(|a, b| evals[b.0].weight.total_cmp(&evals[a.0].weight));
    out
}

/// The steps at which one series broke one threshold rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Index of the rule in the config.
    pub rule: usize,
    /// The series.
    pub series: String,
    /// Step starts and the figures that broke the rule.
    pub steps: Vec<(u32, f64)>,
}

/// The threshold violations of `rules` over `steps`: per (rule, series
/// name) with a violation, the steps and figures that broke it. A series a
/// rule names exactly but that has no data counts 0 at every step (for
/// count, uniq and sum: nothing happened).
pub fn thresholds<'r>(
    registry: &'r Registry,
    rules: &[ThresholdRule],
    selection: &Selection,
    series: &[SeriesData<'r>],
    steps: &[u32],
) -> Vec<Violation> {
    let in_selection = |name: &str| match selection {
        Selection::Event(e) => name.starts_with(&format!("{e}.")),
        Selection::Names(n) => n.iter().any(|x| x == name),
    };
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let mut candidates: Vec<SeriesData<'r>> = series
            .iter()
            .filter(|s| rule.matches(&s.name) && in_selection(&s.name))
            .cloned()
            .collect();
        if !rule.series.contains('*')
            && in_selection(&rule.series)
            && !candidates.iter().any(|s| s.name == rule.series)
        {
            if let Ok(parsed) = parse_name(registry, &rule.series) {
                let empty = SeriesData {
                    name: rule.series.clone(),
                    parsed,
                    values: Default::default(),
                };
                if empty.kind() != MetricKind::Min && empty.kind() != MetricKind::Max {
                    candidates.push(SeriesData {
                        values: steps.iter().map(|&t| (t, 0.0)).collect(),
                        ..empty
                    });
                }
            }
        }
        for s in candidates {
            let broken: Vec<(u32, f64)> = steps
                .iter()
                .filter_map(|&t| {
                    let v = s.values.get(&t).copied().or_else(|| {
                        (!matches!(s.kind(), MetricKind::Min | MetricKind::Max)).then_some(0.0)
                    })?;
                    rule.fires(v).then_some((t, v))
                })
                .collect();
            if !broken.is_empty() {
                out.push(Violation {
                    rule: i,
                    series: s.name.clone(),
                    steps: broken,
                });
            }
        }
    }
    out
}

/// Runs `req` with the config's `rules`; the JSON answer.
pub async fn detect(
    ch: &ClickHouse,
    registry: &Registry,
    rules: &[ThresholdRule],
    req: &AnomaliesRequest,
) -> Result<serde_json::Value> {
    let step_s = req.step.seconds();
    let (series, coverage) = buckets::read(
        ch,
        registry,
        req.scope,
        &req.selection,
        req.read_range(),
        Some(step_s),
    )
    .await?;
    let steps: Vec<u32> = req.steps().collect();
    let evals: Vec<Evaluated> = series.iter().map(|s| evaluate(s, &steps, step_s)).collect();
    let alerts = one_per_cause(&series, &evals);
    let num = |v: Option<f64>| serde_json::json!(v);
    let anomalies: Vec<serde_json::Value> = alerts
        .iter()
        .take(req.limit)
        .map(|(i, suppressed)| {
            let (s, e) = (&series[*i], &evals[*i]);
            let worst = e.worst();
            let points: Vec<serde_json::Value> = e
                .steps
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "t": p.t,
                        "actual": num(p.actual),
                        "prediction": num(p.band.map(|b| b.prediction)),
                        "low": num(p.band.map(|b| b.low)),
                        "high": num(p.band.map(|b| b.high)),
                        "flagged": p.flagged,
                    })
                })
                .collect();
            serde_json::json!({
                "series": s.name,
                "metric": s.base_name(),
                "kind": s.kind().name(),
                "dims": s.dims_json(),
                "weight": e.weight,
                "method": e.method.map(Method::name),
                "flagged_steps": e.steps.iter().filter(|p| p.flagged).count(),
                "time": worst.map(|w| w.t),
                "actual": num(worst.and_then(|w| w.actual)),
                "prediction": num(worst.and_then(|w| w.band).map(|b| b.prediction)),
                "low": num(worst.and_then(|w| w.band).map(|b| b.low)),
                "high": num(worst.and_then(|w| w.band).map(|b| b.high)),
                "suppressed": suppressed.iter().map(|j| series[*j].name.as_str()).collect::<Vec<_>>(),
                "points": points,
            })
        })
        .collect();
    let threshold: Vec<serde_json::Value> =
        thresholds(registry, rules, &req.selection, &series, &steps)
            .into_iter()
            .map(|v| {
                serde_json::json!({
                    "rule": v.rule,
                    "rule_series": rules[v.rule].series,
                    "condition": rules[v.rule].describe(),
                    "series": v.series,
                    "violations": v.steps,
                })
            })
            .collect();
    Ok(serde_json::json!({
        "scope": req.scope.name(),
        "step": req.step.name(),
        "from": req.range.0,
        "to": req.range.1,
        "partial": coverage.partial,
        "missing": coverage.missing,
        "series_evaluated": series.len(),
        "anomalies_found": alerts.len(),
        "anomalies": anomalies,
        "thresholds": threshold,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::error::Error;

    const H: u32 = 3_600;
    /// A Monday 00:00 UTC, well after four weeks past 1970.
    const T0: u32 = 1_763_942_400;

    fn reg() -> Registry {
        dc_config::examples::declared().registry
    }

    /// A series with a daily shape (10× the hour of day + base) over
    /// `days` days before `T0 + 24 h`, replaced by `at` where given.
    fn series<'r>(
        r: &'r Registry,
        name: &str,
        base: f64,
        days: u32,
        at: &[(u32, f64)],
    ) -> SeriesData<'r> {
        let mut values = BTreeMap::new();
        for t in (T0 + H * 24 - days * DAY_S..T0 + H * 24).step_by(H as usize) {
            values.insert(t, base + f64::from((t % DAY_S) / H) * base / 10.0);
        }
        for (t, v) in at {
            values.insert(*t, *v);
        }
        SeriesData {
            name: name.into(),
            parsed: parse_name(r, name).unwrap(),
            values,
        }
    }

    fn steps() -> Vec<u32> {
        (T0..T0 + 24 * H).step_by(H as usize).collect()
    }

    #[test]
    fn requests_are_checked() {
        let r = reg();
        let q = AnomaliesRequest::parse(&r, &format!("event=vote&to={}", T0), 0).unwrap();
        assert_eq!(q.range, (T0 - 6 * H, T0));
        assert_eq!(q.read_range().0, T0 - 6 * H - 28 * DAY_S);
        assert_eq!(q.steps().count(), 6);
        let q = AnomaliesRequest::parse(
            &r,
            &format!(
                "event=vote&metric=vote.count()&from={T0}&to={}&step=5min&scope=dc&limit=3",
                T0 + H
            ),
            0,
        )
        .unwrap();
        assert_eq!(q.selection, Selection::Names(vec!["vote.count()".into()]));
        assert_eq!(q.steps().count(), 12);
        let err = |q: &str| match AnomaliesRequest::parse(&r, q, T0) {
            Err(Error::BadParameter { parameter, .. }) => parameter,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(err("window=1h"), "event");
        assert_eq!(err("event=nope"), "event");
        assert_eq!(err("metric=vote.count()'--"), "metric");
        assert_eq!(err("event=registration&metric=vote.count()"), "metric");
        assert_eq!(err("event=vote&step=minute"), "step");
        assert_eq!(err("event=vote&step=day"), "step");
        assert_eq!(err("event=vote&window=1w"), "window");
        assert_eq!(err("event=vote&limit=1000"), "limit");
        assert_eq!(err("event=vote&from=0&to=3600"), "from");
        assert_eq!(err("event=vote&x=1"), "x");
    }

    #[test]
    fn seasonal_prediction_with_fallbacks() {
        let r = reg();
        let t = T0 + 10 * H;
        // Five weeks of history: weekly.
        let s = series(&r, "vote.count()", 100.0, 35, &[]);
        let (b, m) = predict(&s, t, H).unwrap();
        assert_eq!((m, b.prediction), (Method::Weekly, 200.0));
        // Ten days: daily.
        let s = series(&r, "vote.count()", 100.0, 10, &[]);
        assert_eq!(predict(&s, t, H).unwrap().1, Method::Daily);
        // Twelve hours: the level of the last steps.
        let s = series(&r, "vote.count()", 100.0, 1, &[]);
        let (_, m) = predict(&s, T0 + 23 * H, H).unwrap();
        assert_eq!(m, Method::Recent);
        // Two hours: nothing to go by.
        let mut s = series(&r, "vote.count()", 100.0, 0, &[]);
        s.values.insert(T0, 5.0);
        s.values.insert(T0 + H, 5.0);
        assert!(predict(&s, T0 + 2 * H, H).is_none());
        // Missing counts inside the history are 0; before it, nothing.
        assert_eq!(figure(&s, T0 + 5 * H), Some(0.0));
        assert_eq!(figure(&s, T0 - H), None);
    }

    #[test]
    fn a_drop_is_flagged_and_weighed() {
        let r = reg();
        let t = T0 + 10 * H;
        let s = series(&r, "vote.count()", 100.0, 35, &[(t, 50.0)]);
        let e = evaluate(&s, &steps(), H);
        let flagged: Vec<u32> = e.steps.iter().filter(|p| p.flagged).map(|p| p.t).collect();
        assert_eq!(flagged, [t]);
        assert_eq!(e.weight, 150.0, "200 expected, 50 seen");
        assert_eq!(e.method, Some(Method::Weekly));
        // The same relative drop on a handful is under the minimum volume.
        let s = series(&r, "vote.count()", 0.4, 35, &[(t, 0.0)]);
        assert!(!evaluate(&s, &steps(), H).flagged());
    }

    #[test]
    fn one_child_explains_its_parent() {
        let r = reg();
        let t = T0 + 10 * H;
        // Country 3 falls to 0 at t and carries the whole drop of the total.
        let all = vec![
            series(&r, "vote.count()", 200.0, 35, &[(t, 200.0)]),
            series(&r, "vote.count(){country_id=3}", 100.0, 35, &[(t, 0.0)]),
            series(&r, "vote.count(){country_id=5}", 100.0, 35, &[]),
            series(
                &r,
                "vote.count(){vote=yes,country_id=3}",
                50.0,
                35,
                &[(t, 0.0)],
            ),
            series(
                &r,
                "vote.count(){vote=no,country_id=3}",
                50.0,
                35,
                &[(t, 0.0)],
            ),
            // Explained by its child vote=yes × country 3, a child of the cause.
            series(&r, "vote.count(){vote=yes}", 100.0, 35, &[(t, 100.0)]),
        ];
        let evals: Vec<Evaluated> = all.iter().map(|s| evaluate(s, &steps(), H)).collect();
        assert!(evals[0].flagged() && evals[1].flagged() && !evals[2].flagged());
        let alerts = one_per_cause(&all, &evals);
        // Country 3 is the cause: the total and the yes votes are explained
        // by it (or its part), its vote × country children share its drop.
        assert_eq!(alerts, vec![(1, vec![0, 3, 4, 5])]);
    }

    #[test]
    fn an_even_drop_is_the_parents() {
        let r = reg();
        let t = T0 + 10 * H;
        let all = vec![
            series(&r, "vote.count()", 400.0, 35, &[(t, 440.0)]),
            series(&r, "vote.count(){country_id=3}", 200.0, 35, &[(t, 220.0)]),
            series(&r, "vote.count(){country_id=5}", 200.0, 35, &[(t, 220.0)]),
        ];
        let evals: Vec<Evaluated> = all.iter().map(|s| evaluate(s, &steps(), H)).collect();
        assert!(evals.iter().all(Evaluated::flagged));
        assert_eq!(one_per_cause(&all, &evals), vec![(0, vec![1, 2])]);
        // Unrelated flagged series each stand alone.
        let other = vec![
            series(&r, "vote.count(){country_id=3}", 200.0, 35, &[(t, 100.0)]),
            series(&r, "vote.uniq(user_id)", 200.0, 35, &[(t, 100.0)]),
        ];
        let evals: Vec<Evaluated> = other.iter().map(|s| evaluate(s, &steps(), H)).collect();
        assert_eq!(one_per_cause(&other, &evals).len(), 2);
    }

    #[test]
    fn threshold_rules_fire_on_their_series() {
        let r = reg();
        let all = vec![
            series(
                &r,
                "vote.count(){country_id=3}",
                100.0,
                1,
                &[(T0 + 2 * H, 5.0)],
            ),
            series(&r, "vote.count(){country_id=5}", 100.0, 1, &[]),
        ];
        let rule = |s: &str, below: Option<f64>, nonzero: bool| ThresholdRule {
            series: s.into(),
            below,
            above: None,
            nonzero,
        };
        let rules = vec![
            rule("vote.count(){country_id=*}", Some(50.0), false),
            rule("vote.count(){vote=no}", None, true),
            rule("vote.count(){vote=yes}", Some(1.0), false),
            rule("registration.count()", Some(1.0), false),
        ];
        let sel = Selection::Event("vote".into());
        let got = thresholds(&r, &rules, &sel, &all, &steps());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(
            got[0],
            Violation {
                rule: 0,
                series: "vote.count(){country_id=3}".into(),
                steps: vec![(T0 + 2 * H, 5.0)]
            }
        );
        // No data at all for vote=yes: 0 at every step, below 1.
        assert_eq!(
            (got[1].rule, got[1].series.as_str(), got[1].steps.len()),
            (2, "vote.count(){vote=yes}", 24)
        );
    }
}
