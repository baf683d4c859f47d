//! Read-only SQL for analysts (`POST /v1/sql`): one SELECT statement, run as
//! ClickHouse's analysts' user, answered in ClickHouse's `JSON` format
//! (meta, data, rows, statistics).
//!
//! Safe by construction, not by a second guess of ClickHouse's grammar:
//! - ClickHouse enforces it (docs/adr/0010-analysts-sql-enforced-by-clickhouse.md).
//!   The analysts' user ([`SQL_USER`]) has a
//!   `readonly = 1` profile holding the topology's [`SqlLimits`] (rows read,
//!   result rows and bytes, time, memory, statements at once) and a quota:
//!   in that mode 18.16 refuses every write, DDL, setting change and table
//!   function, whatever the text, so no statement can lift a limit or reach
//!   outside ClickHouse (`url`, `remote`, `file`, …). Nothing is passed in
//!   the URL but `wait_end_of_query`.
//! - This module refuses early, with a reason an analyst can act on:
//!   [`check`] reads the statement as tokens the way ClickHouse's lexer
//!   does (`--` and `//` line comments, `/* */` comments, every ASCII
//!   whitespace including `\v` and `\f`, quotes with `\` and doubled-quote
//!   escapes; a differential test holds the two equal on generated inputs)
//!   and lets through one `SELECT` or `WITH … SELECT` only, without the
//!   clauses the service owns (`FORMAT`, `SETTINGS`, `INTO OUTFILE`),
//!   without table functions, and reading no `system` table but `numbers`
//!   and `one`.
//! - The answer must be ClickHouse's JSON object (`meta` and `data`), so a
//!   format smuggled past both would come back as an error, never as
//!   another format.
//!
//! A statement over a limit fails with ClickHouse's reason
//! ([`Error::SqlLimit`], 413). `wait_end_of_query = 1` makes ClickHouse
//! buffer the answer, so an error found after the first rows still comes
//! back as an error, not as a cut answer with an exception appended.
//!
//! [`SQL_USER`]: dc_config::schema::user::SQL_USER

use std::time::Duration;

use dc_config::services::SqlLimits;

use crate::ch::ClickHouse;
use crate::error::{Error, Result};

/// Longest statement accepted, in bytes: the request body limit of
/// `POST /v1/sql`, well under ClickHouse's `max_query_size` (256 KiB).
pub const MAX_STATEMENT_BYTES: usize = 64 << 10;

/// Tables of the `system` database an analyst may read: they make rows
/// from nothing. The others describe the servers, their users' queries and
/// settings.
const SYSTEM_TABLES: &[&str] = &["numbers", "numbers_mt", "one"];

/// Table functions that reach outside the cluster or another user's rights,
/// named in the refusal wherever they appear (e.g. after `IN`); ClickHouse
/// refuses them too.
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
    /// A `--`, `//` or `/* */` comment.
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
        // ClickHouse's lexer: any ASCII whitespace, vertical tab included.
        if c.is_ascii_whitespace() || c == 0x0b {
            i += 1;
        } else if b[i..].starts_with(b"--") || b[i..].starts_with(b"//") {
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

/// Refuses `system.T` at token `i` (whose name, unquoted and lowercased, is
/// `name`) unless `T` is one of [`SYSTEM_TABLES`].
fn system_table(toks: &[(Token<'_>, std::ops::Range<usize>)], i: usize, name: &str) -> Result<()> {
    if name != "system" || !matches!(toks.get(i + 1), Some((Token::Punct('.'), _))) {
        return Ok(());
    }
    let table = match toks.get(i + 2) {
        Some((Token::Word(w), _)) => w.to_ascii_lowercase(),
        Some((Token::Quoted(q), _)) if q.len() >= 2 => q[1..q.len() - 1].to_ascii_lowercase(),
        _ => String::new(),
    };
    if SYSTEM_TABLES.contains(&table.as_str()) {
        return Ok(());
    }
    Err(refused(&format!(
        "system.{table} is not readable here; of the system tables, only {} are",
        SYSTEM_TABLES.join(", ")
    )))
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
                if table_position && next_is_call {
                    return Err(refused(&format!(
                        "table function `{w}` is not allowed (the analysts' user is read-only); read a table, e.g. system.numbers"
                    )));
                }
                system_table(&toks, i, &w)?;
            }
            Token::Quoted(q) if q.len() >= 2 && !q.starts_with('\'') => {
                // A quoted name: `system` and "system" are the database too.
                let name = q[1..q.len() - 1].to_ascii_lowercase();
                system_table(&toks, i, &name)?;
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
    // Not a setting (the user's profile is readonly = 1 and holds the
    // limits): an HTTP parameter.
    let settings = [("wait_end_of_query", "1")];
    // ClickHouse stops the statement at max_execution_time and says so;
    // the service waits that long plus its usual timeout for the reason.
    let wait = Duration::from_secs(limits.max_execution_time_s) + timeout;
    let body = ch
        .fetch_statement(statement, &settings, "JSON", wait)
        .await?;
    // ClickHouse's JSON format is an object with `meta` and `data`; a bare
    // `1` is JSON too, and is what a smuggled `FORMAT TSV` would answer.
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(v) if v["meta"].is_array() && v["data"].is_array() => String::from_utf8(body)
            .map_err(|e| Error::ClickHouse(format!("the answer is not UTF-8: {e}"))),
        Ok(_) => Err(Error::ClickHouse(format!(
            "the answer is not ClickHouse's JSON format (no meta and data): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))),
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
            check("SELECT 'a;b', `format`, \"into\" /* ; */ FROM system.numbers LIMIT 3 -- x")
                .unwrap(),
            "SELECT 'a;b', `format`, \"into\"   FROM system.numbers LIMIT 3"
        );
        assert_eq!(
            check("SELECT 1 // a comment, as ClickHouse reads it\n").unwrap(),
            "SELECT 1"
        );
        assert_eq!(check("SELECT\x0b1\x0c").unwrap(), "SELECT\x0b1");
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
            (
                "SELECT * FROM numbers(3)",
                "table function `numbers` is not allowed",
            ),
            // ClickHouse reads `//` as a comment and `\v` as whitespace:
            // what follows is live SQL, not a string or a name.
            ("SELECT 1 // \"\nFORMAT TSV --\"", "no FORMAT clause"),
            (
                "SELECT * FROM url\x0b('http://127.0.0.1:1/', TSV, 'a String')",
                "`url`",
            ),
            (
                "SELECT * FROM system.processes",
                "system.processes is not readable",
            ),
            (
                "SELECT * FROM `system`.`users`",
                "system.users is not readable",
            ),
            (
                "SELECT * FROM \"SYSTEM\" . clusters",
                "system.clusters is not readable",
            ),
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
