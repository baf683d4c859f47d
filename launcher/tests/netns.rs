//! Datacenters as hosts: the launcher puts each DC of the example topology in
//! a network namespace of its own, joined by a bridge, with a delaying relay
//! on every cross-DC path in the host's namespace. Needs root (as CI runs);
//! a machine without namespaces fails these tests with the reason, never
//! passes them silently.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use launcher::netns::{LINK_PREFIX, NETNS_PREFIX};
use launcher::{probe, LaunchError, LaunchOptions, LocalCluster, Network, Placement};

/// The tests compare what exists before and after a launch; one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const LIMIT: Duration = Duration::from_secs(30);

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Every namespace and link on this host named like the launcher's.
fn launcher_objects() -> BTreeSet<String> {
    let netns = ip(&["netns", "list"]);
    let links = ip(&["-o", "link", "show"]);
    let netns = netns
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NETNS_PREFIX));
    let links = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap())
        .filter(|n| n.starts_with(LINK_PREFIX));
    netns.chain(links).map(String::from).collect()
}

fn namespaces(cluster: &LocalCluster) -> &launcher::netns::Fabric {
    match cluster.placement() {
        Placement::Namespaces(f) => f,
        other => panic!("launched on {other}"),
    }
}

/// The inode of a network namespace: the same for every process inside it.
fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino()
}

fn dcs_answering(cluster: &LocalCluster) -> Vec<String> {
    cluster
        .datacenters_answering("dc1-s1-r1")
        .unwrap_or_default()
}

fn wait_for(what: &str, ok: impl FnMut() -> bool) {
    if let Err(e) = launcher::wait::until(what, LIMIT, ok) {
        panic!("timed out waiting for {what} ({e})");
    }
}

