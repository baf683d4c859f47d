//! Rendering from the example files: every file, and the parts other
//! programs depend on.

use std::path::Path;

use dc_config::credentials::{password_file, sha256_hex, Credentials};
use dc_config::render::{self, clickhouse, ddl, inventory};
use dc_config::services::{CollectorConfig, QueryConfig, ShipperConfig};

#[test]
fn renders_every_file_once() {
    let d = dc_config::examples::declared();
    let credentials = Credentials::generate();
    let files = render::render(&d.topology, &d.registry, &d.registry_text, &credentials);
    let paths: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    for want in [
        "clickhouse/dc1-s1-r1/config.xml",
        "clickhouse/dc1-s2-r1/users.xml",
        "clickhouse/dc2-s1-r1/config.xml",
        "zookeeper/dc1-zk1/zoo.cfg",
        "zookeeper/dc2-zk1/zoo.cfg",
        "ddl/dc1.sql",
        "ddl/dc2.sql",
        "services/dc1/dc1-app1/collector.toml",
        "services/dc1/dc1-app1/shipper.toml",
        "services/dc2/query.toml",
        "services/dc2/events.toml",
        "ansible/inventory.ini",
        "secrets/clickhouse-spoolhouse_shipper.password",
        "secrets/clickhouse-spoolhouse_sql.password",
        "clickhouse/dc1-s1-r1/client.xml",
    ] {
        assert!(
            paths.contains(&want.to_string()),
            "{want} missing from {paths:?}"
        );
    }
    // Every file holding a password, and only those, is private.
    for f in &files {
        let holds = [
            &credentials.writer,
            &credentials.query,
            &credentials.sql,
            &credentials.cluster,
        ]
        .iter()
        .any(|p| f.text.contains(p.as_str()));
        assert_eq!(f.private, holds, "{}", f.path.display());
    }
    let dir = tempfile::tempdir().unwrap();
    render::write_all(dir.path(), &files).unwrap();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(dir.path().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("clickhouse/dc1-s1-r1/config.xml"), 0o600);
    assert_eq!(mode("secrets/clickhouse-spoolhouse_query.password"), 0o600);
    assert_eq!(mode("clickhouse/dc1-s1-r1/users.xml"), 0o644);
    let mut unique = paths.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), paths.len(), "a path rendered twice");
}

#[test]
fn server_config_has_ports_clusters_zookeeper_and_macros() {
    let d = dc_config::examples::declared();
    let r = d.topology.dc("dc1").unwrap().replicas().nth(1).unwrap();
    let credentials = Credentials::generate();
    let x = clickhouse::server_config(&d.topology, &r, &credentials);
    assert!(x.contains("<listen_host>127.0.0.1</listen_host>"));
    assert!(x.contains("<http_port>18102</http_port>"));
    assert!(x.contains("<tcp_port>19102</tcp_port>"));
    assert!(x.contains("<interserver_http_port>19202</interserver_http_port>"));
    assert!(x.contains("<path>/var/lib/spoolhouse/dc1/ch-s2-r1/</path>"));
    assert!(x.contains("<macros>\n        <dc>dc1</dc>\n        <shard>2</shard>\n        <replica>dc1-s2-r1</replica>"));
    assert!(x.contains("<node index=\"1\"><host>127.0.0.1</host><port>21810</port></node>"));
    let cluster = |name: &str| {
        let start = x.find(&format!("<{name}>")).unwrap();
        let end = x.find(&format!("</{name}>")).unwrap();
        x[start..end].to_string()
    };
    assert_eq!(cluster("dc1").matches("<shard>").count(), 2);
    assert_eq!(cluster("dc2").matches("<shard>").count(), 1);
    let global = cluster("global");
    assert_eq!(global.matches("<shard>").count(), 3);
    for port in [19101, 19102, 19111] {
        assert!(global.contains(&format!("<port>{port}</port>")));
    }
    assert!(global.contains("<internal_replication>true</internal_replication>"));
    // The servers dial each other as the read-only cluster user.
    let login = format!(
        "<user>spoolhouse_cluster</user><password>{}</password></replica>",
        credentials.cluster
    );
    assert_eq!(global.matches(&login).count(), 3, "{global}");
}

