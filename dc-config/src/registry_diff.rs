//! What a registry change does (`spoolhouse registry diff OLD NEW`): each
//! difference between two checked registries, classified as **safe** (old
//! senders keep working, stored history and series keep their meaning) or
//! **breaking**, with what it breaks: senders (events valid before are
//! refused, or new ones are required), history (stored attributes change
//! meaning), series (a metric's series stop or change families), or keyed
//! state (values stored under the old definition are not found).
//!
//! Descriptions are for people and never a change here.

use std::collections::BTreeSet;
use std::fmt;

use crate::registry::{EventType, Field, FieldType, Metric, Registry};

/// Safe, or breaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Old senders, stored history and series are unaffected.
    Safe,
    /// Something that worked before stops working or changes meaning.
    Breaking,
}

/// What a breaking change breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Breaks {
    /// Events valid before are refused by the collector, or a sender must
    /// now send something it did not.
    Senders,
    /// Stored events' attributes change meaning for readers.
    History,
    /// A metric's series stop, or continue under different families.
    Series,
    /// Keyed state stored under the old definition is not read any more.
    State,
}

impl Breaks {
    /// The word used in the output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Senders => "senders",
            Self::History => "history",
            Self::Series => "series",
            Self::State => "state",
        }
    }
}

/// One difference between two registries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Safe or breaking.
    pub verdict: Verdict,
    /// Where: `event`, `event.fields.NAME`, `event.state`, `event.metric.KIND(FIELD)`.
    pub path: String,
    /// What changed and what it means.
    pub message: String,
    /// What it breaks (empty when safe).
    pub breaks: Vec<Breaks>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = match self.verdict {
            Verdict::Safe => "safe",
            Verdict::Breaking => "breaking",
        };
        write!(f, "{verdict:<8} {}: {}", self.path, self.message)?;
        if !self.breaks.is_empty() {
            let names: Vec<&str> = self.breaks.iter().map(|b| b.name()).collect();
            write!(f, " (breaks {})", names.join(", "))?;
        }
        Ok(())
    }
}

fn safe(path: String, message: String) -> Change {
    Change {
        verdict: Verdict::Safe,
        path,
        message,
        breaks: Vec::new(),
    }
}

fn breaking(path: String, message: String, breaks: &[Breaks]) -> Change {
    Change {
        verdict: Verdict::Breaking,
        path,
        message,
        breaks: breaks.to_vec(),
    }
}

/// Every difference from `old` to `new`, in the new registry's order
/// (removed event types last).
pub fn diff(old: &Registry, new: &Registry) -> Vec<Change> {
    let mut out = Vec::new();
    for (name, ev) in &new.event {
        match old.get(name) {
            None => out.push(safe(
                name.clone(),
                "new event type: senders may send it from now on".into(),
            )),
            Some(before) => event_changes(&mut out, name, before, ev),
        }
    }
    for name in old.event.keys().filter(|n| new.get(n).is_none()) {
        out.push(breaking(
            name.clone(),
            "event type removed: the collector refuses it from now on; its metrics are no longer aggregated; stored events stay".into(),
            &[Breaks::Senders, Breaks::Series],
        ));
    }
    out
}

/// Whether any change is breaking.
pub fn has_breaking(changes: &[Change]) -> bool {
    changes.iter().any(|c| c.verdict == Verdict::Breaking)
}

fn event_changes(out: &mut Vec<Change>, name: &str, old: &EventType, new: &EventType) {
    for (fname, f) in &new.fields {
        let path = format!("{name}.fields.{fname}");
        match old.fields.get(fname) {
            None if f.required => out.push(breaking(
                path,
                format!("new required field ({}): events without it are refused; make it optional (`required = false`) to keep old senders working", f.ty.name()),
                &[Breaks::Senders],
            )),
            None => out.push(safe(
                path,
                format!("new optional field ({})", f.ty.name()),
            )),
            Some(before) => field_changes(out, &path, before, f),
        }
    }
    for fname in old.fields.keys().filter(|f| !new.fields.contains_key(*f)) {
        out.push(breaking(
            format!("{name}.fields.{fname}"),
            "field removed: events that carry it are refused (unknown field); stored values stay but no longer have a declared type".into(),
            &[Breaks::Senders, Breaks::History],
        ));
    }
    window_changes(out, name, old, new);
    state_changes(out, name, old, new);
    metric_changes(out, name, old, new);
}

