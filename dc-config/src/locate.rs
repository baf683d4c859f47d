//! Maps key paths to lines of a TOML document and back, so that a rule
//! checked on the typed model can still name the line that broke it.

use std::fmt;
use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An index into an array (of tables).
    Index(usize),
}

/// A key path into a TOML document, e.g. `event.vote.metric[1].field`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a table key.
    pub fn key(&self, k: &str) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        Self(v)
    }

    /// This path extended by an array index.
    pub fn index(&self, i: usize) -> Self {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        Self(v)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A parsed document that keeps the byte span of every key and value.
pub struct Located<'a> {
    src: &'a str,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Located<'a> {
    /// Parses `src`; a document that does not parse still answers with no lines.
    pub fn new(src: &'a str) -> Self {
        Self {
            src,
            root: DeTable::parse(src).ok(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.src.len());
        self.src.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// Line of the deepest part of `path` that exists in the document: the
    /// key itself when present, else the table that should have held it.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut best = None;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut value: Option<&Spanned<DeValue<'_>>> = None;
        for seg in &path.0 {
            let next = match (seg, table, value) {
                (Seg::Key(k), Some(t), _) => {
                    t.iter()
                        .find(|(key, _)| key.get_ref() == k)
                        .map(|(key, v)| {
                            best = Some(key.span().start);
                            v
                        })
                }
                (Seg::Index(i), _, Some(v)) => v.get_ref().as_array().and_then(|a| {
                    let item = a.get(*i)?;
                    best = Some(item.span().start);
                    Some(item)
                }),
                _ => None,
            };
            let Some(v) = next else { break };
            value = Some(v);
            table = v.get_ref().as_table();
        }
        best.map(|o| self.line_of(o))
    }

    /// The key path of the deepest value whose span holds `offset`, or
    /// failing that the last key that starts before it.
    pub fn path_at(&self, offset: usize) -> KeyPath {
        let Some(root) = self.root.as_ref() else {
            return KeyPath::root();
        };
        let mut nodes = Vec::new();
        flatten(root.get_ref(), &KeyPath::root(), &mut nodes);
        let holding = nodes
            .iter()
            .filter(|(_, _, v)| holds(v, offset))
            .max_by_key(|(p, _, _)| p.0.len());
        let preceding = nodes
            .iter()
            .filter(|(_, k, _)| *k <= offset)
            .max_by_key(|(p, k, _)| (*k, p.0.len()));
        holding
            .or(preceding)
            .map(|(p, _, _)| p.clone())
            .unwrap_or_default()
    }
}

/// Every key and array item below `table`: its path, where its key starts,
/// and the span of its value.
fn flatten(table: &DeTable<'_>, at: &KeyPath, out: &mut Vec<(KeyPath, usize, Range<usize>)>) {
    for (k, v) in table.iter() {
        let path = at.key(k.get_ref());
        out.push((path.clone(), k.span().start, v.span()));
        flatten_value(v, &path, out);
    }
}

fn flatten_value(
    v: &Spanned<DeValue<'_>>,
    at: &KeyPath,
    out: &mut Vec<(KeyPath, usize, Range<usize>)>,
) {
    if let Some(t) = v.get_ref().as_table() {
        flatten(t, at, out);
    } else if let Some(a) = v.get_ref().as_array() {
        for (i, item) in a.iter().enumerate() {
            let path = at.index(i);
            out.push((path.clone(), item.span().start, item.span()));
            flatten_value(item, &path, out);
        }
    }
}

fn holds(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "a = 1\n[b]\nc = 2\n[[d]]\ne = 3\n[[d]]\ne = 4\nf = { g = 5 }\n";

    #[test]
    fn finds_lines_of_keys_and_array_items() {
        let l = Located::new(DOC);
        assert_eq!(l.line(&KeyPath::root().key("a")), Some(1));
        assert_eq!(l.line(&KeyPath::root().key("b").key("c")), Some(3));
        assert_eq!(l.line(&KeyPath::root().key("d").index(1).key("e")), Some(7));
        assert_eq!(
            l.line(&KeyPath::root().key("d").index(1).key("f").key("g")),
            Some(8)
        );
        // A missing key points at the closest ancestor that exists.
        assert_eq!(l.line(&KeyPath::root().key("b").key("zz")), Some(2));
    }

    #[test]
    fn path_at_offset() {
        let l = Located::new(DOC);
        let off = DOC.find("e = 4").unwrap() + 4;
        assert_eq!(l.path_at(off).to_string(), "d[1].e");
    }

    #[test]
    fn key_path_display() {
        let p = KeyPath::root().key("x").index(2).key("y");
        assert_eq!(p.to_string(), "x[2].y");
    }
}
