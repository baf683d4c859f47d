//! Drop detection, `GET /v1/drops` (ADR 0004): every series of an event —
//! every metric, every roll-up, every dimension value with data in either
//! window — compared between a recent window and a reference window (the
//! previous window, the same time yesterday, or last week), ranked by
//! significance ([`stats::change_score`]), not by percentage: a 40 % jump on
//! 3 events is noise, a 10 % drop of a million is not.
//!
//! Figures are merged from the aggregate states over each whole window
//! ([`buckets`]), so a window of uniques is the distinct values in it.

use dc_config::registry::Registry;

use crate::buckets::{self, Selection, SeriesData};
use crate::ch::{ClickHouse, Coverage};
use crate::error::Result;
use crate::series::{bad, unix_seconds, Scope};
use crate::stats;

/// Default number of changes in an answer.
pub const DEFAULT_LIMIT: usize = 50;
/// Most changes in an answer.
pub const MAX_LIMIT: usize = 1_000;

/// The window a recent window is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// The window of the same length just before.
    Previous,
    /// The same time one day earlier.
    Yesterday,
    /// The same time one week earlier.
    LastWeek,
}

impl Reference {
    /// The name in requests.
    pub fn name(self) -> &'static str {
        match self {
            Reference::Previous => "previous",
            Reference::Yesterday => "yesterday",
            Reference::LastWeek => "last_week",
        }
    }

    /// How far back the reference window lies, for a window of `len_s`.
    pub fn shift_s(self, len_s: u32) -> u32 {
        match self {
            Reference::Previous => len_s,
            Reference::Yesterday => 86_400,
            Reference::LastWeek => 7 * 86_400,
        }
    }
}

/// Which changes an answer lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Drops and rises.
    Both,
    /// Drops only.
    Down,
    /// Rises only.
    Up,
}

/// A checked drops request.
#[derive(Debug, Clone, PartialEq)]
pub struct DropsRequest {
    /// Event type.
    pub event: String,
    /// Recent window `[from, to)`, unix seconds, whole minutes.
    pub current: (u32, u32),
    /// Reference kind.
    pub reference: Reference,
    /// Scope.
    pub scope: Scope,
    /// Which changes to list.
    pub direction: Direction,
    /// Most changes listed.
    pub limit: usize,
}

impl DropsRequest {
    /// Parses and checks a query string: `event` (required); `window`
    /// (e.g. `1h`, ending at `to` or just before now) or `from` and `to`;
    /// `reference` (previous, yesterday, last_week; default previous);
    /// `scope` (global, dc); `direction` (both, down, up); `limit`.
    pub fn parse(registry: &Registry, query: &str, now_s: u32) -> Result<Self> {
        let (mut event, mut from, mut to, mut window) = (None, None, None, None);
        let mut reference = Reference::Previous;
        let mut scope = Scope::Global;
        let mut direction = Direction::Both;
        let mut limit = DEFAULT_LIMIT;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "event" => event = Some(buckets::parse_event(registry, &v)?),
                "from" => from = Some(unix_seconds("from", &v)?),
                "to" => to = Some(unix_seconds("to", &v)?),
                "window" => window = Some(buckets::parse_duration("window", &v)?),
                "reference" => {
                    reference = match v.as_ref() {
                        "previous" => Reference::Previous,
                        "yesterday" => Reference::Yesterday,
                        "last_week" => Reference::LastWeek,
                        _ => return Err(bad("reference", "previous, yesterday or last_week")),
                    }
                }
                "scope" => scope = Scope::parse(&v)?,
                "direction" => {
                    direction = match v.as_ref() {
                        "both" => Direction::Both,
                        "down" => Direction::Down,
                        "up" => Direction::Up,
                        _ => return Err(bad("direction", "both, down or up")),
                    }
                }
                "limit" => limit = buckets::parse_limit(&v, MAX_LIMIT)?,
                other => {
                    return Err(bad(
                        other,
                        "not a parameter of /v1/drops (event, window, from, to, reference, scope, direction, limit)",
                    ))
                }
            }
        }
        let event =
            event.ok_or_else(|| bad("event", "required: an event type, e.g. event=vote"))?;
        let current = buckets::time_range(from, to, window, 60, now_s)?;
        let len = current.1 - current.0;
        let shift = reference.shift_s(len);
        if len > shift {
            return Err(bad(
                "window",
                &format!(
                    "a window compared with {} may span at most {} s, so the two windows do not overlap",
                    reference.name(),
                    shift
                ),
            ));
        }
        if current.0 < shift {
            return Err(bad("from", "the reference window would start before 1970"));
        }
        Ok(Self {
            event,
            current,
            reference,
            scope,
            direction,
            limit,
        })
    }

    /// The reference window.
    pub fn reference_window(&self) -> (u32, u32) {
        let shift = self.reference.shift_s(self.current.1 - self.current.0);
        (self.current.0 - shift, self.current.1 - shift)
    }
}