/// An integer type whose every value fits `to` as well.
fn widens(from: FieldType, to: FieldType) -> bool {
    match (from.int_range(), to.int_range()) {
        (Some((a0, a1)), Some((b0, b1))) => {
            b0 <= a0 && a1 <= b1 && from != FieldType::Timestamp && to != FieldType::Timestamp
        }
        _ => false,
    }
}

fn field_changes(out: &mut Vec<Change>, path: &str, old: &Field, new: &Field) {
    if old.ty != new.ty {
        if widens(old.ty, new.ty) {
            out.push(safe(
                path.into(),
                format!(
                    "type widened from {} to {}: every value valid before still is",
                    old.ty.name(),
                    new.ty.name()
                ),
            ));
        } else {
            out.push(breaking(
                path.into(),
                format!(
                    "type changed from {} to {}: values valid before may be refused, and stored values were written as {}",
                    old.ty.name(),
                    new.ty.name(),
                    old.ty.name()
                ),
                &[Breaks::Senders, Breaks::History],
            ));
            // A retyped field's other rules are moot.
            return;
        }
    }
    match (old.required, new.required) {
        (false, true) => out.push(breaking(
            path.into(),
            "now required: events without it are refused".into(),
            &[Breaks::Senders],
        )),
        (true, false) => out.push(safe(path.into(), "now optional".into())),
        _ => {}
    }
    if new.ty == FieldType::String && old.ty == FieldType::String {
        let (a, b) = (old.string_max_len(), new.string_max_len());
        if b < a {
            out.push(breaking(
                path.into(),
                format!("max_len lowered from {a} to {b}: longer values are refused"),
                &[Breaks::Senders],
            ));
        } else if b > a {
            out.push(safe(path.into(), format!("max_len raised from {a} to {b}")));
        }
    }
    if new.ty == FieldType::Enum && old.ty == FieldType::Enum {
        let before: BTreeSet<&String> = old.values.iter().collect();
        let after: BTreeSet<&String> = new.values.iter().collect();
        let removed: Vec<&str> = old
            .values
            .iter()
            .filter(|v| !after.contains(v))
            .map(String::as_str)
            .collect();
        let added: Vec<&str> = new
            .values
            .iter()
            .filter(|v| !before.contains(v))
            .map(String::as_str)
            .collect();
        if !removed.is_empty() {
            let what = if added.is_empty() {
                "removed".to_string()
            } else {
                format!("removed (renamed? {} added)", quoted(&added))
            };
            out.push(breaking(
                path.into(),
                format!(
                    "enum value(s) {} {what}: events with them are refused, and stored events and series keep the old names",
                    quoted(&removed)
                ),
                &[Breaks::Senders, Breaks::History, Breaks::Series],
            ));
        } else if !added.is_empty() {
            out.push(safe(
                path.into(),
                format!("new enum value(s) {}", quoted(&added)),
            ));
        }
    }
    if old.dimension_bound() != new.dimension_bound() {
        if let (Some(a), Some(b)) = (old.dimension_bound(), new.dimension_bound()) {
            out.push(safe(
                path.into(),
                format!("max_values_per_minute {a} -> {b}: as a dimension, from now on the {b} most frequent values per minute are kept apart, the rest counted as `other`"),
            ));
        }
    }
}

