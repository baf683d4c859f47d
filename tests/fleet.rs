//! A fleet: two DCs of several app hosts each (8 by default,
//! `SPOOLHOUSE_FLEET_HOSTS`), under load, while hosts' collectors and
//! shippers are killed with SIGKILL and restarted, the DC's current
//! aggregator is killed (another shipper takes over), and one host is cut
//! off from its ClickHouse for over a minute and healed (its watermark
//! stalls, so the DC's minutes wait for it). Afterwards, per host, every
//! spooled event is in ClickHouse once and every acknowledged one is
//! there; per DC, every minute's states equal the raw events; and the
//! aggregation rounds per DC-minute are counted. Kill rounds: 3 in CI,
//! `SPOOLHOUSE_CRASH_ROUNDS` on demand (docs/adr/0014).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{metric, Load};
use launcher::services::{Configs, Services};
use launcher::LocalCluster;
use shipper::metrics::names;

fn hosts_per_dc() -> usize {
    std::env::var("SPOOLHOUSE_FLEET_HOSTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

fn rounds() -> usize {
    std::env::var("SPOOLHOUSE_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

/// How long the cut host stays cut: past a minute and its grace, so at
/// least one minute can close only after it is healed.
const CUT: Duration = Duration::from_secs(65);

fn body(addr: SocketAddr, path: &str) -> String {
    httpd::client::get_blocking(addr, path, Duration::from_secs(5))
        .map(|(_, b)| b)
        .unwrap_or_default()
}

/// The app host (index) of `services` whose shipper is the aggregator.
fn aggregator(services: &Services) -> Option<usize> {
    services
        .hosts
        .iter()
        .position(|h| metric(&body(h.shipper_admin, "/metrics"), names::AGGREGATOR) == Some(1.0))
}

fn query(cluster: &LocalCluster, dc: &str, sql: &str) -> String {
    let server = cluster
        .topology()
        .dc(dc)
        .unwrap()
        .replicas()
        .next()
        .unwrap()
        .name();
    cluster.clickhouse(&server).unwrap().query(sql).unwrap()
}

fn pending(state_dir: &Path) -> usize {
    std::fs::read_to_string(state_dir.join("aggregation.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["minutes"].as_object().map(|m| m.len()))
        .unwrap_or(usize::MAX)
}

#[test]
fn a_fleet_ships_each_host_once_and_aggregates_each_minute_once_through_kills_failover_and_a_cut() {
    let started = Instant::now();
    let n = hosts_per_dc();
    let mut declared = dc_config::examples::declared();
    declared.topology = launcher::with_app_hosts(&declared.topology, n);
    let cluster = LocalCluster::start(
        &declared,
        launcher::LaunchOptions {
            network: launcher::Network::Loopback,
            ..launcher::LaunchOptions::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let links = dir.path().join("links");
    std::fs::create_dir_all(&links).unwrap();
    // dc1's last host reaches its ClickHouse through relays that can be cut.
    let cut_host = format!("dc1-app{n}");
    let mut relays = Vec::new();
    let mut dcs: Vec<(String, Services)> = Vec::new();
    for dc in ["dc1", "dc2"] {
        let mut configs = Configs::for_dc(&cluster, dc).unwrap();
        for h in &mut configs.hosts {
            let s = &mut h.shipper;
            s.limits.batch_age_ms = 200;
            s.limits.aggregation_grace_ms = 1_000;
            s.limits.publish_interval_ms = 500;
            s.limits.host_silent_ms = 10_000;
            if s.host == cut_host {
                for shard in &mut s.shards {
                    for url in &mut shard.replicas {
                        let target: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
                        let relay = launcher::link::Relay::start(
                            &cut_host,
                            "clickhouse",
                            cluster.placement().host_addr(),
                            target,
                            Duration::ZERO,
                            &links,
                        )
                        .unwrap();
                        *url = format!("http://{}", relay.listen());
                        relays.push(relay);
                    }
                }
            }
        }
        let program = Path::new(env!("CARGO_BIN_EXE_spoolhouse"));
        let services =
            launcher::services::start(&cluster, dc, program, &dir.path().join(dc), configs)
                .unwrap();
        common::wait_for_or_show(
            &format!("{dc}'s {n} app hosts serving"),
            Duration::from_secs(120),
            || services.ready(),
            || services.log_tails(10),
        );
        dcs.push((dc.to_string(), services));
    }
    // One sender per app host; sender k's users are (k + 1) * 10^9 + i.
    let sockets: Vec<_> = dcs
        .iter()
        .flat_map(|(_, s)| s.hosts.iter().map(|h| h.socket.clone()))
        .collect();
    let mut load = Load::start(sockets);
    let mut rng_state = 0x5eed_u64;
    let mut rng = move |below: usize| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % below as u64) as usize
    };
    // The cut: for over a minute, while the kills go on.
    launcher::link::cut(&links, "clickhouse").unwrap();
    let cut_at = Instant::now();
    let mut failovers = Vec::new();
    for round in 0..rounds() {
        // A random host of a random DC (not the cut one): collector and
        // shipper killed together, as a host that loses power.
        let d = rng(dcs.len());
        let (dc, services) = &mut dcs[d];
        let k = rng(services.hosts.len());
        if services.hosts[k].name != cut_host {
            let [c, s] = services.hosts[k].procs;
            services.procs[c].kill();
            services.procs[s].kill();
            std::thread::sleep(Duration::from_millis(500 + rng(1500) as u64));
            services.procs[c].start().unwrap();
            services.procs[s].start().unwrap();
            eprintln!(
                "round {round}: {dc} {} killed and restarted",
                services.hosts[k].name
            );
        }
        // The DC's aggregator killed: another shipper takes over once its
        // session ends.
        let (dc, services) = &mut dcs[round % 2];
        let found = Instant::now();
        let leader = loop {
            if let Some(a) = aggregator(services) {
                break a;
            }
            assert!(
                found.elapsed() < Duration::from_secs(60),
                "{dc}: no aggregator for 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let s = services.hosts[leader].procs[1];
        services.procs[s].kill();
        let killed = Instant::now();
        let next = loop {
            if let Some(a) = aggregator(services).filter(|a| *a != leader) {
                break a;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "{dc}: no new aggregator within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        failovers.push(killed.elapsed());
        eprintln!(
            "round {round}: {dc} aggregator {} killed; {} took over in {:.1} s",
            services.hosts[leader].name,
            services.hosts[next].name,
            killed.elapsed().as_secs_f64()
        );
        services.procs[s].start().unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
    while cut_at.elapsed() < CUT {
        std::thread::sleep(Duration::from_millis(200));
    }
    // While cut, the host still heartbeats: it is live, and the DC's
    // minutes since the cut wait for its watermark.
    launcher::link::heal(&links, "clickhouse").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    load.stop();
    for (dc, services) in &dcs {
        common::wait_for_or_show(
            &format!("{dc}'s hosts serving after the kills"),
            Duration::from_secs(60),
            || services.ready(),
            || {
                format!(
                    "{}\n{}",
                    services.unready().join("\n"),
                    services.log_tails(10)
                )
            },
        );
    }
    // Everything acknowledged is shipped, and every minute aggregated.
    let acked: Vec<u64> = (0..2 * n).map(|k| load.acked(k)).collect();
    let per_host = |dc: &str| -> BTreeMap<String, Vec<u64>> {
        query(
            &cluster,
            dc,
            "SELECT host, count(), uniqExact(spool_segment, spool_offset), \
             uniqExact(attr_values[indexOf(attr_names, 'user_id')]) \
             FROM spoolhouse.events_dc GROUP BY host ORDER BY host FORMAT TSV",
        )
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            let host = f.next().unwrap().to_string();
            (host, f.map(|x| x.parse().unwrap()).collect())
        })
        .collect()
    };
    let limit = Instant::now() + Duration::from_secs(600);
    for (d, (dc, services)) in dcs.iter().enumerate() {
        while services.hosts.iter().enumerate().any(|(k, h)| {
            per_host(dc).get(&h.name).map_or(0, |v| v[2]) < acked[d * n + k]
                || pending(&h.shipper_state) > 0
        }) {
            assert!(
                Instant::now() < limit,
                "{dc}: not everything shipped and aggregated in 600 s:\n{}",
                services.log_tails(10)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    for (d, (dc, services)) in dcs.iter().enumerate() {
        let shipped = per_host(dc);
        for (k, h) in services.hosts.iter().enumerate() {
            let v = &shipped[&h.name];
            let (rows, positions, users) = (v[0], v[1], v[2]);
            eprintln!(
                "{dc} {}: {} acknowledged, {rows} rows, {positions} spool positions, {users} distinct events ({} resent after an acknowledgement lost to a kill)",
                h.name,
                acked[d * n + k],
                rows - users
            );
            assert_eq!(
                rows, positions,
                "{}: a spool position shipped twice",
                h.name
            );
            assert!(
                users >= acked[d * n + k],
                "{}: an acknowledged event is missing",
                h.name
            );
        }
        // Every minute's states equal the raw events, and each DC-minute
        // was aggregated a handful of times, not once per host.
        for (metric, state, raw) in [
            ("vote.count()", "countMerge(count_state)", "count()"),
            // `uniq` is ClickHouse's estimate (exact only for small sets):
            // the raw side uses the same function over the same values.
            (
                "vote.uniq(user_id)",
                "uniqMerge(uniq_state)",
                "uniq(attr_values[indexOf(attr_names, 'user_id')])",
            ),
        ] {
            let states = query(
                &cluster,
                dc,
                &format!("SELECT minute, {state} FROM spoolhouse.metric_states_dc FINAL WHERE metric = '{metric}' GROUP BY minute ORDER BY minute FORMAT TSV"),
            );
            let direct = query(
                &cluster,
                dc,
                &format!("SELECT toStartOfMinute(time) AS m, {raw} FROM spoolhouse.events_dc WHERE event = 'vote' GROUP BY m ORDER BY m FORMAT TSV"),
            );
            assert_eq!(
                states, direct,
                "{dc}: {metric} per minute, states vs raw events"
            );
        }
        let versions = query(
            &cluster,
            dc,
            "SELECT count(), sum(v), max(v) FROM (SELECT minute, uniqExact(version) AS v FROM spoolhouse.metric_states_dc WHERE metric = 'vote.count()' GROUP BY minute) FORMAT TSV",
        );
        eprintln!(
            "{dc}: (minutes, rounds kept, most rounds of one minute) = {}",
            versions.trim()
        );
    }
    eprintln!(
        "{} hosts per DC, {} kill rounds, aggregator failovers {:?}, {:.0} s",
        n,
        rounds(),
        failovers,
        started.elapsed().as_secs_f64()
    );
    drop(relays);
}
