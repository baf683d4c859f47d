//! The Go client: a module `spoolhouse/events` (package `events`): the
//! runtime of `go_runtime.go`, then a struct per event type whose fields
//! have the registry's exact integer types (so ranges hold by type),
//! optional fields as pointers, enum values as constants, and `Line()`
//! checking the rest of the collector's rules with its messages.

use std::fmt::Write;
use std::path::PathBuf;

use super::{constant, example_event, fill_bounds, pascal, File, Sample};
use crate::registry::{EventType, Field, FieldType, Registry};

const RUNTIME: &str = include_str!("go_runtime.go");

/// The module path of the generated module.
pub const MODULE: &str = "spoolhouse/events";

fn go_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// `user_id` → `UserID`: Go's initialisms for the common ones.
fn go_name(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| match p {
            "id" => "ID".to_string(),
            "url" => "URL".to_string(),
            "ms" => "Ms".to_string(),
            _ => pascal(p),
        })
        .collect()
}

fn go_type(f: &Field) -> &'static str {
    match f.ty {
        FieldType::I8 => "int8",
        FieldType::I16 => "int16",
        FieldType::I32 => "int32",
        FieldType::I64 => "int64",
        FieldType::U8 => "uint8",
        FieldType::U16 => "uint16",
        FieldType::U32 => "uint32",
        FieldType::U64 | FieldType::Timestamp => "uint64",
        FieldType::Float => "float64",
        FieldType::Bool => "bool",
        FieldType::String | FieldType::Enum => "string",
    }
}

/// The check of value `v` (a Go expression of the field's type), if its
/// type does not already hold the rule.
fn check(class: &str, fname: &str, f: &Field, v: &str) -> Option<String> {
    let n = go_str(fname);
    match f.ty {
        FieldType::Float => Some(format!("checkFloat({n}, {v})")),
        FieldType::String => Some(format!("checkString({n}, {v}, {})", f.string_max_len())),
        FieldType::Enum => Some(format!(
            "checkEnum({n}, {v}, {class}{}Values)",
            go_name(fname)
        )),
        _ => None,
    }
}

fn event_type(out: &mut String, name: &str, ev: &EventType) {
    let class = pascal(name);
    let _ = writeln!(out);
    let doc = if ev.description.is_empty() {
        format!("the `{name}` event")
    } else {
        ev.description.clone()
    };
    let _ = writeln!(out, "// {class}: {}", doc.replace('\n', " "));
    let _ = writeln!(
        out,
        "// Optional fields are pointers (nil: not sent); TimeMs 0 is now."
    );
    let _ = writeln!(out, "type {class} struct {{");
    // Columns aligned as gofmt aligns them: name, type, tag, comment.
    let mut rows: Vec<[String; 4]> = ev
        .fields
        .iter()
        .map(|(fname, f)| {
            let mut comment = format!("// {}", f.ty.name());
            if !f.description.is_empty() {
                let _ = write!(comment, ": {}", f.description.replace('\n', " "));
            }
            [
                go_name(fname),
                format!("{}{}", if f.required { "" } else { "*" }, go_type(f)),
                format!(
                    "`json:\"{fname}{}\"`",
                    if f.required { "" } else { ",omitempty" }
                ),
                comment,
            ]
        })
        .collect();
    rows.push([
        "TimeMs".into(),
        "int64".into(),
        "`json:\"-\"`".into(),
        String::new(),
    ]);
    let width = |i: usize| {
        rows.iter()
            .filter(|r| i < 2 || !r[3].is_empty())
            .map(|r| r[i].len())
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2) = (width(0), width(1), width(2));
    for r in &rows {
        let line = if r[3].is_empty() {
            format!("{:w0$} {:w1$} {}", r[0], r[1], r[2])
        } else {
            format!("{:w0$} {:w1$} {:w2$} {}", r[0], r[1], r[2], r[3])
        };
        let _ = writeln!(out, "\t{}", line.trim_end());
    }
    let _ = writeln!(out, "}}");
    for (fname, f) in ev.fields.iter().filter(|(_, f)| f.ty == FieldType::Enum) {
        let prefix = format!("{class}{}", go_name(fname));
        let _ = writeln!(out, "\n// Values of {class}.{}.\nconst (", go_name(fname));
        let mut taken = Vec::new();
        let names: Vec<String> = f
            .values
            .iter()
            .map(|v| {
                format!(
                    "{prefix}{}",
                    pascal(&constant(v, &mut taken).to_ascii_lowercase())
                )
            })
            .collect();
        let w = names.iter().map(String::len).max().unwrap_or(0);
        for (c, v) in names.iter().zip(&f.values) {
            let _ = writeln!(out, "\t{c:w$} = {}", go_str(v));
        }
        let _ = writeln!(
            out,
            ")\n\n// {prefix}Values: every value of {class}.{}.",
            go_name(fname)
        );
        let _ = writeln!(out, "var {prefix}Values = []string{{{}}}", names.join(", "));
    }
    let _ = writeln!(
        out,
        "\n// Line checks the event against the collector's rules and returns it as\n// one line of the protocol."
    );
    let _ = writeln!(out, "func (e {class}) Line() ([]byte, error) {{");
    let _ = writeln!(
        out,
        "\tt, err := checkTime(e.TimeMs, {}, {})\n\tif err != nil {{\n\t\treturn nil, err\n\t}}",
        ev.accept_past_s, ev.accept_future_s
    );
    for (fname, f) in &ev.fields {
        let field = format!("e.{}", go_name(fname));
        let (v, guard) = if f.required {
            (field.clone(), None)
        } else {
            (format!("*{field}"), Some(format!("{field} != nil")))
        };
        if let Some(c) = check(&class, fname, f, &v) {
            match guard {
                Some(g) => {
                    let _ = writeln!(
                        out,
                        "\tif {g} {{\n\t\tif err := {c}; err != nil {{\n\t\t\treturn nil, err\n\t\t}}\n\t}}"
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "\tif err := {c}; err != nil {{\n\t\treturn nil, err\n\t}}"
                    );
                }
            }
        }
    }
    let _ = writeln!(out, "\treturn line({}, t, e)\n}}", go_str(name));
}