#[test]
fn users_config_has_one_writer_and_hashed_passwords() {
    let d = dc_config::examples::declared();
    let credentials = Credentials::generate();
    let u = clickhouse::users_config(&d.topology, &credentials);
    // No `default` user: a client naming no user is refused.
    assert!(!u.contains("<default>\n            <password"), "{u}");
    for (user, password) in credentials.users() {
        assert!(!u.contains(password), "{user}'s password in clear");
        assert!(
            u.contains(&format!(
                "<{user}>\n            <password_sha256_hex>{}</password_sha256_hex>",
                sha256_hex(password)
            )),
            "{user}: {u}"
        );
    }
    // Only the writer's profile may write.
    let profile = |user: &str| {
        let start = u.find(&format!("<{user}>")).unwrap();
        let end = u.find(&format!("</{user}>")).unwrap();
        let block = &u[start..end];
        let p = block.find("<profile>").unwrap() + "<profile>".len();
        block[p..p + block[p..].find('<').unwrap()].to_string()
    };
    assert_eq!(profile("spoolhouse_shipper"), "default");
    assert_eq!(profile("spoolhouse_cluster"), "readonly");
    assert_eq!(profile("spoolhouse_query"), "readonly");
    assert_eq!(profile("spoolhouse_sql"), "analyst");
    assert!(u.contains("<readonly>2</readonly>"));
    assert!(u.contains("<spoolhouse_query>"));
    assert!(u.contains("<profile>readonly</profile>"));
    assert!(u.contains("<allow_databases><database>spoolhouse</database></allow_databases>"));
}

#[test]
fn ddl_names_the_right_clusters_per_dc() {
    let d = dc_config::examples::declared();
    let dc2 = d.topology.dc("dc2").unwrap();
    let s = ddl::statements(&d.topology, dc2, &d.registry);
    let joined = s.join("\n");
    assert!(joined.contains("ENGINE = Distributed(dc2, spoolhouse, events_local, rand())"));
    assert!(joined.contains("ENGINE = Distributed(global, spoolhouse, events_local, rand())"));
    assert!(joined.contains("ReplicatedMergeTree('/clickhouse/{dc}/tables/{shard}/spoolhouse/events_local', '{replica}')"));
    assert!(joined.contains("spool_segment UInt64"));
    assert!(joined.contains(
        "CREATE MATERIALIZED VIEW IF NOT EXISTS spoolhouse.series_mv TO spoolhouse.series_local"
    ));
    assert!(s[0].starts_with("CREATE DATABASE IF NOT EXISTS spoolhouse"));
    // Redis misses read the newest keyed state by its key, not by a scan.
    assert!(joined.contains("ReplicatedReplacingMergeTree('/clickhouse/{dc}/tables/{shard}/spoolhouse/keyed_state_local', '{replica}', time_ms)\nORDER BY (event, key)"), "{joined}");
    assert!(joined.contains("CREATE MATERIALIZED VIEW IF NOT EXISTS spoolhouse.keyed_state_mv TO spoolhouse.keyed_state_local"));
    assert!(
        joined.contains("WHERE event IN ('watch_progress')"),
        "{joined}"
    );
    assert!(joined.contains("ENGINE = Distributed(global, spoolhouse, keyed_state_local, rand())"));
    let script = ddl::script(&d.topology, dc2, &d.registry);
    assert_eq!(script.matches(";\n").count(), s.len());
}

#[test]
fn service_configs_round_trip() {
    let d = dc_config::examples::declared();
    let files = render::render(
        &d.topology,
        &d.registry,
        &d.registry_text,
        &Credentials::generate(),
    );
    let text = |p: &str| {
        files
            .iter()
            .find(|f| f.path == Path::new(p))
            .unwrap()
            .text
            .clone()
    };
    let c: CollectorConfig = toml::from_str(&text("services/dc1/dc1-app1/collector.toml")).unwrap();
    // The host's files name the DC's registry, one folder up.
    assert_eq!(c.registry, Path::new("../events.toml"));
    assert_eq!(
        c,
        CollectorConfig {
            registry: "../events.toml".into(),
            ..CollectorConfig::for_dc(d.topology.dc("dc1").unwrap())
        }
    );
    assert_eq!(c.tcp.to_string(), "127.0.0.1:17101");
    let s: ShipperConfig = toml::from_str(&text("services/dc1/dc1-app1/shipper.toml")).unwrap();
    assert_eq!(s.shards.len(), 2);
    assert_eq!(s.shards[1].replicas, ["http://127.0.0.1:18102"]);
    let secrets = Path::new("/etc/spoolhouse/secrets");
    assert_eq!(
        s.clickhouse_password_file,
        password_file(secrets, "spoolhouse_shipper")
    );
    let q: QueryConfig = toml::from_str(&text("services/dc2/query.toml")).unwrap();
    assert_eq!(q.clickhouse, ["http://127.0.0.1:18111"]);
    assert_eq!(
        (q.clickhouse_password_file, q.sql_password_file),
        (
            password_file(secrets, "spoolhouse_query"),
            password_file(secrets, "spoolhouse_sql")
        )
    );
    let dcs: Vec<(&str, usize)> = q
        .datacenters
        .iter()
        .map(|d| (d.name.as_str(), d.shards))
        .collect();
    assert_eq!(dcs, [("dc1", 2), ("dc2", 1)]);
    assert_eq!(text("services/dc2/events.toml"), d.registry_text);
}

