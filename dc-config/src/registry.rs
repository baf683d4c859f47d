//! The event registry: every event type, its typed fields, its keyed state
//! and its metrics, declared once.
//!
//! ```toml
//! [event.registration]
//! description = "A user finished signing up."
//! fields.user_id = { type = "u64" }
//! fields.gender = { type = "enum", values = ["male", "female", "unknown"] }
//! fields.country_id = { type = "u16" }
//! metric = [
//!   { kind = "count", dimensions = ["gender", "country_id"] },
//!   { kind = "uniq", field = "user_id", dimensions = ["gender", "country_id"] },
//! ]
//!
//! [event.watch_progress]
//! fields.user_id = { type = "u64" }
//! fields.video_id = { type = "u64" }
//! fields.video_time = { type = "u32" }
//! state = { key = ["user_id", "video_id"], value = "video_time", ttl_s = 2592000 }
//! ```

use std::collections::HashSet;
use std::path::Path;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use crate::check::{self, Checker, IDENTIFIER_RULE};
use crate::error::{ConfigErrors, LoadError};
use crate::locate::KeyPath;

/// Default `max_len` of a string field, in bytes.
pub const DEFAULT_STRING_MAX_LEN: u32 = 1024;
/// Longest string field allowed: keeps one event well under a spool frame.
pub const MAX_STRING_LEN: u32 = 64 * 1024;
/// Most values an enum may declare.
pub const MAX_ENUM_VALUES: usize = 1024;
/// Most dimensions per metric: roll-ups grow as 2^n series families.
pub const MAX_DIMENSIONS: usize = 4;
/// Most fields per event type.
pub const MAX_FIELDS: usize = 256;
/// Default `max_values_per_minute` of a dimension field that is neither an
/// enum nor a bool.
pub const DEFAULT_DIMENSION_VALUES: u32 = 1_000;
/// Largest `max_values_per_minute`: every value is a series per roll-up.
pub const MAX_DIMENSION_VALUES: u32 = 100_000;
/// The value a dimension's excess values are folded into, per minute
/// (see [`Field::max_values_per_minute`]).
pub const FOLDED_VALUE: &str = "other";
/// Longest time a state is kept in Redis: ten years. Far beyond any use,
/// and far below where Redis's expiry arithmetic (milliseconds added to
/// the clock) overflows and leaves a key without a TTL.
pub const MAX_STATE_TTL_S: u64 = 10 * 365 * 86_400;

/// A checked registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    /// Event types by name, in declaration order.
    pub event: IndexMap<String, EventType>,
}

/// One event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventType {
    /// What the event means, for people.
    #[serde(default)]
    pub description: String,
    /// Typed fields, in declaration order (the order attributes are stored in).
    #[serde(default)]
    pub fields: IndexMap<String, Field>,
    /// Latest keyed state kept in Redis, if any.
    #[serde(default)]
    pub state: Option<State>,
    /// Per-minute metrics.
    #[serde(default)]
    pub metric: Vec<Metric>,
    /// Oldest event time the collector accepts, in seconds before its clock
    /// (default 604 800: 7 days). Older events are refused (`time_too_old`)
    /// and counted: a minute aggregated long ago is not revisited, and a
    /// client's bad clock must not write history by accident. A deliberate
    /// load of older history raises the collector's `limits.history_s`.
    #[serde(default = "default_accept_past_s")]
    pub accept_past_s: u64,
    /// Latest event time the collector accepts, in seconds after its clock
    /// (default 3 600). Later ones are refused (`time_too_new`): a future
    /// minute never closes, and a far-future state would win over every
    /// real one for its TTL.
    #[serde(default = "default_accept_future_s")]
    pub accept_future_s: u64,
}

fn default_accept_past_s() -> u64 {
    7 * 86_400
}

fn default_accept_future_s() -> u64 {
    3_600
}

/// The type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// 64-bit float; must be finite.
    Float,
    /// `true` or `false`.
    Bool,
    /// UTF-8 string of at most `max_len` bytes.
    String,
    /// One of a declared list of strings.
    Enum,
    /// Milliseconds since the Unix epoch.
    Timestamp,
}

