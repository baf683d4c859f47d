//! ClickHouse server configuration: `config.xml` (ports, paths, clusters
//! with the servers' own credentials, ZooKeeper, macros) and `users.xml`
//! (one writer, the read-only users, each with a password: see
//! [`crate::credentials`]).

use std::fmt::Write;
use std::net::IpAddr;

use crate::credentials::{sha256_hex, Credentials};
use crate::schema::user::{CLUSTER_USER, QUERY_USER, SQL_USER, WRITER_USER};
use crate::topology::{ReplicaRef, Topology};

/// Escapes text for an XML element body.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

/// `config.xml` for one server; it holds [`CLUSTER_USER`]'s password.
pub fn server_config(
    topology: &Topology,
    server: &ReplicaRef<'_>,
    credentials: &Credentials,
) -> String {
    let r = server.replica;
    let data = r.data_path.display().to_string();
    let data = data.trim_end_matches('/');
    let e = xml_escape;
    let mut x = String::new();
    let _ = write!(
        x,
        r#"<?xml version="1.0"?>
<!-- Rendered by spoolhouse from the topology: server {name} of datacenter {dc}. -->
<yandex>
    <logger>
        <level>information</level>
        <log>{data}/log/clickhouse-server.log</log>
        <errorlog>{data}/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>3</count>
    </logger>
    <listen_host>{host}</listen_host>
    <http_port>{http}</http_port>
    <tcp_port>{tcp}</tcp_port>
    <interserver_http_port>{inter}</interserver_http_port>
    <interserver_http_host>{host}</interserver_http_host>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>1073741824</uncompressed_cache_size>
    <mark_cache_size>1073741824</mark_cache_size>
    <path>{data}/</path>
    <tmp_path>{data}/tmp/</tmp_path>
    <user_files_path>{data}/user_files/</user_files_path>
    <format_schema_path>{data}/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
    <distributed_ddl><path>/clickhouse/{dcname}/task_queue/ddl</path></distributed_ddl>
    <remote_servers>
"#,
        name = e(&server.name()),
        dc = e(&server.dc.name),
        dcname = e(&server.dc.name),
        host = e(&r.host),
        http = r.http_port,
        tcp = r.tcp_port,
        inter = r.interserver_port,
        data = e(data),
    );
    let viewer = &server.dc.name;
    for dc in &topology.datacenter {
        cluster_xml(
            &mut x,
            topology,
            viewer,
            &dc.name,
            dc.replicas().collect::<Vec<_>>().as_slice(),
            credentials,
        );
    }
    let every: Vec<_> = topology.replicas().collect();
    cluster_xml(
        &mut x,
        topology,
        viewer,
        &topology.global_cluster,
        &every,
        credentials,
    );
    x.push_str("    </remote_servers>\n    <zookeeper>\n");
    for (i, z) in server.dc.zookeeper.iter().enumerate() {
        let _ = writeln!(
            x,
            "        <node index=\"{}\"><host>{}</host><port>{}</port></node>",
            i + 1,
            e(&z.host),
            z.port
        );
    }
    let _ = write!(
        x,
        "        <session_timeout_ms>30000</session_timeout_ms>\n    </zookeeper>\n    <macros>\n        <dc>{}</dc>\n        <shard>{}</shard>\n        <replica>{}</replica>\n    </macros>\n</yandex>\n",
        e(&server.dc.name),
        server.shard,
        e(&server.name()),
    );
    x
}

/// One `<cluster>` of `remote_servers`: the given servers grouped by shard,
/// each at the address a server of DC `viewer` dials it on.
fn cluster_xml(
    x: &mut String,
    topology: &Topology,
    viewer: &str,
    name: &str,
    servers: &[ReplicaRef<'_>],
    credentials: &Credentials,
) {
    let _ = writeln!(x, "        <{name}>");
    let mut i = 0;
    while i < servers.len() {
        let (dc, shard) = (&servers[i].dc.name, servers[i].shard);
        let weight = servers[i].dc.clickhouse.shard[shard - 1].weight;
        let _ = writeln!(
            x,
            "            <shard>\n                <weight>{weight}</weight>\n                <internal_replication>true</internal_replication>"
        );
        while i < servers.len() && &servers[i].dc.name == dc && servers[i].shard == shard {
            let r = servers[i].replica;
            let direct = format!("{}:{}", r.host, r.tcp_port);
            let (host, port) = match topology.cross_dc_routes.get(&(viewer.to_string(), direct)) {
                Some(via) if *dc != viewer => (via.ip().to_string(), via.port()),
                _ => (r.host.clone(), r.tcp_port),
            };
            let _ = writeln!(
                x,
                "                <replica><host>{}</host><port>{port}</port><user>{CLUSTER_USER}</user><password>{}</password></replica>",
                xml_escape(&host),
                xml_escape(&credentials.cluster),
            );
            i += 1;
        }
        x.push_str("            </shard>\n");
    }
    let _ = writeln!(x, "        </{name}>");
}

/// `client.xml`: `clickhouse-client --config-file` logs in as the writer
/// with it (the schema step), the password never on a command line.
pub fn client_config(credentials: &Credentials) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<!-- Rendered by spoolhouse: the writer's login for clickhouse-client. -->\n<config>\n    <user>{WRITER_USER}</user>\n    <password>{}</password>\n</config>\n",
        xml_escape(&credentials.writer)
    )
}