fn example(registry: &Registry) -> String {
    let (name, fields) = example_event(registry);
    let class = pascal(name);
    let args: Vec<String> = fields
        .iter()
        .filter_map(|(fname, sample)| {
            let v = match sample.as_ref()? {
                Sample::Enum(v) => format!(
                    "events.{class}{}{}",
                    go_name(fname),
                    pascal(&constant(v, &mut Vec::new()).to_ascii_lowercase())
                ),
                Sample::Bool => "true".into(),
                Sample::Float => "1.5".into(),
                Sample::Str => go_str("example"),
                Sample::Int => "7".into(),
            };
            Some(format!("{}: {v}", go_name(fname)))
        })
        .collect();
    format!(
        "client, err := events.NewClientFromEnv() // SPOOLHOUSE_SOCKET=/path/collector.sock, or SPOOLHOUSE_INBOX=/path/inbox\n\
         if err != nil {{ log.Fatal(err) }}\n\
         _, err = client.Send(events.{class}{{{}}})\n\
         if err != nil {{ log.Fatal(err) }}\n",
        args.join(", ")
    )
}

pub(super) fn generate(registry: &Registry, version: &str) -> Vec<File> {
    let mut src = format!(
        "// Code generated by spoolhouse codegen --lang go from the registry version {version} (SHA-256 of events.toml, first 16 hex digits). DO NOT EDIT.\n\n\
         // Package events holds the typed events of the Spoolhouse registry\n\
         // {version}, and a client that sends them to the collector on this host.\n\
         package events\n"
    );
    src.push_str(&fill_bounds(RUNTIME));
    let _ = writeln!(
        src,
        "\n// RegistryVersion: the registry this package was generated from.\nconst RegistryVersion = {}",
        go_str(version)
    );
    for (name, ev) in &registry.event {
        event_type(&mut src, name, ev);
    }
    let classes: Vec<String> = registry.event.keys().map(|n| pascal(n)).collect();
    vec![
        File {
            path: PathBuf::from("events.go"),
            text: src,
        },
        File {
            path: PathBuf::from("go.mod"),
            text: format!("// Generated by spoolhouse codegen --lang go (registry {version}). Do not edit.\nmodule {MODULE}\n\ngo 1.19\n"),
        },
        File {
            path: PathBuf::from("README.md"),
            text: format!(
                "# {MODULE}\n\n\
                 Generated by `spoolhouse codegen --lang go` from the registry version\n\
                 `{version}`. Do not edit: change the registry and generate again.\n\n\
                 One struct per event type ({}), with the registry's exact integer\n\
                 types, optional fields as pointers and enum values as constants;\n\
                 `Line()` checks the collector's other rules (string lengths, enum\n\
                 values, the time window) and returns a `*ValidationError` with the\n\
                 collector's own field, rule and message. `Client.Send` sends over the\n\
                 collector's Unix socket (returns once every event is acknowledged,\n\
                 durable in the spool; refused lines are retried until `Timeout`) or\n\
                 appends to a `.log` file in its inbox (`InboxDir`: no network call).\n\n\
                 ```go\n{}```\n",
                classes.join(", "),
                example(registry)
            ),
        },
    ]
}