/// One ranked change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Index of the series in the read.
    pub series: usize,
    /// Figure in the current window.
    pub current: f64,
    /// Figure in the reference window.
    pub reference: f64,
    /// Relative change, `current / reference - 1`; `None` from 0.
    pub change: Option<f64>,
    /// Significance ([`stats::change_score`]), negative for a drop.
    pub score: f64,
}

/// One series per name, with its current figure at bucket 0 and its
/// reference figure at bucket 1 (each read whole, at bucket 0).
pub fn pair<'r>(
    current: Vec<SeriesData<'r>>,
    reference: Vec<SeriesData<'r>>,
) -> Vec<SeriesData<'r>> {
    let mut by_name: std::collections::BTreeMap<String, SeriesData<'r>> =
        current.into_iter().map(|s| (s.name.clone(), s)).collect();
    for r in reference {
        let v = r.values.get(&0).copied();
        let s = by_name.entry(r.name.clone()).or_insert(SeriesData {
            values: Default::default(),
            ..r
        });
        if let Some(v) = v {
            s.values.insert(1, v);
        }
    }
    by_name.into_values().collect()
}

/// Ranks the changes of `series` (bucket 0 current, 1 reference), most
/// significant first. A series absent from a window counts 0 there when
/// its kind counts or sums; a minimum or maximum absent from a window has
/// no figure to compare and is left out, as are counting series under
/// [`stats::MIN_VOLUME`].
pub fn rank(series: &[SeriesData<'_>], direction: Direction) -> Vec<Change> {
    use dc_config::registry::MetricKind;
    let mut out: Vec<Change> = series
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let kind = s.kind();
            let (c, r) = (s.values.get(&0).copied(), s.values.get(&1).copied());
            let (current, reference) = match kind {
                MetricKind::Min | MetricKind::Max => (c?, r?),
                _ => (c.unwrap_or(0.0), r.unwrap_or(0.0)),
            };
            if !stats::has_volume(current, reference, kind) {
                return None;
            }
            let score = stats::change_score(current, reference, kind);
            let keep = match direction {
                Direction::Both => score != 0.0,
                Direction::Down => score < 0.0,
                Direction::Up => score > 0.0,
            };
            keep.then(|| Change {
                series: i,
                current,
                reference,
                change: (reference != 0.0).then(|| current / reference - 1.0),
                score,
            })
        })
        .collect();
    out.sort_by(|a, b| b.score.abs().total_cmp(&a.score.abs()));
    out
}

