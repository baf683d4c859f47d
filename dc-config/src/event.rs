//! The event value type and its validation against the registry: the one
//! place that decides whether an event is acceptable, used by the collector
//! at the edge and by the shipper and query service downstream.
//!
//! Wire form, one JSON object per line:
//! `{"event":"registration","time":1700000000123,"attrs":{"user_id":7,"gender":"male","country_id":47}}`
//! where `time` is milliseconds since the Unix epoch.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use crate::registry::{Field, FieldType, Registry, State};

/// Earliest accepted event time: 2000-01-01T00:00:00Z, in ms.
pub const MIN_TIME_MS: u64 = 946_684_800_000;
/// Latest accepted event time: 2105-12-31T23:59:59.999Z, in ms; ClickHouse's
/// `DateTime` (a u32 of seconds) ends early in 2106.
pub const MAX_TIME_MS: u64 = 4_291_747_199_999;

/// The wall clock in event-time units, milliseconds since the Unix epoch
/// (0 for a clock before 1970): the one clock reading of every crate that
/// stamps, checks or waits for event times.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A typed attribute value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// An unsigned integer or a timestamp in ms.
    UInt(u64),
    /// A signed integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string or enum value.
    Str(String),
}

impl Value {
    /// The canonical text stored in the `attr_values` column (see [`ValueRef::write_text`]).
    pub fn to_column_text(&self) -> String {
        let mut out = Vec::new();
        self.as_ref().write_text(&mut out);
        String::from_utf8(out).expect("column text of a valid value is UTF-8")
    }

    /// A borrowed view of this value.
    pub fn as_ref(&self) -> ValueRef<'_> {
        match self {
            Value::UInt(v) => ValueRef::UInt(*v),
            Value::Int(v) => ValueRef::Int(*v),
            Value::Float(v) => ValueRef::Float(*v),
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Str(s) => ValueRef::Str(s),
        }
    }
}

/// A typed attribute value borrowing its string.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    /// An unsigned integer or a timestamp in ms.
    UInt(u64),
    /// A signed integer.
    Int(i64),
    /// A finite float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A string or enum value.
    Str(&'a str),
}

impl ValueRef<'_> {
    /// Appends the canonical text stored in the `attr_values` column:
    /// integers in decimal, floats in Rust's shortest round-trip form,
    /// booleans as `1`/`0` (so ClickHouse's `toUInt8` reads them), strings
    /// as they are.
    pub fn write_text(&self, out: &mut Vec<u8>) {
        self.with_text(|t| out.extend_from_slice(t.as_bytes()));
    }

    /// Calls `f` with the canonical column text, without allocating for
    /// integers, booleans and strings (the shipper's hot path).
    pub fn with_text<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        let mut ints = itoa::Buffer::new();
        match *self {
            ValueRef::UInt(v) => f(ints.format(v)),
            ValueRef::Int(v) => f(ints.format(v)),
            ValueRef::Float(v) => f(&v.to_string()),
            ValueRef::Bool(b) => f(if b { "1" } else { "0" }),
            ValueRef::Str(s) => f(s),
        }
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Value {
        match *self {
            ValueRef::UInt(v) => Value::UInt(v),
            ValueRef::Int(v) => Value::Int(v),
            ValueRef::Float(v) => Value::Float(v),
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Str(s) => Value::Str(s.to_string()),
        }
    }
}

/// An event as it arrives on the wire, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event type name.
    pub event: String,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Attributes as sent.
    pub attrs: serde_json::Map<String, Json>,
}

/// An event that passed validation: attributes typed and in registry order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidEvent {
    /// Event type name, known to the registry.
    pub event: String,
    /// Milliseconds since the Unix epoch, within [`MIN_TIME_MS`]..=[`MAX_TIME_MS`].
    pub time_ms: u64,
    /// Present attributes, in the order the registry declares the fields.
    pub attrs: Vec<(String, Value)>,
}

impl ValidEvent {
    /// The value of attribute `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&Value> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The Redis key of this event's keyed state `state`, or `None` if a
    /// key field is absent (validation makes key fields required, so only
    /// for foreign events).
    pub fn redis_state_key(&self, state: &State) -> Option<String> {
        let values: Option<Vec<String>> = state
            .key
            .iter()
            .map(|k| self.attr(k).map(|v| v.to_column_text()))
            .collect();
        Some(crate::state_key::redis_key(&self.event, &values?))
    }
}

