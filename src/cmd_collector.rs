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
    let registry_path = args
        .config
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join(&config.registry);
    let collector = Collector::open(config, registry, metrics, health.clone())
        .with_context(|| format!("opening the spool in {}", spool_dir.display()))?;
    let registry_handle = collector.registry_handle();
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
        tokio::spawn(reload_on_sighup(registry_handle, registry_path));
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

/// On each SIGHUP: reads the registry file again and, if it checks, puts
/// it in service; lines from then on are checked against it, no
/// connection is dropped. What changed is logged, each change safe or
/// breaking (`spoolhouse registry diff`); a registry that does not check
/// is logged and the one in service stays.
async fn reload_on_sighup(handle: collector::RegistryHandle, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; the registry is not reloaded without a restart");
        return;
    };
    while hangups.recv().await.is_some() {
        let p = path.clone();
        let loaded =
            tokio::task::spawn_blocking(move || dc_config::registry::Registry::load(&p)).await;
        match loaded {
            Ok(Ok(new)) => {
                let changes = dc_config::registry_diff::diff(&handle.current(), &new);
                for c in &changes {
                    tracing::warn!(change = %c, "registry reloaded with a change");
                }
                handle.replace(new);
                tracing::info!(registry = %path.display(), changes = changes.len(), breaking = changes.iter().filter(|c| c.verdict == dc_config::registry_diff::Verdict::Breaking).count(), "registry reloaded (SIGHUP)");
            }
            Ok(Err(e)) => {
                tracing::error!(registry = %path.display(), error = %e, "SIGHUP: the registry does not check; the one in service stays");
            }
            Err(e) => tracing::error!(error = %e, "SIGHUP: reading the registry did not finish"),
        }
    }
}
