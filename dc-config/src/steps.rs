//! Pre-merged coarser steps (docs/adr/0016-pre-merged-hours-and-days.md):
//! hour states merged from a settled hour's minute states, day states
//! merged from a settled day's hour states, the marks saying which periods
//! of a DC are built, and the read that takes each part of a range from the
//! coarsest states that hold it. A point of an hour step then merges one
//! state per DC and shard instead of sixty.
//!
//! Exactness holds because a coarse period is rebuilt, never added to: the
//! aggregator builds an hour once every minute of it is aggregated, and
//! builds it again (a newer version, which `FINAL` keeps) in the round that
//! re-aggregates one of its minutes; a day likewise from its hours.

use serde::{Deserialize, Serialize};

use crate::registry::MetricKind;
use crate::rollup::{state_column, STATE_COLUMNS};
use crate::schema::table;
use crate::sql::quote_str;

/// A coarser step kept beside the minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Coarse {
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
}

impl Coarse {
    /// Finer first: the order they are built in.
    pub const ALL: [Coarse; 2] = [Coarse::Hour, Coarse::Day];

    /// Its name in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Coarse::Hour => "hour",
            Coarse::Day => "day",
        }
    }

    /// Seconds per period.
    pub fn seconds(self) -> u32 {
        match self {
            Coarse::Hour => 3_600,
            Coarse::Day => 86_400,
        }
    }

    /// The step of `seconds`, if it is a coarse one.
    pub fn from_seconds(seconds: u32) -> Option<Coarse> {
        Coarse::ALL.into_iter().find(|c| c.seconds() == seconds)
    }

    /// The table on each server.
    pub fn local_table(self) -> &'static str {
        match self {
            Coarse::Hour => table::STATES_HOUR_LOCAL,
            Coarse::Day => table::STATES_DAY_LOCAL,
        }
    }

    /// The states it is merged from, over the DC's cluster.
    fn source_dc_table(self) -> &'static str {
        match self {
            Coarse::Hour => table::STATES_DC,
            Coarse::Day => table::STATES_HOUR_DC,
        }
    }
}

/// Floor of `t` to a multiple of `step`.
pub fn floor_to(t: u32, step: u32) -> u32 {
    t - t % step
}

/// Ceiling of `t` to a multiple of `step` (saturating).
pub fn ceil_to(t: u32, step: u32) -> u32 {
    floor_to(t.saturating_add(step - 1), step)
}

/// Built periods of one coarse step in one DC: `[from_s, through_s)`,
/// both multiples of the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Built {
    /// First built period's start.
    pub from_s: u32,
    /// End of the last built period.
    pub through_s: u32,
}

impl Built {
    /// The periods both `self` and `other` hold.
    pub fn intersect(self, other: Built) -> Built {
        Built {
            from_s: self.from_s.max(other.from_s),
            through_s: self.through_s.min(other.through_s),
        }
    }
}

/// The `INSERT … SELECT` building `periods` (starts, sorted, each once) of
/// step `coarse` for datacenter `dc` from the next finer states, with
/// version `version`: one row per series and period, the merge of the
/// finer rows' states (`-MergeState`, so uniques stay exact). Contiguous
/// periods are one range; others are also named in `WHERE`. With `only`
/// (an event type and a metric's base name), only that metric's series are
/// built: a new metric's backfill leaves every other series as it was.
/// `None` for no periods. The inner query selects no constants (18.16
/// refuses constant columns coming back from remote shards).
pub fn build_sql(
    database: &str,
    dc: &str,
    coarse: Coarse,
    periods: &[u32],
    version: u64,
    only: Option<(&str, &str)>,
) -> Option<String> {
    let (first, last) = (*periods.first()?, *periods.last()?);
    let step = coarse.seconds();
    let end = last + step;
    let contiguous = (end - first) / step == periods.len() as u32;
    let mut named = if contiguous {
        String::new()
    } else {
        let list: Vec<String> = periods.iter().map(u32::to_string).collect();
        format!(" AND s_p IN ({})", list.join(", "))
    };
    if let Some((event, base)) = only {
        named.push_str(&format!(
            " AND event = {} AND (metric = {} OR startsWith(metric, {}))",
            quote_str(event),
            quote_str(base),
            quote_str(&format!("{base}{{"))
        ));
    }
    let states: Vec<String> = STATE_COLUMNS
        .iter()
        .map(|(col, f)| format!("{f}MergeState({col}) AS s_{col}"))
        .collect();
    let cols: Vec<&str> = STATE_COLUMNS.iter().map(|(c, _)| *c).collect();
    let s_cols: Vec<String> = cols.iter().map(|c| format!("s_{c}")).collect();
    Some(format!(
        "INSERT INTO {database}.{target} (date, minute, dc, event, metric, kind, version, {cols}) \
         SELECT toDate(s_p), s_p, s_dc, s_event, s_metric, s_kind, toUInt64({version}), {s_cols} \
         FROM (SELECT toDateTime(intDiv(toUInt32(minute), {step}) * {step}) AS s_p, \
         dc AS s_dc, event AS s_event, metric AS s_metric, kind AS s_kind, {states} \
         FROM {database}.{source} FINAL \
         WHERE dc = {dc} \
         AND date >= toDate(toDateTime({first})) AND date <= toDate(toDateTime({last_s})) \
         AND minute >= toDateTime({first}) AND minute < toDateTime({end}){named} \
         GROUP BY s_p, s_dc, s_event, s_metric, s_kind)",
        target = coarse.local_table(),
        cols = cols.join(", "),
        s_cols = s_cols.join(", "),
        states = states.join(", "),
        source = coarse.source_dc_table(),
        dc = quote_str(dc),
        last_s = end - 1,
    ))
}

