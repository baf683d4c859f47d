//! Every topology rule, with the error text an operator sees.

use std::path::Path;

use dc_config::topology::Topology;

const BASE: &str = dc_config::examples::TOPOLOGY;

/// Parses `src`, expecting exactly the given (line, key, rule fragment) errors.
fn errors(src: &str) -> Vec<String> {
    match Topology::parse(Path::new("t.toml"), src) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

fn expect_one(src: &str, want: &str) {
    let got = errors(src);
    assert!(
        got.iter().any(|e| e == want),
        "wanted error\n  {want}\ngot\n  {}",
        got.join("\n  ")
    );
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines().position(|l| l.contains(needle)).expect(needle) + 1
}

#[test]
fn the_example_is_valid() {
    let t = Topology::parse(Path::new("two-dc.toml"), BASE).unwrap();
    assert_eq!(t.datacenter.len(), 2);
    assert_eq!(t.datacenter[0].clickhouse.shard.len(), 2);
    assert_eq!(t.datacenter[1].clickhouse.shard.len(), 1);
    let names: Vec<_> = t.replicas().map(|r| r.name()).collect();
    assert_eq!(names, ["dc1-s1-r1", "dc1-s2-r1", "dc2-s1-r1"]);
}

#[test]
fn duplicate_port_names_both_places() {
    let src = BASE.replace("http_port = 18102", "http_port = 18101");
    let line = line_of(&src, "tcp_port = 19102");
    expect_one(
        &src,
        &format!("t.toml:{line}: `datacenter[0].clickhouse.shard[1].replica[0].http_port`: duplicate port: 127.0.0.1:18101 is already used by `datacenter[0].clickhouse.shard[0].replica[0].http_port`"),
    );
}

#[test]
fn duplicate_port_across_services_and_datacenters() {
    let src = BASE.replace(
        "listen = \"127.0.0.1:17204\"",
        "listen = \"127.0.0.1:17101\"",
    );
    let line = line_of(&src, "query = { listen = \"127.0.0.1:17101\"");
    expect_one(
        &src,
        &format!("t.toml:{line}: `datacenter[1].query.listen`: duplicate port: 127.0.0.1:17101 is already used by `datacenter[0].collector.tcp`"),
    );
}

#[test]
fn unknown_key_is_located() {
    let src = BASE.replace("host = \"dc1-app1\"", "host = \"dc1-app1\"\nhots = 1");
    let got = errors(&src);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = line_of(&src, "hots = 1");
    assert!(
        got[0].starts_with(&format!("t.toml:{line}: `datacenter[0].hots`")),
        "{}",
        got[0]
    );
    assert!(got[0].contains("unknown field `hots`"), "{}", got[0]);
}

#[test]
fn wrong_type_is_located() {
    let src = BASE.replace(
        "weight = 1\nreplica = [\n  { host = \"127.0.0.1\", tcp_port = 19102",
        "weight = \"heavy\"\nreplica = [\n  { host = \"127.0.0.1\", tcp_port = 19102",
    );
    let got = errors(&src);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = line_of(&src, "\"heavy\"");
    assert!(
        got[0].starts_with(&format!(
            "t.toml:{line}: `datacenter[0].clickhouse.shard[1].weight`"
        )),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("invalid type: string \"heavy\", expected u32"),
        "{}",
        got[0]
    );
}

#[test]
fn names_must_be_identifiers_and_unique() {
    let src = BASE.replace("name = \"dc2\"", "name = \"dc1\"");
    let line = line_of(&src, "host = \"dc2-app1\"") - 1;
    expect_one(
        &src,
        &format!(
            "t.toml:{line}: `datacenter[1].name`: duplicate datacenter name: also datacenter[0]"
        ),
    );
    let src = BASE.replace("name = \"dc2\"", "name = \"DC-2\"");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[1].name`: must be a lower-case identifier: a letter, then letters, digits or `_` (at most 64)"));
    let src = BASE.replace("name = \"dc2\"", "name = \"global\"");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[1].name`: `global` is the global cluster's name; rename the DC or set `global_cluster`"));
}

#[test]
fn weights_replicas_and_zookeeper() {
    let src = BASE.replacen("weight = 1", "weight = 0", 1);
    let line = line_of(&src, "weight = 0");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].clickhouse.shard[0].weight`: must be at least 1: a shard of weight 0 would never receive data"));
    let src = BASE.replace(
        "zookeeper = [{ host = \"127.0.0.1\", port = 21820, data_path = \"/var/lib/spoolhouse/dc2/zk1\" }]",
        "zookeeper = []",
    );
    let line = line_of(&src, "zookeeper = []");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[1].zookeeper`: declare at least one ZooKeeper node: replicated tables need one"));
}

