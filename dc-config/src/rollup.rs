//! Metric roll-ups: how each metric definition of the registry expands into
//! roll-ups (one series family per subset of its dimensions), how a series
//! is named, and the SQL that aggregates one minute of one datacenter into
//! aggregate states. The query service names series with the same code.
//!
//! A series name is `EVENT.KIND(FIELD)` for the roll-up over no dimension,
//! and `EVENT.KIND(FIELD){DIM=VALUE,…}` otherwise, dimensions in registry
//! order, e.g. `registration.uniq(user_id){gender=male,country_id=47}`. In
//! values, `\`, `,`, `=`, `{` and `}` are escaped with `\`, so a name always
//! parses back. An optional dimension an event lacks has the empty value.
//! The series key is ClickHouse's `cityHash64(name)`, computed by ClickHouse
//! on write and read alike.

use crate::registry::{EventType, Metric, MetricKind, Registry, FOLDED_VALUE};
use crate::schema::table;
use crate::sql::quote_str;

/// One roll-up of one metric: the metric and the dimensions it keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollup<'a> {
    /// Event type name.
    pub event: &'a str,
    /// The metric definition.
    pub metric: &'a Metric,
    /// Kept dimensions, in registry order (a subset of the metric's).
    pub dims: Vec<&'a str>,
}

/// Every roll-up of `metric`: all subsets of its dimensions, the empty one
/// (the whole event) first, then by size.
pub fn rollups<'a>(event: &'a str, metric: &'a Metric) -> Vec<Rollup<'a>> {
    let n = metric.dimensions.len();
    let mut masks: Vec<u32> = (0..(1u32 << n)).collect();
    masks.sort_by_key(|m| (m.count_ones(), *m));
    masks
        .into_iter()
        .map(|mask| Rollup {
            event,
            metric,
            dims: (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| metric.dimensions[i].as_str())
                .collect(),
        })
        .collect()
}

/// Escapes a dimension value for a series name.
pub fn escape_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '=' | '{' | '}') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The series name of `rollup` for the given dimension values (column text,
/// in `rollup.dims` order).
pub fn series_name<S: AsRef<str>>(rollup: &Rollup<'_>, values: &[S]) -> String {
    let mut name = rollup.metric.base_name(rollup.event);
    if !rollup.dims.is_empty() {
        name.push('{');
        for (i, (d, v)) in rollup.dims.iter().zip(values).enumerate() {
            if i > 0 {
                name.push(',');
            }
            name.push_str(d);
            name.push('=');
            name.push_str(&escape_value(v.as_ref()));
        }
        name.push('}');
    }
    name
}

/// Why a series name does not name a series of the registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a series of the registry: {why}")]
pub struct NameError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub why: String,
}

/// A series name taken apart and checked against the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedName<'a> {
    /// The roll-up it belongs to.
    pub rollup: Rollup<'a>,
    /// Its dimension values, in `rollup.dims` order.
    pub values: Vec<String>,
}

/// Parses a series name (see the module doc) and checks it against the
/// registry: the event and metric exist, and the dimensions are the
/// metric's, in registry order. `series_name` of the result gives `name` back.
pub fn parse_name<'a>(registry: &'a Registry, name: &str) -> Result<ParsedName<'a>, NameError> {
    let err = |why: &str| NameError {
        name: name.to_string(),
        why: why.to_string(),
    };
    let (head, dims_part) = match name.find('{') {
        Some(i) if name.ends_with('}') => (&name[..i], Some(&name[i + 1..name.len() - 1])),
        Some(_) => return Err(err("a `{` opens dimensions that no `}` closes at the end")),
        None => (name, None),
    };
    let (event, rest) = head
        .split_once('.')
        .ok_or_else(|| err("expected EVENT.KIND(FIELD)"))?;
    let (kind, field) = rest
        .strip_suffix(')')
        .and_then(|r| r.split_once('('))
        .ok_or_else(|| err("expected EVENT.KIND(FIELD)"))?;
    let (event_name, ev) = registry
        .event
        .get_key_value(event)
        .ok_or_else(|| err(&format!("no event type `{event}`")))?;
    let metric = ev
        .metric
        .iter()
        .find(|m| m.kind.name() == kind && m.field.as_deref().unwrap_or("") == field)
        .ok_or_else(|| err(&format!("`{event}` has no metric {kind}({field})")))?;
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(body) = dims_part {
        // Split on unescaped `,`, then on the first unescaped `=`.
        let mut cur = String::new();
        let mut key: Option<String> = None;
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.push(chars.next().ok_or_else(|| err("a trailing `\\`"))?),
                '=' if key.is_none() => key = Some(std::mem::take(&mut cur)),
                ',' => {
                    let k = key.take().ok_or_else(|| err("a dimension without `=`"))?;
                    pairs.push((k, std::mem::take(&mut cur)));
                }
                '{' | '}' | '=' => return Err(err("an unescaped `{`, `}` or `=` in a value")),
                c => cur.push(c),
            }
        }
        let k = key.ok_or_else(|| err("a dimension without `=`"))?;
        pairs.push((k, cur));
    }
    let mut dims = Vec::new();
    let mut last = None;
    for (k, _) in &pairs {
        let i = metric
            .dimensions
            .iter()
            .position(|d| d == k)
            .ok_or_else(|| err(&format!("`{k}` is not a dimension of this metric")))?;
        if last.is_some_and(|l| i <= l) {
            return Err(err("dimensions must appear once each, in registry order"));
        }
        last = Some(i);
        dims.push(metric.dimensions[i].as_str());
    }
    Ok(ParsedName {
        rollup: Rollup {
            event: event_name,
            metric,
            dims,
        },
        values: pairs.into_iter().map(|(_, v)| v).collect(),
    })
}

