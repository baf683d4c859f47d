//! Read-only SQL for analysts (`POST /v1/sql`): one SELECT statement, run as
//! the read-only ClickHouse user with row, byte and time limits, answered
//! in ClickHouse's `JSON` format (meta, data, rows, statistics).
//!
//! Two guards, each enough on its own for writes:
//! - ClickHouse: the query user's profile is `readonly = 2` (no writes, no
//!   DDL; settings may be changed, which is how the limits are passed), and
//!   each statement is sent with `readonly = 2` as well, so a profile changed
//!   by mistake still cannot write.
//! - This module: [`check`] reads the statement as tokens (strings, quoted
//!   names and comments taken whole) and lets through one `SELECT` or
//!   `WITH … SELECT` only, without the clauses the service owns (`FORMAT`,
//!   `SETTINGS`, `INTO OUTFILE`) and without table functions that reach
//!   outside the cluster (`url`, `file`, `remote`, …): under `readonly = 2`
//!   ClickHouse 18.16 still runs those, and `remote` can name another user.
//!
//! Limits come from [`SqlLimits`] (see its defaults); a statement over one
//! fails with ClickHouse's reason ([`Error::SqlLimit`], 413).
//! `wait_end_of_query = 1` makes ClickHouse buffer the answer, so an error
//! found after the first rows still comes back as an error, not as a cut
//! answer with an exception appended.

use std::time::Duration;

use dc_config::services::SqlLimits;

use crate::ch::ClickHouse;
use crate::error::{Error, Result};

/// Longest statement accepted, in bytes: the request body limit of
/// `POST /v1/sql`, well under ClickHouse's `max_query_size` (256 KiB).
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;

/// Table functions allowed after `FROM` or `JOIN`: they make data from
/// nothing. Any other (`url`, `file`, `remote`, `mysql`, …) is refused.
const LOCAL_TABLE_FUNCTIONS: &[&str] = &["numbers", "numbers_mt", "zeros", "zeros_mt", "values"];

/// Table functions that reach outside the cluster or another user's rights,
/// refused wherever they appear (e.g. after `IN`).
const OUTSIDE_TABLE_FUNCTIONS: &[&str] = &[
    "url",
    "urlcluster",
    "file",
    "remote",
    "remotesecure",
    "cluster",
    "clusterallreplicas",
    "mysql",
    "postgresql",
    "odbc",
    "jdbc",
    "hdfs",
    "hdfscluster",
    "s3",
    "s3cluster",
    "input",
    "executable",
];

/// One token of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    /// A bare word: keyword, name or number.
    Word(&'a str),
    /// A string literal or a quoted name (`'…'`, `"…"`, `` `…` ``).
    Quoted(&'a str),
    /// `;`
    Semicolon,
    /// Any other character: operators, brackets, commas.
    Punct(char),
    /// A `--` or `/* */` comment.
    Comment,
}

/// Splits `sql` into tokens with their source spans.
fn tokens(sql: &str) -> Result<Vec<(Token<'_>, std::ops::Range<usize>)>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            i = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |n| i + n);
            out.push((Token::Comment, start..i));
        } else if b[i..].starts_with(b"/*") {
            let end = sql[i + 2..]
                .find("*/")
                .ok_or_else(|| refused("a `/*` comment is not closed"))?;
            i += 2 + end + 2;
            out.push((Token::Comment, start..i));
        } else if matches!(c, b'\'' | b'"' | b'`') {
            // Closed by the same quote not escaped by `\`; a doubled quote
            // is an escaped one.
            i += 1;
            loop {
                match b.get(i) {
                    None => {
                        return Err(refused(&format!(
                            "a {} quote opened at byte {start} is not closed",
                            c as char
                        )))
                    }
                    Some(b'\\') => i += 2,
                    Some(&q) if q == c && b.get(i + 1) == Some(&c) => i += 2,
                    Some(&q) if q == c => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            out.push((Token::Quoted(&sql[start..i]), start..i));
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80) {
                i += 1;
            }
            out.push((Token::Word(&sql[start..i]), start..i));
        } else if c == b';' {
            i += 1;
            out.push((Token::Semicolon, start..i));
        } else {
            i += 1;
            out.push((Token::Punct(c as char), start..i));
        }
    }
    Ok(out)
}

