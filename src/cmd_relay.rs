//! `spoolhouse relay`: run one of a DC's relays from its config
//! (docs/adr/0017-relay-tier.md).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dc_config::services::RelayConfig;
use shipper::relay::{Relay, RelayMetrics};

/// Arguments of `spoolhouse relay`.
#[derive(Debug, Args)]
pub struct RelayArgs {
    /// Relay config (TOML: dc, name, listen, admin, spool_dir, database,
    /// shards, clickhouse_password_file, secret_file, limits).
    #[arg(long)]
    config: PathBuf,
}

/// Runs the relay until SIGTERM or Ctrl-C. Its sessions end with it; the
/// forwarders take over at another relay, or here after a restart.
pub fn run(args: RelayArgs) -> anyhow::Result<()> {
    let config: RelayConfig = dc_config::check::load_checked(&args.config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("relay-io")
        .build()
        .context("starting the async runtime")?;
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(RelayMetrics::register(&mut prom));
    let shutdown = Arc::new(AtomicBool::new(false));
    let relay = Arc::new(
        Relay::open(config.clone(), metrics, shutdown.clone())
            .with_context(|| format!("opening relay {} of {}", config.name, config.dc))?,
    );
    let health_fn: crate::admin::HealthFn = {
        let relay = relay.clone();
        Arc::new(move || relay.health())
    };
    let stop_admin = crate::admin::serve_until_stopped(
        &runtime,
        config.admin,
        prom,
        health_fn,
        shutdown,
        "stopping relay",
    )?;
    tracing::info!(dc = %config.dc, relay = %config.name, listen = %config.listen, admin = %config.admin, spool = %config.spool_dir.display(), "relay started");
    let result = relay.run(runtime.handle().clone());
    let _ = stop_admin.send(());
    result.context("relay stopped")
}