/// Runs `req`; the JSON answer.
pub async fn detect(
    ch: &ClickHouse,
    registry: &Registry,
    req: &DropsRequest,
) -> Result<serde_json::Value> {
    let selection = Selection::Event(req.event.clone());
    let (current, reference) = tokio::join!(
        buckets::read(ch, registry, req.scope, &selection, req.current, None),
        buckets::read(
            ch,
            registry,
            req.scope,
            &selection,
            req.reference_window(),
            None
        ),
    );
    let ((current, c1), (reference, c2)) = (current?, reference?);
    let series = pair(current, reference);
    let coverage = Coverage::either(c1, c2);
    let ranked = rank(&series, req.direction);
    let changes: Vec<serde_json::Value> = ranked
        .iter()
        .take(req.limit)
        .map(|c| {
            let s = &series[c.series];
            serde_json::json!({
                "series": s.name,
                "metric": s.base_name(),
                "kind": s.kind().name(),
                "dims": s.dims_json(),
                "current": c.current,
                "reference": c.reference,
                "change": c.change,
                "score": c.score,
            })
        })
        .collect();
    let reference = req.reference_window();
    Ok(serde_json::json!({
        "event": req.event,
        "scope": req.scope.name(),
        "current": {"from": req.current.0, "to": req.current.1},
        "reference": {"kind": req.reference.name(), "from": reference.0, "to": reference.1},
        "partial": coverage.partial,
        "missing": coverage.missing,
        "series_compared": series.len(),
        "changes_found": ranked.len(),
        "changes": changes,
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::error::Error;

    fn reg() -> Registry {
        dc_config::examples::declared().registry
    }

    fn data<'r>(r: &'r Registry, name: &str, c: Option<f64>, re: Option<f64>) -> SeriesData<'r> {
        let mut values = BTreeMap::new();
        if let Some(c) = c {
            values.insert(0, c);
        }
        if let Some(re) = re {
            values.insert(1, re);
        }
        SeriesData {
            name: name.into(),
            parsed: dc_config::rollup::parse_name(r, name).unwrap(),
            values,
        }
    }

    #[test]
    fn requests_are_checked() {
        let r = reg();
        let ok =
            DropsRequest::parse(&r, "event=vote&window=1h&to=7210&reference=previous", 0).unwrap();
        assert_eq!(ok.current, (3_600, 7_200));
        assert_eq!(ok.reference_window(), (0, 3_600));
        let ok = DropsRequest::parse(&r, "event=vote&window=1h", 700_000).unwrap();
        assert_eq!(ok.current.1, 699_960 - buckets::SETTLE_S);
        let ok = DropsRequest::parse(
            &r,
            "event=vote&from=1000000&to=1003600&reference=last_week&scope=dc&direction=down&limit=3",
            0,
        )
        .unwrap();
        assert_eq!(ok.reference_window(), (395_160, 398_760));
        assert_eq!(
            (ok.scope, ok.direction, ok.limit),
            (Scope::Dc, Direction::Down, 3)
        );
        let err = |q: &str| match DropsRequest::parse(&r, q, 10_000_000) {
            Err(Error::BadParameter { parameter, .. }) => parameter,
            other => panic!("{q}: {other:?}"),
        };
        assert_eq!(err("window=1h"), "event");
        assert_eq!(err("event=login&window=1h"), "event");
        assert_eq!(err("event=vote"), "window");
        assert_eq!(err("event=vote&window=2d&reference=yesterday"), "window");
        assert_eq!(err("event=vote&window=1h&reference=tomorrow"), "reference");
        assert_eq!(err("event=vote&window=1h&limit=0"), "limit");
        assert_eq!(err("event=vote&window=1h&direction=sideways"), "direction");
        assert_eq!(err("event=vote&window=1h&scope=planet"), "scope");
        assert_eq!(err("event=vote'--&window=1h"), "event");
        assert_eq!(err("event=vote&window=1h&sql=1"), "sql");
        assert_eq!(err("event=vote&from=60&to=120&reference=yesterday"), "from");
    }

    #[test]
    fn significance_not_percentage_ranks_first() {
        let r = reg();
        let series = vec![
            // +40 % on a handful: noise.
            data(&r, "vote.count(){country_id=7}", Some(14.0), Some(10.0)),
            // −30 % on thousands: the real drop.
            data(&r, "vote.count()", Some(2_100.0), Some(3_000.0)),
            // A series that vanished.
            data(&r, "vote.count(){country_id=3}", None, Some(400.0)),
            // Tiny: left out.
            data(&r, "vote.count(){country_id=9}", Some(1.0), Some(6.0)),
            // Unchanged.
            data(&r, "vote.uniq(user_id){vote=no}", Some(50.0), Some(50.0)),
            // A maximum with no current figure: nothing to compare.
            data(
                &r,
                "screen_view.max(load_ms){platform=web}",
                None,
                Some(50.0),
            ),
        ];
        let ranked = rank(&series, Direction::Both);
        let names: Vec<&str> = ranked
            .iter()
            .map(|c| series[c.series].name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "vote.count(){country_id=3}",
                "vote.count()",
                "vote.count(){country_id=7}"
            ]
        );
        assert_eq!(ranked[0].change, Some(-1.0));
        assert!(ranked[1].score < -4.0);
        assert!(ranked[2].score.abs() < 1.5);
        let up = rank(&series, Direction::Up);
        assert_eq!(up.len(), 1);
        assert_eq!(rank(&series, Direction::Down).len(), 2);
    }
}