fn refused(why: &str) -> Error {
    Error::SqlRefused(why.to_string())
}

/// Checks an analyst's statement; the statement to run: the text as
/// written, each comment replaced by a space and a final `;` left out (so
/// nothing of it can hide what the service adds, such as the format).
pub fn check(sql: &str) -> Result<String> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(Error::BodyTooLarge {
            limit_bytes: MAX_STATEMENT_BYTES,
        });
    }
    let all = tokens(sql)?;
    let mut toks: Vec<_> = all
        .iter()
        .filter(|(t, _)| *t != Token::Comment)
        .cloned()
        .collect();
    while matches!(toks.last(), Some((Token::Semicolon, _))) {
        toks.pop();
    }
    let word = |i: usize| match toks.get(i) {
        Some((Token::Word(w), _)) => Some(w.to_ascii_lowercase()),
        _ => None,
    };
    match word(0).as_deref() {
        Some("select" | "with") => {}
        None if toks.is_empty() => {
            return Err(refused("the body is empty: send one SELECT statement"))
        }
        _ => {
            let first = toks
                .first()
                .map(|(_, r)| &sql[r.clone()])
                .unwrap_or_default();
            return Err(refused(&format!(
                "only a SELECT (or WITH … SELECT) statement is allowed; this one starts with `{}`",
                first.chars().take(40).collect::<String>()
            )));
        }
    }
    for (i, (t, _)) in toks.iter().enumerate() {
        let next_is_call = matches!(toks.get(i + 1), Some((Token::Punct('('), _)));
        match t {
            Token::Semicolon => {
                return Err(refused(
                    "one statement only: a `;` may only end the statement",
                ))
            }
            Token::Word(_) => {
                let w = word(i).unwrap_or_default();
                match w.as_str() {
                    "format" if !next_is_call => {
                        return Err(refused(
                            "no FORMAT clause: the answer is always ClickHouse's JSON",
                        ))
                    }
                    "into" => return Err(refused("INTO OUTFILE is not allowed")),
                    "settings" => {
                        return Err(refused(
                            "no SETTINGS clause: the service sets the limits (see docs/api.md)",
                        ))
                    }
                    _ => {}
                }
                if next_is_call && OUTSIDE_TABLE_FUNCTIONS.contains(&w.as_str()) {
                    return Err(refused(&format!(
                        "table function `{w}` is not allowed: it reaches outside this cluster"
                    )));
                }
                let prev = |n: usize| i.checked_sub(n).and_then(word);
                // A table function follows FROM or JOIN, but ARRAY JOIN
                // takes expressions.
                let table_position = match prev(1).as_deref() {
                    Some("from") => true,
                    Some("join") => prev(2).as_deref() != Some("array"),
                    _ => false,
                };
                if table_position && next_is_call && !LOCAL_TABLE_FUNCTIONS.contains(&w.as_str()) {
                    return Err(refused(&format!(
                        "table function `{w}` is not allowed; allowed: {}",
                        LOCAL_TABLE_FUNCTIONS.join(", ")
                    )));
                }
            }
            _ => {}
        }
    }
    let end = toks.last().map_or(0, |(_, r)| r.end);
    let mut out = String::with_capacity(end);
    let mut at = 0;
    for (_, r) in all
        .iter()
        .filter(|(t, r)| *t == Token::Comment && r.end <= end)
    {
        out.push_str(&sql[at..r.start]);
        out.push(' ');
        at = r.end;
    }
    out.push_str(&sql[at..end]);
    Ok(out)
}

