//! What the detection tests share: two real DCs from the example topology
//! (dc1 with two shards, dc2 with one), events loaded straight into
//! `events_local` at chosen times, chosen minutes aggregated into states,
//! and a query service over them. Everything stops on drop, even on panic.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

pub mod openapi;

use std::sync::Arc;
use std::time::Duration;

use dc_config::event::{ValidEvent, Value};
use dc_config::services::QueryConfig;
use launcher::{LaunchOptions, LocalCluster};

/// A vote at `time_s` (plus `n` ms, so times stay distinct) by user `user`.
pub fn vote(time_s: u32, n: u64, user: u64, yes: bool, country: u64) -> ValidEvent {
    ValidEvent {
        event: "vote".into(),
        time_ms: u64::from(time_s) * 1000 + n % 60_000,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("target_user_id".into(), Value::UInt(1)),
            (
                "vote".into(),
                Value::Str(if yes { "yes" } else { "no" }.into()),
            ),
            ("country_id".into(), Value::UInt(country)),
        ],
    }
}

/// A registration at `time_s` (plus `n` ms) of user `user`.
pub fn registration(time_s: u32, n: u64, user: u64, gender: &str, country: u64) -> ValidEvent {
    ValidEvent {
        event: "registration".into(),
        time_ms: u64::from(time_s) * 1000 + n % 60_000,
        attrs: vec![
            ("user_id".into(), Value::UInt(user)),
            ("gender".into(), Value::Str(gender.into())),
            ("country_id".into(), Value::UInt(country)),
        ],
    }
}

/// Two DCs and a query service of dc1.
pub struct Harness {
    /// The servers.
    pub cluster: LocalCluster,
    /// Base URL of the query service.
    pub base: String,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    /// Starts the DCs and dc1's query service, its config changed by `edit`.
    pub fn start(edit: impl FnOnce(&mut QueryConfig)) -> Self {
        Self::start_declared(|_| {}, edit)
    }

    /// [`Harness::start`] with the declared topology and registry changed
    /// by `declare` first (what the servers' configs are rendered from).
    pub fn start_declared(
        declare: impl FnOnce(&mut dc_config::Declared),
        edit: impl FnOnce(&mut QueryConfig),
    ) -> Self {
        let mut declared = dc_config::examples::declared();
        declare(&mut declared);
        let cluster = LocalCluster::start(&declared, LaunchOptions::default()).unwrap();
        Self::serve(cluster, Duration::from_secs(5), edit)
    }

    /// dc1's query service over `cluster` (started by the caller), each
    /// ClickHouse read bounded by `timeout`, its config changed by `edit`.
    pub fn serve(
        cluster: LocalCluster,
        timeout: Duration,
        edit: impl FnOnce(&mut QueryConfig),
    ) -> Self {
        let t = cluster.topology().clone();
        let mut config = QueryConfig::for_dc(&t, t.dc("dc1").unwrap());
        edit(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let service = Arc::new(
            query::QueryService::new(&config, cluster.declared().registry.clone(), timeout)
                .unwrap(),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = rt.spawn(query::serve(listener, service, async {
            let _ = stopped.await;
        }));
        Self {
            cluster,
            base,
            rt,
            stop: Some(stop),
            server: Some(server),
        }
    }

    /// Inserts `events` of datacenter `dc` into `server`'s `events_local`.
    pub fn load(&self, server: &str, dc: &str, events: &[ValidEvent]) {
        self.cluster.load_events(server, dc, events).unwrap();
    }

    /// Aggregates, once for datacenter `dc` (on `server`, reading the whole
    /// DC), every minute `events` fall in, as its shipper would.
    pub fn aggregate(&self, server: &str, dc: &str, events: &[ValidEvent]) {
        self.cluster.aggregate_minutes(server, dc, events).unwrap();
    }

    /// Runs `f` on the harness's runtime (the one serving the API).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// GETs `path`; the status and the JSON body.
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        get(&self.base, path)
    }

    /// POSTs `body` to `path` as `application/json`; the status and the
    /// JSON body.
    pub fn post(&self, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let resp = agent()
            .post(&format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .send(body);
        answer(resp)
    }

    /// POSTs `statement` to `/v1/sql`; the status and the JSON body.
    pub fn sql(&self, statement: &str) -> (u16, serde_json::Value) {
        self.post(
            "/v1/sql",
            serde_json::json!({ "sql": statement })
                .to_string()
                .as_bytes(),
        )
    }

    /// Rows of `table` of the `spoolhouse` database, read on dc1's first
    /// server (a Distributed table reads every shard it spans).
    pub fn count(&self, table: &str) -> u64 {
        let ch = self.cluster.clickhouse("dc1-s1-r1").unwrap();
        ch.query(&format!("SELECT count() FROM spoolhouse.{table}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

/// GETs `base` + `path`; the status and the JSON body (`/metrics` text as
/// a JSON string).
pub fn get(base: &str, path: &str) -> (u16, serde_json::Value) {
    answer(agent().get(&format!("{base}{path}")).call())
}

/// GETs `base` + `path`: the status, the headers (names lower-case) and
/// the body as text, for answers that are not JSON.
pub fn get_text(
    base: &str,
    path: &str,
) -> (u16, std::collections::BTreeMap<String, String>, String) {
    let mut resp = agent().get(&format!("{base}{path}")).call().unwrap();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    (resp.status().as_u16(), headers, body_text(&mut resp))
}

/// The whole body as text (at most 64 MiB).
fn body_text(resp: &mut ureq::http::Response<ureq::Body>) -> String {
    resp.body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_string()
        .unwrap()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

fn answer(resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, serde_json::Value) {
    let mut resp = resp.unwrap();
    let status = resp.status().as_u16();
    let text = body_text(&mut resp);
    // Everything but /metrics answers JSON; that text comes as a string.
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, json)
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = self.rt.block_on(server);
        }
    }
}