#[test]
fn shard_without_replicas() {
    let src = BASE.replace(
        "replica = [\n  { host = \"127.0.0.1\", tcp_port = 19111, http_port = 18111, interserver_port = 19211, data_path = \"/var/lib/spoolhouse/dc2/ch-s1-r1\" },\n]",
        "replica = []",
    );
    let line = line_of(&src, "replica = []");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[1].clickhouse.shard[0].replica`: declare at least one replica"));
}

#[test]
fn redis_modes() {
    let src = BASE.replace(
        "redis = { mode = \"single\", nodes = [\"127.0.0.1:16379\"] }",
        "redis = { mode = \"single\", nodes = [\"127.0.0.1:16379\", \"127.0.0.1:16378\"] }",
    );
    let line = line_of(&src, "16378");
    expect_one(
        &src,
        &format!(
            "t.toml:{line}: `datacenter[0].redis.nodes`: mode `single` takes exactly one node"
        ),
    );
    let src = BASE.replace(
        "mode = \"single\", nodes = [\"127.0.0.1:16379\"]",
        "mode = \"cluster\", nodes = []",
    );
    let line = line_of(&src, "mode = \"cluster\"");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].redis.nodes`: mode `cluster` takes at least one node (its masters)"));
}

#[test]
fn paths_quota_and_loopback() {
    let src = BASE.replace("dir = \"/var/lib/spoolhouse/dc1/spool\"", "dir = \"spool\"");
    let line = line_of(&src, "dir = \"spool\"");
    expect_one(
        &src,
        &format!(
            "t.toml:{line}: `datacenter[0].spool.dir`: must be an absolute path (got `spool`)"
        ),
    );
    let src = BASE.replace(
        "quota_bytes = 10_737_418_240 }\nshipper = { admin = \"127.0.0.1:17103\" }",
        "quota_bytes = 1000 }\nshipper = { admin = \"127.0.0.1:17103\" }",
    );
    let line = line_of(&src, "quota_bytes = 1000");
    expect_one(
        &src,
        &format!(
            "t.toml:{line}: `datacenter[0].spool.quota_bytes`: must be at least 67108864 (64 MiB)"
        ),
    );
    let src = BASE.replace("tcp = \"127.0.0.1:17101\"", "tcp = \"0.0.0.0:17101\"");
    let line = line_of(&src, "0.0.0.0:17101");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].collector.tcp`: the collector's TCP listener must be on loopback (127.0.0.0/8 or ::1): apps hand events to their own host"));
    let src = BASE.replace(
        "/var/lib/spoolhouse/dc2/ch-s1-r1",
        "/var/lib/spoolhouse/dc1/ch-s1-r1",
    );
    let line = line_of(&src, "tcp_port = 19111");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[1].clickhouse.shard[0].replica[0].data_path`: duplicate path /var/lib/spoolhouse/dc1/ch-s1-r1 on 127.0.0.1: already used by `datacenter[0].clickhouse.shard[0].replica[0].data_path`"));
}

#[test]
fn port_zero_and_socket_mode() {
    let src = BASE.replace("port = 21810", "port = 0");
    let line = line_of(&src, "port = 0,");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].zookeeper[0].port`: port 0 is not a fixed port; choose one from 1 to 65535"));
    let src = BASE.replace(
        "inbox = \"/var/lib/spoolhouse/dc1/inbox\"",
        "inbox = \"/var/lib/spoolhouse/dc1/inbox\", socket_mode = 0o7777",
    );
    let line = line_of(&src, "0o7777");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].collector.socket_mode`: must be a file mode of at most 0o777 (write it as 0o660)"));
}

#[test]
fn all_problems_are_reported_at_once() {
    // Three shards of weight 0 and a duplicate name: four problems, one run.
    let src = BASE
        .replace("weight = 1", "weight = 0")
        .replace("name = \"dc2\"", "name = \"dc1\"");
    assert_eq!(errors(&src).len(), 4, "{:?}", errors(&src));
}