/// Runs a checked statement within `limits`; ClickHouse's JSON answer as
/// ClickHouse wrote it (checked to be JSON), so columns keep their order.
pub async fn run(
    ch: &ClickHouse,
    limits: &SqlLimits,
    timeout: Duration,
    statement: &str,
) -> Result<String> {
    let (rows, bytes, time, read) = (
        limits.max_result_rows.to_string(),
        limits.max_result_bytes.to_string(),
        limits.max_execution_time_s.to_string(),
        limits.max_rows_to_read.to_string(),
    );
    let settings = [
        ("readonly", "2"),
        ("max_result_rows", rows.as_str()),
        ("max_result_bytes", bytes.as_str()),
        ("result_overflow_mode", "throw"),
        ("max_execution_time", time.as_str()),
        ("timeout_overflow_mode", "throw"),
        ("max_rows_to_read", read.as_str()),
        ("read_overflow_mode", "throw"),
        ("wait_end_of_query", "1"),
    ];
    // ClickHouse stops the statement at max_execution_time and says so;
    // the service waits that long plus its usual timeout for the reason.
    let wait = Duration::from_secs(limits.max_execution_time_s) + timeout;
    let body = ch
        .fetch_statement(statement, &settings, "JSON", wait)
        .await?;
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(_) => String::from_utf8(body)
            .map_err(|e| Error::ClickHouse(format!("the answer is not UTF-8: {e}"))),
        Err(e) => Err(Error::ClickHouse(format!(
            "the answer is not ClickHouse's JSON ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(sql: &str) -> String {
        match check(sql) {
            Err(Error::SqlRefused(why)) => why,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn selects_pass_and_lose_comments() {
        assert_eq!(check("SELECT 1").unwrap(), "SELECT 1");
        assert_eq!(
            check("with 2 AS x select x -- two\n;").unwrap(),
            "with 2 AS x select x"
        );
        assert_eq!(
            check("SELECT 'a;b', `format`, \"into\" /* ; */ FROM numbers(3) -- x").unwrap(),
            "SELECT 'a;b', `format`, \"into\"   FROM numbers(3)"
        );
        assert_eq!(
            check("SELECT 'it''s \\' -- x', 1.5e-3 FROM system.one;").unwrap(),
            "SELECT 'it''s \\' -- x', 1.5e-3 FROM system.one"
        );
        assert!(check("SELECT x FROM t ARRAY JOIN arrayMap(y -> y, a) AS x").is_ok());
        assert!(check("SELECT * FROM (SELECT 1) JOIN (SELECT 1) USING dummy").is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        for (sql, why) in [
            ("", "the body is empty"),
            ("  -- nothing\n", "the body is empty"),
            ("INSERT INTO t VALUES (1)", "starts with `INSERT`"),
            ("DROP TABLE spoolhouse.events_local", "starts with `DROP`"),
            ("ALTER TABLE t DELETE WHERE 1", "starts with `ALTER`"),
            ("SET max_result_rows = 0", "starts with `SET`"),
            ("SHOW TABLES", "starts with `SHOW`"),
            ("(SELECT 1)", "starts with `(`"),
            ("SELECT 1; DROP TABLE t", "one statement only"),
            ("SELECT 1;;SELECT 2", "one statement only"),
            ("SELECT 1 FORMAT TSV", "no FORMAT clause"),
            ("select 1 format JSONEachRow", "no FORMAT clause"),
            ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE"),
            (
                "SELECT 1 SETTINGS max_result_rows = 0",
                "no SETTINGS clause",
            ),
            ("SELECT * FROM url('http://x', TSV, 'a String')", "`url`"),
            (
                "SELECT * FROM remote('h:9000', system.one, 'default')",
                "`remote`",
            ),
            ("SELECT 1 WHERE 1 IN file('x', TSV, 'a UInt8')", "`file`"),
            (
                "SELECT * FROM merge('spoolhouse', '.*')",
                "`merge` is not allowed",
            ),
            ("SELECT * FROM t JOIN jdbc('x', 'y') USING a", "`jdbc`"),
            ("SELECT 'open", "quote opened at byte 7"),
            ("SELECT `open", "quote opened at byte 7"),
            ("SELECT 1 /* open", "comment is not closed"),
        ] {
            let got = refusal(sql);
            assert!(got.contains(why), "{sql:?}: {got}");
        }
        let long = format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES));
        assert!(matches!(check(&long), Err(Error::BodyTooLarge { .. })));
    }
}