/// The statement recording the built ranges of `dc` (hours, then days, as
/// [`Coarse::ALL`]) in `rollup_marks_local`, all in one insert so a reader
/// never sees the day mark of a round without its hour mark; `None` when
/// nothing is built. Readers merge every shard's marks.
pub fn marks_insert_sql(
    database: &str,
    dc: &str,
    built: &[Option<Built>; 2],
    version: u64,
) -> Option<String> {
    let rows: Vec<String> = Coarse::ALL
        .into_iter()
        .zip(built)
        .filter_map(|(coarse, b)| {
            b.map(|b| {
                format!(
                    "({dc}, {step}, {from}, {through}, {version})",
                    dc = quote_str(dc),
                    step = coarse.seconds(),
                    from = b.from_s,
                    through = b.through_s,
                )
            })
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    Some(format!(
        "INSERT INTO {database}.{marks} (dc, step, from_s, through_s, version) VALUES {}",
        rows.join(", "),
        marks = table::ROLLUP_MARKS_LOCAL,
    ))
}

/// The query reading the marks of `table` (`rollup_marks_dc` or `_all`):
/// `dc<TAB>step<TAB>from_s<TAB>through_s` lines for [`parse_marks`].
pub fn marks_sql(database: &str, table: &str) -> String {
    format!("SELECT dc, step, from_s, through_s FROM {database}.{table} FINAL FORMAT TSV")
}

/// The marks of [`marks_sql`]'s answer; lines that do not parse are left
/// out (a reader then takes finer states, never wrong ones).
pub fn parse_marks(text: &str) -> Vec<(String, Coarse, Built)> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let dc = f.next()?.to_string();
            let coarse = Coarse::from_seconds(f.next()?.parse().ok()?)?;
            let from_s = f.next()?.parse().ok()?;
            let through_s = f.next()?.parse().ok()?;
            Some((dc, coarse, Built { from_s, through_s }))
        })
        .collect()
}

/// Per coarse step, the periods built in every one of `dcs`: `None` when
/// a DC has no mark for it (its periods are read from finer states). A DC
/// with marks on several shards counts only what all of them say.
pub fn built_in_all(marks: &[(String, Coarse, Built)], dcs: &[&str]) -> [Option<Built>; 2] {
    Coarse::ALL.map(|coarse| {
        let mut out: Option<Built> = None;
        for dc in dcs {
            let here = marks
                .iter()
                .filter(|(d, c, _)| d == dc && *c == coarse)
                .map(|(_, _, b)| *b)
                .reduce(Built::intersect)?;
            out = Some(out.map_or(here, |o| o.intersect(here)));
        }
        out.filter(|b| b.from_s < b.through_s)
    })
}

/// A part of a read: the periods `[from_s, to_s)` from `coarse` states, or
/// from the minute states when `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The states read.
    pub coarse: Option<Coarse>,
    /// Start, unix seconds.
    pub from_s: u32,
    /// End, unix seconds, exclusive.
    pub to_s: u32,
}