#[test]
fn zoo_cfg_is_standalone_for_one_node() {
    let d = dc_config::examples::declared();
    let z = render::zookeeper::zoo_cfg(d.topology.dc("dc1").unwrap(), 0);
    assert!(z.contains("clientPort=21810\n"));
    assert!(z.contains("clientPortAddress=127.0.0.1\n"));
    assert!(z.contains("dataDir=/var/lib/spoolhouse/dc1/zk1\n"));
    assert!(z.contains("4lw.commands.whitelist=ruok,srvr,stat,mntr\n"));
    assert!(!z.contains("server.1="));
}

#[test]
fn inventory_groups_every_role_per_dc() {
    let d = dc_config::examples::declared();
    let inv = inventory::inventory(&d.topology);
    for g in [
        "[dc1_zookeeper]",
        "[dc1_clickhouse]",
        "[dc1_redis]",
        "[dc1_app]",
        "[dc1_app:vars]",
        "[dc1_query]",
        "[dc1_relay]",
        "[dc1_spoolhouse:children]\ndc1_relay\ndc1_app\ndc1_query\n",
        "\ndc=dc1\nrelay_mode=false\n",
        "[relay:children]\ndc1_relay\ndc2_relay\n",
        "[dc1:children]",
        "[dc2:children]",
        "[zookeeper:children]\ndc1_zookeeper\ndc2_zookeeper\n",
        "[clickhouse:children]\ndc1_clickhouse\ndc2_clickhouse\n",
        "[redis:children]\ndc1_redis\ndc2_redis\n",
        "[spoolhouse:children]\ndc1_spoolhouse\ndc2_spoolhouse\n",
        "[app:children]\ndc1_app\ndc2_app\n",
        "[query:children]\ndc1_query\ndc2_query\n",
        "[all:vars]",
        "\nspoolhouse_secrets_dir=/etc/spoolhouse/secrets\n",
    ] {
        assert!(inv.contains(g), "{g} missing");
    }
    assert!(inv.contains(
        "dc1-s2-r1 ansible_host=127.0.0.1 ch_shard=2 ch_replica=1 ch_host=127.0.0.1 ch_tcp_port=19102"
    ));
    // The app host is reached by its name: its collector listens on loopback;
    // its values are the group's.
    assert!(inv.contains("\n[dc1_app]\ndc1-app1\n"));
    assert!(inv.contains(
        "\n[dc1_app:vars]\nspool_dir=/var/lib/spoolhouse/dc1/spool\nspool_quota_bytes=10737418240\n\
         shipper_state_dir=/var/lib/spoolhouse/dc1/shipper\n"
    ));
    assert!(inv.contains("\n[dc1_query]\ndc1-app1 query_listen=127.0.0.1:17104\n"));
}

#[test]
fn a_fleet_renders_each_host_and_groups_them_with_the_defaults() {
    let src = dc_config::examples::TOPOLOGY.replacen(
        "host = \"dc1-app1\"",
        "hosts = [\"dc1-app[01:03]\"]\n\
         [[datacenter.app_host]]\n\
         name = \"dc1-app02\"\n\
         spool = { quota_bytes = 20_000_000_000, dir = \"/data/spool\" }",
        1,
    );
    // The override table must come after the DC's own keys in TOML: move it last.
    let src = move_override_last(&src);
    let t = dc_config::topology::Topology::parse(Path::new("fleet.toml"), &src).unwrap();
    let d = dc_config::examples::declared();
    let files = render::render(&t, &d.registry, &d.registry_text, &Credentials::generate());
    let text = |p: &str| rendered(&files, p);
    for h in ["dc1-app01", "dc1-app02", "dc1-app03"] {
        let c: CollectorConfig =
            toml::from_str(&text(&format!("services/dc1/{h}/collector.toml"))).unwrap();
        assert_eq!(c.host, h);
        let s: ShipperConfig =
            toml::from_str(&text(&format!("services/dc1/{h}/shipper.toml"))).unwrap();
        assert_eq!(s.host, h);
        let quota = if h == "dc1-app02" {
            20_000_000_000
        } else {
            10_737_418_240
        };
        assert_eq!(c.spool_quota_bytes, quota, "{h}");
    }
    let inv = inventory::inventory(&t);
    assert!(
        inv.contains("\n[dc1_app]\ndc1-app01\ndc1-app02 spool_dir=/data/spool spool_quota_bytes=20000000000 shipper_state_dir=/data/shipper\ndc1-app03\n"),
        "{inv}"
    );
    let q: QueryConfig = toml::from_str(&text("services/dc1/query.toml")).unwrap();
    let hosts: Vec<&str> = q.datacenters[0]
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(hosts, ["dc1-app01", "dc1-app02", "dc1-app03"]);
}