/// The merge of a metric kind's state column, as a `Float64`.
pub fn merge_sql(kind: MetricKind) -> &'static str {
    match kind {
        MetricKind::Count => "toFloat64(countMerge(count_state))",
        MetricKind::Uniq => "toFloat64(uniqMerge(uniq_state))",
        MetricKind::Sum => "sumMerge(sum_state)",
        MetricKind::Min => "minMerge(min_state)",
        MetricKind::Max => "maxMerge(max_state)",
    }
}

/// SQL merging the `kind` states of the states table `table` (one of
/// `metric_states_local`, `_dc`, `_all`) over the minutes in
/// `[from_s, to_s)`, among the rows `filter` (an SQL condition built from
/// quoted values) selects: one row per series (`metric`) and, with `step_s`,
/// per step start (`t`, unix seconds), with the merged value (`v`, see
/// [`merge_sql`]). `FINAL` keeps the latest aggregation round of each
/// minute; the `date` bounds let ClickHouse skip other months' partitions.
/// No `FORMAT`: callers join several with `UNION ALL`.
pub fn merged_states_sql(
    database: &str,
    table: &str,
    kind: MetricKind,
    filter: &str,
    from_s: u32,
    to_s: u32,
    step_s: Option<u32>,
) -> String {
    merged_sql(database, table, kind, filter, (from_s, to_s), step_s)
}

fn merged_sql(
    database: &str,
    table: &str,
    kind: MetricKind,
    filter: &str,
    (from_s, to_s): (u32, u32),
    step_s: Option<u32>,
) -> String {
    let (t, group) = match step_s {
        Some(step) => (
            format!(", intDiv(toUInt32(minute), {step}) * {step} AS t"),
            ", t",
        ),
        None => (String::new(), ""),
    };
    format!(
        "SELECT metric{t}, {merge} AS v FROM {database}.{table} FINAL \
         WHERE ({filter}) \
         AND date >= toDate(toDateTime({from_s})) AND date <= toDate(toDateTime({last_s})) \
         AND minute >= toDateTime({from_s}) AND minute < toDateTime({to_s}) \
         GROUP BY metric{group}",
        merge = merge_sql(kind),
        last_s = to_s.saturating_sub(1).max(from_s),
    )
}

/// An SQL condition on the states table selecting exactly the series of
/// `rollup`, whatever their dimension values: the name itself for the
/// roll-up over no dimension (the primary key), otherwise a pattern of the
/// name grammar in the module doc (`re2`, anchored; a value is any run of
/// unescaped characters other than `\`, `,`, `=`, `{`, `}` and escaped ones).
pub fn rollup_filter_sql(rollup: &Rollup<'_>) -> String {
    let base = rollup.metric.base_name(rollup.event);
    if rollup.dims.is_empty() {
        return format!("metric_hash = cityHash64({})", quote_str(&base));
    }
    fn literal(s: &str) -> String {
        s.chars()
            .flat_map(|c| {
                let escape = !(c.is_ascii_alphanumeric() || c == '_');
                escape.then_some('\\').into_iter().chain([c])
            })
            .collect()
    }
    let value = r"(?:[^\\,={}]|\\.)*";
    let mut re = format!("^{}\\{{", literal(&base));
    for (i, d) in rollup.dims.iter().enumerate() {
        if i > 0 {
            re.push(',');
        }
        re.push_str(&literal(d));
        re.push('=');
        re.push_str(value);
    }
    re.push_str("\\}$");
    format!(
        "event = {} AND match(metric, {})",
        quote_str(rollup.event),
        quote_str(&re)
    )
}

