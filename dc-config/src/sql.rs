//! Building ClickHouse SQL from typed values. ClickHouse 18.16 has no query
//! parameters, so every literal is quoted here and nowhere else.

/// A ClickHouse string literal for `s`: single-quoted, with `\` and `'`
/// escaped, so user text can never end the literal.
pub fn quote_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(quote_str("plain"), "'plain'");
        assert_eq!(quote_str("it's"), "'it\\'s'");
        assert_eq!(
            quote_str("a\\'; DROP TABLE x; --"),
            "'a\\\\\\'; DROP TABLE x; --'"
        );
        assert_eq!(quote_str("l1\nl2\0"), "'l1\\nl2\\0'");
    }
}