/// Splits `[from_s, to_s)` read at `step_s` into parts, each from the
/// coarsest states built there whose periods each lie inside one step
/// (`built`: [`built_in_all`]'s answer, hours then days); what no coarse
/// step holds comes from the minutes.
pub fn parts(from_s: u32, to_s: u32, step_s: u32, built: [Option<Built>; 2]) -> Vec<Part> {
    let mut levels: Vec<(Coarse, Built)> = Coarse::ALL
        .into_iter()
        .zip(built)
        .filter(|(c, _)| step_s.is_multiple_of(c.seconds()))
        .filter_map(|(c, b)| b.map(|b| (c, b)))
        .collect();
    levels.reverse(); // coarsest first
    let mut out = Vec::new();
    fill(from_s, to_s, &levels, &mut out);
    out
}

fn fill(from_s: u32, to_s: u32, levels: &[(Coarse, Built)], out: &mut Vec<Part>) {
    if from_s >= to_s {
        return;
    }
    let Some(((coarse, built), finer)) = levels.split_first() else {
        out.push(Part {
            coarse: None,
            from_s,
            to_s,
        });
        return;
    };
    let s = coarse.seconds();
    let a = ceil_to(from_s, s).max(ceil_to(built.from_s, s));
    let e = floor_to(to_s, s).min(floor_to(built.through_s, s));
    if a >= e {
        return fill(from_s, to_s, finer, out);
    }
    fill(from_s, a, finer, out);
    out.push(Part {
        coarse: Some(*coarse),
        from_s: a,
        to_s: e,
    });
    fill(e, to_s, finer, out);
}

/// The states tables a scope reads: minutes, hours, days.
#[derive(Debug, Clone, Copy)]
pub struct ScopeTables {
    /// Minute states.
    pub minutes: &'static str,
    /// Hour states.
    pub hours: &'static str,
    /// Day states.
    pub days: &'static str,
}

/// The tables over this DC's cluster.
pub const DC_TABLES: ScopeTables = ScopeTables {
    minutes: table::STATES_DC,
    hours: table::STATES_HOUR_DC,
    days: table::STATES_DAY_DC,
};

/// The tables over every DC.
pub const ALL_TABLES: ScopeTables = ScopeTables {
    minutes: table::STATES_ALL,
    hours: table::STATES_HOUR_ALL,
    days: table::STATES_DAY_ALL,
};

