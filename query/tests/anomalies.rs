//! `GET /v1/anomalies` against two real DCs with five weeks of hourly
//! history: an injected drop of one country ranks first, with its weekly
//! prediction and band; its parent (the event total) and its children
//! (country × vote) do not alert for the same cause; a tiny series' jump
//! ranks below it; a threshold rule from the config fires; a DC down gives
//! a partial answer naming it.

mod common;

use common::{vote, Harness};
use dc_config::event::ValidEvent;
use dc_config::services::ThresholdRule;

/// Start of the evaluation range (2025-11-25 10:00 UTC): three hours.
const E: u32 = 1_764_028_800 + 10 * 3_600;
const WEEK: u32 = 7 * 86_400;

/// `n` votes from `country` in the hour starting `hour`, over its first two
/// minutes, half yes; 25 users per DC, so uniques do not follow counts.
fn votes(out: &mut Vec<ValidEvent>, dc: u64, hour: u32, country: u64, n: u64) {
    for i in 0..n {
        let user = dc * 1_000 + i % 25;
        out.push(vote(
            hour + 60 * (i % 2) as u32,
            i,
            user,
            i % 2 == 0,
            country,
        ));
    }
}

/// One DC's events: for this week (k = 0) and four before, hours 0..3 of
/// the range; country 3 drops from ~60 to 10 at hour 1 this week; country
/// 8 jumps from 3 to 12 at hour 2 this week.
fn dc_events(dc: u64) -> Vec<ValidEvent> {
    let mut out = Vec::new();
    for k in 0..5u32 {
        for h in 0..3u32 {
            let hour = E + h * 3_600 - k * WEEK;
            let c3 = if k == 0 && h == 1 {
                10
            } else {
                60 + u64::from((k + h) % 3)
            };
            votes(&mut out, dc, hour, 3, c3);
            votes(&mut out, dc, hour, 5, 60 + u64::from(k % 2));
            if dc == 1 {
                votes(&mut out, dc, hour, 8, if k == 0 && h == 2 { 12 } else { 3 });
            }
        }
    }
    out
}

fn rule(series: &str, below: Option<f64>, nonzero: bool) -> ThresholdRule {
    ThresholdRule {
        series: series.into(),
        below,
        above: None,
        nonzero,
    }
}

#[test]
fn an_injected_drop_is_one_alert_ranked_first() {
    let mut h = Harness::start(|c| {
        c.rule = vec![
            rule("vote.count(){country_id=*}", Some(50.0), false),
            rule("vote.count(){country_id=9}", None, true),
        ]
    });
    let dc1 = dc_events(1);
    let half = dc1.len() / 2;
    h.load("dc1-s1-r1", "dc1", &dc1[..half]);
    h.load("dc1-s2-r1", "dc1", &dc1[half..]);
    h.aggregate("dc1-s1-r1", "dc1", &dc1);
    let dc2 = dc_events(2);
    h.load("dc2-s1-r1", "dc2", &dc2);
    h.aggregate("dc2-s1-r1", "dc2", &dc2);

    let range = format!("window=3h&to={}", E + 3 * 3_600);
    let (s, v) = h.get(&format!("/v1/anomalies?event=vote&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["partial"].clone(), v["from"].clone()),
        (false.into(), E.into())
    );
    let list = v["anomalies"].as_array().unwrap();
    let top = &list[0];
    assert_eq!(top["series"], "vote.count(){country_id=3}", "{v}");
    assert_eq!(top["method"], "weekly");
    assert_eq!(top["time"], E + 3_600);
    assert_eq!(top["actual"].as_f64(), Some(20.0));
    let p = top["prediction"].as_f64().unwrap();
    assert!((120.0..=126.0).contains(&p), "{top}");
    let (low, high) = (top["low"].as_f64().unwrap(), top["high"].as_f64().unwrap());
    assert!(20.0 < low && low < p && p < high, "{top}");
    assert_eq!(top["flagged_steps"], 1);
    assert_eq!(top["weight"].as_f64(), Some(p - 20.0));
    let points = top["points"].as_array().unwrap();
    assert_eq!(points.len(), 3);
    assert_eq!(points[1]["t"], E + 3_600);
    assert_eq!(points[1]["flagged"], true);
    assert_eq!(points[0]["flagged"], false);
    assert!(points[0]["prediction"].as_f64().is_some() && points[0]["high"].as_f64().is_some());

    // One alert for one cause: the event total (parent) and the country ×
    // vote pairs (children) are folded into it, not listed.
    let suppressed: Vec<&str> = top["suppressed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "vote.count()",
        "vote.count(){vote=yes,country_id=3}",
        "vote.count(){vote=no,country_id=3}",
    ] {
        assert!(suppressed.contains(&s), "{s} not folded: {top}");
    }
    let same_cause = [
        "vote.count()",
        "vote.count(){vote=yes}",
        "vote.count(){vote=no}",
        "vote.count(){vote=yes,country_id=3}",
        "vote.count(){vote=no,country_id=3}",
    ];
    for a in &list[1..] {
        let name = a["series"].as_str().unwrap();
        assert!(
            !same_cause.contains(&name),
            "a second alert for one cause: {name}: {v}"
        );
        // Whatever else is flagged (country 8's jump on a handful) weighs far less.
        assert!(
            a["weight"].as_f64().unwrap() < top["weight"].as_f64().unwrap() / 5.0,
            "{a}"
        );
    }

    // The threshold rule fires on country 3's drop, and only there.
    let th = v["thresholds"].as_array().unwrap();
    assert_eq!(th.len(), 2, "{v}");
    let c3 = th
        .iter()
        .find(|t| t["series"] == "vote.count(){country_id=3}")
        .unwrap();
    assert_eq!(c3["condition"], "below 50");
    assert_eq!(c3["violations"], serde_json::json!([[E + 3_600, 20.0]]));
    // Country 8 is always under 50; country 9 never has a vote.
    let c8 = th
        .iter()
        .find(|t| t["series"] == "vote.count(){country_id=8}")
        .unwrap();
    assert_eq!(c8["violations"].as_array().unwrap().len(), 3);

    // Named series only.
    let (_, v) = h.get(&format!(
        "/v1/anomalies?metric=vote.count()%7Bcountry_id%3D5%7D&metric=vote.uniq(user_id)&{range}"
    ));
    assert_eq!(v["series_evaluated"], 2, "{v}");
    assert_eq!(v["anomalies"], serde_json::json!([]), "{v}");

    // Bad parameters are refused, naming the parameter.
    for (q, p) in [
        ("event=vote'%20OR%201=1", "event"),
        ("metric=vote.count()%7Bcity%3D1%7D", "metric"),
        ("event=vote&step=minute", "step"),
    ] {
        let (s, v) = h.get(&format!("/v1/anomalies?{q}"));
        assert_eq!((s, v["parameter"].as_str()), (400, Some(p)), "{q}: {v}");
    }

    // dc2 down: partial, naming it; the drop is still there in dc1.
    h.cluster.kill("dc2-s1-r1").unwrap();
    let (s, v) = h.get(&format!("/v1/anomalies?event=vote&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing"], serde_json::json!(["dc2"]));
    assert_eq!(v["anomalies"][0]["series"], "vote.count(){country_id=3}");
    assert_eq!(v["anomalies"][0]["actual"].as_f64(), Some(10.0));
}