#[test]
fn empty_file_says_what_is_missing() {
    let got = errors("");
    assert_eq!(got, ["t.toml:1: missing field `datacenter`"]);
}

#[test]
fn derived_ports_are_claimed_too() {
    // A Redis Cluster node's bus (port + 10000) on the collector's port.
    let src = BASE.replace(
        "redis = { mode = \"single\", nodes = [\"127.0.0.1:16379\"] }",
        "redis = { mode = \"cluster\", nodes = [\"127.0.0.1:7101\"] }",
    );
    let got = errors(&src);
    assert!(
        got.iter()
            .any(|e| e.contains("127.0.0.1:17101 is already used") && e.contains("cluster bus")),
        "{got:?}"
    );
    // An ensemble member's quorum port (port + 1000) on another's client port.
    let src = BASE.replace(
        "zookeeper = [{ host = \"127.0.0.1\", port = 21810, data_path = \"/var/lib/spoolhouse/dc1/zk1\" }]",
        "zookeeper = [{ host = \"127.0.0.1\", port = 21810, data_path = \"/var/lib/spoolhouse/dc1/zk1\" }, { host = \"127.0.0.1\", port = 22810, data_path = \"/var/lib/spoolhouse/dc1/zk2\" }]",
    );
    let got = errors(&src);
    assert!(
        got.iter()
            .any(|e| e.contains("duplicate port: 127.0.0.1:22810")),
        "{got:?}"
    );
}

/// The example with dc1's `host = "dc1-app1"` replaced by `hosts`, and
/// `extra` (override tables) put after dc1's own keys.
fn fleet(hosts: &str, extra: &str) -> String {
    let src = BASE.replacen("host = \"dc1-app1\"", &format!("hosts = {hosts}"), 1);
    let at = src.find("[[datacenter.clickhouse.shard]]").unwrap();
    format!("{}{extra}\n{}", &src[..at], &src[at..])
}

#[test]
fn a_fleet_of_ranges_resolves_with_defaults_and_overrides() {
    let src = fleet(
        "[\"dc1-app[001:400]\", \"dc1-batch1\"]",
        "[[datacenter.app_host]]\nname = \"dc1-batch1\"\nspool = { quota_bytes = 107_374_182_400 }\ncollector = { socket = \"/run/batch.sock\" }\n",
    );
    let t = Topology::parse(Path::new("t.toml"), &src).unwrap();
    let hosts = t.dc("dc1").unwrap().app_hosts();
    assert_eq!(hosts.len(), 401);
    assert_eq!(hosts[0].name, "dc1-app001");
    assert_eq!(hosts[399].name, "dc1-app400");
    let batch = &hosts[400];
    assert_eq!(batch.spool.quota_bytes, 107_374_182_400);
    assert_eq!(batch.collector.socket, Path::new("/run/batch.sock"));
    assert_eq!(
        batch.collector.tcp, hosts[0].collector.tcp,
        "the rest stays default"
    );
    assert_eq!(batch.overridden, Some(0));
}

#[test]
fn a_default_path_may_hold_the_host_name() {
    let src = fleet("[\"dc1-app[1:2]\"]", "").replace(
        "dir = \"/var/lib/spoolhouse/dc1/spool\"",
        "dir = \"/var/lib/spoolhouse/{host}/spool\"",
    );
    let t = Topology::parse(Path::new("t.toml"), &src).unwrap();
    let dirs: Vec<_> = t
        .dc("dc1")
        .unwrap()
        .app_hosts()
        .into_iter()
        .map(|h| h.spool.dir.display().to_string())
        .collect();
    assert_eq!(
        dirs,
        [
            "/var/lib/spoolhouse/dc1-app1/spool",
            "/var/lib/spoolhouse/dc1-app2/spool"
        ]
    );
}

