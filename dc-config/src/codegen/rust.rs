//! The Rust client: a crate `spoolhouse-events` (its only dependency
//! `serde_json`), the runtime of `rust_runtime.rs`, then a struct per event
//! type with the registry's exact integer types, a Rust enum per enum
//! field, `Option` for optional fields, and `Event::line()` checking the
//! rest of the collector's rules with its messages.

use std::fmt::Write;
use std::path::PathBuf;

use super::{constant, example_event, fill_bounds, pascal, File, Sample};
use crate::registry::{EventType, Field, FieldType, Registry};

const RUNTIME: &str = include_str!("rust_runtime.rs");

const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while",
    "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "typeof", "unsized", "virtual", "yield", "try",
];

fn ident(name: &str) -> String {
    if name == "time_ms" {
        "time_ms_".into()
    } else if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_string()
    }
}

fn rs_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn variant(value: &str, taken: &mut Vec<String>) -> String {
    let v = pascal(&constant(value, taken).to_ascii_lowercase());
    if v.starts_with(|c: char| c.is_ascii_digit()) || v.is_empty() {
        format!("V{v}")
    } else {
        v
    }
}

fn rs_type(class: &str, fname: &str, f: &Field) -> String {
    match f.ty {
        FieldType::I8 => "i8".into(),
        FieldType::I16 => "i16".into(),
        FieldType::I32 => "i32".into(),
        FieldType::I64 => "i64".into(),
        FieldType::U8 => "u8".into(),
        FieldType::U16 => "u16".into(),
        FieldType::U32 => "u32".into(),
        FieldType::U64 | FieldType::Timestamp => "u64".into(),
        FieldType::Float => "f64".into(),
        FieldType::Bool => "bool".into(),
        FieldType::String => "String".into(),
        FieldType::Enum => format!("{class}{}", pascal(fname)),
    }
}

/// The JSON value of `v` (an expression of the field's type, by reference
/// for strings), checked where the type does not hold the rule.
fn value(fname: &str, f: &Field, v: &str) -> String {
    let n = rs_str(fname);
    match f.ty {
        FieldType::Float => format!("check_float({n}, {v})?.into()"),
        FieldType::String => format!("check_string({n}, {v}, {})?.into()", f.string_max_len()),
        FieldType::Enum => format!("{v}.as_str().into()"),
        _ => format!("{v}.into()"),
    }
}