/// `users.xml`, the same on every server: each user's password as its
/// SHA-256; every user may connect from loopback, from the servers of the
/// topology and from its `client_hosts` only.
pub fn users_config(topology: &Topology, credentials: &Credentials) -> String {
    let mut networks = String::from("<ip>::1</ip><ip>127.0.0.1</ip>");
    let mut seen = std::collections::BTreeSet::new();
    let clients = topology.client_hosts.iter().map(|a| a.to_string());
    for h in topology
        .replicas()
        .map(|r| r.replica.host.clone())
        .chain(clients)
    {
        let h = &h;
        if !seen.insert(h.clone()) || h == "127.0.0.1" || h == "::1" {
            continue;
        }
        if h.parse::<IpAddr>().is_ok() {
            let _ = write!(networks, "<ip>{}</ip>", xml_escape(h));
        } else {
            let _ = write!(networks, "<host>{}</host>", xml_escape(h));
        }
    }
    format!(
        r#"<?xml version="1.0"?>
<!-- Rendered by spoolhouse from the topology. -->
<yandex>
    <profiles>
        <default>
            <max_memory_usage>10000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>in_order</load_balancing>
            <connect_timeout_with_failover_ms>250</connect_timeout_with_failover_ms>
        </default>
        <readonly>
            <readonly>2</readonly>
            <max_execution_time>30</max_execution_time>
            <max_memory_usage>4000000000</max_memory_usage>
            <load_balancing>in_order</load_balancing>
            <connect_timeout_with_failover_ms>250</connect_timeout_with_failover_ms>
        </readonly>
        <analyst>
            <readonly>1</readonly>
            <max_result_rows>{max_result_rows}</max_result_rows>
            <max_result_bytes>{max_result_bytes}</max_result_bytes>
            <result_overflow_mode>throw</result_overflow_mode>
            <max_execution_time>{max_execution_time}</max_execution_time>
            <timeout_overflow_mode>throw</timeout_overflow_mode>
            <max_rows_to_read>{max_rows_to_read}</max_rows_to_read>
            <read_overflow_mode>throw</read_overflow_mode>
            <max_memory_usage>{max_memory_usage}</max_memory_usage>
            <max_concurrent_queries_for_user>{max_concurrent}</max_concurrent_queries_for_user>
            <load_balancing>in_order</load_balancing>
            <connect_timeout_with_failover_ms>250</connect_timeout_with_failover_ms>
        </analyst>
    </profiles>
    <users>
        <{WRITER_USER}>
            <password_sha256_hex>{writer}</password_sha256_hex>
            <networks>{networks}</networks>
            <profile>default</profile>
            <quota>default</quota>
        </{WRITER_USER}>
        <{CLUSTER_USER}>
            <password_sha256_hex>{cluster}</password_sha256_hex>
            <networks>{networks}</networks>
            <profile>readonly</profile>
            <quota>default</quota>
        </{CLUSTER_USER}>
        <{QUERY_USER}>
            <password_sha256_hex>{query}</password_sha256_hex>
            <networks>{networks}</networks>
            <profile>readonly</profile>
            <quota>default</quota>
            <allow_databases><database>{db}</database></allow_databases>
        </{QUERY_USER}>
        <{SQL_USER}>
            <password_sha256_hex>{sql}</password_sha256_hex>
            <networks>{networks}</networks>
            <profile>analyst</profile>
            <quota>analyst</quota>
            <allow_databases><database>{db}</database></allow_databases>
        </{SQL_USER}>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
        <analyst>
            <interval>
                <duration>3600</duration>
                <queries>{queries_per_hour}</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>{read_rows_per_hour}</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </analyst>
    </quotas>
</yandex>
"#,
        db = xml_escape(&topology.database),
        writer = sha256_hex(&credentials.writer),
        cluster = sha256_hex(&credentials.cluster),
        query = sha256_hex(&credentials.query),
        sql = sha256_hex(&credentials.sql),
        max_result_rows = topology.sql.max_result_rows,
        max_result_bytes = topology.sql.max_result_bytes,
        max_execution_time = topology.sql.max_execution_time_s,
        max_rows_to_read = topology.sql.max_rows_to_read,
        max_memory_usage = topology.sql.max_memory_usage_bytes,
        max_concurrent = topology.sql.max_concurrent,
        queries_per_hour = topology.sql.queries_per_hour,
        read_rows_per_hour = topology.sql.read_rows_per_hour,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_replaces_a_remote_dc_server_only_for_the_dc_that_has_it() {
        let mut t = crate::examples::declared().topology;
        let (host, port) = {
            let r = t.dc("dc2").unwrap().replicas().next().unwrap().replica;
            (r.host.clone(), r.tcp_port)
        };
        let direct = format!("{host}:{port}");
        let relay: std::net::SocketAddr = "127.0.0.1:4999".parse().unwrap();
        t.cross_dc_routes
            .insert(("dc1".to_string(), direct.clone()), relay);
        let config_of = |dc: &str| {
            let r = t.dc(dc).unwrap().replicas().next().unwrap();
            server_config(&t, &r, &Credentials::generate())
        };
        let relayed = "<replica><host>127.0.0.1</host><port>4999</port><user>";
        let direct_xml = format!("<replica><host>{host}</host><port>{port}</port><user>");
        let dc1 = config_of("dc1");
        // dc2's server appears twice in dc1's view (its own cluster and the
        // global one), both through the relay.
        assert_eq!(dc1.matches(relayed).count(), 2, "{dc1}");
        assert!(!dc1.contains(&direct_xml), "{dc1}");
        let dc2_view = config_of("dc2");
        assert!(!dc2_view.contains(relayed), "{dc2_view}");
        assert_eq!(dc2_view.matches(&direct_xml).count(), 2, "{dc2_view}");
    }
}