impl FieldType {
    /// True for types whose values can be summed, or compared for min/max.
    pub fn is_numeric(self) -> bool {
        !matches!(self, Self::Bool | Self::String | Self::Enum)
    }

    /// The inclusive integer range of integer types.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Self::I8 => (i8::MIN.into(), i8::MAX.into()),
            Self::I16 => (i16::MIN.into(), i16::MAX.into()),
            Self::I32 => (i32::MIN.into(), i32::MAX.into()),
            Self::I64 => (i64::MIN.into(), i64::MAX.into()),
            Self::U8 => (0, u8::MAX.into()),
            Self::U16 => (0, u16::MAX.into()),
            Self::U32 => (0, u32::MAX.into()),
            Self::U64 | Self::Timestamp => (0, u64::MAX.into()),
            _ => return None,
        })
    }

    /// The name used in the registry file.
    pub fn name(self) -> &'static str {
        match self {
            Self::I8 => "i8",
            Self::I16 => "i16",
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::U8 => "u8",
            Self::U16 => "u16",
            Self::U32 => "u32",
            Self::U64 => "u64",
            Self::Float => "float",
            Self::Bool => "bool",
            Self::String => "string",
            Self::Enum => "enum",
            Self::Timestamp => "timestamp",
        }
    }
}

/// One typed field of an event type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// The field's type.
    #[serde(rename = "type")]
    pub ty: FieldType,
    /// Whether every event must carry it (default true).
    #[serde(default = "yes")]
    pub required: bool,
    /// For `string`: the longest value in bytes (default 1024).
    #[serde(default)]
    pub max_len: Option<u32>,
    /// For `enum`: the allowed values.
    #[serde(default)]
    pub values: Vec<String>,
    /// As a metric dimension: the most distinct values kept per minute and
    /// datacenter (default [`DEFAULT_DIMENSION_VALUES`]). The most frequent
    /// ones are kept (ties: the smaller value); the rest of that minute's
    /// events are counted under [`FOLDED_VALUE`]. Client-chosen values
    /// must not make the number of series unbounded. Not for enums and
    /// bools: their declared values bound them already.
    #[serde(default)]
    pub max_values_per_minute: Option<u32>,
    /// What the field means, for people.
    #[serde(default)]
    pub description: String,
}

impl Field {
    /// The bound on this field's distinct values per minute as a dimension;
    /// `None` when its type bounds it (enum, bool).
    pub fn dimension_bound(&self) -> Option<u32> {
        match self.ty {
            FieldType::Enum | FieldType::Bool => None,
            _ => Some(
                self.max_values_per_minute
                    .unwrap_or(DEFAULT_DIMENSION_VALUES),
            ),
        }
    }

    /// The effective maximum length of a string field.
    pub fn string_max_len(&self) -> u32 {
        self.max_len.unwrap_or(DEFAULT_STRING_MAX_LEN)
    }
}

fn yes() -> bool {
    true
}

/// The latest keyed state of an event type, kept in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Fields that together form the key.
    pub key: Vec<String>,
    /// The field whose latest value is kept (newer event time wins).
    pub value: String,
    /// How long a key lives after its last write, in seconds.
    pub ttl_s: u64,
}

/// What a metric computes per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricKind {
    /// Number of events.
    Count,
    /// Approximate number of distinct values of a field.
    Uniq,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value of a numeric field.
    Min,
    /// Largest value of a numeric field.
    Max,
}

impl MetricKind {
    /// The name used in the registry and in metric names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Uniq => "uniq",
            Self::Sum => "sum",
            Self::Min => "min",
            Self::Max => "max",
        }
    }
}

/// One metric definition; it expands into a series per roll-up of its
/// dimensions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    /// What is computed.
    pub kind: MetricKind,
    /// The field it is computed over (not for `count`).
    #[serde(default)]
    pub field: Option<String>,
    /// Fields to break the metric down by; every subset is a roll-up.
    #[serde(default)]
    pub dimensions: Vec<String>,
}

impl Metric {
    /// Base name of the metric, e.g. `registration.uniq(user_id)`.
    pub fn base_name(&self, event: &str) -> String {
        format!(
            "{event}.{}({})",
            self.kind.name(),
            self.field.as_deref().unwrap_or("")
        )
    }
}

