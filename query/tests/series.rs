//! `GET /v1/series` against two real DCs: per-minute and hourly figures
//! merged from states equal what the events give (an hour of uniques is the
//! distinct users of the hour, not a sum of minutes); per-DC scope; a DC
//! down gives a partial answer naming it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::Harness;
use dc_config::event::{ValidEvent, Value};

const M0: u32 = 1_764_028_800; // a minute start

fn vote(user: u64, minute: u32, yes: bool) -> ValidEvent {
    common::vote(M0 + 60 * minute, user, user, yes, 3)
}

fn points(v: &serde_json::Value, i: usize) -> Vec<(u64, f64)> {
    v["series"][i]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

#[test]
fn series_merge_states_per_step_and_scope() {
    // dc1: users 0..30 each minute; dc2: users 20..50 in minutes 0 and 2.
    let mut dc1 = Vec::new();
    let mut dc2 = Vec::new();
    for m in 0..3u32 {
        for u in 0..30u64 {
            dc1.push(vote(u, m, u % 2 == 0));
        }
        if m != 1 {
            for u in 20..50u64 {
                dc2.push(vote(u, m, true));
            }
        }
    }
    let mut h = Harness::start(|_| {});
    let half = dc1.len() / 2;
    h.load("dc1-s1-r1", "dc1", &dc1[..half]);
    h.load("dc1-s2-r1", "dc1", &dc1[half..]);
    h.load("dc2-s1-r1", "dc2", &dc2);
    h.aggregate("dc1-s1-r1", "dc1", &dc1);
    h.aggregate("dc2-s1-r1", "dc2", &dc2);

    let range = format!("from={M0}&to={}", M0 + 180);
    let (s, v) = h.get(&format!("/v1/series?metric=vote.count()&metric=vote.uniq(user_id)&metric=vote.count()%7Bvote%3Dyes%7D&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], false);
    let m = |i: u32| u64::from(M0 + 60 * i);
    assert_eq!(
        points(&v, 0),
        vec![(m(0), 60.0), (m(1), 30.0), (m(2), 60.0)]
    );
    assert_eq!(
        points(&v, 1),
        vec![(m(0), 50.0), (m(1), 30.0), (m(2), 50.0)],
        "global uniques: 0..50, not 30 + 30"
    );
    assert_eq!(
        points(&v, 2),
        vec![(m(0), 45.0), (m(1), 15.0), (m(2), 45.0)]
    );

    // An hour of uniques is the distinct users of the hour.
    let hour_start = u64::from(M0 - M0 % 3600);
    let (_, v) = h.get(&format!(
        "/v1/series?metric=vote.uniq(user_id)&metric=vote.count()&{range}&step=hour"
    ));
    assert_eq!(points(&v, 0), vec![(hour_start, 50.0)]);
    assert_eq!(points(&v, 1), vec![(hour_start, 150.0)]);

    // This DC only.
    let (_, v) = h.get(&format!(
        "/v1/series?metric=vote.uniq(user_id)&{range}&step=hour&scope=dc"
    ));
    assert_eq!(points(&v, 0), vec![(hour_start, 30.0)]);

    // Expected figures computed from the events, per minute, for vote.count(){vote=no}.
    let mut no: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for e in dc1.iter().chain(&dc2) {
        if e.attr("vote") == Some(&Value::Str("no".into())) {
            no.entry((e.time_ms / 60_000) * 60)
                .or_default()
                .insert(e.time_ms);
        }
    }
    let (_, v) = h.get(&format!(
        "/v1/series?metric=vote.count()%7Bvote%3Dno%7D&{range}"
    ));
    let want: Vec<(u64, f64)> = no.iter().map(|(t, s)| (*t, s.len() as f64)).collect();
    assert_eq!(points(&v, 0), want);

    // Bad names and parameters.
    let (s, v) = h.get(&format!("/v1/series?metric=vote.sum(user_id)&{range}"));
    assert_eq!((s, v["parameter"].clone()), (400, "metric".into()), "{v}");

    // dc2 down: partial, naming it; dc1's figures only.
    h.cluster.kill("dc2-s1-r1").unwrap();
    let (s, v) = h.get(&format!("/v1/series?metric=vote.count()&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing"], serde_json::json!(["dc2"]));
    assert_eq!(
        points(&v, 0),
        vec![(m(0), 30.0), (m(1), 30.0), (m(2), 30.0)]
    );
}