fn quoted(values: &[&str]) -> String {
    values
        .iter()
        .map(|v| format!("`{v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn window_changes(out: &mut Vec<Change>, name: &str, old: &EventType, new: &EventType) {
    for (key, a, b) in [
        ("accept_past_s", old.accept_past_s, new.accept_past_s),
        ("accept_future_s", old.accept_future_s, new.accept_future_s),
    ] {
        let path = format!("{name}.{key}");
        if b < a {
            out.push(breaking(
                path,
                format!("narrowed from {a} to {b} s: events accepted before are refused as out of the time window"),
                &[Breaks::Senders],
            ));
        } else if b > a {
            out.push(safe(path, format!("widened from {a} to {b} s")));
        }
    }
}

fn state_changes(out: &mut Vec<Change>, name: &str, old: &EventType, new: &EventType) {
    let path = format!("{name}.state");
    match (&old.state, &new.state) {
        (None, Some(s)) => out.push(safe(
            path,
            format!(
                "new keyed state (key {:?}, value `{}`): kept from the next event on",
                s.key, s.value
            ),
        )),
        (Some(_), None) => out.push(breaking(
            path,
            "keyed state removed: it is no longer written, and reads of it fail".into(),
            &[Breaks::State],
        )),
        (Some(a), Some(b)) => {
            if a.key != b.key {
                out.push(breaking(
                    path.clone(),
                    format!("key changed from {:?} to {:?}: values stored under the old keys are not moved and expire with their TTL; reads of the new keys miss until new events arrive", a.key, b.key),
                    &[Breaks::State],
                ));
            }
            if a.value != b.value {
                out.push(breaking(
                    path.clone(),
                    format!("value changed from `{}` to `{}`: stored values are of the old field until overwritten", a.value, b.value),
                    &[Breaks::State],
                ));
            }
            if a.ttl_s != b.ttl_s {
                out.push(safe(
                    path,
                    format!(
                        "ttl_s {} -> {}: applies to writes from now on",
                        a.ttl_s, b.ttl_s
                    ),
                ));
            }
        }
        (None, None) => {}
    }
}

fn metric_id(name: &str, m: &Metric) -> String {
    format!(
        "{name}.metric.{}({})",
        m.kind.name(),
        m.field.as_deref().unwrap_or("")
    )
}

fn metric_changes(out: &mut Vec<Change>, name: &str, old: &EventType, new: &EventType) {
    // A metric is its kind and field (the check allows one of each).
    let find = |ms: &[Metric], m: &Metric| -> Option<Metric> {
        ms.iter()
            .find(|o| o.kind == m.kind && o.field == m.field)
            .cloned()
    };
    for m in &new.metric {
        let path = metric_id(name, m);
        match find(&old.metric, m) {
            None => out.push(safe(
                path,
                "new metric: aggregated from now on, its history backfilled".into(),
            )),
            Some(before) if before.dimensions != m.dimensions => out.push(breaking(
                path,
                format!("dimensions changed from {:?} to {:?}: series families of the old dimensions stop, new ones start (with backfill)", before.dimensions, m.dimensions),
                &[Breaks::Series],
            )),
            Some(_) => {}
        }
    }
    for m in old.metric.iter().filter(|m| find(&new.metric, m).is_none()) {
        out.push(breaking(
            metric_id(name, m),
            "metric removed: no longer aggregated; its stored series keep their history".into(),
            &[Breaks::Series],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(src: &str) -> Registry {
        Registry::parse(std::path::Path::new("events.toml"), src)
            .unwrap_or_else(|e| panic!("{e}\n{src}"))
    }

    const BASE: &str = r#"
[event.vote]
fields.user_id = { type = "u32" }
fields.vote = { type = "enum", values = ["yes", "no"] }
fields.reason = { type = "string", max_len = 100, required = false }
fields.country_id = { type = "u16" }
state = { key = ["user_id"], value = "vote", ttl_s = 3600 }
metric = [
  { kind = "count", dimensions = ["vote"] },
  { kind = "uniq", field = "user_id", dimensions = ["country_id"] },
]
"#;

    /// Each case: a change to the base registry (as text replaced), the
    /// verdict expected, and a word the message must carry.
    #[test]
    fn each_change_gets_its_verdict() {
        let cases: &[(&str, &str, &str, Verdict, &str)] = &[
            ("new event", "[event.vote]", "[event.click]\nfields.x = { type = \"u8\" }\n\n[event.vote]", Verdict::Safe, "new event type"),
            ("new optional field", "fields.country_id", "fields.page = { type = \"string\", required = false }\nfields.country_id", Verdict::Safe, "new optional field"),
            ("new required field", "fields.country_id", "fields.page = { type = \"string\" }\nfields.country_id", Verdict::Breaking, "new required field"),
            ("new enum value", "[\"yes\", \"no\"]", "[\"yes\", \"no\", \"maybe\"]", Verdict::Safe, "`maybe`"),
            ("enum value renamed", "[\"yes\", \"no\"]", "[\"yes\", \"nope\"]", Verdict::Breaking, "renamed?"),
            ("field widened", "fields.user_id = { type = \"u32\" }", "fields.user_id = { type = \"u64\" }", Verdict::Safe, "widened"),
            ("field narrowed", "fields.user_id = { type = \"u32\" }", "fields.user_id = { type = \"u16\" }", Verdict::Breaking, "type changed"),
            ("field retyped", "fields.country_id = { type = \"u16\" }", "fields.country_id = { type = \"string\" }", Verdict::Breaking, "type changed"),
            ("field removed", "fields.reason = { type = \"string\", max_len = 100, required = false }\n", "", Verdict::Breaking, "field removed"),
            ("now required", "max_len = 100, required = false", "max_len = 100", Verdict::Breaking, "now required"),
            ("max_len lowered", "max_len = 100", "max_len = 50", Verdict::Breaking, "lowered"),
            ("max_len raised", "max_len = 100", "max_len = 500", Verdict::Safe, "raised"),
            ("new metric", "  { kind = \"count\", dimensions = [\"vote\"] },", "  { kind = \"count\", dimensions = [\"vote\"] },\n  { kind = \"max\", field = \"country_id\" },", Verdict::Safe, "new metric"),
            ("metric removed", "  { kind = \"count\", dimensions = [\"vote\"] },\n", "", Verdict::Breaking, "metric removed"),
            ("dimensions changed", "dimensions = [\"country_id\"]", "dimensions = [\"vote\"]", Verdict::Breaking, "dimensions changed"),
            ("state key changed", "key = [\"user_id\"]", "key = [\"user_id\", \"country_id\"]", Verdict::Breaking, "key changed"),
            ("state ttl changed", "ttl_s = 3600", "ttl_s = 7200", Verdict::Safe, "ttl_s"),
            ("state removed", "state = { key = [\"user_id\"], value = \"vote\", ttl_s = 3600 }\n", "", Verdict::Breaking, "keyed state removed"),
            ("time window narrowed", "[event.vote]", "[event.vote]\naccept_past_s = 3600", Verdict::Breaking, "narrowed"),
            ("description only", "[event.vote]", "[event.vote]\ndescription = \"A vote.\"", Verdict::Safe, ""),
        ];
        let old = registry(BASE);
        for (what, from, to, verdict, word) in cases {
            assert!(BASE.contains(from), "{what}: the base has no {from:?}");
            let new = registry(&BASE.replacen(from, to, 1));
            let changes = diff(&old, &new);
            if word.is_empty() {
                assert!(changes.is_empty(), "{what}: {changes:?}");
                continue;
            }
            assert_eq!(changes.len(), 1, "{what}: {changes:#?}");
            assert_eq!(changes[0].verdict, *verdict, "{what}: {}", changes[0]);
            assert!(changes[0].message.contains(word), "{what}: {}", changes[0]);
            assert_eq!(
                changes[0].breaks.is_empty(),
                *verdict == Verdict::Safe,
                "{what}: {}",
                changes[0]
            );
        }
    }

    #[test]
    fn a_removed_event_type_is_breaking_and_identical_registries_differ_in_nothing() {
        let old = registry(BASE);
        assert!(diff(&old, &old).is_empty());
        let new = registry("[event.click]\nfields.x = { type = \"u8\" }\n");
        let changes = diff(&old, &new);
        assert!(has_breaking(&changes));
        assert!(changes
            .iter()
            .any(|c| c.path == "vote" && c.verdict == Verdict::Breaking));
        assert!(changes
            .iter()
            .any(|c| c.path == "click" && c.verdict == Verdict::Safe));
        assert!(changes[0].to_string().starts_with("safe"), "{}", changes[0]);
    }
}
