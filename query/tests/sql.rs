//! `POST /v1/sql` against real ClickHouse 18.16: a SELECT answers
//! ClickHouse's JSON as the read-only user, with every limit setting
//! accepted under `readonly = 2`; writes, DDL, SET, several statements and
//! the clauses the service owns are refused before they run; ClickHouse's
//! own refusals come back as 400 with its code; huge scans and answers stop
//! at the limits with ClickHouse's reason (413); bodies over 64 KiB get 413.

mod common;

use common::{vote, Harness};

const M0: u32 = 1_764_028_800;

#[test]
fn analysts_select_within_limits() {
    let h = Harness::start(|c| {
        c.sql.max_result_rows = 100;
        c.sql.max_rows_to_read = 1_000_000;
    });
    let events: Vec<_> = (0..50u64)
        .map(|u| vote(M0, u, u, u.is_multiple_of(2), 7))
        .collect();
    h.load("dc1-s1-r1", "dc1", &events[..20]);
    h.load("dc1-s2-r1", "dc1", &events[20..]);
    h.load("dc2-s1-r1", "dc2", &events[..5]);
    let rows = h.count("events_all");
    assert_eq!(rows, 55);

    // A SELECT over every DC, with a comment, a `;` and `?` in a string.
    let (s, v) = h.post(
        "/v1/sql",
        b"-- votes per DC\nSELECT dc, count() AS n, 'a?b??' AS q FROM spoolhouse.events_all \
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
    let (s, v) = h.post("/v1/sql", b"WITH 6 AS x SELECT x * 7 AS y");
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
        let (s, v) = h.post("/v1/sql", sql.as_bytes());
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(s, 400, "{sql}: {v}");
        assert!(error.contains(why), "{sql}: {v}");
    }
    let (s, v) = h.post("/v1/sql", b"SELECT '\xff'");
    assert_eq!(s, 400, "{v}");

    // ClickHouse's refusals: 400 with its code and words.
    let (s, v) = h.post("/v1/sql", b"SELECT FROM WHERE");
    assert_eq!((s, v["clickhouse_code"].clone()), (400, 62.into()), "{v}");
    assert!(v["error"].as_str().unwrap().contains("Syntax error"), "{v}");
    let (s, v) = h.post("/v1/sql", b"SELECT * FROM spoolhouse.no_such_table");
    assert_eq!((s, v["clickhouse_code"].clone()), (400, 60.into()), "{v}");

    // Over the limits: ClickHouse's reason, 413.
    let (s, v) = h.post("/v1/sql", b"SELECT count() FROM system.numbers");
    assert_eq!((s, v["clickhouse_code"].clone()), (413, 158.into()), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Limit for rows to read exceeded"),
        "{v}"
    );
    let (s, v) = h.post("/v1/sql", b"SELECT number FROM system.numbers LIMIT 1000");
    assert_eq!((s, v["clickhouse_code"].clone()), (413, 396.into()), "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("Limit for result exceeded"),
        "{v}"
    );
    let (s, v) = h.post("/v1/sql", b"SELECT number FROM system.numbers LIMIT 100");
    assert_eq!((s, v["rows"].clone()), (200, 100.into()), "{v}");

    // The body limit, and the method.
    let big = format!("SELECT '{}'", "x".repeat(70_000));
    let (s, v) = h.post("/v1/sql", big.as_bytes());
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
    let (s, v) = h.post("/v1/sql", b"SELECT 1");
    assert_eq!(s, 200, "{v}");
    drop(slow);

    // Nothing was written.
    assert_eq!(h.count("events_all"), rows);
    let (_, m) = h.get("/metrics");
    let m = m.as_str().unwrap();
    assert!(
        m.contains("spoolhouse_query_errors_total{endpoint=\"/v1/sql\",kind=\"sql_limit\"} 2"),
        "{m}"
    );
}