/// SQL of an attribute's value (column text; empty when absent).
fn attr(name: &str) -> String {
    format!("attr_values[indexOf(attr_names, {})]", quote_str(name))
}

/// SQL escaping the text `expr` evaluates to the way [`escape_value`] does.
fn escaped(expr: &str) -> String {
    format!("replaceRegexpAll({expr}, '([\\\\\\\\,={{}}])', '\\\\\\\\\\\\1')")
}

/// The minutes of one event type that an aggregation statement reads:
/// one, or a backlog's many (sorted, none twice).
struct MinutesOf<'a> {
    database: &'a str,
    event_name: &'a str,
    event: &'a EventType,
    minutes: &'a [u32],
}

impl MinutesOf<'_> {
    /// `WHERE` condition selecting the minutes' events of the type: the
    /// date and time bounds of the whole range (what the primary key and
    /// partitions prune by), and the minutes themselves when the range has
    /// gaps (another shard's minutes, ADR 0015).
    fn condition(&self) -> String {
        let first = self.minutes.first().copied().unwrap_or(0);
        let last = self.minutes.last().copied().unwrap_or(0);
        let contiguous = self.minutes.windows(2).all(|w| w[1] == w[0] + 60);
        let mut c = format!(
            "date >= toDate(toDateTime({first})) AND date <= toDate(toDateTime({last})) \
             AND event = {ev} AND time >= toDateTime({first}) AND time < toDateTime({end})",
            ev = quote_str(self.event_name),
            end = last + 60,
        );
        if !contiguous {
            c.push_str(&format!(
                " AND toUInt32(toStartOfMinute(time)) IN ({})",
                self.minutes
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        c
    }

    /// The value of dimension `d` as a series name holds it, unescaped
    /// (the aggregation escapes it once per group, not per event). A
    /// dimension with a bound keeps its `max_values_per_minute` most
    /// frequent values of each minute (ties: the smaller value) and folds
    /// the rest into [`FOLDED_VALUE`]: the choice depends on the minute's
    /// events alone, so a re-aggregated minute folds the same way, and
    /// every roll-up and metric of the minute agrees. `GLOBAL IN`: the top
    /// values are computed once, over the whole DC, not per shard
    /// (docs/adr/0011-dimension-values-fold-per-minute.md).
    fn dimension_sql(&self, d: &str) -> String {
        let bound = self.event.fields.get(d).and_then(|f| f.dimension_bound());
        let Some(bound) = bound else {
            return attr(d);
        };
        format!(
            "if((toStartOfMinute(time), {value}) GLOBAL IN (SELECT s_tm, s_v FROM (\
             SELECT toStartOfMinute(time) AS s_tm, {value} AS s_v, count() AS s_n \
             FROM {db}.{events} WHERE {condition} GROUP BY s_tm, s_v \
             ORDER BY s_tm, s_n DESC, s_v LIMIT {bound} BY s_tm)), {value}, {folded})",
            value = attr(d),
            db = self.database,
            events = table::EVENTS_DC,
            condition = self.condition(),
            folded = quote_str(FOLDED_VALUE),
        )
    }
}

/// The state column a metric kind fills, and the aggregate that fills it
/// from the events that carry the metric's field (`-If`: the one scan
/// serves metrics over different fields).
fn state_of(metric: &Metric) -> (&'static str, String) {
    let field = metric.field.as_deref().unwrap_or("");
    let has = format!("has(attr_names, {})", quote_str(field));
    let number = format!("toFloat64OrZero({})", attr(field));
    match metric.kind {
        MetricKind::Count if metric.field.is_none() => ("count_state", "countState()".into()),
        MetricKind::Count => ("count_state", format!("countStateIf({has})")),
        MetricKind::Uniq => ("uniq_state", format!("uniqStateIf({}, {has})", attr(field))),
        MetricKind::Sum => ("sum_state", format!("sumStateIf({number}, {has})")),
        MetricKind::Min => ("min_state", format!("minStateIf({number}, {has})")),
        MetricKind::Max => ("max_state", format!("maxStateIf({number}, {has})")),
    }
}

/// The state columns in the states tables' order, each with its aggregate
/// function (the minute, hour and day tables share them).
pub(crate) const STATE_COLUMNS: [(&str, &str); 5] = [
    ("count_state", "count"),
    ("uniq_state", "uniq"),
    ("sum_state", "sum"),
    ("min_state", "min"),
    ("max_state", "max"),
];

/// The state column of `kind` and its aggregate function.
pub(crate) fn state_column(kind: MetricKind) -> (&'static str, &'static str) {
    STATE_COLUMNS[match kind {
        MetricKind::Count => 0,
        MetricKind::Uniq => 1,
        MetricKind::Sum => 2,
        MetricKind::Min => 3,
        MetricKind::Max => 4,
    }]
}

/// One `INSERT … SELECT` aggregating `minutes` (minute starts, unix
/// seconds, sorted, each once: one minute as it closes, or a backlog's
/// many, all placed on the same shard) of event type `event_name` in
/// datacenter `dc` into `metric_states_local`, with aggregation round
/// `version`: every metric's every roll-up of every minute from **one
/// scan** of the minutes' events (docs/adr/0015-one-pass-aggregation.md).
/// `None` for a type without metrics or without minutes.
///
/// The innermost query reads the DC's rows through `events_dc` once and
/// groups them by every dimension any metric of the type uses (the finest
/// groups, by raw values), computing each metric's state over the events
/// that carry its field (`-StateIf`) and how many did. The middle query `ARRAY JOIN`s
/// each finest group with every (metric, roll-up) pair, the roll-up a
/// bit mask of the dimensions it keeps (the others become empty keys),
/// and merges the states per pair and kept values (`-MergeStateIf`): the
/// coarser roll-ups come from states, not from another scan. A kept
/// dimension's key is its label `DIM=VALUE` (escaped here, once per
/// group), never empty. The outer query
/// names each row's series as [`series_name`] does.
/// Aliases are prefixed `s_`: an alias named like a column of `events_dc`
/// (`event`, `dc`, `date`) would replace that column in `WHERE`; the
/// innermost query selects no constants (18.16 refuses constant columns
/// coming back from remote shards, code 171).
pub fn aggregate_minutes_sql(
    database: &str,
    dc: &str,
    event_name: &str,
    event: &EventType,
    minutes: &[u32],
    version: u64,
) -> Option<String> {
    if event.metric.is_empty() || minutes.is_empty() {
        return None;
    }
    let of = MinutesOf {
        database,
        event_name,
        event,
        minutes,
    };
    // Every dimension of any metric, in the order they first appear.
    let mut dims: Vec<&str> = Vec::new();
    for m in &event.metric {
        for d in &m.dimensions {
            if !dims.contains(&d.as_str()) {
                dims.push(d);
            }
        }
    }
    let at = |d: &str| {
        dims.iter()
            .position(|x| *x == d)
            .expect("a dimension of the type")
    };
    // The finest groups: one scan.
    let mut finest: Vec<String> = std::iter::once("toStartOfMinute(time) AS s_minute".to_string())
        .chain(
            dims.iter()
                .enumerate()
                .map(|(j, d)| format!("{} AS s_d{j}", of.dimension_sql(d))),
        )
        .collect();
    let states: Vec<(&str, String)> = event.metric.iter().map(state_of).collect();
    // Per metric, how many events of a group it counts: those with its
    // field, or all of them.
    let mut counted = Vec::new();
    for (i, (m, (_, state))) in event.metric.iter().zip(&states).enumerate() {
        finest.push(format!("{state} AS s_st{i}"));
        match &m.field {
            Some(f) => {
                finest.push(format!(
                    "countIf(has(attr_names, {})) AS s_n{i}",
                    quote_str(f)
                ));
                counted.push(format!("s_n{i}"));
            }
            None => counted.push("s_rows".into()),
        }
    }
    finest.push("count() AS s_rows".into());
    let finest_group = std::iter::once("s_minute".to_string())
        .chain((0..dims.len()).map(|j| format!("s_d{j}")))
        .collect::<Vec<_>>()
        .join(", ");
    // Every (metric, roll-up) pair; a roll-up is a mask over `dims`.
    let (mut pair_metric, mut pair_mask) = (Vec::new(), Vec::new());
    for (i, m) in event.metric.iter().enumerate() {
        let bits: Vec<u32> = m.dimensions.iter().map(|d| 1u32 << at(d)).collect();
        for subset in 0..(1u32 << bits.len()) {
            let mask: u32 = (0..bits.len())
                .filter(|b| subset & (1 << b) != 0)
                .map(|b| bits[b])
                .sum();
            pair_metric.push(i.to_string());
            pair_mask.push(mask.to_string());
        }
    }
    let keys: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(j, d)| {
            format!(
                "if(bitTest(s_r, {j}), concat({}, {}), '') AS s_k{j}",
                quote_str(&format!("{d}=")),
                escaped(&format!("s_d{j}"))
            )
        })
        .collect();
    let columns: Vec<(&str, &str)> = STATE_COLUMNS
        .into_iter()
        .filter(|(c, _)| states.iter().any(|(col, _)| col == c))
        .collect();
    let merged: Vec<String> = columns
        .iter()
        .map(|(c, f)| {
            let of_kind: Vec<usize> = (0..states.len()).filter(|i| states[*i].0 == *c).collect();
            let state = match of_kind.as_slice() {
                [one] => format!("s_st{one}"),
                many => format!(
                    "arrayElement([{}], indexOf([{}], s_m))",
                    many.iter()
                        .map(|i| format!("s_st{i}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    many.iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let which = of_kind
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            // A roll-up merges the finest groups' states (`-MergeStateIf`,
            // only for the rows of metrics of this column's kind; the other
            // rows get the empty state).
            format!("{f}MergeStateIf({state}, s_m IN ({which})) AS s_{c}")
        })
        .collect();
    let mut middle: Vec<String> = vec!["s_minute".into(), "s_m".into()];
    middle.extend(keys);
    middle.extend(merged);
    middle.push(format!(
        "sum(arrayElement([{}], s_m + 1)) AS s_have",
        counted.join(", ")
    ));
    let middle_group: Vec<String> = ["s_minute", "s_m"]
        .into_iter()
        .map(String::from)
        .chain(std::iter::once("s_r".to_string()))
        .chain((0..dims.len()).map(|j| format!("s_k{j}")))
        .collect();
    // The series name, per metric.
    let names: Vec<String> = event
        .metric
        .iter()
        .map(|m| {
            let base = quote_str(&m.base_name(event_name));
            if m.dimensions.is_empty() {
                return base;
            }
            let labels = format!(
                "arrayFilter(x -> notEmpty(x), [{}])",
                m.dimensions
                    .iter()
                    .map(|d| format!("s_k{}", at(d)))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            format!(
                "if(notEmpty({labels}), concat({base}, '{{', arrayStringConcat({labels}, ','), '}}'), {base})"
            )
        })
        .collect();
    let name = if names.len() == 1 {
        names[0].clone()
    } else {
        let mut arms: Vec<String> = names[..names.len() - 1]
            .iter()
            .enumerate()
            .map(|(i, n)| format!("s_m = {i}, {n}"))
            .collect();
        arms.push(names[names.len() - 1].clone());
        format!("multiIf({})", arms.join(", "))
    };
    let kinds: Vec<String> = event
        .metric
        .iter()
        .map(|m| quote_str(m.kind.name()))
        .collect();
    Some(format!(
        "INSERT INTO {database}.{states_table} (date, minute, dc, event, metric, kind, version, {cols}) \
         SELECT toDate(s_minute), s_minute, {dc}, {ev}, {name}, \
         arrayElement([{kinds}], s_m + 1), toUInt64({version}), {s_cols} \
         FROM (SELECT {middle} \
         FROM (SELECT {finest} FROM {database}.{events} WHERE {condition} GROUP BY {finest_group}) \
         ARRAY JOIN [{pair_metric}] AS s_m, [{pair_mask}] AS s_r \
         GROUP BY {middle_group} HAVING s_have > 0)",
        states_table = table::STATES_LOCAL,
        cols = columns.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", "),
        dc = quote_str(dc),
        ev = quote_str(event_name),
        kinds = kinds.join(", "),
        s_cols = columns.iter().map(|(c, _)| format!("s_{c}")).collect::<Vec<_>>().join(", "),
        middle = middle.join(", "),
        finest = finest.join(", "),
        events = table::EVENTS_DC,
        condition = of.condition(),
        pair_metric = pair_metric.join(", "),
        pair_mask = pair_mask.join(", "),
        middle_group = middle_group.join(", "),
    ))
}

/// Per bounded dimension of `event`'s metrics: the dimension and a query
/// answering how many of its distinct values were folded into
/// [`FOLDED_VALUE`] by [`aggregate_minutes_sql`] over `minutes` (sorted,
/// each once), summed over the minutes (one `UInt64`): one scan for a
/// backlog's minutes, as the aggregation itself.
pub fn folded_values_sql<'a>(
    database: &str,
    event_name: &str,
    event: &'a EventType,
    minutes: &[u32],
) -> Vec<(&'a str, String)> {
    let of = MinutesOf {
        database,
        event_name,
        event,
        minutes,
    };
    let mut dims: Vec<&str> = event
        .metric
        .iter()
        .flat_map(|m| m.dimensions.iter().map(String::as_str))
        .collect();
    dims.sort_unstable();
    dims.dedup();
    dims.into_iter()
        .filter_map(|d| {
            let bound = event.fields.get(d)?.dimension_bound()?;
            let sql = format!(
                "SELECT toUInt64(sum(s_f)) FROM (\
                 SELECT greatest(uniqExact({value}), {bound}) - {bound} AS s_f \
                 FROM {database}.{events} WHERE {condition} GROUP BY toStartOfMinute(time))",
                value = attr(d),
                events = table::EVENTS_DC,
                condition = of.condition(),
            );
            Some((d, sql))
        })
        .collect()
}

/// One point of a stored series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// `cityHash64` of the series name.
    pub metric_hash: u64,
    /// Start of the minute, unix seconds.
    pub time: u32,
    /// Datacenter it was aggregated in: an index into [`Points::dcs`].
    pub dc: u16,
    /// The value.
    pub value: f64,
}

/// Points of several series, with the datacenter names they refer to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Points {
    /// Datacenter names; [`Point::dc`] indexes this.
    pub dcs: Vec<String>,
    /// Points sorted by series, time and datacenter; one per triple.
    pub points: Vec<Point>,
}

/// SQL reading the points of `names` in `[from_s, to_s)` from the series
/// table `table` (`series_local`, `series_dc` or `series_all`), in RowBinary
/// for [`decode_points`]. It reads without `FINAL` and without `ORDER BY`:
/// every stored round comes back with its version and the client keeps the
/// latest, which on 18.16 is several times faster than `FINAL`.
pub fn series_points_sql(
    database: &str,
    table: &str,
    names: &[String],
    from_s: u32,
    to_s: u32,
) -> String {
    let hashes: Vec<String> = names
        .iter()
        .map(|n| format!("cityHash64({})", quote_str(n)))
        .collect();
    format!(
        "SELECT metric_hash, time, dc, version, value FROM {database}.{table} \
         WHERE metric_hash IN ({}) AND time >= toDateTime({from_s}) AND time < toDateTime({to_s}) \
         FORMAT RowBinary",
        hashes.join(", ")
    )
}

/// SQL mapping series names to their hashes (`cityHash64`, computed by
/// ClickHouse as on write), one `hash<TAB>name` line each.
pub fn series_hashes_sql(names: &[String]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| quote_str(n)).collect();
    format!(
        "SELECT cityHash64(n), n FROM (SELECT arrayJoin([{}]) AS n) FORMAT TSV",
        quoted.join(", ")
    )
}

/// Decodes [`series_points_sql`]'s answer and keeps, per (series, time, DC),
/// the point of the highest version. `None` if the bytes are not that answer.
pub fn decode_points(bytes: &[u8]) -> Option<Points> {
    let mut at = 0usize;
    let mut take = |n: usize| -> Option<&[u8]> {
        let s = bytes.get(at..at.checked_add(n)?)?;
        at += n;
        Some(s)
    };
    let mut dcs: Vec<String> = Vec::new();
    let mut rows: Vec<(Point, u64)> = Vec::with_capacity(bytes.len() / 36);
    while let Some(hash) = take(8) {
        let metric_hash = u64::from_le_bytes(hash.try_into().ok()?);
        let time = u32::from_le_bytes(take(4)?.try_into().ok()?);
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let b = take(1)?[0];
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 63 {
                return None;
            }
        }
        let name = std::str::from_utf8(take(len)?).ok()?;
        // A handful of datacenters: a linear look-up beats hashing.
        let dc = match dcs.iter().position(|d| d == name) {
            Some(i) => i,
            None => {
                dcs.push(name.to_string());
                dcs.len() - 1
            }
        };
        let version = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let value = f64::from_le_bytes(take(8)?.try_into().ok()?);
        let dc = u16::try_from(dc).ok()?;
        rows.push((
            Point {
                metric_hash,
                time,
                dc,
                value,
            },
            version,
        ));
    }
    if at != bytes.len() {
        return None;
    }
    rows.sort_unstable_by_key(|(p, v)| (p.metric_hash, p.time, p.dc, *v));
    let mut points: Vec<Point> = Vec::with_capacity(rows.len());
    for (p, _) in rows {
        match points.last_mut() {
            Some(last)
                if (last.metric_hash, last.time, last.dc) == (p.metric_hash, p.time, p.dc) =>
            {
                *last = p
            }
            _ => points.push(p),
        }
    }
    Some(Points { dcs, points })
}

