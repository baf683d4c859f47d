//! `spoolhouse shipper`: run a host's shipper from its rendered config.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use dc_config::registry::Registry;
use dc_config::services::ShipperConfig;
use shipper::{Guards, Health, Metrics, Shipper};

/// Arguments of `spoolhouse shipper`.
#[derive(Debug, Args)]
pub struct ShipperArgs {
    /// Shipper config (`services/<dc>/<host>/shipper.toml` from `spoolhouse config render`).
    #[arg(long)]
    config: PathBuf,
    /// Turn off the check of which spool positions ClickHouse already holds
    /// before a batch is sent again (for tests that prove the other guard alone).
    #[arg(long, hide = true)]
    no_verify_positions: bool,
    /// Turn off ClickHouse block deduplication (for tests that prove the other guard alone).
    #[arg(long, hide = true)]
    no_deduplicate: bool,
    /// Re-aggregate the minutes from this moment (unix seconds) on, e.g. to
    /// fill in the history of a metric added to the registry; with
    /// `--reaggregate-to`. At most 31 days per run.
    #[arg(long, requires = "reaggregate_to")]
    reaggregate_from: Option<u32>,
    /// End (unix seconds, exclusive) of the minutes to re-aggregate.
    #[arg(long, requires = "reaggregate_from")]
    reaggregate_to: Option<u32>,
}

/// Reads a service config and the registry it names (relative to the config file).
pub fn load_with_registry<T: dc_config::check::Declaration>(
    path: &Path,
    registry_of: impl Fn(&T) -> &Path,
) -> anyhow::Result<(T, Registry)> {
    let config: T = dc_config::check::load_checked(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let registry = Registry::load(&base.join(registry_of(&config)))?;
    Ok((config, registry))
}

/// Runs the shipper until SIGTERM or Ctrl-C, then finishes the batch in hand.
pub fn run(args: ShipperArgs) -> anyhow::Result<()> {
    let (config, registry) = load_with_registry::<ShipperConfig>(&args.config, |c| &c.registry)?;
    // At start, before anything else: a password file the shipper cannot
    // use is a config error, said at once.
    dc_config::credentials::read_password(&config.clickhouse_password_file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("shipper-io")
        .build()
        .context("starting the async runtime")?;
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut prom));
    let health = Arc::new(Health::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    let health_fn: crate::admin::HealthFn = {
        let h = health.clone();
        Arc::new(move || (h.ok(), h.to_json()))
    };
    let stop_admin = crate::admin::serve_until_stopped(
        &runtime,
        config.admin,
        prom,
        health_fn,
        shutdown.clone(),
        "stopping: finishing the batch in hand",
    )?;
    tracing::info!(dc = %config.dc, host = %config.host, spool = %config.spool_dir.display(), admin = %config.admin, "shipper started");
    let guards = Guards {
        verify_positions: !args.no_verify_positions,
        deduplicate: !args.no_deduplicate,
    };
    let shipper = Arc::new(Shipper::new(
        config, registry, metrics, health, guards, shutdown,
    ));
    let result = shipper.run(runtime.handle().clone());
    let _ = stop_admin.send(());
    result.context("shipping stopped")
}