/// Which rule an event broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The line is not valid JSON.
    NotJson(String),
    /// The value must be a JSON object.
    NotObject,
    /// A required key or field is absent.
    Missing,
    /// The event type is not in the registry.
    UnknownEvent,
    /// The key or attribute is not declared.
    Unknown,
    /// The value has the wrong JSON type.
    WrongType {
        /// What was expected, e.g. `u16`.
        expected: String,
    },
    /// An integer outside its type's range.
    OutOfRange {
        /// Smallest allowed.
        min: i128,
        /// Largest allowed.
        max: i128,
    },
    /// A string longer than the field's `max_len`.
    TooLong {
        /// The longest allowed, in bytes.
        max_len: u32,
    },
    /// A value that is not one of the enum's values.
    NotInEnum {
        /// The allowed values.
        allowed: Vec<String>,
    },
    /// The event time is outside the accepted range.
    TimeOutOfRange,
    /// A string holding U+001F, the keyed-state table's key separator: two
    /// different keys could read as one.
    KeySeparator,
    /// Older than the event type's `accept_past_s` before the collector's
    /// clock.
    TimeTooOld {
        /// The oldest accepted, in seconds before now.
        max_age_s: u64,
    },
    /// Later than the event type's `accept_future_s` after the collector's
    /// clock.
    TimeTooNew {
        /// The latest accepted, in seconds after now.
        max_ahead_s: u64,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::NotJson(e) => write!(f, "not valid JSON ({e})"),
            Rule::NotObject => write!(f, "must be a JSON object"),
            Rule::Missing => write!(f, "is required but missing"),
            Rule::UnknownEvent => write!(f, "is not an event type in the registry"),
            Rule::Unknown => write!(f, "is not declared for this event type"),
            Rule::WrongType { expected } => write!(f, "must be {expected}"),
            Rule::OutOfRange { min, max } => write!(f, "must be from {min} to {max}"),
            Rule::TooLong { max_len } => write!(f, "is longer than its max_len of {max_len} bytes"),
            Rule::NotInEnum { allowed } => write!(f, "must be one of: {}", allowed.join(", ")),
            Rule::TimeTooOld { max_age_s } => write!(
                f,
                "is more than {max_age_s} s before the collector's clock (the event type's accept_past_s); to load older history on purpose, raise the collector's limits.history_s"
            ),
            Rule::TimeTooNew { max_ahead_s } => write!(
                f,
                "is more than {max_ahead_s} s after the collector's clock (the event type's accept_future_s); is the sender's clock right?"
            ),
            Rule::KeySeparator => write!(
                f,
                "may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)"
            ),
            Rule::TimeOutOfRange => write!(
                f,
                "must be milliseconds since the Unix epoch, from {MIN_TIME_MS} (2000-01-01) to {MAX_TIME_MS} (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000"
            ),
        }
    }
}

/// An event that broke a rule: which field (`event`, `time`, `attrs.NAME`) and which rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{rule}", if field.is_empty() { String::new() } else { format!("`{field}` ") })]
pub struct ValidationError {
    /// The offending key; empty for the line as a whole.
    pub field: String,
    /// The rule it broke.
    pub rule: Rule,
}

impl ValidationError {
    fn new(field: impl Into<String>, rule: Rule) -> Self {
        Self {
            field: field.into(),
            rule,
        }
    }

    /// A short stable code for the rule, fit for a metric label.
    pub fn code(&self) -> &'static str {
        match self.rule {
            Rule::NotJson(_) => "not_json",
            Rule::NotObject => "not_object",
            Rule::Missing => "missing",
            Rule::UnknownEvent => "unknown_event",
            Rule::Unknown => "unknown_field",
            Rule::WrongType { .. } => "wrong_type",
            Rule::OutOfRange { .. } => "out_of_range",
            Rule::TooLong { .. } => "too_long",
            Rule::NotInEnum { .. } => "not_in_enum",
            Rule::TimeOutOfRange => "time_out_of_range",
            Rule::KeySeparator => "key_separator",
            Rule::TimeTooOld { .. } => "time_too_old",
            Rule::TimeTooNew { .. } => "time_too_new",
        }
    }
}

impl Event {
    /// Parses one wire line (without its newline).
    pub fn parse_line(line: &[u8]) -> Result<Self, ValidationError> {
        let v: Json = serde_json::from_slice(line)
            .map_err(|e| ValidationError::new("", Rule::NotJson(e.to_string())))?;
        Self::from_json(v)
    }

    /// Builds an event from a parsed JSON value.
    pub fn from_json(v: Json) -> Result<Self, ValidationError> {
        let Json::Object(mut obj) = v else {
            return Err(ValidationError::new("", Rule::NotObject));
        };
        let event = match obj.remove("event") {
            Some(Json::String(s)) => s,
            Some(_) => {
                return Err(ValidationError::new(
                    "event",
                    Rule::WrongType {
                        expected: "a string".into(),
                    },
                ))
            }
            None => return Err(ValidationError::new("event", Rule::Missing)),
        };
        let time_ms = match obj.remove("time") {
            Some(Json::Number(n)) => n.as_u64().ok_or_else(|| {
                ValidationError::new(
                    "time",
                    Rule::WrongType {
                        expected: "a whole number of milliseconds".into(),
                    },
                )
            })?,
            Some(_) => {
                return Err(ValidationError::new(
                    "time",
                    Rule::WrongType {
                        expected: "a whole number of milliseconds".into(),
                    },
                ))
            }
            None => return Err(ValidationError::new("time", Rule::Missing)),
        };
        let attrs = match obj.remove("attrs") {
            Some(Json::Object(m)) => m,
            Some(_) => return Err(ValidationError::new("attrs", Rule::NotObject)),
            None => serde_json::Map::new(),
        };
        if let Some(k) = obj.keys().next() {
            return Err(ValidationError::new(k.clone(), Rule::Unknown));
        }
        Ok(Self {
            event,
            time_ms,
            attrs,
        })
    }
}