fn event_type(out: &mut String, name: &str, ev: &EventType) {
    let class = pascal(name);
    for (fname, f) in ev.fields.iter().filter(|(_, f)| f.ty == FieldType::Enum) {
        let ty = format!("{class}{}", pascal(fname));
        let mut taken = Vec::new();
        let variants: Vec<String> = f.values.iter().map(|v| variant(v, &mut taken)).collect();
        let _ = writeln!(out, "\n/// Values of `{name}.{fname}`.");
        let _ = writeln!(
            out,
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]\npub enum {ty} {{"
        );
        for (v, text) in variants.iter().zip(&f.values) {
            let _ = writeln!(out, "    /// `{text}`\n    {v},");
        }
        let _ = writeln!(out, "}}\n\nimpl {ty} {{\n    /// The value as the registry spells it.\n    pub fn as_str(self) -> &'static str {{\n        match self {{");
        for (v, text) in variants.iter().zip(&f.values) {
            let _ = writeln!(out, "            Self::{v} => {},", rs_str(text));
        }
        let _ = writeln!(out, "        }}\n    }}\n}}");
    }
    let doc = if ev.description.is_empty() {
        format!("The `{name}` event.")
    } else {
        ev.description.replace('\n', " ")
    };
    let _ = writeln!(
        out,
        "\n/// {doc}\n#[derive(Debug, Clone, PartialEq)]\npub struct {class} {{"
    );
    for (fname, f) in &ev.fields {
        let ty = rs_type(&class, fname, f);
        let ty = if f.required {
            ty
        } else {
            format!("Option<{ty}>")
        };
        let mut doc = f.ty.name().to_string();
        if !f.description.is_empty() {
            let _ = write!(doc, ": {}", f.description.replace('\n', " "));
        }
        let _ = writeln!(out, "    /// {doc}\n    pub {}: {ty},", ident(fname));
    }
    let _ = writeln!(out, "    /// Event time, milliseconds since the Unix epoch; `None`: now.\n    pub time_ms: Option<u64>,\n}}");
    let _ = writeln!(
        out,
        "\nimpl Event for {class} {{\n    fn line(&self) -> Result<String, ValidationError> {{"
    );
    let _ = writeln!(
        out,
        "        let t = check_time(self.time_ms, {}, {})?;\n        let mut attrs = serde_json::Map::new();",
        ev.accept_past_s, ev.accept_future_s
    );
    for (fname, f) in &ev.fields {
        let field = format!("self.{}", ident(fname));
        if f.required {
            let v = if f.ty == FieldType::String {
                format!("&{field}")
            } else {
                field
            };
            let _ = writeln!(
                out,
                "        attrs.insert({}.into(), {});",
                rs_str(fname),
                value(fname, f, &v)
            );
        } else {
            let v = if f.ty == FieldType::String {
                "v"
            } else {
                "(*v)"
            };
            let _ = writeln!(
                out,
                "        if let Some(v) = &{field} {{\n            attrs.insert({}.into(), {});\n        }}",
                rs_str(fname),
                value(fname, f, v)
            );
        }
    }
    let _ = writeln!(
        out,
        "        Ok(to_line({}, t, attrs))\n    }}\n}}",
        rs_str(name)
    );
}

fn example(registry: &Registry) -> String {
    let (name, fields) = example_event(registry);
    let class = pascal(name);
    let mut uses = vec!["Client".to_string(), class.clone()];
    let mut args: Vec<String> = fields
        .iter()
        .map(|(fname, sample)| {
            let v = match sample {
                None => "None".into(),
                Some(Sample::Enum(v)) => {
                    let ty = format!("{class}{}", pascal(fname));
                    uses.push(ty.clone());
                    format!("{ty}::{}", variant(v, &mut Vec::new()))
                }
                Some(Sample::Bool) => "true".into(),
                Some(Sample::Float) => "1.5".into(),
                Some(Sample::Str) => format!("{}.into()", rs_str("example")),
                Some(Sample::Int) => "7".into(),
            };
            format!("{}: {v}", ident(fname))
        })
        .collect();
    args.push("time_ms: None".into());
    format!(
        "use spoolhouse_events::{{{}}};\n\
         let mut client = Client::from_env()?; // SPOOLHOUSE_SOCKET=/path/collector.sock, or SPOOLHOUSE_INBOX=/path/inbox\n\
         let event = {class} {{ {} }};\n\
         client.send(&[&event])?;\n",
        uses.join(", "),
        args.join(", ")
    )
}

pub(super) fn generate(registry: &Registry, version: &str) -> Vec<File> {
    let mut src = format!(
        "//! Typed events of the Spoolhouse registry {version}, and a client that\n\
         //! sends them to the collector on this host.\n\
         //!\n\
         //! Generated by `spoolhouse codegen --lang rust` from the registry version\n\
         //! {version} (SHA-256 of events.toml, first 16 hex digits). Do not edit:\n\
         //! change the registry and generate again.\n\n\
         /// The registry this crate was generated from.\n\
         pub const REGISTRY_VERSION: &str = {};\n",
        rs_str(version)
    );
    src.push_str(&fill_bounds(RUNTIME));
    for (name, ev) in &registry.event {
        event_type(&mut src, name, ev);
    }
    let classes: Vec<String> = registry.event.keys().map(|n| pascal(n)).collect();
    vec![
        File {
            path: PathBuf::from("src/lib.rs"),
            text: src,
        },
        File {
            path: PathBuf::from("Cargo.toml"),
            text: format!(
                "# Generated by `spoolhouse codegen --lang rust` (registry {version}). Do not edit.\n\
                 [package]\n\
                 name = \"spoolhouse-events\"\n\
                 version = \"0.0.0+r{version}\"\n\
                 edition = \"2021\"\n\
                 description = \"Typed Spoolhouse events (registry {version})\"\n\
                 publish = false\n\n\
                 [dependencies]\n\
                 serde_json = \"1\"\n\n\
                 [workspace]\n"
            ),
        },
        File {
            path: PathBuf::from("README.md"),
            text: format!(
                "# spoolhouse-events\n\n\
                 Generated by `spoolhouse codegen --lang rust` from the registry version\n\
                 `{version}`. Do not edit: change the registry and generate again.\n\n\
                 One struct per event type ({}), with the registry's exact integer\n\
                 types, a Rust enum per enum field and `Option` for optional fields;\n\
                 `Event::line` checks the collector's other rules (string lengths, the\n\
                 time window) and returns a `ValidationError` with the collector's own\n\
                 field, rule and message. `Client::send` sends over the collector's Unix\n\
                 socket (returns once every event is acknowledged, durable in the\n\
                 spool) or appends to a `.log` file in its inbox (no network call).\n\n\
                 ```rust\n{}```\n",
                classes.join(", "),
                example(registry)
            ),
        },
    ]
}
