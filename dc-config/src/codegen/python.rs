//! The Python client: a package `spoolhouse_events` (one module: the
//! runtime of `python_runtime.py`, then a class per event type), with
//! `pyproject.toml`, `py.typed` and a README whose example runs as printed.

use std::fmt::Write;
use std::path::PathBuf;

use super::{constant, example_event, fill_bounds, pascal, File, Sample};
use crate::registry::{EventType, Field, FieldType, Registry};

/// The package's runtime: validators with the collector's messages, the
/// event base class, the client.
const RUNTIME: &str = include_str!("python_runtime.py");

const KEYWORDS: &[&str] = &[
    "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del", "elif",
    "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda",
    "nonlocal", "not", "or", "pass", "raise", "return", "try", "while", "with", "yield", "self",
    "time_ms", "match", "case",
];

/// A field's name as a Python parameter: keywords and the constructor's
/// own `time_ms` get a trailing underscore.
fn param(name: &str) -> String {
    if KEYWORDS.contains(&name) {
        format!("{name}_")
    } else {
        name.to_string()
    }
}

fn py_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn hint(f: &Field) -> &'static str {
    match f.ty {
        FieldType::Float => "float",
        FieldType::Bool => "bool",
        FieldType::String | FieldType::Enum => "str",
        _ => "int",
    }
}

/// The expression checking parameter `p` of field `name`.
fn check(class: &str, name: &str, p: &str, f: &Field) -> String {
    let n = py_str(name);
    match f.ty {
        FieldType::Float => format!("_float({n}, {p})"),
        FieldType::Bool => format!("_bool({n}, {p})"),
        FieldType::String => format!("_str({n}, {p}, {})", f.string_max_len()),
        FieldType::Enum => format!("_enum({n}, {p}, {class}.{}.VALUES)", pascal(name)),
        ty => {
            let (lo, hi) = ty.int_range().expect("integer types have a range");
            format!("_int({n}, {p}, {lo}, {hi}, {})", py_str(ty.name()))
        }
    }
}

fn event_class(out: &mut String, name: &str, ev: &EventType) {
    let class = pascal(name);
    let _ = writeln!(out, "\n\nclass {class}(Event):");
    let mut doc = if ev.description.is_empty() {
        format!("The `{name}` event.")
    } else {
        ev.description.clone()
    };
    doc.push_str("\n\n    Fields (keyword arguments; `time_ms` defaults to now):\n");
    for (fname, f) in &ev.fields {
        let _ = write!(
            doc,
            "\n    - {}: {}{}",
            param(fname),
            f.ty.name(),
            if f.required { "" } else { ", optional" }
        );
        if !f.description.is_empty() {
            let _ = write!(doc, " ({})", f.description);
        }
    }
    // Every quote and backslash escaped: valid inside the triple quotes.
    let doc = doc.replace('\\', "\\\\").replace('"', "\\\"");
    let _ = writeln!(out, "    \"\"\"{doc}\n    \"\"\"");
    let _ = writeln!(out, "\n    EVENT = {}", py_str(name));
    let _ = writeln!(out, "    ACCEPT_PAST_S = {}", ev.accept_past_s);
    let _ = writeln!(out, "    ACCEPT_FUTURE_S = {}", ev.accept_future_s);
    for (fname, f) in ev.fields.iter().filter(|(_, f)| f.ty == FieldType::Enum) {
        let _ = writeln!(out, "\n    class {}:", pascal(fname));
        let _ = writeln!(out, "        \"\"\"Values of `{fname}`.\"\"\"\n");
        let mut taken = vec!["VALUES".to_string()];
        for v in &f.values {
            let _ = writeln!(out, "        {} = {}", constant(v, &mut taken), py_str(v));
        }
        let values: Vec<String> = f.values.iter().map(|v| py_str(v)).collect();
        let _ = writeln!(out, "        VALUES = ({},)", values.join(", "));
    }
    // Required fields first (keyword-only, no default), then optional ones.
    let mut params: Vec<String> = Vec::new();
    for (fname, f) in ev.fields.iter().filter(|(_, f)| f.required) {
        params.push(format!("{}: {}", param(fname), hint(f)));
    }
    for (fname, f) in ev.fields.iter().filter(|(_, f)| !f.required) {
        params.push(format!("{}: Optional[{}] = None", param(fname), hint(f)));
    }
    params.push("time_ms: Optional[int] = None".into());
    let _ = writeln!(out, "\n    def __init__(\n        self,\n        *,");
    for p in &params {
        let _ = writeln!(out, "        {p},");
    }
    let _ = writeln!(out, "    ) -> None:");
    for (fname, _) in ev.fields.iter().filter(|(_, f)| f.required) {
        let _ = writeln!(
            out,
            "        if {} is None:\n            raise ValidationError({}, \"missing\", \"is required but missing\")",
            param(fname),
            py_str(&format!("attrs.{fname}"))
        );
    }
    let _ = writeln!(out, "        super().__init__(");
    let _ = writeln!(
        out,
        "            _time_ms(time_ms, {class}.ACCEPT_PAST_S, {class}.ACCEPT_FUTURE_S),"
    );
    let _ = writeln!(out, "            {{");
    for (fname, f) in &ev.fields {
        let p = param(fname);
        let c = check(&class, fname, &p, f);
        if f.required {
            let _ = writeln!(out, "                {}: {c},", py_str(fname));
        } else {
            let _ = writeln!(
                out,
                "                {}: None if {p} is None else {c},",
                py_str(fname)
            );
        }
    }
    let _ = writeln!(out, "            }},\n        )");
}

