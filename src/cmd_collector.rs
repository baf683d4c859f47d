//! `spoolhouse collector`: run a host's collector from its rendered config.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use collector::{Collector, Health, Metrics};
use dc_config::services::CollectorConfig;

/// Arguments of `spoolhouse collector`.
#[derive(Debug, Args)]
pub struct CollectorArgs {
    /// Collector config (`services/<dc>/<host>/collector.toml` from `spoolhouse config render`).
    #[arg(long)]
    config: PathBuf,
}

/// Runs the collector until SIGTERM or Ctrl-C, then drains in-flight batches.
pub fn run(args: CollectorArgs) -> anyhow::Result<()> {
    let (config, registry) =
        crate::cmd_shipper::load_with_registry::<CollectorConfig>(&args.config, |c| &c.registry)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("collector-io")
        .build()
        .context("starting the async runtime")?;
    let mut prom = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut prom));
    let health = Arc::new(Health::default());
    let admin_addr = config.admin;
    let (dc, host) = (config.dc.clone(), config.host.clone());
    let spool_dir = config.spool_dir.clone();
    let collector = Collector::open(config, registry, metrics, health.clone())
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    collector::metrics::SpoolExport::register(&mut prom, collector.spool());
    runtime.block_on(async move {
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let health_fn: crate::admin::HealthFn = {
            let h = health.clone();
            Arc::new(move || (h.ok(), h.to_json()))
        };
        let admin = crate::admin::bind(admin_addr, prom, health_fn, async {
            let _ = admin_stopped.await;
        })
        .await?;
        tokio::spawn(admin);
        let running = collector.start().await.context("starting the collector")?;
        tracing::info!(%dc, %host, spool = %spool_dir.display(), admin = %admin_addr, "collector started");
        let stop = running.stopper();
        tokio::spawn(async move {
            crate::admin::terminated().await;
            tracing::info!("stopping: draining in-flight batches");
            let _ = stop.send(true);
        });
        let result = running.wait().await;
        let _ = stop_admin.send(());
        result.context("collector stopped with an error")?;
        tracing::info!("collector stopped; every acknowledged batch is in the spool");
        Ok(())
    })
}
