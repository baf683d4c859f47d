//! A partition between two datacenters under load, as processes: each DC is
//! a host of its own, a network namespace the launcher makes, in which its
//! servers and its collector, shipper and query service (from rendered
//! configs) run; the launcher puts a 100 ms relay on every cross-DC path,
//! in the host's namespace. The test needs root to make the namespaces
//! (as CI runs it) and fails saying so without it. Cutting dc2 leaves
//! both DCs collecting, shipping and answering local reads; global reads
//! answer within their timeout, partial, naming the DC that did not answer;
//! after the heal they are whole again, and every acknowledged event of
//! both DCs is in ClickHouse exactly once.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{count, get_json, hosts_cluster, now_ms, start_dc, wait_for, Load, LIMIT};
use launcher::Placement;

fn series_path(scope: &str) -> String {
    let to = (now_ms() / 1000 / 60 + 1) * 60;
    format!(
        "/v1/series?metric=vote.count%28%29&from={}&to={to}&step=minute&scope={scope}",
        to - 600
    )
}

#[test]
fn a_cut_datacenter_keeps_working_locally_and_global_reads_turn_partial() {
    let cluster = hosts_cluster();
    let dir = tempfile::tempdir().unwrap();
    let dc1 = start_dc(&cluster, "dc1", &dir.path().join("dc1"));
    let dc2 = start_dc(&cluster, "dc2", &dir.path().join("dc2"));
    let t = cluster.topology().clone();
    let q1 = t.dc("dc1").unwrap().query.listen;
    let q2 = t.dc("dc2").unwrap().query.listen;
    // Each DC's services run inside its namespace and serve on its address.
    let Placement::Namespaces(fabric) = cluster.placement() else {
        panic!("launched on {}", cluster.placement());
    };
    for (name, procs, query) in [("dc1", &dc1, q1), ("dc2", &dc2, q2)] {
        let place = fabric.dc(name).unwrap();
        assert_eq!(query.ip(), place.addr);
        let ns = std::fs::metadata(format!("/run/netns/{}", place.netns)).unwrap();
        for p in procs.iter() {
            let inside = std::fs::metadata(format!("/proc/{}/ns/net", p.pid().unwrap())).unwrap();
            assert_eq!(inside.ino(), ns.ino(), "{}", p.name);
        }
    }

    let mut load = Load::start(vec![
        t.dc("dc1").unwrap().collector.socket.clone(),
        t.dc("dc2").unwrap().collector.socket.clone(),
    ]);
    wait_for("both DCs' events in ClickHouse", LIMIT, || {
        count(&cluster, "dc1-s1-r1").0 > 0 && count(&cluster, "dc2-s1-r1").0 > 0
    });
    let (status, whole) = get_json(q1, &series_path("global"));
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["partial"], false, "{whole}");

    cluster.cut("dc2").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = (load.acked(0), load.acked(1));
    let dc2_rows = count(&cluster, "dc2-s1-r1").0;
    // Global reads from either side answer, partial, naming the other DC,
    // well inside the query timeout (3 s here).
    let started = Instant::now();
    let (status, partial) = get_json(q1, &series_path("global"));
    let took = started.elapsed();
    assert_eq!(status, 200, "{partial}");
    assert_eq!(partial["partial"], true, "{partial}");
    assert_eq!(partial["missing"], serde_json::json!(["dc2"]), "{partial}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let (status, other) = get_json(q2, &series_path("global"));
    assert_eq!(status, 200, "{other}");
    assert_eq!(other["missing"], serde_json::json!(["dc1"]), "{other}");
    // Local reads are whole on both sides.
    for q in [q1, q2] {
        let (status, local) = get_json(q, &series_path("dc"));
        assert_eq!(status, 200, "{local}");
        assert_eq!(local["partial"], false, "{local}");
    }
    // Both keep collecting and shipping while cut.
    wait_for("acks in both DCs during the cut", LIMIT, || {
        load.acked(0) > before.0 + 500 && load.acked(1) > before.1 + 500
    });
    wait_for("dc2 shipping during the cut", LIMIT, || {
        count(&cluster, "dc2-s1-r1").0 > dc2_rows
    });

    cluster.heal("dc2").unwrap();
    wait_for("global reads whole again", LIMIT, || {
        let (status, v) = get_json(q1, &series_path("global"));
        status == 200 && v["partial"] == false
    });
    load.stop();
    common::assert_shipped_once(&cluster, &load, &[&dc1, &dc2]);
    eprintln!(
        "partition: dc1 acked {}, dc2 acked {}; the partial global read took {took:?}",
        load.acked(0),
        load.acked(1)
    );
}