/// A read of series `names` (all of metric kind `kind`) over `parts` at
/// `step_s`: one row per series (`metric`, its name) and step start (`t`)
/// with the merged value (`v`, `Float64`); with `by_dc`, per datacenter too
/// (`dc`, first). Each part keeps the latest version of each stored row
/// (`argMax` by version, grouped by the table's key, on the shard holding
/// it: the same rows `FINAL` keeps, at half its cost on 18.16); the outer
/// query merges a step's states across rows, parts and DCs. Series are
/// grouped by their hash and named once per answer row, so no name is
/// read from storage. No `FORMAT`: callers join several with `UNION ALL`.
/// `None` for no names or no parts.
pub fn read_sql(
    database: &str,
    tables: ScopeTables,
    kind: MetricKind,
    names: &[String],
    parts: &[Part],
    step_s: u32,
    by_dc: bool,
) -> Option<String> {
    if names.is_empty() || parts.is_empty() {
        return None;
    }
    let (col, f) = state_column(kind);
    let by = if by_dc { "dc, " } else { "" };
    let hashes: Vec<String> = names
        .iter()
        .map(|n| format!("cityHash64({})", quote_str(n)))
        .collect();
    let hashes = hashes.join(", ");
    let quoted: Vec<String> = names.iter().map(|n| quote_str(n)).collect();
    let branches: Vec<String> = parts
        .iter()
        .map(|p| {
            let table = match p.coarse {
                None => tables.minutes,
                Some(Coarse::Hour) => tables.hours,
                Some(Coarse::Day) => tables.days,
            };
            format!(
                "SELECT dc, metric_hash, intDiv(toUInt32(minute), {step_s}) * {step_s} AS t, \
                 argMax({col}, version) AS s FROM {database}.{table} \
                 WHERE metric_hash IN ({hashes}) \
                 AND date >= toDate(toDateTime({from})) AND date <= toDate(toDateTime({last})) \
                 AND minute >= toDateTime({from}) AND minute < toDateTime({to}) \
                 GROUP BY dc, metric_hash, minute",
                from = p.from_s,
                to = p.to_s,
                last = p.to_s - 1,
            )
        })
        .collect();
    Some(format!(
        "SELECT {by}transform(metric_hash, [{hashes}], [{names}], '') AS metric, t, \
         toFloat64({f}Merge(s)) AS v FROM ({branches}) GROUP BY {by}metric_hash, t",
        names = quoted.join(", "),
        branches = branches.join(" UNION ALL "),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u32 = 3_600;
    const D: u32 = 86_400;

    fn built(from_s: u32, through_s: u32) -> Option<Built> {
        Some(Built { from_s, through_s })
    }

    #[test]
    fn a_range_takes_the_coarsest_states_built_and_minutes_elsewhere() {
        // Days built for days 1..3, hours for day 1 to day 3 + 5 h.
        let b = [built(D, 3 * D + 5 * H), built(D, 3 * D)];
        let p = |c, f, t| Part {
            coarse: c,
            from_s: f,
            to_s: t,
        };
        // A day step from day 0 to day 4 + 30 min.
        assert_eq!(
            parts(0, 4 * D + 1_800, D, b),
            vec![
                p(None, 0, D),
                p(Some(Coarse::Day), D, 3 * D),
                p(Some(Coarse::Hour), 3 * D, 3 * D + 5 * H),
                p(None, 3 * D + 5 * H, 4 * D + 1_800),
            ]
        );
        // An hour step never takes days; a minute step takes only minutes.
        assert_eq!(
            parts(D + 2 * H, 2 * D, H, b),
            vec![p(Some(Coarse::Hour), D + 2 * H, 2 * D)]
        );
        assert_eq!(parts(D, 2 * D, 300, b), vec![p(None, D, 2 * D)]);
        // Nothing built: minutes.
        assert_eq!(parts(0, D, D, [None, None]), vec![p(None, 0, D)]);
        // A range ending inside an hour reads that hour's minutes.
        assert_eq!(
            parts(D, D + H + 60, H, b),
            vec![p(Some(Coarse::Hour), D, D + H), p(None, D + H, D + H + 60)]
        );
    }

    #[test]
    fn marks_count_only_what_every_dc_has_built() {
        let marks = parse_marks(&format!(
            "dc1\t3600\t0\t{}\ndc2\t3600\t{H}\t{}\ndc1\t86400\t0\t{D}\nbad line\n",
            10 * H,
            7 * H
        ));
        assert_eq!(marks.len(), 3);
        assert_eq!(
            built_in_all(&marks, &["dc1", "dc2"]),
            [built(H, 7 * H), None]
        );
        assert_eq!(
            built_in_all(&marks, &["dc1"]),
            [built(0, 10 * H), built(0, D)]
        );
        assert_eq!(built_in_all(&marks, &["dc3"]), [None, None]);
    }

    #[test]
    fn builds_name_their_periods_unless_contiguous() {
        let sql = build_sql("db", "dc1", Coarse::Hour, &[H, 2 * H], 7, None).unwrap();
        assert!(
            sql.starts_with("INSERT INTO db.metric_states_hour_local"),
            "{sql}"
        );
        assert!(
            sql.contains("FROM db.metric_states_dc FINAL WHERE dc = 'dc1'"),
            "{sql}"
        );
        assert!(!sql.contains(" IN ("), "{sql}");
        let sql = build_sql("db", "dc1", Coarse::Day, &[0, 2 * D], 7, None).unwrap();
        assert!(sql.contains("FROM db.metric_states_hour_dc FINAL"), "{sql}");
        assert!(sql.contains("AND s_p IN (0, 172800)"), "{sql}");
        assert!(build_sql("db", "dc1", Coarse::Day, &[], 7, None).is_none());
        // One metric's series only (a backfill).
        let sql = build_sql(
            "db",
            "dc1",
            Coarse::Hour,
            &[H],
            7,
            Some(("vote", "vote.count()")),
        )
        .unwrap();
        assert!(
            sql.contains("AND event = 'vote' AND (metric = 'vote.count()' OR startsWith(metric, 'vote.count(){'))"),
            "{sql}"
        );
        // Both marks of a round in one insert; none when nothing is built.
        let sql = marks_insert_sql("db", "dc1", &[built(0, H), built(0, D)], 7).unwrap();
        assert!(
            sql.ends_with("VALUES ('dc1', 3600, 0, 3600, 7), ('dc1', 86400, 0, 86400, 7)"),
            "{sql}"
        );
        assert!(marks_insert_sql("db", "dc1", &[None, None], 7).is_none());
    }
}
