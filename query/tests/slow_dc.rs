//! A slow datacenter (not a cut one): with 2 s each way between the DCs
//! and a 1.5 s query timeout, ClickHouse connects to dc2 but its answer
//! cannot arrive in time. Global reads still answer within the timeout,
//! `partial`, naming dc2, with dc1's own figures; reads of dc1 alone are
//! whole.

mod common;

use std::time::{Duration, Instant};

use common::{registration, Harness};
use launcher::{LaunchOptions, LocalCluster};

const M0: u32 = 1_764_028_800; // a minute start
const TIMEOUT: Duration = Duration::from_millis(1_500);

#[test]
fn a_slow_datacenter_turns_global_reads_partial_within_the_timeout() {
    let cluster = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            cross_dc_delay: Some(Duration::from_secs(2)),
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    let h = Harness::serve(cluster, TIMEOUT, |_| {});
    // dc1: 20 registrations (10 male); dc2: 30 more users.
    let gender = |u: u64| if u < 10 { "male" } else { "female" };
    let dc1: Vec<_> = (0..20u64)
        .map(|u| registration(M0, u, u, gender(u), 1))
        .collect();
    let dc2: Vec<_> = (100..130u64)
        .map(|u| registration(M0, u, u, "male", 2))
        .collect();
    h.load("dc1-s1-r1", "dc1", &dc1);
    h.load("dc2-s1-r1", "dc2", &dc2);
    h.aggregate("dc1-s1-r1", "dc1", &dc1);
    h.aggregate("dc2-s1-r1", "dc2", &dc2);

    let report = format!(
        "/v1/report?event=registration&group_by=gender&from={M0}&to={}",
        M0 + 60
    );
    let started = Instant::now();
    let (s, v) = h.get(&report);
    let took = started.elapsed();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true, "{v}");
    assert_eq!(v["missing"], serde_json::json!(["dc2"]), "{v}");
    // The answer is bounded by the timeout, not by the slow DC (its round
    // trip alone is 4 s).
    assert!(took < TIMEOUT + Duration::from_secs(1), "{took:?}");
    let counts: Vec<(String, f64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["dimensions"]["gender"].as_str().unwrap().to_string(),
                r["values"]["count()"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [("female".to_string(), 10.0), ("male".to_string(), 10.0)],
        "dc1's figures only: {v}"
    );

    // The same through the series route; this DC's own reads are whole.
    let series = format!(
        "/v1/series?metric=registration.count()&from={M0}&to={}&step=minute",
        M0 + 60
    );
    let (s, v) = h.get(&series);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["partial"].clone(), v["missing"].clone()),
        (serde_json::json!(true), serde_json::json!(["dc2"])),
        "{v}"
    );
    let (s, v) = h.get(&format!("{series}&scope=dc"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], false, "{v}");
    eprintln!("slow dc2: the partial global report took {took:?}");
}
