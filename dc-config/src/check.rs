//! The one way declared files are read: parse into raw serde structs, run
//! every rule, and report all broken rules at once with file, line and key.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{ConfigError, ConfigErrors, LoadError};
use crate::locate::{KeyPath, Located};

/// Collects broken rules as (key path, rule) while a typed model is checked.
#[derive(Debug, Default)]
pub struct Checker {
    found: Vec<(KeyPath, String)>,
}

impl Checker {
    /// Records that the value at `path` breaks `rule`.
    pub fn fail(&mut self, path: &KeyPath, rule: impl Into<String>) {
        self.found.push((path.clone(), rule.into()));
    }

    /// Records `rule` at `path` unless `ok` holds.
    pub fn require(&mut self, ok: bool, path: &KeyPath, rule: impl Into<String>) {
        if !ok {
            self.fail(path, rule);
        }
    }

    /// The broken rules so far, as (key path, rule).
    pub fn into_found(self) -> Vec<(KeyPath, String)> {
        self.found
    }

    /// True when no rule has been broken yet.
    pub fn is_clean(&self) -> bool {
        self.found.is_empty()
    }

    /// Turns the broken rules into errors located in `file`, whose text is `src`.
    pub fn into_errors(self, file: &Path, src: &str) -> Vec<ConfigError> {
        let located = Located::new(src);
        self.found
            .into_iter()
            .map(|(path, rule)| ConfigError {
                file: file.to_path_buf(),
                line: located.line(&path),
                key: path.to_string(),
                rule,
            })
            .collect()
    }
}

/// Parses `src` (the text of `file`) into `T`, locating a syntax or type error.
pub fn parse_toml<T: DeserializeOwned>(file: &Path, src: &str) -> Result<T, ConfigErrors> {
    toml::from_str(src).map_err(|e| {
        let located = Located::new(src);
        let (line, key) = match e.span() {
            Some(span) => (
                Some(located.line_of(span.start)),
                located.path_at(span.start).to_string(),
            ),
            None => (None, String::new()),
        };
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line,
            key,
            rule: e.message().trim().to_string(),
        }])
    })
}

/// A declared file's model: parsed by serde, then checked rule by rule.
pub trait Declaration: DeserializeOwned {
    /// Applies every rule, recording each broken one in `c`.
    fn check(&self, c: &mut Checker);
}

/// Parses `src` (the text of `file`) and applies every rule of `T`.
pub fn parse_checked<T: Declaration>(file: &Path, src: &str) -> Result<T, ConfigErrors> {
    let value: T = parse_toml(file, src)?;
    let mut c = Checker::default();
    value.check(&mut c);
    if c.is_clean() {
        Ok(value)
    } else {
        Err(ConfigErrors(c.into_errors(file, src)))
    }
}

/// Reads and checks the declared file at `path`.
pub fn load_checked<T: Declaration>(path: &Path) -> Result<T, LoadError> {
    let src = read(path)?;
    Ok(parse_checked(path, &src)?)
}

/// Reads a declared file into a string.
pub fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: PathBuf::from(path),
        source,
    })
}

/// True for names that are safe as ClickHouse identifiers, macro values, file
/// names and metric-name parts alike: `[a-z][a-z0-9_]*`, at most 64 bytes.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && s.len() <= 64
}

/// The rule text for [`is_identifier`], in one place.
pub const IDENTIFIER_RULE: &str =
    "must be a lower-case identifier: a letter, then letters, digits or `_` (at most 64)";
