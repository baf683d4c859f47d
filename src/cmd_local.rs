//! `spoolhouse local`: real servers for a topology on this machine, through
//! the launcher in `launcher`; also the pieces the main job
//! (`cmd_demo`) and the benchmarks start services with.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use dc_config::Declared;
use launcher::services::Services;
use launcher::{LaunchOptions, LocalCluster, Network, INTERRUPTED};

/// Arguments of `spoolhouse local`.
#[derive(Debug, Args)]
pub struct LocalArgs {
    #[command(subcommand)]
    command: LocalCommand,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Start every server of the topology on free ports (each datacenter in
    /// a network namespace of its own, or all on loopback: see --network),
    /// apply the schema, print where each listens, and run until Ctrl-C.
    Up {
        #[command(flatten)]
        files: Files,
        /// Keep state (data, logs, rendered configs) here across runs; by
        /// default a temporary directory, removed on exit.
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        link: LinkArgs,
    },
}

#[derive(Debug, Args)]
pub(crate) struct LinkArgs {
    /// Delay each way between datacenters, added by a relay on every
    /// cross-DC path (cut and heal a DC with `spoolhouse dc cut|heal`);
    /// 0: servers dial each other directly.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=5_000))]
    cross_dc_delay_ms: u64,
    /// Where the datacenters run: `namespaces` puts each in a Linux network
    /// namespace of its own, a host with its own address on a bridge (needs
    /// root and iproute2); `loopback` runs every server on 127.0.0.1; `auto`
    /// takes namespaces when they can be made and says why not otherwise.
    #[arg(long, value_enum, default_value_t = NetworkArg::Auto)]
    network: NetworkArg,
}

/// `--network`, as clap reads it.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum NetworkArg {
    Auto,
    Namespaces,
    Loopback,
}

impl From<NetworkArg> for Network {
    fn from(n: NetworkArg) -> Self {
        match n {
            NetworkArg::Auto => Network::Auto,
            NetworkArg::Namespaces => Network::Namespaces,
            NetworkArg::Loopback => Network::Loopback,
        }
    }
}

impl LinkArgs {
    pub(crate) fn delay(&self) -> Option<Duration> {
        (self.cross_dc_delay_ms > 0).then(|| Duration::from_millis(self.cross_dc_delay_ms))
    }
}

#[derive(Debug, Args)]
pub(crate) struct Files {
    /// Topology file (TOML).
    #[arg(default_value = "examples/two-dc.toml")]
    topology: PathBuf,
    /// Event registry file (TOML).
    #[arg(default_value = "examples/events.toml")]
    registry: PathBuf,
}

pub(crate) fn install_ctrlc() -> anyhow::Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")
}

pub(crate) fn launch(
    files: &Files,
    state: Option<PathBuf>,
    link: &LinkArgs,
    app_hosts: Option<usize>,
    relay_dc: Option<&str>,
) -> anyhow::Result<LocalCluster> {
    let mut declared = Declared::load(&files.topology, &files.registry)?;
    if let Some(n) = app_hosts {
        declared.topology = launcher::with_app_hosts(&declared.topology, n);
    }
    if let Some(dc) = relay_dc {
        if declared.topology.dc(dc).is_none() {
            anyhow::bail!("--relay-dc {dc}: the topology has no such datacenter (or say `none`)");
        }
        declared.topology = launcher::with_relays(&declared.topology, dc, 1);
    }
    let started = Instant::now();
    let opts = LaunchOptions {
        state_dir: state,
        cross_dc_delay: link.delay(),
        network: link.network.into(),
        ..LaunchOptions::default()
    };
    let cluster = LocalCluster::start(&declared, opts).context("starting the local servers")?;
    crate::cmd_dc::note_running(cluster.state_dir());
    println!("network: {}", cluster.placement());
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        state_dir = %cluster.state_dir().display(),
        "local servers ready, schema applied"
    );
    Ok(cluster)
}

fn print_endpoints(cluster: &LocalCluster) {
    for dc in &cluster.topology().datacenter {
        println!("{}:", dc.name);
        for z in &dc.zookeeper {
            println!("  zookeeper   {}:{}", z.host, z.port);
        }
        for r in dc.replicas() {
            println!(
                "  clickhouse  {}  http {}  tcp {}",
                r.name(),
                r.http_url(),
                r.replica.tcp_port
            );
        }
        for n in &dc.redis.nodes {
            println!("  redis       {n}");
        }
    }
    println!(
        "clickhouse users' passwords: {} (e.g. clickhouse-client --config-file {})",
        cluster.topology().secrets_dir.display(),
        cluster
            .state_dir()
            .join("rendered/clickhouse/<server>/client.xml")
            .display()
    );
    println!("state: {}", cluster.state_dir().display());
}

/// Runs `spoolhouse local …`.
pub fn run(args: LocalArgs) -> anyhow::Result<()> {
    install_ctrlc()?;
    match args.command {
        LocalCommand::Up { files, state, link } => {
            let cluster = launch(&files, state, &link, None, None)?;
            print_endpoints(&cluster);
            if let Some(d) = link.delay() {
                println!(
                    "cross-DC links: {} ms each way; `spoolhouse dc cut DC` cuts one (`spoolhouse dc heal DC` heals it)",
                    d.as_millis()
                );
            }
            println!("running; Ctrl-C stops every server");
            while !INTERRUPTED.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            drop(cluster);
            Ok(())
        }
    }
}

/// Starts `dc_name`'s collector, shipper (with `shipper_limits`) and query
/// service as child processes of this binary (they die with it, like the
/// servers); [`wait_ready`] waits until they serve.
pub(crate) fn start_services(
    cluster: &LocalCluster,
    dc_name: &str,
    shipper_limits: dc_config::services::ShipperLimits,
) -> anyhow::Result<Services> {
    let mut configs = launcher::services::Configs::for_dc(cluster, dc_name)
        .with_context(|| format!("no datacenter {dc_name} in this topology"))?;
    for s in configs.shippers() {
        s.limits = shipper_limits.clone();
    }
    let exe = std::env::current_exe().context("finding the spoolhouse binary")?;
    let dir = cluster.state_dir().join("services").join(dc_name);
    launcher::services::start(cluster, dc_name, &exe, &dir, configs)
        .with_context(|| format!("starting the services of {dc_name}"))
}

/// Waits until `services` of `dc_name` serve (Ctrl-C stops the wait).
pub(crate) fn wait_ready(services: &Services, dc_name: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{dc_name}'s services serving"),
        Duration::from_secs(60),
        || services.ready(),
    )
    .with_context(|| services.log_tails(10))
}

/// [`launcher::wait::until`], failing with where the logs are.
pub(crate) fn wait_until(
    what: &str,
    limit: Duration,
    ok: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    launcher::wait::until(what, limit, ok).map_err(|e| match e {
        launcher::wait::WaitError::Interrupted(_) => anyhow::anyhow!("interrupted"),
        e => anyhow::anyhow!("{e}; logs are under the state directory"),
    })
}

/// A GET to a local HTTP service (a query service, an admin port): the
/// status and the body.
pub(crate) fn http_get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    Ok(httpd::client::get_blocking(
        addr,
        path,
        Duration::from_secs(10),
    )?)
}

/// A GET to a query service; the body as JSON.
pub(crate) fn query_get(
    addr: std::net::SocketAddr,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = http_get(addr, path)?;
    serde_json::from_str(&body).with_context(|| format!("answer of {path} ({status}): {body}"))
}
