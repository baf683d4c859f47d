//! Everything rendered from the declared files, all from one checked model:
//! ClickHouse and ZooKeeper configs, the schema, service configs, the
//! ClickHouse users' password files and the Ansible inventory.

pub mod clickhouse;
pub mod ddl;
pub mod inventory;
pub mod zookeeper;

use std::path::{Path, PathBuf};

use crate::credentials::{password_file, Credentials};
use crate::registry::Registry;
use crate::services::{CollectorConfig, QueryConfig, RelayConfig, ShipperConfig, REGISTRY_FILE};
use crate::topology::Topology;

/// One rendered file: where it goes (relative to the output folder) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// Path relative to the output folder.
    pub path: PathBuf,
    /// Contents.
    pub text: String,
    /// Holds a password: written with mode 0600.
    pub private: bool,
}

fn file(path: impl Into<PathBuf>, text: String) -> RenderedFile {
    RenderedFile {
        path: path.into(),
        text,
        private: false,
    }
}

fn private_file(path: impl Into<PathBuf>, text: String) -> RenderedFile {
    RenderedFile {
        private: true,
        ..file(path, text)
    }
}

fn to_toml<T: serde::Serialize>(header: &str, v: &T) -> String {
    let body = toml::to_string_pretty(v).expect("service configs are plain structs of TOML types");
    format!("# {header}\n# Rendered by `spoolhouse config render`; edit the topology, not this file.\n\n{body}")
}

/// Every file for `topology` and `registry` (whose text is `registry_text`)
/// with the users' `credentials`, in a stable order (private files, mode
/// 0600, marked `*`):
///
/// ```text
/// secrets/clickhouse-<user>.password *         one per ClickHouse user
/// clickhouse/<replica>/config.xml *, users.xml one folder per server
/// clickhouse/<replica>/client.xml *            the writer's login, for clickhouse-client
/// zookeeper/<dc>-zk<n>/zoo.cfg                 one folder per ZooKeeper node
/// ddl/<dc>.sql                                 the schema of each DC
/// services/<dc>/query.toml, events.toml       the DC's query service, its registry
/// services/<dc>/<host>/{collector,shipper}.toml one folder per app host
/// ansible/inventory.ini
/// ```
pub fn render(
    topology: &Topology,
    registry: &Registry,
    registry_text: &str,
    credentials: &Credentials,
) -> Vec<RenderedFile> {
    let mut out = Vec::new();
    for (user, password) in credentials.users() {
        out.push(private_file(
            password_file(Path::new("secrets"), user),
            format!("{password}\n"),
        ));
    }
    let users = clickhouse::users_config(topology, credentials);
    for r in topology.replicas() {
        let dir = Path::new("clickhouse").join(r.name());
        out.push(private_file(
            dir.join("config.xml"),
            clickhouse::server_config(topology, &r, credentials),
        ));
        out.push(file(dir.join("users.xml"), users.clone()));
        out.push(private_file(
            dir.join("client.xml"),
            clickhouse::client_config(credentials),
        ));
    }
    for dc in &topology.datacenter {
        for (i, _) in dc.zookeeper.iter().enumerate() {
            out.push(file(
                Path::new("zookeeper")
                    .join(zookeeper::node_name(dc, i))
                    .join("zoo.cfg"),
                zookeeper::zoo_cfg(dc, i),
            ));
        }
    }
    for dc in &topology.datacenter {
        out.push(file(
            Path::new("ddl").join(format!("{}.sql", dc.name)),
            ddl::script(topology, dc, registry),
        ));
    }
    for dc in &topology.datacenter {
        let dir = Path::new("services").join(&dc.name);
        for host in dc.app_hosts() {
            let host_dir = dir.join(&host.name);
            // The host's files name the DC's one registry copy.
            let mut collector = CollectorConfig::for_host(dc, &host);
            collector.registry = Path::new("..").join(REGISTRY_FILE);
            let mut shipper = ShipperConfig::for_host(topology, dc, &host);
            shipper.registry = Path::new("..").join(REGISTRY_FILE);
            out.push(file(
                host_dir.join("collector.toml"),
                to_toml(
                    &format!(
                        "Collector of app host {} of datacenter {}.",
                        host.name, dc.name
                    ),
                    &collector,
                ),
            ));
            out.push(file(
                host_dir.join("shipper.toml"),
                to_toml(
                    &format!(
                        "Shipper of app host {} of datacenter {}.",
                        host.name, dc.name
                    ),
                    &shipper,
                ),
            ));
        }
        for relay in &dc.relay {
            out.push(file(
                dir.join(&relay.name).join("relay.toml"),
                to_toml(
                    &format!("Relay {} of datacenter {}.", relay.name, dc.name),
                    &RelayConfig::for_relay(topology, dc, relay),
                ),
            ));
        }
        out.push(file(
            dir.join("query.toml"),
            to_toml(
                &format!("Query service of datacenter {}.", dc.name),
                &QueryConfig::for_dc(topology, dc),
            ),
        ));
        out.push(file(dir.join(REGISTRY_FILE), registry_text.to_string()));
    }
    out.push(file(
        "ansible/inventory.ini",
        inventory::inventory(topology),
    ));
    out
}

/// Writes `files` under `dir`, creating folders; an existing file is
/// replaced. A private file is written with mode 0600 (and made so if it
/// existed with another).
pub fn write_all(dir: &Path, files: &[RenderedFile]) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    for f in files {
        let path = dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mode = if f.private { 0o600 } else { 0o644 };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)?;
        if f.private {
            out.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        std::io::Write::write_all(&mut out, f.text.as_bytes())?;
    }
    Ok(())
}
