//! `GET /v1/series` against two real DCs: per-minute and hourly figures
//! merged from states equal what the events give (an hour of uniques is the
//! distinct users of the hour, not a sum of minutes); per-DC scope; a DC
//! down gives a partial answer naming it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dc_config::event::{ValidEvent, Value};
use dc_config::local::{LaunchOptions, LocalCluster};
use dc_config::row::{EventRow, SpoolPosition, EVENT_COLUMNS};
use dc_config::services::QueryConfig;

const M0: u32 = 1_764_028_800; // a minute start

fn vote(user: u64, minute: u32, yes: bool) -> ValidEvent {
    ValidEvent {
        event: "vote".into(),
        time_ms: u64::from(M0 + 60 * minute) * 1000 + user,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("target_user_id".into(), Value::UInt(1)),
            (
                "vote".into(),
                Value::Str(if yes { "yes" } else { "no" }.into()),
            ),
            ("country_id".into(), Value::UInt(3)),
        ],
    }
}

fn load(cluster: &LocalCluster, server: &str, dc: &str, events: &[ValidEvent]) {
    let mut body = Vec::new();
    for (i, e) in events.iter().enumerate() {
        EventRow::new(
            e,
            dc,
            "h",
            SpoolPosition {
                segment: 1,
                offset: i as u64,
            },
        )
        .write_row_binary(&mut body);
    }
    let ch = cluster.clickhouse(server).unwrap();
    ch.insert(
        &format!("INSERT INTO spoolhouse.events_local ({EVENT_COLUMNS}) FORMAT RowBinary"),
        &body,
    )
    .unwrap();
}

fn aggregate(cluster: &LocalCluster, server: &str, dc: &str) {
    let reg = &cluster.declared().registry;
    for m in 0..3 {
        for sql in dc_config::series::aggregate_minute_sql(
            "spoolhouse",
            dc,
            "vote",
            &reg.event["vote"],
            M0 + 60 * m,
            1,
        ) {
            cluster.clickhouse(server).unwrap().query(&sql).unwrap();
        }
    }
}

fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent();
    let mut resp = agent.get(&format!("{base}{path}")).call().unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
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
    let mut cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
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
    let half = dc1.len() / 2;
    load(&cluster, "dc1-s1-r1", "dc1", &dc1[..half]);
    load(&cluster, "dc1-s2-r1", "dc1", &dc1[half..]);
    load(&cluster, "dc2-s1-r1", "dc2", &dc2);
    aggregate(&cluster, "dc1-s1-r1", "dc1");
    aggregate(&cluster, "dc2-s1-r1", "dc2");

    let t = cluster.topology().clone();
    let config = QueryConfig::for_dc(&t, t.dc("dc1").unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let service = Arc::new(query::QueryService::new(
        &config,
        cluster.declared().registry.clone(),
        Duration::from_secs(5),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(query::serve(listener, service, async {
        let _ = stopped.await;
    }));

    let range = format!("from={M0}&to={}", M0 + 180);
    let (s, v) = get(&base, &format!("/v1/series?metric=vote.count()&metric=vote.uniq(user_id)&metric=vote.count()%7Bvote%3Dyes%7D&{range}"));
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
    let (_, v) = get(
        &base,
        &format!("/v1/series?metric=vote.uniq(user_id)&metric=vote.count()&{range}&step=hour"),
    );
    assert_eq!(points(&v, 0), vec![(hour_start, 50.0)]);
    assert_eq!(points(&v, 1), vec![(hour_start, 150.0)]);

    // This DC only.
    let (_, v) = get(
        &base,
        &format!("/v1/series?metric=vote.uniq(user_id)&{range}&step=hour&scope=dc"),
    );
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
    let (_, v) = get(
        &base,
        &format!("/v1/series?metric=vote.count()%7Bvote%3Dno%7D&{range}"),
    );
    let want: Vec<(u64, f64)> = no.iter().map(|(t, s)| (*t, s.len() as f64)).collect();
    assert_eq!(points(&v, 0), want);

    // Bad names and parameters.
    let (s, v) = get(
        &base,
        &format!("/v1/series?metric=vote.sum(user_id)&{range}"),
    );
    assert_eq!((s, v["parameter"].clone()), (400, "metric".into()), "{v}");

    // dc2 down: partial, naming it; dc1's figures only.
    cluster.kill("dc2-s1-r1").unwrap();
    let (s, v) = get(&base, &format!("/v1/series?metric=vote.count()&{range}"));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["partial"], true);
    assert_eq!(v["missing"], serde_json::json!(["dc2"]));
    assert_eq!(
        points(&v, 0),
        vec![(m(0), 30.0), (m(1), 30.0), (m(2), 30.0)]
    );

    let _ = stop.send(());
    rt.block_on(server).unwrap();
}
