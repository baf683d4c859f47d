//! `GET /v1/drops` against two real DCs: an injected halving of one
//! country's votes ranks first, ahead of bigger percentage moves on a
//! handful of events; per-DC scope; other references; a DC down gives a
//! partial answer naming it.

mod common;

use common::{vote, Harness};
use dc_config::event::ValidEvent;

/// Start of the reference hour (2025-11-25 00:00 UTC); the current hour follows.
const H0: u32 = 1_764_028_800;
const H1: u32 = H0 + 3_600;

/// `n` votes from `country` in the hour starting `hour`, spread over its
/// first four minutes, half yes; users numbered from `*user`.
fn votes(out: &mut Vec<ValidEvent>, user: &mut u64, hour: u32, country: u64, n: u64) {
    for i in 0..n {
        *user += 1;
        out.push(vote(
            hour + 60 * (i % 4) as u32,
            i,
            *user,
            i % 2 == 0,
            country,
        ));
    }
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["series"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn an_injected_drop_ranks_first() {
    let mut h = Harness::start(|_| {});
    let mut user = 0;
    let (mut dc1, mut dc2) = (Vec::new(), Vec::new());
    for (dc, out) in [(1, &mut dc1), (2, &mut dc2)] {
        // Country 3 halves in the current hour in both DCs; country 5 holds.
        votes(out, &mut user, H0, 3, 200);
        votes(out, &mut user, H1, 3, 100);
        votes(out, &mut user, H0, 5, 200);
        votes(out, &mut user, H1, 5, 200);
        if dc == 1 {
            // Noise: +200 % and +167 % on a handful of events.
            votes(out, &mut user, H0, 8, 4);
            votes(out, &mut user, H1, 8, 12);
            votes(out, &mut user, H0, 7, 3);
            votes(out, &mut user, H1, 7, 8);
        }
    }
    let half = dc1.len() / 2;
    h.load("dc1-s1-r1", "dc1", &dc1[..half]);
    h.load("dc1-s2-r1", "dc1", &dc1[half..]);
    h.aggregate("dc1-s1-r1", "dc1", &dc1);
    h.load("dc2-s1-r1", "dc2", &dc2);
    h.aggregate("dc2-s1-r1", "dc2", &dc2);

    let (s, v) = h.get(&format!("/v1/drops?event=vote&window=1h&to={}", H1 + 3_600));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], false);
    assert_eq!(v["missing"], serde_json::json!([]));
    assert_eq!(
        v["current"],
        serde_json::json!({"from": H1, "to": H1 + 3_600})
    );
    assert_eq!(v["reference"]["from"], H0);
    let top = &v["changes"][0];
    assert_eq!(top["series"], "vote.count(){country_id=3}", "{v}");
    assert_eq!(top["metric"], "vote.count()");
    assert_eq!(top["dims"], serde_json::json!({"country_id": "3"}));
    assert_eq!(
        (top["current"].as_f64(), top["reference"].as_f64()),
        (Some(200.0), Some(400.0))
    );
    assert_eq!(top["change"].as_f64(), Some(-0.5));
    let top_score = top["score"].as_f64().unwrap();
    assert!(top_score < -5.0, "{v}");
    // Bigger percentages on a handful of events rank below it, or not at all.
    for c in v["changes"].as_array().unwrap() {
        let name = c["series"].as_str().unwrap();
        if name.contains("country_id=8") || name.contains("country_id=7") {
            assert!(
                c["score"].as_f64().unwrap().abs() < top_score.abs() / 2.0,
                "{c}"
            );
        }
    }
    assert!(
        !names(&v).iter().any(|n| n.contains("country_id=7")),
        "under the minimum volume: {v}"
    );
    // Every series with data was compared: 2 + 4 countries + 8 pairs + 1 of
    // the count, 1 + 2 of the uniques.
    assert_eq!(v["series_compared"], 18, "{v}");

    // Rises only.
    let (_, up) = h.get(&format!(
        "/v1/drops?event=vote&from={H1}&to={}&direction=up",
        H1 + 3_600
    ));
    assert_eq!(names(&up), ["vote.count(){country_id=8}"], "{up}");

    // This DC only: dc1's figures.
    let (_, v) = h.get(&format!(
        "/v1/drops?event=vote&window=1h&to={}&scope=dc&limit=1",
        H1 + 3_600
    ));
    assert_eq!(v["changes"].as_array().unwrap().len(), 1);
    assert_eq!(v["changes"][0]["series"], "vote.count(){country_id=3}");
    assert_eq!(v["changes"][0]["current"].as_f64(), Some(100.0));
    assert_eq!(v["scope"], "dc");

    // Yesterday held nothing: every series is new, the largest first.
    let (_, v) = h.get(&format!(
        "/v1/drops?event=vote&window=1h&to={}&reference=yesterday",
        H1 + 3_600
    ));
    assert_eq!(v["reference"]["from"], H1 - 86_400);
    assert_eq!(v["changes"][0]["series"], "vote.count()", "{v}");
    assert_eq!(v["changes"][0]["reference"].as_f64(), Some(0.0));
    assert_eq!(v["changes"][0]["change"], serde_json::Value::Null);

    // Bad parameters are refused, naming the parameter.
    for (q, p) in [
        ("event=vote'%20OR%201=1&window=1h", "event"),
        ("event=vote&window=1h;DROP", "window"),
        ("event=vote&window=1h&reference=tomorrow", "reference"),
        ("event=vote&from=1&window=1h", "window"),
    ] {
        let (s, v) = h.get(&format!("/v1/drops?{q}"));
        assert_eq!((s, v["parameter"].as_str()), (400, Some(p)), "{q}: {v}");
    }

    // dc2 down: partial, naming it; dc1's figures only.
    h.cluster.kill("dc2-s1-r1").unwrap();
    let (s, v) = h.get(&format!("/v1/drops?event=vote&window=1h&to={}", H1 + 3_600));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing"], serde_json::json!(["dc2"]));
    assert_eq!(v["changes"][0]["series"], "vote.count(){country_id=3}");
    assert_eq!(v["changes"][0]["reference"].as_f64(), Some(200.0));
}