fn module(registry: &Registry, version: &str) -> String {
    let mut out = format!(
        "# Generated by `spoolhouse codegen --lang python` from the registry\n\
         # version {version} (SHA-256 of events.toml, first 16 hex digits).\n\
         # Do not edit: change the registry and generate again.\n\
         \"\"\"Typed events of the Spoolhouse registry {version}, and a client that\n\
         sends them to the collector on this host.\"\"\"\n\n\
         from __future__ import annotations\n\n\
         REGISTRY_VERSION = {}\n",
        py_str(version)
    );
    out.push_str(&fill_bounds(RUNTIME));
    let mut names = vec![
        "REGISTRY_VERSION",
        "Client",
        "Event",
        "ValidationError",
        "Rejected",
        "NotStored",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    for (name, ev) in &registry.event {
        event_class(&mut out, name, ev);
        names.push(pascal(name));
    }
    let quoted: Vec<String> = names.iter().map(|n| py_str(n)).collect();
    let _ = writeln!(out, "\n\n__all__ = [{}]", quoted.join(", "));
    out
}

fn example(registry: &Registry) -> String {
    let (name, fields) = example_event(registry);
    let class = pascal(name);
    let args: Vec<String> = fields
        .iter()
        .filter_map(|(fname, sample)| {
            let v = match sample.as_ref()? {
                Sample::Enum(v) => format!(
                    "{class}.{}.{}",
                    pascal(fname),
                    constant(v, &mut vec!["VALUES".to_string()])
                ),
                Sample::Bool => "True".into(),
                Sample::Float => "1.5".into(),
                Sample::Str => py_str("example"),
                Sample::Int => "7".into(),
            };
            Some(format!("{}={v}", param(fname)))
        })
        .collect();
    format!(
        "from spoolhouse_events import Client, {class}\n\
         client = Client()  # SPOOLHOUSE_SOCKET=/path/collector.sock, or SPOOLHOUSE_INBOX=/path/inbox\n\
         event = {class}({})\n\
         client.send(event)\n",
        args.join(", ")
    )
}

pub(super) fn generate(registry: &Registry, version: &str) -> Vec<File> {
    let pkg = PathBuf::from("spoolhouse_events");
    let classes: Vec<String> = registry.event.keys().map(|n| pascal(n)).collect();
    let readme = format!(
        "# spoolhouse-events\n\n\
         Generated by `spoolhouse codegen --lang python` from the registry version\n\
         `{version}`. Do not edit: change the registry and generate again.\n\n\
         One class per event type ({}), whose constructor checks the\n\
         collector's rules (types, ranges, string lengths, enum values, the time\n\
         window) and raises `ValidationError` with the collector's own field,\n\
         rule and message; and a `Client` that sends to the collector on this host.\n\n\
         ```python\n{}```\n\n\
         `Client(socket_path=...)` sends over the collector's Unix socket and\n\
         returns once every event is acknowledged (durable in the spool),\n\
         retrying refused lines with backoff until `timeout_s`; lines the\n\
         collector rejects raise `Rejected` (the others are stored).\n\
         `Client(inbox_dir=...)` appends lines to a `.log` file in the\n\
         collector's inbox instead: no network call at all. Without arguments,\n\
         `SPOOLHOUSE_SOCKET` or `SPOOLHOUSE_INBOX` chooses.\n",
        classes.join(", "),
        example(registry)
    );
    vec![
        File {
            path: pkg.join("__init__.py"),
            text: module(registry, version),
        },
        File {
            path: pkg.join("py.typed"),
            text: String::new(),
        },
        File {
            path: PathBuf::from("pyproject.toml"),
            text: format!(
                "# Generated by `spoolhouse codegen --lang python` (registry {version}). Do not edit.\n\
                 [build-system]\n\
                 requires = [\"setuptools>=61\"]\n\
                 build-backend = \"setuptools.build_meta\"\n\n\
                 [project]\n\
                 name = \"spoolhouse-events\"\n\
                 version = \"0.0.0+r{version}\"\n\
                 description = \"Typed Spoolhouse events (registry {version})\"\n\
                 readme = \"README.md\"\n\
                 requires-python = \">=3.8\"\n\n\
                 [tool.setuptools]\n\
                 packages = [\"spoolhouse_events\"]\n\n\
                 [tool.setuptools.package-data]\n\
                 spoolhouse_events = [\"py.typed\"]\n"
            ),
        },
        File {
            path: PathBuf::from("README.md"),
            text: readme,
        },
    ]
}