impl Registry {
    /// Reads and checks a registry file.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        check::load_checked(path)
    }

    /// Parses and checks the text of a registry file named `file`.
    pub fn parse(file: &Path, src: &str) -> Result<Self, ConfigErrors> {
        check::parse_checked(file, src)
    }

    /// The event type called `name`.
    pub fn get(&self, name: &str) -> Option<&EventType> {
        self.event.get(name)
    }
}

impl check::Declaration for Registry {
    fn check(&self, c: &mut Checker) {
        let root = KeyPath::root().key("event");
        c.require(
            !self.event.is_empty(),
            &KeyPath::root(),
            "declare at least one event type ([event.NAME])",
        );
        for (name, ev) in &self.event {
            let at = root.key(name);
            if !check::is_identifier(name) {
                c.fail(&at, format!("event name {IDENTIFIER_RULE}"));
            }
            check_event(c, &at, ev);
        }
    }
}

fn check_event(c: &mut Checker, at: &KeyPath, ev: &EventType) {
    c.require(
        ev.fields.len() <= MAX_FIELDS,
        &at.key("fields"),
        format!("at most {MAX_FIELDS} fields per event type"),
    );
    for (fname, f) in &ev.fields {
        check_field(c, &at.key("fields").key(fname), fname, f);
    }
    if let Some(st) = &ev.state {
        check_state(c, &at.key("state"), ev, st);
    }
    c.require(
        (60..=100 * 365 * 86_400).contains(&ev.accept_past_s),
        &at.key("accept_past_s"),
        "must be from 60 (a minute) to 3153600000 (100 years)",
    );
    c.require(
        (1..=7 * 86_400).contains(&ev.accept_future_s),
        &at.key("accept_future_s"),
        "must be from 1 to 604800 (7 days): a future minute never closes",
    );
    let mut seen = HashSet::new();
    for (i, m) in ev.metric.iter().enumerate() {
        let mp = at.key("metric").index(i);
        check_metric(c, &mp, ev, m);
        if !seen.insert((m.kind, m.field.clone())) {
            c.fail(
                &mp,
                format!(
                    "a `{}` metric over the same field is declared twice; merge their dimensions",
                    m.kind.name()
                ),
            );
        }
    }
}

/// One field: its name, `max_len`, `max_values_per_minute`, enum values.
fn check_field(c: &mut Checker, fp: &KeyPath, fname: &str, f: &Field) {
    if !check::is_identifier(fname) {
        c.fail(fp, format!("field name {IDENTIFIER_RULE}"));
    }
    match f.ty {
        FieldType::String => {
            let n = f.string_max_len();
            c.require(
                (1..=MAX_STRING_LEN).contains(&n),
                &fp.key("max_len"),
                format!("max_len must be from 1 to {MAX_STRING_LEN}"),
            );
        }
        _ => c.require(
            f.max_len.is_none(),
            &fp.key("max_len"),
            format!(
                "max_len applies to `string` fields only, not `{}`",
                f.ty.name()
            ),
        ),
    }
    if let Some(n) = f.max_values_per_minute {
        let at = fp.key("max_values_per_minute");
        if f.dimension_bound().is_none() {
            c.fail(
                &at,
                format!(
                    "`{}` fields are bounded by their type; the key is for the other types",
                    f.ty.name()
                ),
            );
        } else {
            c.require(
                (1..=MAX_DIMENSION_VALUES).contains(&n),
                &at,
                format!("must be from 1 to {MAX_DIMENSION_VALUES}"),
            );
        }
    }
    check_enum_values(c, fp, f);
}

