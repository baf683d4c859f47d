//! Hostile values through every parameter of every route `docs/openapi.yaml`
//! documents (path and query; the body of those that take one), against
//! real servers: never a 5xx, never a ClickHouse syntax error coming back
//! (which would mean a value reached SQL unquoted), and every table still
//! there with the rows it had. New routes are covered once documented.

mod common;

use common::openapi::{form_escape, operations};
use common::{registration, vote, Harness};

const M0: u32 = 1_764_028_800;

/// Values as they would be typed; each is sent percent-escaped.
fn hostile() -> Vec<String> {
    let mut v: Vec<String> = [
        "'",
        "\\'",
        "' OR 1=1 --",
        "1' OR '1'='1",
        "1; DROP TABLE spoolhouse.events_local",
        "1); DROP TABLE spoolhouse.events_local; --",
        "\\",
        "\\\\'",
        "`",
        "`events_local`",
        "\"",
        "{}",
        "{gender=male}",
        "vote.count(){vote=yes'}",
        "vote.count(){vote=?}",
        "vote.count(){vote=??}",
        "vote.count(){vote=\\'); DROP TABLE spoolhouse.events_local; --}",
        "registration.count()' UNION ALL SELECT 1 --",
        "count()) UNION ALL SELECT 1, 2 --",
        "gender,country_id'",
        "?",
        "??",
        "%27",
        "%00",
        "\0",
        "a\0b",
        "\n\r\t",
        "名前 ☃ \u{202e}",
        "\u{feff}'",
        "-1",
        "18446744073709551616",
        "1e400",
        "NaN",
        "/* */",
        "-- ",
        "",
        " ",
        ",",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push("'".repeat(5_000));
    v.push("x".repeat(20_000));
    v
}

/// Raw query-string forms, not escaped further.
const RAW: &[&str] = &[
    "%27",
    "%5C%27",
    "'",
    "%",
    "%zz",
    "%27%3B%20DROP%20TABLE%20x%3B--",
];

/// Table name → row count, over every DC's servers.
fn tables(h: &Harness) -> Vec<(String, u64)> {
    let ch = h.cluster.clickhouse("dc1-s1-r1").unwrap();
    let names = ch
        .query("SELECT name FROM system.tables WHERE database = 'spoolhouse' ORDER BY name")
        .unwrap();
    let mut out = Vec::new();
    for name in names.lines() {
        let n = if name.ends_with("_all") {
            h.count(name)
        } else {
            0
        };
        out.push((name.to_string(), n));
    }
    out
}

#[test]
fn hostile_values_never_reach_sql() {
    let h = Harness::start(|_| {});
    let mut events = Vec::new();
    for u in 0..20u64 {
        events.push(vote(M0, u, u, u.is_multiple_of(2), 3));
        events.push(registration(M0, u, u, "female", 47));
    }
    h.load("dc1-s1-r1", "dc1", &events);
    h.load("dc2-s1-r1", "dc2", &events[..10]);
    h.aggregate("dc1-s1-r1", "dc1", &events);
    h.aggregate("dc2-s1-r1", "dc2", &events[..10]);
    let before = tables(&h);
    assert!(
        before.iter().any(|(n, c)| n == "events_all" && *c == 50),
        "{before:?}"
    );
    assert!(
        before
            .iter()
            .any(|(n, c)| n == "metric_states_all" && *c > 0),
        "{before:?}"
    );

    let values: Vec<String> = hostile()
        .iter()
        .map(|v| form_escape(v))
        .chain(RAW.iter().map(|r| r.to_string()))
        .collect();
    let mut sent = 0;
    let check = |what: &str, s: u16, v: &serde_json::Value, sql_body: bool| {
        assert!(s < 500, "{what}: {s} {v}");
        let text = v.to_string();
        if !sql_body {
            // A value that reached SQL unquoted shows as ClickHouse's error.
            for sign in ["Syntax error", "Code: ", "DB::Exception", "clickhouse_code"] {
                assert!(!text.contains(sign), "{what}: {s} {text}");
            }
        }
    };
    for op in operations() {
        let send = |path: &str, query: &str, body: &[u8]| {
            let url = format!("{path}?{query}");
            match op.method.as_str() {
                "GET" => h.get(&url),
                "POST" => h.post(&url, body),
                m => panic!("{m}: no client for this method in the test"),
            }
        };
        for par in &op.parameters {
            for value in &values {
                let (path, query) = match par.location.as_str() {
                    "path" => (op.path_with(Some((&par.name, value))), op.query_with(None)),
                    "query" => (op.path_with(None), op.query_with(Some((&par.name, value)))),
                    other => panic!("parameter location {other} not covered"),
                };
                let (s, v) = send(&path, &query, br#"{"sql": "SELECT 1"}"#);
                let what = format!("{} {} {}={value:.60}", op.method, op.path, par.name);
                check(&what, s, &v, false);
                sent += 1;
            }
        }
        if op.body {
            for value in hostile() {
                let body = serde_json::json!({ "sql": value }).to_string();
                let (s, v) = send(&op.path_with(None), &op.query_with(None), body.as_bytes());
                check(
                    &format!("{} {} body {value:.60}", op.method, op.path),
                    s,
                    &v,
                    true,
                );
                sent += 1;
            }
        }
    }
    println!(
        "{sent} hostile requests ({} values per documented parameter, {} bodies per POST): none answered 5xx, none reached SQL unquoted",
        values.len(),
        hostile().len()
    );
    assert!(
        sent > 300,
        "only {sent} requests: the documented parameters went missing?"
    );
    assert_eq!(tables(&h), before);
}