/// Checks `event` against `registry`; on success returns the typed event.
pub fn validate(event: &Event, registry: &Registry) -> Result<ValidEvent, ValidationError> {
    let ty = registry
        .get(&event.event)
        .ok_or_else(|| ValidationError::new("event", Rule::UnknownEvent))?;
    if !(MIN_TIME_MS..=MAX_TIME_MS).contains(&event.time_ms) {
        return Err(ValidationError::new("time", Rule::TimeOutOfRange));
    }
    if let Some(k) = event.attrs.keys().find(|k| !ty.fields.contains_key(*k)) {
        return Err(ValidationError::new(format!("attrs.{k}"), Rule::Unknown));
    }
    let mut attrs = Vec::with_capacity(event.attrs.len());
    for (name, field) in &ty.fields {
        match event.attrs.get(name) {
            None | Some(Json::Null) if field.required => {
                return Err(ValidationError::new(format!("attrs.{name}"), Rule::Missing))
            }
            None | Some(Json::Null) => {}
            Some(v) => {
                let typed = typed_value(field, v)
                    .map_err(|rule| ValidationError::new(format!("attrs.{name}"), rule))?;
                attrs.push((name.clone(), typed));
            }
        }
    }
    Ok(ValidEvent {
        event: event.event.clone(),
        time_ms: event.time_ms,
        attrs,
    })
}

/// Checks a valid event's time against its type's accepted window around
/// `now_ms` (the collector's clock): from `accept_past_s` before (or
/// `history_s` before, when that is further back: a deliberate load of
/// history) to `accept_future_s` after.
pub fn check_time_window(
    event: &ValidEvent,
    registry: &Registry,
    now_ms: u64,
    history_s: u64,
) -> Result<(), ValidationError> {
    let Some(ty) = registry.get(&event.event) else {
        return Err(ValidationError::new("event", Rule::UnknownEvent));
    };
    let max_age_s = ty.accept_past_s.max(history_s);
    if event.time_ms < now_ms.saturating_sub(max_age_s.saturating_mul(1000)) {
        return Err(ValidationError::new("time", Rule::TimeTooOld { max_age_s }));
    }
    let max_ahead_s = ty.accept_future_s;
    if event.time_ms > now_ms.saturating_add(max_ahead_s.saturating_mul(1000)) {
        return Err(ValidationError::new(
            "time",
            Rule::TimeTooNew { max_ahead_s },
        ));
    }
    Ok(())
}

fn typed_value(field: &Field, v: &Json) -> Result<Value, Rule> {
    let wrong = |expected: &str| Rule::WrongType {
        expected: expected.to_string(),
    };
    match field.ty {
        FieldType::Bool => v
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| wrong("true or false")),
        // JSON cannot spell NaN or infinity, and serde_json refuses numbers
        // beyond f64, so every float that parses is finite.
        FieldType::Float => v
            .as_f64()
            .map(Value::Float)
            .ok_or_else(|| wrong("a number")),
        FieldType::String => {
            let s = v.as_str().ok_or_else(|| wrong("a string"))?;
            let max_len = field.string_max_len();
            if s.len() > max_len as usize {
                return Err(Rule::TooLong { max_len });
            }
            if s.contains(crate::state_key::TABLE_SEPARATOR) {
                return Err(Rule::KeySeparator);
            }
            Ok(Value::Str(s.to_string()))
        }
        FieldType::Enum => {
            let s = v.as_str().ok_or_else(|| wrong("a string"))?;
            if field.values.iter().any(|a| a == s) {
                Ok(Value::Str(s.to_string()))
            } else {
                Err(Rule::NotInEnum {
                    allowed: field.values.clone(),
                })
            }
        }
        ty => {
            let (min, max) = ty.int_range().expect("every other type is an integer");
            let n = v
                .as_number()
                .ok_or_else(|| wrong(&format!("an integer ({})", ty.name())))?;
            let i: i128 = if let Some(u) = n.as_u64() {
                u.into()
            } else if let Some(i) = n.as_i64() {
                i.into()
            } else {
                return Err(wrong(&format!("an integer ({})", ty.name())));
            };
            if i < min || i > max {
                return Err(Rule::OutOfRange { min, max });
            }
            Ok(if min < 0 {
                Value::Int(i as i64)
            } else {
                Value::UInt(i as u64)
            })
        }
    }
}
