//! `spoolhouse query`: run a datacenter's query service from its rendered config.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use dc_config::services::QueryConfig;

/// Arguments of `spoolhouse query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Query service config (`services/<dc>/query.toml` from `spoolhouse config render`).
    #[arg(long)]
    config: PathBuf,
}

/// Serves the HTTP API until SIGTERM or Ctrl-C.
pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    let (config, registry) =
        crate::cmd_shipper::load_with_registry::<QueryConfig>(&args.config, |c| &c.registry)?;
    // The ClickHouse password files, at start: a file the service cannot
    // use is a config error, said before it listens.
    for file in [&config.clickhouse_password_file, &config.sql_password_file] {
        dc_config::credentials::read_password(file)?;
    }
    let problems = config.check_rules(&registry);
    if !problems.is_empty() {
        anyhow::bail!(
            "{}: threshold rules name series the registry does not declare:\n  {}",
            args.config.display(),
            problems.join("\n  ")
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("query")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "binding the query service on {}; is another service using that port?",
                    config.listen
                )
            })?;
        let service = Arc::new(query::QueryService::new(
            &config,
            registry,
            Duration::from_millis(config.timeout_ms),
        )?);
        tracing::info!(dc = %config.dc, listen = %config.listen, "query service started");
        query::serve(listener, service, crate::admin::terminated()).await;
        Ok(())
    })
}