/// An enum's values (at least one, bounded, unique, no key separator); no
/// `values` on other types.
fn check_enum_values(c: &mut Checker, fp: &KeyPath, f: &Field) {
    if f.ty == FieldType::Enum {
        c.require(
            !f.values.is_empty(),
            &fp.key("values"),
            "an enum needs at least one value",
        );
        c.require(
            f.values.len() <= MAX_ENUM_VALUES,
            &fp.key("values"),
            format!("an enum takes at most {MAX_ENUM_VALUES} values"),
        );
        let mut seen = HashSet::new();
        for (i, v) in f.values.iter().enumerate() {
            if v.is_empty() || v.len() > 256 {
                c.fail(
                    &fp.key("values").index(i),
                    "enum values must be 1 to 256 bytes",
                );
            }
            if v.contains(crate::state_key::TABLE_SEPARATOR) {
                c.fail(
                    &fp.key("values").index(i),
                    "enum values may not contain U+001F (it separates key fields in the keyed-state table)",
                );
            }
            if !seen.insert(v) {
                c.fail(
                    &fp.key("values").index(i),
                    format!("duplicate enum value `{v}`"),
                );
            }
        }
    } else {
        c.require(
            f.values.is_empty(),
            &fp.key("values"),
            format!("values apply to `enum` fields only, not `{}`", f.ty.name()),
        );
    }
}

/// The keyed state: key fields required and not floats, the value another
/// field, the TTL bounded.
fn check_state(c: &mut Checker, sp: &KeyPath, ev: &EventType, st: &State) {
    c.require(
        !st.key.is_empty(),
        &sp.key("key"),
        "a state needs at least one key field",
    );
    for (i, k) in st.key.iter().enumerate() {
        match ev.fields.get(k) {
            None => c.fail(
                &sp.key("key").index(i),
                format!("no field `{k}` in this event"),
            ),
            Some(f) => {
                c.require(
                    f.required,
                    &sp.key("key").index(i),
                    format!("key field `{k}` must be required: an event without it has no key"),
                );
                c.require(
                    f.ty != FieldType::Float,
                    &sp.key("key").index(i),
                    format!("key field `{k}` is a float; floats make unstable keys"),
                );
            }
        }
    }
    match ev.fields.get(&st.value) {
        None => c.fail(
            &sp.key("value"),
            format!("no field `{}` in this event", st.value),
        ),
        Some(_) if st.key.contains(&st.value) => c.fail(
            &sp.key("value"),
            format!(
                "`{}` is part of the key; the value must be another field",
                st.value
            ),
        ),
        Some(_) => {}
    }
    c.require(
        (1..=MAX_STATE_TTL_S).contains(&st.ttl_s),
        &sp.key("ttl_s"),
        format!("must be from 1 second (Redis keeps the latest state only for a while) to {MAX_STATE_TTL_S} (ten years)"),
    );
}

/// One metric: its field fits its kind, its dimensions exist, are few and
/// take few distinct values.
fn check_metric(c: &mut Checker, mp: &KeyPath, ev: &EventType, m: &Metric) {
    match (&m.field, m.kind) {
        (Some(_), MetricKind::Count) => {
            c.fail(&mp.key("field"), "`count` counts events and takes no field")
        }
        (None, MetricKind::Count) => {}
        (None, k) => c.fail(mp, format!("`{}` needs a `field`", k.name())),
        (Some(fname), k) => match ev.fields.get(fname) {
            None => c.fail(
                &mp.key("field"),
                format!("no field `{fname}` in this event"),
            ),
            Some(f) if k != MetricKind::Uniq && !f.ty.is_numeric() => c.fail(
                &mp.key("field"),
                format!(
                    "`{}` needs a numeric field; `{fname}` is `{}`",
                    k.name(),
                    f.ty.name()
                ),
            ),
            Some(_) => {}
        },
    }
    c.require(
        m.dimensions.len() <= MAX_DIMENSIONS,
        &mp.key("dimensions"),
        format!("at most {MAX_DIMENSIONS} dimensions: each adds a doubling of roll-ups"),
    );
    let mut dims = HashSet::new();
    for (d, dim) in m.dimensions.iter().enumerate() {
        let dp = mp.key("dimensions").index(d);
        match ev.fields.get(dim) {
            None => c.fail(&dp, format!("no field `{dim}` in this event")),
            Some(f) if matches!(f.ty, FieldType::Float | FieldType::Timestamp) => c.fail(
                &dp,
                format!(
                    "`{dim}` is `{}`; a dimension must take few distinct values",
                    f.ty.name()
                ),
            ),
            Some(_) => {}
        }
        if !dims.insert(dim) {
            c.fail(&dp, format!("dimension `{dim}` is listed twice"));
        }
    }
}
