//! `spoolhouse bench report`: what the distance between datacenters costs a
//! global report. Two DCs from the launcher, once with servers dialling each
//! other directly and once through the launcher's cross-DC relays (100 ms
//! each way by default); the same aggregate states in both; dc1's query
//! service answers `GET /v1/report` globally and for its own DC, timed over
//! HTTP. The local (`scope=dc`) read is the same-run reference.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use dc_config::event::{ValidEvent, Value};
use dc_config::services::QueryConfig;
use launcher::{LaunchOptions, LocalCluster};

use crate::cmd_local::NetworkArg;

/// Arguments of `spoolhouse bench report`.
#[derive(Debug, Args)]
pub struct ReportBench {
    /// One-way delay the relays add between the DCs, in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=2_000))]
    delay_ms: u64,
    /// Minutes of aggregated votes per DC (the report's range).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=1_440))]
    minutes: u32,
    /// Votes per DC per minute.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    per_minute: u32,
    /// Reports timed per scope and link.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(5..=10_000))]
    reads: u32,
    /// Where the datacenters run (as `spoolhouse local up --network`):
    /// each in a network namespace of its own, or all on loopback.
    #[arg(long, value_enum, default_value_t = NetworkArg::Auto)]
    network: NetworkArg,
}

const M0: u32 = 1_764_028_800; // a minute start

fn vote(user: u64, minute: u32, i: u32) -> ValidEvent {
    ValidEvent {
        event: "vote".into(),
        time_ms: u64::from(M0 + 60 * minute) * 1000 + u64::from(i % 60_000),
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("target_user_id".into(), Value::UInt(u64::from(i))),
            (
                "vote".into(),
                Value::Str(if i.is_multiple_of(3) { "no" } else { "yes" }.into()),
            ),
            ("country_id".into(), Value::UInt(u64::from(i % 20))),
        ],
    }
}

/// Inserts the votes of every DC and aggregates their minutes.
fn load(cluster: &LocalCluster, args: &ReportBench) -> anyhow::Result<()> {
    let t = cluster.topology().clone();
    let reg = &cluster.declared().registry;
    for (d, dc) in t.datacenter.iter().enumerate() {
        let server = dc.replicas().next().context("a DC without servers")?.name();
        let ch = cluster.clickhouse(&server)?;
        let votes: Vec<ValidEvent> = (0..args.minutes)
            .flat_map(|minute| {
                (0..args.per_minute).map(move |i| {
                    // Half the users of each DC are the other's too.
                    let user = u64::from(i) + (d as u64) * u64::from(args.per_minute / 2);
                    vote(user, minute, i)
                })
            })
            .collect();
        ch.insert_events(&t.database, &dc.name, "bench", 0, &votes)?;
        let minutes: Vec<u32> = (0..args.minutes).map(|m| M0 + 60 * m).collect();
        if let Some(sql) = dc_config::rollup::aggregate_minutes_sql(
            &t.database,
            &dc.name,
            "vote",
            &reg.event["vote"],
            &minutes,
            1,
        ) {
            ch.query(&sql)?;
        }
    }
    Ok(())
}

/// Times `reads` reports of each scope from dc1's query service.
fn time_reports(
    cluster: &LocalCluster,
    args: &ReportBench,
) -> anyhow::Result<Vec<(&'static str, Vec<Duration>)>> {
    let t = cluster.topology();
    let dc1 = &t.datacenter[0];
    let config = QueryConfig::for_dc(t, dc1);
    let registry = cluster.declared().registry.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // In this process, on the host: dc1's own address may be inside its
    // network namespace. Its ClickHouse reads cross the bridge either way.
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let listen = listener.local_addr()?;
    let service = Arc::new(query::QueryService::new(
        &config,
        registry,
        Duration::from_millis(config.timeout_ms),
    )?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(query::serve(listener, service, async {
        let _ = stopped.await;
    }));
    let mut out = Vec::new();
    for scope in ["dc", "global"] {
        let path = format!(
            "/v1/report?event=vote&group_by=vote&from={M0}&to={}&scope={scope}",
            M0 + 60 * args.minutes
        );
        let expected = u64::from(args.minutes) * u64::from(args.per_minute);
        let mut took = Vec::new();
        for _ in 0..args.reads {
            let started = Instant::now();
            let v = crate::cmd_local::query_get(listen, &path)?;
            took.push(started.elapsed());
            let total: f64 = v["rows"]
                .as_array()
                .with_context(|| format!("no rows in the answer of {path}: {v}"))?
                .iter()
                .filter_map(|r| r["values"]["count()"].as_f64())
                .sum();
            let want = if scope == "dc" {
                expected
            } else {
                2 * expected
            };
            anyhow::ensure!(
                total as u64 == want && v["partial"] == false,
                "{path} answered {total} votes (expected {want}): {v}"
            );
        }
        took.sort();
        out.push((scope, took));
    }
    let _ = stop.send(());
    Ok(out)
}

/// Runs `spoolhouse bench report`.
pub fn run(args: ReportBench) -> anyhow::Result<()> {
    println!(
        "report latency: two DCs, {} minutes x {} votes per DC aggregated into states; dc1's query service, {} reports per case",
        args.minutes, args.per_minute, args.reads
    );
    println!("| link between DCs | scope | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for delay in [None, Some(Duration::from_millis(args.delay_ms))] {
        let opts = LaunchOptions {
            cross_dc_delay: delay,
            network: args.network.into(),
            ..LaunchOptions::default()
        };
        let cluster = LocalCluster::start(&dc_config::examples::declared(), opts)
            .context("starting the two local datacenters")?;
        if delay.is_none() {
            println!("network: {}", cluster.placement());
        }
        load(&cluster, &args)?;
        let link = match delay {
            None => "direct".to_string(),
            Some(d) => format!("relay, {} ms each way", d.as_millis()),
        };
        for (scope, took) in time_reports(&cluster, &args)? {
            println!(
                "| {link} | {scope} | {:.1} | {:.1} |",
                crate::bench_series::percentile_ms(&took, 0.50),
                crate::bench_series::percentile_ms(&took, 0.99)
            );
        }
    }
    Ok(())
}