#[test]
fn fleet_errors_name_the_host_and_the_line() {
    // A range that is not one.
    let src = fleet("[\"dc1-app[1-4]\"]", "");
    let line = line_of(&src, "dc1-app[1-4]");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].hosts[0]`: a range is written `prefix[FIRST:LAST]suffix` with decimal bounds, e.g. `dc1-app[001:400]`"));
    let src = fleet("[\"dc1-app[9:2]\"]", "");
    expect_one(
        &src,
        &format!(
            "t.toml:{line}: `datacenter[0].hosts[0]`: the range ends before it starts (9 > 2)"
        ),
    );
    // A host in two DCs.
    let src = fleet("[\"dc1-app[1:3]\", \"dc2-app1\"]", "");
    let line2 = line_of(&src, "host = \"dc2-app1\"");
    expect_one(&src, &format!("t.toml:{line2}: `datacenter[1].host`: app host `dc2-app1` is already declared by `datacenter[0].hosts[1]`: a host belongs to one datacenter, once"));
    // A bad name.
    let src = fleet("[\"dc1 app\"]", "");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].hosts[0]`: app host `dc1 app`: a host name is 1 to 255 letters, digits, `.`, `-` or `_`"));
    // Both forms, and neither.
    let src = BASE.replacen(
        "host = \"dc1-app1\"",
        "host = \"dc1-app1\"\nhosts = [\"dc1-app2\"]",
        1,
    );
    let line = line_of(&src, "host = \"dc1-app1\"");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].host`: give either `host` (one app host) or `hosts` (a list), not both"));
    let src = BASE.replacen("host = \"dc1-app1\"\n", "", 1);
    let got = errors(&src);
    assert!(
        got.iter()
            .any(|e| e.contains("`datacenter[0].hosts`: declare the DC's app hosts")),
        "{got:?}"
    );
}

#[test]
fn overrides_are_checked_where_they_are_written() {
    // An override of a host the DC does not have.
    let src = fleet(
        "[\"dc1-app[1:3]\"]",
        "[[datacenter.app_host]]\nname = \"dc1-app9\"\n",
    );
    let line = line_of(&src, "name = \"dc1-app9\"");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].app_host[0].name`: no app host `dc1-app9` in this datacenter's `hosts`; add it there or remove this entry"));
    // An unknown key, a wrong type.
    let src = fleet(
        "[\"dc1-app[1:3]\"]",
        "[[datacenter.app_host]]\nname = \"dc1-app2\"\nspool = { quota = 5 }\n",
    );
    let got = errors(&src);
    assert!(
        got.iter()
            .any(|e| e.contains("`datacenter[0].app_host[0].spool`")
                && e.contains("unknown field `quota`")),
        "{got:?}"
    );
    // A value breaking a rule, located at the override, naming the host.
    let src = fleet(
        "[\"dc1-app[1:3]\"]",
        "[[datacenter.app_host]]\nname = \"dc1-app2\"\nspool = { quota_bytes = 1000 }\n",
    );
    let line = line_of(&src, "quota_bytes = 1000");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].app_host[0].spool.quota_bytes`: app host `dc1-app2`: must be at least 67108864 (64 MiB)"));
    // A port clash inside one host; the same ports on other hosts are fine.
    let src = fleet(
        "[\"dc1-app[1:3]\"]",
        "[[datacenter.app_host]]\nname = \"dc1-app3\"\nshipper = { admin = \"127.0.0.1:17102\" }\n",
    );
    let line = line_of(&src, "shipper = { admin = \"127.0.0.1:17102\" }");
    expect_one(&src, &format!("t.toml:{line}: `datacenter[0].app_host[0].shipper.admin`: app host `dc1-app3`: duplicate port on app host `dc1-app3`: 127.0.0.1:17102 is already used by `datacenter[0].collector.admin`"));
    // Overriding the same host twice.
    let src = fleet(
        "[\"dc1-app[1:3]\"]",
        "[[datacenter.app_host]]\nname = \"dc1-app2\"\n[[datacenter.app_host]]\nname = \"dc1-app2\"\n",
    );
    assert!(errors(&src)
        .iter()
        .any(|e| e.contains("`dc1-app2` is overridden twice")));
}

#[test]
fn a_rule_the_defaults_break_is_reported_once_not_per_host() {
    let src = fleet("[\"dc1-app[001:400]\"]", "")
        .replace("dir = \"/var/lib/spoolhouse/dc1/spool\"", "dir = \"spool\"");
    let got = errors(&src);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("`datacenter[0].spool.dir`: must be an absolute path"));
}
