//! Typed clients generated from the registry (`spoolhouse codegen`): one
//! type per event type, whose constructor checks the collector's own rules
//! with the collector's own messages, and a client that sends over the
//! host's Unix socket or appends to an inbox file (docs/protocol.md).
//! Every generated file says it is generated, and from which registry.

mod go;
mod php;
mod python;
mod rust;

pub use go::MODULE as GO_MODULE;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::registry::{FieldType, Registry};

/// A language clients are generated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// Python 3.8+, type hints, a `pyproject.toml` package.
    Python,
    /// A Go module (Go 1.19+, no dependencies) that passes `go vet`.
    Go,
    /// A Composer package (PHP 8.1+, strict types, PSR-4).
    Php,
    /// A Rust crate (edition 2021, `serde_json` its one dependency).
    Rust,
}

/// One generated file: its path under the output folder, and its text.
pub struct File {
    /// Relative path.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
}

/// The registry's version as generated files cite it: the first 16 hex
/// digits of the SHA-256 of its text.
pub fn registry_version(registry_text: &str) -> String {
    let digest = Sha256::digest(registry_text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The files of `lang`'s client for `registry` (whose file text is
/// `registry_text`, for the version the files cite).
pub fn generate(lang: Lang, registry: &Registry, registry_text: &str) -> Vec<File> {
    let version = registry_version(registry_text);
    match lang {
        Lang::Python => python::generate(registry, &version),
        Lang::Go => go::generate(registry, &version),
        Lang::Php => php::generate(registry, &version),
        Lang::Rust => rust::generate(registry, &version),
    }
}

/// A runtime template with the collector's event time bounds filled in,
/// from the Rust definitions rather than copied.
pub(crate) fn fill_bounds(text: &str) -> String {
    text.replace("@MIN_TIME_MS@", &crate::event::MIN_TIME_MS.to_string())
        .replace("@MAX_TIME_MS@", &crate::event::MAX_TIME_MS.to_string())
}

/// A sample value of a required field, for a README's example; each
/// language spells it.
pub(crate) enum Sample<'a> {
    /// The enum's first value.
    Enum(&'a str),
    /// `true`.
    Bool,
    /// `1.5`.
    Float,
    /// `"example"`.
    Str,
    /// `7`.
    Int,
}

/// What every README's example sends: the registry's first event type and,
/// per field in declaration order, a sample for a required one (`None` for
/// an optional one).
pub(crate) fn example_event(registry: &Registry) -> (&str, Vec<(&str, Option<Sample<'_>>)>) {
    let (name, ev) = registry
        .event
        .iter()
        .next()
        .expect("a checked registry has an event type");
    let fields = ev
        .fields
        .iter()
        .map(|(fname, f)| {
            let sample = f.required.then(|| match f.ty {
                FieldType::Enum => Sample::Enum(&f.values[0]),
                FieldType::Bool => Sample::Bool,
                FieldType::Float => Sample::Float,
                FieldType::String => Sample::Str,
                _ => Sample::Int,
            });
            (fname.as_str(), sample)
        })
        .collect();
    (name, fields)
}

/// `snake_case` to `PascalCase`.
pub(crate) fn pascal(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// An enum value as a constant name: upper case, every other character an
/// underscore, a leading digit prefixed; unique within `taken`.
pub(crate) fn constant(value: &str, taken: &mut Vec<String>) -> String {
    let mut name: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    let base = name.clone();
    let mut i = 2;
    while taken.contains(&name) {
        name = format!("{base}_{i}");
        i += 1;
    }
    taken.push(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_identifiers() {
        assert_eq!(pascal("watch_progress"), "WatchProgress");
        assert_eq!(pascal("vote"), "Vote");
        let mut taken = Vec::new();
        assert_eq!(constant("male", &mut taken), "MALE");
        assert_eq!(constant("4k-uhd", &mut taken), "_4K_UHD");
        assert_eq!(constant("4K UHD", &mut taken), "_4K_UHD_2");
        assert_eq!(registry_version("x").len(), 16);
    }
}