/// The text of rendered file `p` of `files`.
fn rendered(files: &[render::RenderedFile], p: &str) -> String {
    files
        .iter()
        .find(|f| f.path == Path::new(p))
        .unwrap_or_else(|| panic!("{p} not rendered"))
        .text
        .clone()
}

/// The example with its `[[datacenter.app_host]]` block (inserted after
/// `hosts`) moved to the end of dc1's keys, before dc1's shard tables.
fn move_override_last(src: &str) -> String {
    let start = src.find("[[datacenter.app_host]]").unwrap();
    let end = start
        + src[start..].find("dir = \"/data/spool\" }").unwrap()
        + "dir = \"/data/spool\" }".len();
    let block = &src[start..end];
    let rest = format!("{}{}", &src[..start], &src[end + 1..]);
    let at = rest.find("[[datacenter.clickhouse.shard]]").unwrap();
    format!("{}{block}\n\n{}", &rest[..at], &rest[at..])
}

/// A DC with relays (docs/adr/0017): each relay's config, and every app
/// host's shipper pointed at them with the DC's secret; the other DC stays
/// direct. Names must be unique.
#[test]
fn a_dc_with_relays_renders_them_and_its_shippers_forward() {
    let relay = "\n[[datacenter.relay]]\nname = \"dc1-relay1\"\nlisten = \"0.0.0.0:7190\"\nadmin = \"127.0.0.1:7191\"\nspool_dir = \"/data/relay\"\nweight = 2\n";
    let src = dc_config::examples::TOPOLOGY.replacen(
        "\n[[datacenter.clickhouse.shard]]",
        &format!("{relay}\n[[datacenter.clickhouse.shard]]"),
        1,
    );
    let t = dc_config::topology::Topology::parse(Path::new("relay.toml"), &src).unwrap();
    let d = dc_config::examples::declared();
    let files = render::render(&t, &d.registry, &d.registry_text, &Credentials::generate());
    let text = |p: &str| rendered(&files, p);
    let r: dc_config::services::RelayConfig =
        toml::from_str(&text("services/dc1/dc1-relay1/relay.toml")).unwrap();
    assert_eq!((r.dc.as_str(), r.name.as_str()), ("dc1", "dc1-relay1"));
    assert_eq!(r.shards.len(), 2);
    assert!(r.secret_file.ends_with("relay-dc1.secret"));
    let s: ShipperConfig = toml::from_str(&text("services/dc1/dc1-app1/shipper.toml")).unwrap();
    {
        // A batch larger than a relay takes is refused at start.
        use dc_config::check::Declaration;
        let mut big = s.clone();
        big.limits.batch_bytes_max = 128 << 20;
        let mut c = dc_config::check::Checker::default();
        big.check(&mut c);
        let e = format!("{:?}", c.into_errors(Path::new("shipper.toml"), ""));
        assert!(e.contains("in relay mode"), "{e}");
    }
    let fwd = s.relay.expect("dc1's shipper forwards");
    assert_eq!(fwd.relays.len(), 1);
    // Listening on every address: reached by the relay's name.
    assert_eq!(fwd.relays[0].addr, "dc1-relay1:7190");
    assert_eq!(fwd.relays[0].weight, 2);
    assert_eq!(fwd.secret_file, r.secret_file);
    let s2: ShipperConfig = toml::from_str(&text("services/dc2/dc2-app1/shipper.toml")).unwrap();
    assert!(s2.relay.is_none(), "dc2 stays direct");

    let twice = src.replacen(
        "\n[[datacenter.clickhouse.shard]]",
        &format!("{relay}\n[[datacenter.clickhouse.shard]]"),
        1,
    );
    let e = dc_config::topology::Topology::parse(Path::new("relay.toml"), &twice)
        .unwrap_err()
        .to_string();
    assert!(e.contains("relay names must be unique"), "{e}");
}