/// Every event type of `registry` that has metrics, with its name.
pub fn aggregated_events(registry: &Registry) -> impl Iterator<Item = (&str, &EventType)> {
    registry
        .event
        .iter()
        .filter(|(_, e)| !e.metric.is_empty())
        .map(|(n, e)| (n.as_str(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        crate::examples::declared().registry
    }

    #[test]
    fn rollups_are_every_subset_whole_first() {
        let r = reg();
        let m = &r.event["registration"].metric[1];
        let dims: Vec<Vec<&str>> = rollups("registration", m)
            .into_iter()
            .map(|r| r.dims)
            .collect();
        assert_eq!(
            dims,
            vec![
                vec![],
                vec!["gender"],
                vec!["country_id"],
                vec!["gender", "country_id"]
            ]
        );
    }

    #[test]
    fn names_are_readable_and_escaped() {
        let r = reg();
        let m = &r.event["registration"].metric[1];
        let ups = rollups("registration", m);
        assert_eq!(
            series_name(&ups[0], &[] as &[&str]),
            "registration.uniq(user_id)"
        );
        assert_eq!(
            series_name(&ups[3], &["male", "47"]),
            "registration.uniq(user_id){gender=male,country_id=47}"
        );
        assert_eq!(escape_value("a,b=c{d}\\"), "a\\,b\\=c\\{d\\}\\\\");
        let c = &r.event["registration"].metric[0];
        assert_eq!(
            series_name(&rollups("registration", c)[1], &["female"]),
            "registration.count(){gender=female}"
        );
    }

    #[test]
    fn names_parse_back() {
        let r = reg();
        for name in [
            "registration.uniq(user_id)",
            "registration.count(){gender=male,country_id=47}",
            "screen_view.count(){screen=odd\\,screen\\=x\\{y\\}\\\\,platform=ios}",
            "screen_view.max(load_ms){platform=web}",
        ] {
            let p = parse_name(&r, name).unwrap();
            assert_eq!(series_name(&p.rollup, &p.values), name);
        }
        let e = |n: &str| parse_name(&r, n).unwrap_err().why;
        assert_eq!(e("login.count()"), "no event type `login`");
        assert_eq!(e("vote.sum(user_id)"), "`vote` has no metric sum(user_id)");
        assert_eq!(
            e("vote.count(){city=x}"),
            "`city` is not a dimension of this metric"
        );
        assert_eq!(
            e("registration.count(){country_id=1,gender=male}"),
            "dimensions must appear once each, in registry order"
        );
        assert_eq!(e("vote"), "expected EVENT.KIND(FIELD)");
        assert_eq!(
            e("vote.count(){vote=yes"),
            "a `{` opens dimensions that no `}` closes at the end"
        );
    }

    #[test]
    fn rollup_filters_name_one_rollup() {
        let r = reg();
        let m = &r.event["registration"].metric[0];
        let ups = rollups("registration", m);
        assert_eq!(
            rollup_filter_sql(&ups[0]),
            "metric_hash = cityHash64('registration.count()')"
        );
        // The pattern, then the same as an SQL literal (each `\` doubled).
        let re =
            r"^registration\.count\(\)\{gender=(?:[^\\,={}]|\\.)*,country_id=(?:[^\\,={}]|\\.)*\}$";
        assert_eq!(
            rollup_filter_sql(&ups[3]),
            format!(
                "event = 'registration' AND match(metric, '{}')",
                re.replace('\\', "\\\\")
            )
        );
        let sql = merged_states_sql(
            "db",
            table::STATES_ALL,
            MetricKind::Uniq,
            "metric_hash = 1",
            120,
            180,
            Some(60),
        );
        assert_eq!(
            sql,
            "SELECT metric, intDiv(toUInt32(minute), 60) * 60 AS t, toFloat64(uniqMerge(uniq_state)) AS v \
             FROM db.metric_states_all FINAL WHERE (metric_hash = 1) \
             AND date >= toDate(toDateTime(120)) AND date <= toDate(toDateTime(179)) \
             AND minute >= toDateTime(120) AND minute < toDateTime(180) GROUP BY metric, t"
        );
    }

    #[test]
    fn points_keep_the_latest_version() {
        let mut b = Vec::new();
        for (hash, time, dc, version, value) in [
            (2u64, 60u32, "dc1", 1u64, 1.0f64),
            (1, 60, "dc1", 5, 9.0),
            (1, 60, "dc1", 7, 3.0),
            (1, 0, "dc2", 1, 4.0),
        ] {
            b.extend_from_slice(&hash.to_le_bytes());
            b.extend_from_slice(&time.to_le_bytes());
            b.push(dc.len() as u8);
            b.extend_from_slice(dc.as_bytes());
            b.extend_from_slice(&version.to_le_bytes());
            b.extend_from_slice(&value.to_le_bytes());
        }
        let got = decode_points(&b).unwrap();
        assert_eq!(got.dcs, ["dc1", "dc2"]);
        let flat: Vec<(u64, u32, f64)> = got
            .points
            .iter()
            .map(|p| (p.metric_hash, p.time, p.value))
            .collect();
        assert_eq!(flat, vec![(1, 0, 4.0), (1, 60, 3.0), (2, 60, 1.0)]);
        assert!(decode_points(&b[..b.len() - 1]).is_none());
    }

    #[test]
    fn aggregation_sql_is_one_scan_per_event_type() {
        let r = reg();
        let m0 = 1_764_028_800;
        let sql = aggregate_minutes_sql(
            "spoolhouse",
            "dc1",
            "screen_view",
            &r.event["screen_view"],
            &[m0],
            7,
        )
        .unwrap();
        // One INSERT, one read of events_dc (and one per bounded
        // dimension, for its most frequent values per minute).
        let bounded = ["screen", "platform"]
            .iter()
            .filter(|d| {
                r.event["screen_view"].fields[**d]
                    .dimension_bound()
                    .is_some()
            })
            .count();
        assert_eq!(sql.matches("INSERT INTO").count(), 1);
        assert_eq!(
            sql.matches("FROM spoolhouse.events_dc").count(),
            1 + bounded
        );
        assert!(!sql.contains("UNION ALL"));
        // The finest groups per minute, once; the roll-ups merged from
        // their states.
        assert!(sql.contains("GROUP BY s_minute, s_d0, s_d1)"));
        assert!(sql.contains("countMergeStateIf(s_st0, s_m IN (0)) AS s_count_state"));
        assert!(sql.contains(
            "sumStateIf(toFloat64OrZero(attr_values[indexOf(attr_names, 'load_ms')]), has(attr_names, 'load_ms'))"
        ));
        assert!(sql.starts_with("INSERT INTO spoolhouse.metric_states_local (date, minute, dc, event, metric, kind, version, count_state, sum_state, min_state, max_state) SELECT"));
        assert!(sql.contains(&format!(
            "time >= toDateTime({m0}) AND time < toDateTime({})",
            m0 + 60
        )));
        assert!(!sql.contains("toStartOfMinute(time)) IN"));
        // A backlog: one statement for many minutes; a gap (another
        // shard's minute) names the minutes.
        let sql = aggregate_minutes_sql(
            "spoolhouse",
            "dc1",
            "screen_view",
            &r.event["screen_view"],
            &[m0, m0 + 60, m0 + 180],
            7,
        )
        .unwrap();
        assert_eq!(sql.matches("INSERT INTO").count(), 1);
        assert!(sql.contains(&format!(
            "time >= toDateTime({m0}) AND time < toDateTime({}) AND toUInt32(toStartOfMinute(time)) IN ({m0}, {}, {})",
            m0 + 240,
            m0 + 60,
            m0 + 180
        )));
        // Nothing to aggregate: a type without metrics, or no minutes.
        let mut bare = r.event["screen_view"].clone();
        bare.metric.clear();
        assert!(aggregate_minutes_sql("spoolhouse", "dc1", "x", &bare, &[m0], 1).is_none());
        assert!(aggregate_minutes_sql(
            "spoolhouse",
            "dc1",
            "screen_view",
            &r.event["screen_view"],
            &[],
            1
        )
        .is_none());
    }
}
