//! `GET /v1/report` against two real DCs: per-group figures merged from
//! states equal what the events give (uniques over the range are distinct
//! users, not a sum of minutes), for every roll-up grouping, a metric
//! subset, a sub-range and per-DC scope; bad parameters get a 400 naming
//! them; a DC down gives a partial answer naming it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{registration, Harness};
use dc_config::event::{ValidEvent, Value};

const M0: u32 = 1_764_028_800; // a minute start

/// Expected `(count, uniq users)` per group of `dims` over minutes in `[from, to)`.
fn expected(
    events: &[&ValidEvent],
    dims: &[&str],
    from: u32,
    to: u32,
) -> BTreeMap<Vec<String>, (f64, f64)> {
    let mut groups: BTreeMap<Vec<String>, (u64, BTreeSet<u64>)> = BTreeMap::new();
    for e in events {
        let t = (e.time_ms / 1000) as u32;
        if t < from || t >= to {
            continue;
        }
        let key = dims
            .iter()
            .map(|d| match e.attr(d) {
                Some(Value::Str(s)) => s.clone(),
                Some(Value::UInt(n)) => n.to_string(),
                other => panic!("{other:?}"),
            })
            .collect();
        let g = groups.entry(key).or_default();
        g.0 += 1;
        if let Some(Value::UInt(u)) = e.attr("user_id") {
            g.1.insert(*u);
        }
    }
    groups
        .into_iter()
        .map(|(k, (n, users))| (k, (n as f64, users.len() as f64)))
        .collect()
}

/// The report's rows as the same map (a metric it lacks is NaN).
fn got(v: &serde_json::Value, dims: &[&str]) -> BTreeMap<Vec<String>, (f64, f64)> {
    let value = |r: &serde_json::Value, m: &str| r["values"][m].as_f64().unwrap_or(f64::NAN);
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|r| {
            let key = dims
                .iter()
                .map(|d| r["dimensions"][d].as_str().unwrap().to_string())
                .collect();
            (key, (value(r, "count()"), value(r, "uniq(user_id)")))
        })
        .collect()
}

#[test]
fn reports_merge_states_per_group() {
    let h = Harness::start(|_| {});
    // dc1: users 0..40 in minutes 0..3; dc2: users 30..60 in minutes 1 and 2,
    // so uniques overlap across DCs and minutes.
    let gender = |u: u64| {
        if u.is_multiple_of(2) {
            "male"
        } else {
            "female"
        }
    };
    let mut dc1 = Vec::new();
    let mut dc2 = Vec::new();
    for m in 0..3u32 {
        for u in 0..40u64 {
            dc1.push(registration(M0 + 60 * m, u, u, gender(u), 1 + u % 3));
        }
        if m > 0 {
            for u in 30..60u64 {
                dc2.push(registration(M0 + 60 * m, u, u, gender(u / 3), 1 + u % 3));
            }
        }
    }
    let half = dc1.len() / 2;
    h.load("dc1-s1-r1", "dc1", &dc1[..half]);
    h.load("dc1-s2-r1", "dc1", &dc1[half..]);
    h.load("dc2-s1-r1", "dc2", &dc2);
    h.aggregate("dc1-s1-r1", "dc1", &dc1);
    h.aggregate("dc2-s1-r1", "dc2", &dc2);
    let all: Vec<&ValidEvent> = dc1.iter().chain(&dc2).collect();
    let only_dc1: Vec<&ValidEvent> = dc1.iter().collect();
    let (from, to) = (M0, M0 + 180);

    // Every roll-up of registration's metrics, global.
    for dims in [
        vec![],
        vec!["gender"],
        vec!["country_id"],
        vec!["gender", "country_id"],
    ] {
        let (s, v) = h.get(&format!(
            "/v1/report?event=registration&group_by={}&from={from}&to={to}",
            dims.join(",")
        ));
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["partial"], false, "{v}");
        assert_eq!(
            v["metrics"],
            serde_json::json!(["count()", "uniq(user_id)"])
        );
        assert_eq!(
            got(&v, &dims),
            expected(&all, &dims, from, to),
            "{dims:?}: {v}"
        );
    }
    // The order asked does not matter; the registry's order is kept.
    let (_, v) = h.get(&format!(
        "/v1/report?event=registration&group_by=country_id,gender&from={from}&to={to}"
    ));
    assert_eq!(v["group_by"], serde_json::json!(["gender", "country_id"]));

    // One metric, one minute, this DC only.
    let (s, v) = h.get(&format!(
        "/v1/report?event=registration&metric=uniq(user_id)&group_by=gender&from={}&to={}&scope=dc",
        M0 + 60,
        M0 + 120
    ));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["metrics"], serde_json::json!(["uniq(user_id)"]));
    let want: BTreeMap<Vec<String>, f64> = expected(&only_dc1, &["gender"], M0 + 60, M0 + 120)
        .into_iter()
        .map(|(k, (_, u))| (k, u))
        .collect();
    let have: BTreeMap<Vec<String>, f64> = got(&v, &["gender"])
        .into_iter()
        .map(|(k, (_, u))| (k, u))
        .collect();
    assert_eq!(have, want);

    // A range with no data: no rows, not an error.
    let (s, v) = h.get("/v1/report?event=registration&from=60&to=120");
    assert_eq!((s, v["rows"].clone()), (200, serde_json::json!([])), "{v}");

    // Bad parameters name themselves.
    for (query, parameter) in [
        ("event=registration&group_by=vote", "group_by"),
        (
            "event=vote&metric=uniq(user_id)&group_by=country_id",
            "group_by",
        ),
        ("event=registration&metric=max(user_id)", "metric"),
        ("event=nope", "event"),
        ("event=registration&scope=everywhere", "scope"),
    ] {
        let (s, v) = h.get(&format!("/v1/report?{query}&from={from}&to={to}"));
        assert_eq!((s, v["parameter"].as_str()), (400, Some(parameter)), "{v}");
    }
    let (s, v) = h.get(&format!(
        "/v1/report?event=registration&from={}&to={to}",
        from + 1
    ));
    assert_eq!((s, v["parameter"].as_str()), (400, Some("from")), "{v}");

    // dc2 down: partial, naming it, with dc1's figures.
    let mut h = h;
    h.cluster.kill("dc2-s1-r1").unwrap();
    let (s, v) = h.get(&format!(
        "/v1/report?event=registration&group_by=gender&from={from}&to={to}"
    ));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing"], serde_json::json!(["dc2"]));
    assert_eq!(
        got(&v, &["gender"]),
        expected(&only_dc1, &["gender"], from, to)
    );

    let (_, m) = h.get("/metrics");
    let m = m.as_str().unwrap();
    assert!(
        m.contains("spoolhouse_query_requests_total{endpoint=\"/v1/report\",status=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains(
            "spoolhouse_query_errors_total{endpoint=\"/v1/report\",kind=\"bad_parameter\"} 6"
        ),
        "{m}"
    );
}
