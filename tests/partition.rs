//! A partition between two datacenters under load, as processes: each DC's
//! collector, shipper and query service run from rendered configs; the
//! launcher puts a 100 ms relay on every cross-DC path. Cutting dc2 leaves
//! both DCs collecting, shipping and answering local reads; global reads
//! answer within their timeout, partial, naming the DC that did not answer;
//! after the heal they are whole again, and every acknowledged event of
//! both DCs is in ClickHouse exactly once.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use collector::client::{Client, ClientConfig, Endpoint, LineOutcome};
use common::{http_get, spawn, wait_for, Proc};
use dc_config::local::{LaunchOptions, LocalCluster};
use dc_config::services::{CollectorConfig, QueryConfig, ShipperConfig};

const LIMIT: Duration = Duration::from_secs(60);
/// Events per batch and pause between batches of each DC's sender:
/// ≈ 1 000 events/s per DC, bounded by the test's phases.
const BATCH: u64 = 50;
const PAUSE: Duration = Duration::from_millis(50);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Writes `dc`'s three service configs into `dir` and starts the services.
fn start_dc(cluster: &LocalCluster, dc_name: &str, dir: &Path) -> Vec<Proc> {
    let t = cluster.topology();
    let dc = t.dc(dc_name).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("events.toml"), dc_config::examples::REGISTRY).unwrap();
    let mut shipper = ShipperConfig::for_dc(t, dc);
    shipper.limits.batch_age_ms = 200;
    shipper.limits.aggregation_grace_ms = 500;
    let mut query = QueryConfig::for_dc(t, dc);
    query.timeout_ms = 3_000;
    let configs = [
        (
            "collector",
            toml::to_string(&CollectorConfig::for_dc(dc)).unwrap(),
        ),
        ("shipper", toml::to_string(&shipper).unwrap()),
        ("query", toml::to_string(&query).unwrap()),
    ];
    let mut procs = Vec::new();
    for (service, text) in configs {
        let path = dir.join(format!("{service}.toml"));
        std::fs::write(&path, text).unwrap();
        procs.push(spawn(
            &[service, "--config", path.to_str().unwrap()],
            &dir.join(format!("{service}.log")),
        ));
    }
    let socket = dc.collector.socket.clone();
    wait_for(&format!("{dc_name}'s collector"), LIMIT, || socket.exists());
    let q = dc.query.listen;
    wait_for(&format!("{dc_name}'s query service"), LIMIT, || {
        std::net::TcpStream::connect(q).is_ok() && http_get(q, "/healthz").contains("200 OK")
    });
    procs
}

/// Sends votes to `socket` until `stop`, counting what the collector acked.
fn sender(socket: std::path::PathBuf, dc: u64, stop: Arc<AtomicBool>, acked: Arc<AtomicU64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut client = Client::connect(Endpoint::Unix(socket), ClientConfig::default())
            .await
            .unwrap();
        let mut seq = 0u64;
        let started = Instant::now();
        while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(300) {
            let lines: Vec<String> = (0..BATCH)
                .map(|i| {
                    let user = dc * 1_000_000_000 + seq + i;
                    format!(
                        "{{\"event\":\"vote\",\"time\":{},\"attrs\":{{\"user_id\":{user},\"target_user_id\":1,\"vote\":\"yes\",\"country_id\":{}}}}}",
                        now_ms(),
                        dc
                    )
                })
                .collect();
            seq += BATCH;
            let outcomes = client.send_batch(&lines).await.unwrap();
            let ok = outcomes
                .iter()
                .filter(|o| matches!(o, LineOutcome::Acked))
                .count();
            assert_eq!(ok, lines.len(), "{outcomes:?}");
            acked.fetch_add(ok as u64, Ordering::SeqCst);
            tokio::time::sleep(PAUSE).await;
        }
    });
}

/// Status and JSON body of a GET to a query service.
fn get_json(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let text = http_get(addr, path);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn series_path(scope: &str) -> String {
    let to = (now_ms() / 1000 / 60 + 1) * 60;
    format!(
        "/v1/series?metric=vote.count%28%29&from={}&to={to}&step=minute&scope={scope}",
        to - 600
    )
}

fn count(cluster: &LocalCluster, server: &str) -> (u64, u64) {
    let r = cluster
        .clickhouse(server)
        .unwrap()
        .query("SELECT count(), uniqExact(dc, host, spool_segment, spool_offset) FROM spoolhouse.events_dc FORMAT TSV")
        .unwrap();
    let mut it = r.trim().split('\t').map(|x| x.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[test]
fn a_cut_datacenter_keeps_working_locally_and_global_reads_turn_partial() {
    let cluster = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            cross_dc_delay: Some(Duration::from_millis(100)),
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _dc1 = start_dc(&cluster, "dc1", &dir.path().join("dc1"));
    let _dc2 = start_dc(&cluster, "dc2", &dir.path().join("dc2"));
    let t = cluster.topology().clone();
    let q1 = t.dc("dc1").unwrap().query.listen;
    let q2 = t.dc("dc2").unwrap().query.listen;

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let senders: Vec<_> = ["dc1", "dc2"]
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let socket = t.dc(name).unwrap().collector.socket.clone();
            let (stop, acked) = (stop.clone(), acked[i].clone());
            std::thread::spawn(move || sender(socket, i as u64 + 1, stop, acked))
        })
        .collect();
    wait_for("both DCs' events in ClickHouse", LIMIT, || {
        count(&cluster, "dc1-s1-r1").0 > 0 && count(&cluster, "dc2-s1-r1").0 > 0
    });
    let (status, whole) = get_json(q1, &series_path("global"));
    assert_eq!(status, 200, "{whole}");
    assert_eq!(whole["partial"], false, "{whole}");

    cluster.cut("dc2").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = (
        acked[0].load(Ordering::SeqCst),
        acked[1].load(Ordering::SeqCst),
    );
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
        acked[0].load(Ordering::SeqCst) > before.0 + 500
            && acked[1].load(Ordering::SeqCst) > before.1 + 500
    });
    wait_for("dc2 shipping during the cut", LIMIT, || {
        count(&cluster, "dc2-s1-r1").0 > dc2_rows
    });

    cluster.heal("dc2").unwrap();
    wait_for("global reads whole again", LIMIT, || {
        let (status, v) = get_json(q1, &series_path("global"));
        status == 200 && v["partial"] == false
    });
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().unwrap();
    }
    for (i, server) in ["dc1-s1-r1", "dc2-s1-r1"].iter().enumerate() {
        let sent = acked[i].load(Ordering::SeqCst);
        wait_for("every acknowledged event in ClickHouse", LIMIT, || {
            count(&cluster, server).0 >= sent
        });
        // dc1 has two shards: events_dc reads both.
        assert_eq!(count(&cluster, server), (sent, sent), "{server}");
    }
    eprintln!(
        "partition: dc1 acked {}, dc2 acked {}; the partial global read took {took:?}",
        acked[0].load(Ordering::SeqCst),
        acked[1].load(Ordering::SeqCst)
    );
}
