//! `spoolhouse send [FILE]`: JSON lines from a file or stdin to a collector,
//! with a progress bar on a terminal and a summary.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use collector::{Client, ClientConfig, Endpoint, LineOutcome};

/// Most lines sent per pipelined batch: bounds memory and the resend after
/// a reconnect, large enough to fill several collector reads.
const BATCH_LINES_MAX: usize = 10_000;
/// Rejections printed in full; the rest are counted by reason.
const REJECTIONS_SHOWN_MAX: usize = 20;

/// Arguments of `spoolhouse send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// JSON-lines file, one event per line; stdin when absent or `-`.
    file: Option<PathBuf>,
    /// Collector endpoint: `unix:/path/collector.sock`, a socket path, or `127.0.0.1:17101`.
    #[arg(long, env = "SPOOLHOUSE_COLLECTOR")]
    to: Endpoint,
    /// Retries of a batch after refusals or connection loss.
    #[arg(long, default_value_t = 10)]
    retries: u32,
}

/// Sends every line, then prints sent, acked and rejected (with reasons).
pub fn run(args: SendArgs) -> anyhow::Result<()> {
    let input: Box<dyn BufRead> = match &args.file {
        Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let total = match &args.file {
        Some(p) if p.as_os_str() != "-" => std::fs::metadata(p).map(|m| m.len()).ok(),
        _ => None,
    };
    let bar = if std::io::stderr().is_terminal() {
        let b = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .expect("static template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let config = ClientConfig {
        retries_max: args.retries,
        ..ClientConfig::default()
    };
    let endpoint = args.to.clone();
    let summary = runtime.block_on(async {
        let mut client = Client::connect(endpoint.clone(), config)
            .await
            .with_context(|| format!("connecting to the collector at {endpoint}"))?;
        let mut s = Summary::default();
        let mut lines = input.lines();
        let mut line_no = 0u64;
        loop {
            let mut batch = Vec::with_capacity(BATCH_LINES_MAX);
            let mut numbers = Vec::with_capacity(BATCH_LINES_MAX);
            for l in lines.by_ref() {
                let l = l.context("reading input")?;
                line_no += 1;
                bar.inc(l.len() as u64 + 1);
                if l.trim().is_empty() {
                    continue;
                }
                batch.push(l);
                numbers.push(line_no);
                if batch.len() == BATCH_LINES_MAX {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let outcomes = client.send_batch(&batch).await?;
            s.add(&numbers, outcomes);
            bar.set_message(format!("acked {} rejected {}", s.acked, s.rejected));
        }
        anyhow::Ok(s)
    })?;
    bar.finish_and_clear();
    summary.print();
    if summary.unsent > 0 {
        anyhow::bail!(
            "{} lines were not stored ({}); send them again",
            summary.unsent,
            summary.last_unsent_reason
        );
    }
    Ok(())
}

#[derive(Default)]
struct Summary {
    sent: u64,
    acked: u64,
    rejected: u64,
    unsent: u64,
    last_unsent_reason: String,
    by_reason: BTreeMap<String, u64>,
    shown: Vec<String>,
}

impl Summary {
    fn add(&mut self, numbers: &[u64], outcomes: Vec<LineOutcome>) {
        for (n, o) in numbers.iter().zip(outcomes) {
            self.sent += 1;
            match o {
                LineOutcome::Acked => self.acked += 1,
                LineOutcome::Rejected { rule, error, .. } => {
                    self.rejected += 1;
                    *self.by_reason.entry(rule).or_default() += 1;
                    if self.shown.len() < REJECTIONS_SHOWN_MAX {
                        // The collector numbers lines per connection; name
                        // the input line instead (the message names the field).
                        let msg = error.split_once(": ").map_or(error.as_str(), |(_, m)| m);
                        self.shown.push(format!("  line {n}: {msg}"));
                    }
                }
                LineOutcome::Unsent { reason } => {
                    self.unsent += 1;
                    self.last_unsent_reason = reason;
                }
            }
        }
    }

    fn print(&self) {
        println!(
            "sent {}, acked {}, rejected {}{}",
            self.sent,
            self.acked,
            self.rejected,
            if self.unsent > 0 {
                format!(", not stored {}", self.unsent)
            } else {
                String::new()
            }
        );
        for s in &self.shown {
            println!("{s}");
        }
        if self.rejected as usize > self.shown.len() {
            println!("  … {} more", self.rejected as usize - self.shown.len());
        }
        if !self.by_reason.is_empty() {
            let r: Vec<String> = self
                .by_reason
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!("rejected by reason: {}", r.join(", "));
        }
    }
}