#[test]
fn each_datacenter_serves_from_its_own_namespace_and_links_through_the_relay() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            network: Network::Namespaces,
            cross_dc_delay: Some(Duration::from_millis(20)),
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    let names = cluster.servers();
    let pids = cluster.pids();
    assert_eq!(names.len(), pids.len(), "a server is not running");
    let fabric = namespaces(&cluster);
    let made: BTreeSet<String> = fabric
        .datacenters()
        .iter()
        .flat_map(|d| [d.netns.clone(), d.veth.clone()])
        .chain([fabric.bridge()])
        .collect();
    assert_eq!(made.len(), 5, "{made:?}");
    assert!(launcher_objects().is_superset(&made), "{made:?}");
    let bridge = fabric.bridge_addr().to_string();

    // Every server listens on its DC's namespace address, answers there from
    // the host, and not on the host's loopback.
    let t = cluster.topology().clone();
    for dc in &t.datacenter {
        let addr = fabric.dc(&dc.name).unwrap().addr.to_string();
        for z in &dc.zookeeper {
            assert_eq!(z.host, addr);
            assert!(probe::zookeeper_serving(
                format!("{}:{}", z.host, z.port).parse().unwrap()
            ));
        }
        for n in &dc.redis.nodes {
            assert_eq!(n.ip().to_string(), addr);
            assert!(probe::redis_ready(*n));
        }
        for r in dc.replicas() {
            assert_eq!(r.replica.host, addr);
            let ch = cluster.clickhouse(&r.name()).unwrap();
            assert_eq!(ch.query("SELECT 1").unwrap().trim(), "1");
            let on_host_loopback = ("127.0.0.1", r.replica.http_port);
            assert!(std::net::TcpStream::connect(on_host_loopback).is_err());
        }
    }
    let dc_addrs: BTreeSet<_> = fabric.datacenters().iter().map(|d| d.addr).collect();
    assert_eq!(dc_addrs.len(), 2);

    // Every server process is inside its DC's namespace, none in the host's.
    let host_ns = netns_inode("/proc/self/ns/net");
    for (name, pid) in names.iter().zip(pids) {
        let dc = name.split('-').next().unwrap();
        let ns = &fabric.dc(dc).unwrap().netns;
        let inside = netns_inode(&format!("/proc/{pid}/ns/net"));
        assert_eq!(inside, netns_inode(&format!("/run/netns/{ns}")), "{name}");
        assert_ne!(inside, host_ns, "{name}");
        // `ip netns exec` exec'd the server: the pid the launcher signals is its.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_ne!(comm.trim(), "ip", "{name}");
    }

    // dc1 reaches dc2 only through the relay on the bridge: a global read
    // answers for both, a cut drops dc2 from it, a heal brings it back.
    let dc1_config = std::fs::read_to_string(
        cluster
            .state_dir()
            .join("rendered/clickhouse/dc1-s1-r1/config.xml"),
    )
    .unwrap();
    let dc2_addr = fabric.dc("dc2").unwrap().addr.to_string();
    assert!(dc1_config.contains(&format!("<host>{bridge}</host>")));
    assert!(!dc1_config.contains(&format!("<host>{dc2_addr}</host>")));
    assert_eq!(dcs_answering(&cluster), ["dc1", "dc2"]);
    cluster.cut("dc2").unwrap();
    wait_for("dc2 to be skipped", || dcs_answering(&cluster) == ["dc1"]);
    cluster.heal("dc2").unwrap();
    wait_for("dc2 to answer again", || {
        dcs_answering(&cluster) == ["dc1", "dc2"]
    });

    // A restarted server goes back into its namespace.
    cluster.kill("dc2-redis1").unwrap();
    cluster.restart("dc2-redis1").unwrap();
    assert!(probe::redis_ready(t.dc("dc2").unwrap().redis.nodes[0]));

    // Dropped, nothing of the launch is left: no server (killed through
    // `ip netns exec`, which execs), no namespace, veth or bridge.
    let pids = cluster.pids();
    drop(cluster);
    // SAFETY: signal 0 only checks that the process exists.
    let alive: Vec<_> = pids
        .iter()
        .filter(|p| unsafe { libc::kill(**p as libc::pid_t, 0) } == 0)
        .collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    let left: Vec<_> = launcher_objects().intersection(&made).cloned().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_failing_start_leaves_no_namespace_bridge_or_veth() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let before = launcher_objects();
    let err = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            network: Network::Namespaces,
            cross_dc_delay: Some(Duration::from_millis(20)),
            // No server is ready at once: the start fails after the
            // namespaces are made and the first servers spawned in them.
            ready_timeout: Duration::ZERO,
            ..LaunchOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, LaunchError::NotReady { .. }), "{err}");
    let after = launcher_objects();
    let new: Vec<_> = after.difference(&before).collect();
    assert!(new.is_empty(), "left behind: {new:?}");
}

#[test]
fn auto_takes_namespaces_where_they_can_be_made() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let cluster = LocalCluster::start(
        &dc_config::examples::declared(),
        LaunchOptions {
            network: Network::Auto,
            ..LaunchOptions::default()
        },
    )
    .unwrap();
    let shown = cluster.placement().to_string();
    assert!(
        shown.starts_with("a network namespace per datacenter (dc1 in spoolhouse-"),
        "{shown}"
    );
    // Without relays the DCs dial each other directly, across the bridge.
    assert_eq!(dcs_answering(&cluster), ["dc1", "dc2"]);
}

#[test]
fn concurrent_launches_get_distinct_namespaces_and_subnets() {
    use launcher::netns::Fabric;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dcs = ["dc1".to_string(), "dc2".to_string()];
    let fabrics: Vec<Fabric> = std::thread::scope(|s| {
        let started: Vec<_> = (0..4).map(|_| s.spawn(|| Fabric::create(&dcs))).collect();
        started
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect()
    });
    let bridges: BTreeSet<_> = fabrics.iter().map(|f| f.bridge_addr()).collect();
    let netns: BTreeSet<_> = fabrics
        .iter()
        .flat_map(|f| f.datacenters().iter().map(|d| d.netns.clone()))
        .collect();
    assert_eq!((bridges.len(), netns.len()), (4, 8), "{fabrics:?}");
    assert!(launcher_objects().is_superset(&netns));
    drop(fabrics);
    assert!(launcher_objects().is_disjoint(&netns));
}
