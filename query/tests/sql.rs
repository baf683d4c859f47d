//! `POST /v1/sql` against real ClickHouse 18.16: a SELECT answers
//! ClickHouse's JSON as the analysts' user, whose `readonly = 1` profile
//! holds the limits (no statement and no URL parameter can lift them, no
//! table function runs); writes, DDL, SET, several statements and
//! the clauses the service owns are refused before they run; ClickHouse's
//! own refusals come back as 400 with its code; huge scans and answers stop
//! at the limits with ClickHouse's reason (413); bodies over 64 KiB get 413.

mod common;

use common::{vote, Harness};

const M0: u32 = 1_764_028_800;

#[test]
fn analysts_select_within_limits() {
    // Declared in the topology: the analysts' user's profile holds them.
    let h = Harness::start_declared(
        |d| {
            d.topology.sql.max_result_rows = 100;
            d.topology.sql.max_rows_to_read = 1_000_000;
        },
        |_| {},
    );
    let events: Vec<_> = (0..50u64)
        .map(|u| vote(M0, u, u, u.is_multiple_of(2), 7))
        .collect();
    h.load("dc1-s1-r1", "dc1", &events[..20]);
    h.load("dc1-s2-r1", "dc1", &events[20..]);
    h.load("dc2-s1-r1", "dc2", &events[..5]);
    let rows = h.count("events_all");
    assert_eq!(rows, 55);

    // A SELECT over every DC, with a comment, a `;` and `?` in a string.
    let (s, v) = h.sql(
        "-- votes per DC\nSELECT dc, count() AS n, 'a?b??' AS q FROM spoolhouse.events_all \
          GROUP BY dc ORDER BY dc;\n",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["data"],
        serde_json::json!([{"dc": "dc1", "n": "50", "q": "a?b??"}, {"dc": "dc2", "n": "5", "q": "a?b??"}])
    );
    assert_eq!(v["rows"], 2);
    assert_eq!(
        v["meta"][1],
        serde_json::json!({"name": "n", "type": "UInt64"})
    );
    assert!(v["statistics"]["rows_read"].as_u64().unwrap() >= 55, "{v}");
    let (s, v) = h.sql("WITH 6 AS x SELECT x * 7 AS y");
    assert_eq!((s, v["data"][0]["y"].clone()), (200, 42.into()), "{v}");

    // Refused before running, with the reason.
    for (sql, why) in [
        (
            "INSERT INTO spoolhouse.events_local (event) VALUES ('x')",
            "starts with `INSERT`",
        ),
        ("DROP TABLE spoolhouse.events_local", "starts with `DROP`"),
        (
            "ALTER TABLE spoolhouse.events_local DELETE WHERE 1",
            "starts with `ALTER`",
        ),
        ("SET readonly = 0", "starts with `SET`"),
        (
            "SELECT 1; DROP TABLE spoolhouse.events_local",
            "one statement only",
        ),
        (
            "SELECT * FROM spoolhouse.events_all FORMAT TSV",
            "no FORMAT clause",
        ),
        ("SELECT 1 INTO OUTFILE '/tmp/spoolhouse-x'", "INTO OUTFILE"),
        (
            "SELECT 1 SETTINGS max_result_rows = 0",
            "no SETTINGS clause",
        ),
        (
            "SELECT * FROM url('http://127.0.0.1:1/', TSV, 'a String')",
            "`url`",
        ),
        ("", "the body is empty"),
    ] {
        let (s, v) = h.sql(sql);
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(s, 400, "{sql}: {v}");
        assert!(error.contains(why), "{sql}: {v}");
    }

    // ClickHouse's refusals: 400 with its code and words.
    let (s, v) = h.sql("SELECT FROM WHERE");
    assert_eq!((s, v["clickhouse_code"].clone()), (400, 62.into()), "{v}");
    assert!(v["error"].as_str().unwrap().contains("Syntax error"), "{v}");
    let (s, v) = h.sql("SELECT * FROM spoolhouse.no_such_table");
    assert_eq!((s, v["clickhouse_code"].clone()), (400, 60.into()), "{v}");

    // Over the limits: ClickHouse's reason, 413.
    let (s, v) = h.sql("SELECT count() FROM system.numbers");
    assert_eq!((s, v["clickhouse_code"].clone()), (413, 158.into()), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Limit for rows to read exceeded"),
        "{v}"
    );
    let (s, v) = h.sql("SELECT number FROM system.numbers LIMIT 1000");
    assert_eq!((s, v["clickhouse_code"].clone()), (413, 396.into()), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Limit for result exceeded"),
        "{v}"
    );
    let (s, v) = h.sql("SELECT number FROM system.numbers LIMIT 100");
    assert_eq!((s, v["rows"].clone()), (200, 100.into()), "{v}");

    // The body limit, and the method.
    let big = format!("SELECT '{}'", "x".repeat(70_000));
    let (s, v) = h.sql(&big);
    assert_eq!(s, 413, "{v}");
    assert!(v["error"].as_str().unwrap().contains("65536"), "{v}");
    let (s, v) = h.get("/v1/sql");
    assert_eq!(s, 405, "{v}");
    assert!(v["error"].as_str().unwrap().contains("use POST"), "{v}");

    // More slow senders than requests may run at once (each POST's body
    // still arriving) take no request slot: the service still answers.
    // (Slots were taken before the body was read: 256 of them made
    // /healthz answer 503.)
    let addr = h.base.trim_start_matches("http://").to_string();
    let slow: Vec<std::net::TcpStream> = (0..query::api::MAX_IN_FLIGHT + 44)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            std::io::Write::write_all(
                &mut s,
                b"POST /v1/sql HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nSEL",
            )
            .unwrap();
            s
        })
        .collect();
    let (s, v) = h.get("/healthz");
    assert_eq!(s, 200, "{v}");
    let (s, v) = h.sql("SELECT 1");
    assert_eq!(s, 200, "{v}");
    drop(slow);

    // The reproductions of issue 17: ClickHouse reads `//` as a comment
    // and `\v` as whitespace, and the service's check now does too.
    let (s, v) = h.sql("SELECT 1 // \"\nFORMAT TSV --\"");
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("no FORMAT clause"),
        "{v}"
    );
    // A table function aimed at an address of the caller's choosing: never
    // dialled, refused by the service and, asked directly, by ClickHouse.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let url = format!("http://{}/", bait.local_addr().unwrap());
    let (s, v) = h.sql(&format!("SELECT * FROM url\x0b('{url}', TSV, 'a String')"));
    assert_eq!(s, 400, "{v}");
    let analyst = |sql: &str, params: &[(&str, &str)]| {
        h.cluster
            .clickhouse_as("dc1-s1-r1", dc_config::schema::user::SQL_USER)
            .unwrap()
            .query_with(sql, params)
    };
    // Safe by construction: as the analysts' user, whatever the text.
    for (sql, params, why) in [
        (
            format!("SELECT * FROM url('{url}', TSV, 'a String')"),
            vec![],
            "Table functions are forbidden in readonly mode",
        ),
        (
            "SELECT count() FROM numbers(300000000)".to_string(),
            vec![],
            "Table functions are forbidden in readonly mode",
        ),
        (
            "SELECT count() FROM system.numbers SETTINGS max_rows_to_read = 0".to_string(),
            vec![],
            "Cannot execute SET query in readonly mode",
        ),
        (
            "SELECT count() FROM system.numbers".to_string(),
            vec![("max_rows_to_read", "0")],
            "Cannot override setting (max_rows_to_read) in readonly mode",
        ),
        (
            "SELECT count() FROM system.numbers".to_string(),
            vec![],
            "Limit for rows to read exceeded",
        ),
        (
            "INSERT INTO spoolhouse.events_local (event) VALUES ('x')".to_string(),
            vec![],
            "readonly",
        ),
    ] {
        match analyst(&sql, &params) {
            Err(launcher::probe::HttpError::Refused { body, .. }) => {
                assert!(body.contains(why), "{sql}: {body}")
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "ClickHouse dialled the address"
    );
    // The other system tables are refused before they run.
    let (s, v) = h.sql("SELECT query FROM system.processes");
    assert_eq!(s, 400, "{v}");

    // A web page of another site: a cross-site POST (a form needs no CORS
    // preflight) and a name rebound to this address are refused.
    let raw = |request: String| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        std::io::Write::write_all(&mut s, request.as_bytes()).unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    };
    let post = |origin: &str, content_type: &str, body: &str| {
        raw(format!(
            "POST /v1/sql HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
    };
    let json = r#"{"sql": "SELECT 1"}"#;
    let answer = post("http://evil.example", "application/json", json);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("send it from a client"), "{answer}");
    let here = format!("http://{addr}");
    let answer = post(&here, "application/json; charset=utf-8", json);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A body a page may send without a CORS preflight (a form, plain
    // text) is refused whatever it holds; so is one with no type.
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let answer = post(&here, content_type, json);
        assert!(
            answer.starts_with("HTTP/1.1 415"),
            "{content_type}: {answer}"
        );
        assert!(
            answer.contains("Content-Type: application/json"),
            "{answer}"
        );
    }
    let answer = raw(format!(
        "POST /v1/sql HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    // JSON that is not `{"sql": "…"}`: 400, saying what the body must be.
    for body in [
        &b"SELECT 1"[..],
        b"[]",
        br#"{"sql": 1}"#,
        br#"{"sql": "SELECT 1", "x": 1}"#,
        b"{}",
        b"\"\xff\"",
    ] {
        let (s, v) = h.post("/v1/sql", body);
        assert_eq!(s, 400, "{}: {v}", String::from_utf8_lossy(body));
        assert!(v["error"].as_str().unwrap().contains(r#"{"sql": "#), "{v}");
    }
    let port = addr.rsplit_once(':').unwrap().1;
    let answer = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: evil.example:{port}\r\nConnection: close\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("allowed_hosts"), "{answer}");
    let answer = raw(format!(
        "GET /healthz HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // Nothing was written.
    assert_eq!(h.count("events_all"), rows);
    let (_, m) = h.get("/metrics");
    let m = m.as_str().unwrap();
    assert!(
        m.contains("spoolhouse_query_errors_total{endpoint=\"/v1/sql\",kind=\"sql_limit\"} 2"),
        "{m}"
    );
}

/// Differential: the statement check and ClickHouse 18.16's lexer agree on
/// what is a comment or whitespace. Each generated statement is
/// `SELECT 1 AS a <fragments> , 2 AS b`, the fragments drawn from comment,
/// whitespace, quote and operator pieces; ClickHouse (as the analysts'
/// user) answers the columns `a` and `b` exactly when the check reads the
/// fragments as nothing but comments and whitespace.
#[test]
fn the_statement_check_reads_comments_and_whitespace_as_clickhouse_does() {
    const PIECES: &[&str] = &[
        " ", "\t", "\n", "\r\n", "\x0b", "\x0c", "--x\n", "-- '\n", "//x\n", "// \"\n", "/*x*/",
        "/* ' */", "/* -- */", "/*/**/", "/* // */", "#x\n", "/", "-", "'", "\"", "`", "'x'", "\\",
        "*/", ";", "\x00",
    ];
    let h = Harness::start(|_| {});
    let ch = h
        .cluster
        .clickhouse_as("dc1-s1-r1", dc_config::schema::user::SQL_USER)
        .unwrap();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut agreed, mut ignorable) = (0, 0);
    for _ in 0..300 {
        let n = 1 + next() % 4;
        let fragments: String = (0..n)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let sql = format!("SELECT 1 AS a {fragments}, 2 AS b");
        let ours = match query::sql::check(&sql) {
            Ok(s) => {
                s.chars()
                    .filter(|c| !c.is_ascii_whitespace() && *c != '\x0b')
                    .collect::<String>()
                    == "SELECT1ASa,2ASb"
            }
            Err(_) => false,
        };
        let theirs = match ch.query(&format!("{sql}\nFORMAT JSON")) {
            Ok(body) => serde_json::from_str::<serde_json::Value>(&body)
                .map(|v| v["meta"] == serde_json::json!([{"name": "a", "type": "UInt8"}, {"name": "b", "type": "UInt8"}]))
                .unwrap_or(false),
            Err(_) => false,
        };
        assert_eq!(ours, theirs, "{sql:?}");
        agreed += 1;
        ignorable += usize::from(ours);
    }
    // Both kinds were tried.
    assert!(
        ignorable > 20 && agreed - ignorable > 20,
        "{ignorable} of {agreed}"
    );
}
