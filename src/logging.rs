//! Structured logs for every command: human-readable text or JSON lines,
//! filtered by `RUST_LOG` or `--log-level`.

use clap::{Args, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging flags shared by every command.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SPOOLHOUSE_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// Log filter (e.g. `info`, `debug`, `dc_config=debug`); `RUST_LOG` wins when set.
    #[arg(long, global = true, default_value = "info")]
    pub log_level: String,
}

/// Installs the global subscriber; logs go to stderr so stdout stays data.
pub fn init(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
