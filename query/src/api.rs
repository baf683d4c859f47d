//! The HTTP API: routing, parameter checks, JSON answers, metrics. Every
//! answer is JSON; every error says which parameter broke which rule.
//!
//! Routes (see `docs/api.md`):
//! - `GET /v1/progress/{user_id}/{video_id}`
//! - `GET /v1/progress/{user_id}?videos=ID,ID,…` (at most [`MAX_BATCH_VIDEOS`])
//! - `GET /v1/series?metric=NAME&from=SECS&to=SECS&step=minute|5min|hour|day&scope=global|dc`
//! - `GET /v1/drops?event=NAME&window=1h&reference=previous|yesterday|last_week`
//! - `GET /v1/anomalies?event=NAME|metric=NAME&window=6h&step=5min|hour`
//! - `GET /v1/report?event=NAME&metric=KIND(FIELD)&group_by=DIM,DIM&from=SECS&to=SECS&scope=global|dc`
//! - `POST /v1/sql` (body: `{"sql": "<one SELECT statement>"}` as
//!   `application/json`, at most [`MAX_BODY_BYTES`])
//! - `GET /v1/registry` (the event types, metrics and dimensions to ask for)
//! - `GET /v1/pipeline` (every DC's services' figures, from their `/metrics`)
//! - `GET /console/`, `GET /console/{asset}` (the web console, [`crate::console`])
//! - `GET /metrics`, `GET /healthz`
//!
//! [`ROUTES`] lists them once; the router accepts only what it lists, the
//! metrics label requests by its entries, and `docs/openapi.yaml`
//! documents the same set.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dc_config::registry::Registry;
use dc_config::schema::table;
use http_body_util::Full;
use hyper::Response;

use crate::ch::ClickHouse;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::progress::{key_value, ProgressService};

/// Most videos in one batch request: bounds the Redis and ClickHouse work
/// one request can cause.
pub const MAX_BATCH_VIDEOS: usize = 100;
/// Most requests served at once; more get 503 at once instead of queueing.
pub const MAX_IN_FLIGHT: usize = 256;
/// Largest request body read (64 KiB, the longest SQL statement
/// accepted); a longer body gets 413 without being read further.
/// A statement of [`crate::sql::MAX_STATEMENT_BYTES`] in its JSON string,
/// room for escapes included.
pub const MAX_BODY_BYTES: usize = 2 * crate::sql::MAX_STATEMENT_BYTES;
/// What the API's listener allows a client ([`httpd`]; `docs/api.md`
/// lists them): 1 024 connections, [`MAX_IN_FLIGHT`] requests handled at
/// once (counted only once a request was read whole), 10 s to send the
/// headers and 10 s the body, [`MAX_BODY_BYTES`], and a connection that
/// moves no byte for 60 s while none of its requests runs is closed.
pub const LIMITS: httpd::Limits = httpd::Limits {
    connections: 1024,
    in_flight: MAX_IN_FLIGHT,
    header_timeout: std::time::Duration::from_secs(10),
    body_timeout: std::time::Duration::from_secs(10),
    body_bytes: MAX_BODY_BYTES,
    idle_timeout: std::time::Duration::from_secs(60),
};

/// Every route: method and path template (`{name}` matches one non-empty
/// segment). Adding an endpoint is one entry here, its arm in the router,
/// and its path in `docs/openapi.yaml`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/progress/{user_id}/{video_id}"),
    ("GET", "/v1/progress/{user_id}"),
    ("GET", "/v1/series"),
    ("GET", "/v1/report"),
    ("GET", "/v1/drops"),
    ("GET", "/v1/anomalies"),
    ("POST", "/v1/sql"),
    ("GET", "/v1/registry"),
    ("GET", "/v1/pipeline"),
    ("GET", "/console/"),
    ("GET", "/console/{asset}"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
];

fn template_matches(template: &str, path: &str) -> bool {
    let (t, p) = (template.trim_matches('/'), path.trim_matches('/'));
    t.split('/').count() == p.split('/').count()
        && t.split('/')
            .zip(p.split('/'))
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// The path template of [`ROUTES`] that answers `method` on `path`; 404 if
/// no template matches the path, 405 if none of those takes `method`.
pub fn find_route(method: &str, path: &str) -> Result<&'static str> {
    let on_path: Vec<&(&str, &str)> = ROUTES
        .iter()
        .filter(|(_, t)| template_matches(t, path))
        .collect();
    match on_path.iter().find(|(m, _)| *m == method) {
        Some((_, t)) => Ok(t),
        None if on_path.is_empty() => Err(Error::NoRoute(format!("{method} {path}"))),
        None => Err(Error::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allowed: on_path
                .iter()
                .map(|(m, _)| *m)
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Everything a request needs.
pub struct QueryService {
    registry: Registry,
    sql_limits: dc_config::services::SqlLimits,
    /// Analysts' statements running at once (`sql.max_concurrent`).
    sql_slots: Arc<tokio::sync::Semaphore>,
    /// Names besides IP addresses and `localhost` a `Host` may give.
    allowed_hosts: Vec<String>,
    timeout: std::time::Duration,
    progress: Option<ProgressService>,
    ch: Arc<ClickHouse>,
    rules: Vec<dc_config::services::ThresholdRule>,
    dc: String,
    datacenters: Vec<dc_config::services::QueryDatacenter>,
    metrics: Metrics,
    http: httpd::Metrics,
    prom: prometheus_client::registry::Registry,
}

impl QueryService {
    /// The service for `config`, reading `registry`; fails when a
    /// ClickHouse password file of `config` cannot be used.
    pub fn new(
        config: &dc_config::services::QueryConfig,
        registry: Registry,
        timeout: std::time::Duration,
    ) -> std::result::Result<Self, dc_config::credentials::CredentialError> {
        let ch = Arc::new(ClickHouse::new(config, timeout)?);
        let progress = ProgressService::new(
            &registry,
            ch.clone(),
            config.redis.clone(),
            timeout,
            config.progress_lookups_max,
        );
        let mut prom = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut prom);
        let http = httpd::Metrics::register(&mut prom);
        Ok(Self {
            registry,
            sql_limits: config.sql.clone(),
            allowed_hosts: config.allowed_hosts.clone(),
            sql_slots: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(config.sql.max_concurrent).unwrap_or(usize::MAX),
            )),
            timeout,
            progress,
            ch,
            rules: config.rule.clone(),
            dc: config.dc.clone(),
            datacenters: config.datacenters.clone(),
            metrics,
            http,
            prom,
        })
    }

    fn progress(&self) -> Result<&ProgressService> {
        self.progress
            .as_ref()
            .ok_or_else(|| Error::NotFound("the registry declares no watch_progress state".into()))
    }

    async fn one_progress(&self, user: &str, video: &str) -> Result<serde_json::Value> {
        let p = self.progress()?;
        let fields = p.key_fields();
        let (uf, vf) = (&fields[0], fields.get(1).unwrap_or(&fields[0]));
        let key = vec![
            key_value(&self.registry, uf, user)?,
            key_value(&self.registry, vf, video)?,
        ];
        let a = p.get(&key).await?;
        self.metrics
            .sources
            .get_or_create(&vec![("source".into(), a.source.name().into())])
            .inc();
        let mut out = serde_json::json!({
            uf.as_str(): p.value_json(&key[0]),
            vf.as_str(): p.value_json(&key[1]),
            "source": a.source.name(),
            "partial": a.coverage.partial,
            "missing": a.coverage.missing,
        });
        match a.found {
            Some((t, v)) => {
                out["event_time_ms"] = serde_json::json!(t);
                out["value"] = p.value_json(&v);
                Ok(out)
            }
            None => Err(Error::NotFound(format!(
                "no progress for {uf}={} {vf}={} in any datacenter that answered{}",
                key[0],
                key[1],
                if a.coverage.missing.is_empty() {
                    String::new()
                } else {
                    format!(" (not answering: {})", a.coverage.missing.join(", "))
                }
            ))),
        }
    }

    /// What a client may ask for: each event type with metrics, its
    /// metrics as series names with their dimensions (and an enum
    /// dimension's values), its keyed state; and the datacenters.
    fn registry_json(&self) -> serde_json::Value {
        let events: Vec<serde_json::Value> = self
            .registry
            .event
            .iter()
            .map(|(name, e)| {
                let metrics: Vec<serde_json::Value> = e
                    .metric
                    .iter()
                    .map(|m| {
                        let dims: Vec<serde_json::Value> = m
                            .dimensions
                            .iter()
                            .map(|d| {
                                let values = e.fields.get(d).map(|f| f.values.clone());
                                serde_json::json!({"name": d, "values": values.unwrap_or_default()})
                            })
                            .collect();
                        serde_json::json!({
                            "name": m.base_name(name),
                            "kind": m.kind.name(),
                            "dimensions": dims,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": name,
                    "description": e.description,
                    "metrics": metrics,
                    "state": e.state.as_ref().map(|s| serde_json::json!({"key": s.key, "value": s.value})),
                })
            })
            .collect();
        let dcs: Vec<&str> = self.datacenters.iter().map(|d| d.name.as_str()).collect();
        serde_json::json!({"dc": self.dc, "datacenters": dcs, "events": events})
    }

    async fn route(&self, path: &str, query: &str, body: &[u8]) -> Result<Reply> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match parts.as_slice() {
            ["metrics"] => {
                if let Some(p) = &self.progress {
                    self.metrics
                        .lookups
                        .set(i64::try_from(p.lookups_in_flight()).unwrap_or(i64::MAX));
                }
                let text = httpd::exposition::encode(&self.prom)
                    .map_err(|e| Error::ClickHouse(e.to_string()))?;
                Ok(Reply {
                    status: 200,
                    body: Bytes::from(text),
                    content_type: httpd::exposition::CONTENT_TYPE,
                    headers: Vec::new(),
                })
            }
            ["healthz"] => {
                // Proves the read path: the schema is there and readable as the query user.
                let sql = format!(
                    "SELECT count() FROM {}.{} FORMAT TSV",
                    self.ch.database(),
                    table::DC_MARKER
                );
                let (ok, detail) = match self.ch.fetch(&sql, &[]).await {
                    Ok(b) if String::from_utf8_lossy(&b).trim() == "1" => (true, "ok".to_string()),
                    Ok(b) => (
                        false,
                        format!("unexpected marker answer {:?}", String::from_utf8_lossy(&b)),
                    ),
                    Err(e) => (false, e.to_string()),
                };
                let body = serde_json::json!({"ok": ok, "clickhouse": detail}).to_string();
                Ok(Reply::json(if ok { 200 } else { 503 }, body))
            }
            ["v1", "series"] => {
                let req = crate::series::SeriesRequest::parse(&self.registry, query)?;
                let v = crate::series::read(&self.ch, &req).await?;
                Ok(Reply::json(200, v.to_string()))
            }
            ["v1", "drops"] => {
                let req = crate::drops::DropsRequest::parse(&self.registry, query, now_s())?;
                let v = crate::drops::detect(&self.ch, &self.registry, &req).await?;
                Ok(Reply::json(200, v.to_string()))
            }
            ["v1", "report"] => {
                let req = crate::report::ReportRequest::parse(&self.registry, query)?;
                let v = crate::report::read(&self.registry, &self.ch, &req).await?;
                Ok(Reply::json(200, v.to_string()))
            }
            ["v1", "sql"] => {
                let statement = crate::sql::check(&sql_of(body)?)?;
                // The analysts' own pool: beyond it, 503 at once, never a
                // queue in front of the service's other reads.
                let Ok(_slot) = self.sql_slots.clone().try_acquire_owned() else {
                    return Err(Error::Busy(format!(
                        "over {} analysts' statements running; retry shortly",
                        self.sql_limits.max_concurrent
                    )));
                };
                let v =
                    crate::sql::run(&self.ch, &self.sql_limits, self.timeout, &statement).await?;
                Ok(Reply::json(200, v))
            }
            ["v1", "anomalies"] => {
                let req =
                    crate::anomalies::AnomaliesRequest::parse(&self.registry, query, now_s())?;
                let v =
                    crate::anomalies::detect(&self.ch, &self.registry, &self.rules, &req).await?;
                Ok(Reply::json(200, v.to_string()))
            }
            ["console"] | ["console", _] => {
                let name = parts.get(1).copied().unwrap_or("");
                let a = crate::console::asset(name).ok_or_else(|| {
                    Error::NotFound(format!(
                        "no console file `{name}`; the console starts at /console/"
                    ))
                })?;
                let mut headers = vec![
                    ("cache-control", a.cache_control),
                    ("x-content-type-options", "nosniff"),
                ];
                if a.content_type.starts_with("text/html") {
                    headers.push((
                        "content-security-policy",
                        crate::console::CONTENT_SECURITY_POLICY,
                    ));
                }
                Ok(Reply {
                    status: 200,
                    body: Bytes::from_static(a.body.as_bytes()),
                    content_type: a.content_type,
                    headers,
                })
            }
            ["v1", "registry"] => Ok(Reply::json(200, self.registry_json().to_string())),
            ["v1", "pipeline"] => {
                let v = crate::pipeline::read(&self.datacenters).await;
                Ok(Reply::json(200, v.to_string()))
            }
            ["v1", "progress", user, video] => {
                let v = self.one_progress(user, video).await?;
                Ok(Reply::json(200, v.to_string()))
            }
            ["v1", "progress", user] => {
                let videos = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("videos="))
                    .ok_or_else(|| Error::BadParameter {
                        parameter: "videos".into(),
                        rule: format!(
                            "required: a comma-separated list of 1 to {MAX_BATCH_VIDEOS} video ids"
                        ),
                    })?;
                let list: Vec<&str> = videos.split(',').filter(|v| !v.is_empty()).collect();
                if list.is_empty() || list.len() > MAX_BATCH_VIDEOS {
                    return Err(Error::BadParameter {
                        parameter: "videos".into(),
                        rule: format!("1 to {MAX_BATCH_VIDEOS} comma-separated video ids"),
                    });
                }
                let mut items = Vec::with_capacity(list.len());
                for v in list {
                    match self.one_progress(user, v).await {
                        Ok(a) => items.push(a),
                        Err(Error::NotFound(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(Reply::json(
                    200,
                    serde_json::json!({"items": items}).to_string(),
                ))
            }
            _ => Err(Error::NoRoute(path.to_string())),
        }
    }

    /// Refuses a request a page of another site may have made from a
    /// browser: a `Host` naming anything but an IP address, `localhost` or
    /// one of `allowed_hosts` (DNS rebinding: the page's own name, resolved
    /// to this address, would let it read answers), and a POST whose
    /// `Origin` is another host than the one it was sent to, or whose body
    /// is not declared JSON (a cross-site form or `text/plain` post needs
    /// no CORS preflight; a JSON one does, and is never granted).
    fn check_origin(&self, head: &hyper::http::request::Parts) -> Result<()> {
        let header = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let host = header("host").unwrap_or_default();
        let name = host_name(&host);
        let known = name.parse::<std::net::IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name));
        if !known {
            return Err(Error::Forbidden(format!(
                "Host `{host}` is not a name of this service: ask by IP address or localhost, or add the name to the query config's allowed_hosts"
            )));
        }
        if head.method == hyper::Method::POST {
            if let Some(origin) = header("origin") {
                let from = origin
                    .split_once("://")
                    .map_or(origin.as_str(), |(_, rest)| rest);
                if !from.eq_ignore_ascii_case(&host) {
                    return Err(Error::Forbidden(format!(
                        "a POST from a page of {origin} to {host} is refused: send it from a client, not a web page of another site"
                    )));
                }
            }
            let content_type = header("content-type").unwrap_or_default();
            let media = content_type.split(';').next().unwrap_or("").trim();
            if !media.eq_ignore_ascii_case("application/json") {
                let shown = if content_type.is_empty() {
                    "none".to_string()
                } else {
                    format!("`{}`", content_type.escape_debug())
                };
                return Err(Error::UnsupportedMediaType(shown));
            }
        }
        Ok(())
    }

    /// Answers one request, read whole by the listener ([`serve`]).
    pub async fn handle(
        &self,
        head: hyper::http::request::Parts,
        body: Bytes,
    ) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let path = head.uri.path().to_string();
        let route = find_route(head.method.as_str(), &path);
        // Labels only for the templates of ROUTES: a path from the client
        // must not create a metric series per distinct path.
        let endpoint = route.as_deref().unwrap_or("other").to_string();
        let answer = match route.and_then(|r| self.check_origin(&head).map(|()| r)) {
            Ok(_) => {
                self.route(&path, head.uri.query().unwrap_or(""), &body)
                    .await
            }
            Err(e) => Err(e),
        };
        let reply = match answer {
            Ok(ok) => ok,
            Err(e) => {
                self.metrics
                    .errors
                    .get_or_create(&vec![
                        ("endpoint".into(), endpoint.clone()),
                        ("kind".into(), e.kind().into()),
                    ])
                    .inc();
                Reply::json(e.status(), e.to_json().to_string())
            }
        };
        let status = reply.status;
        self.metrics
            .requests
            .get_or_create(&vec![
                ("endpoint".into(), endpoint.clone()),
                ("status".into(), status.to_string()),
            ])
            .inc();
        self.metrics
            .seconds
            .get_or_create(&vec![("endpoint".into(), endpoint)])
            .observe(started.elapsed().as_secs_f64());
        let mut resp = Response::builder()
            .status(status)
            .header("content-type", reply.content_type);
        for (name, value) in reply.headers {
            resp = resp.header(name, value);
        }
        resp.body(Full::new(reply.body))
            .expect("static response parts are valid")
    }
}

/// The statement of a `POST /v1/sql` body, `{"sql": "…"}`.
fn sql_of(body: &[u8]) -> Result<String> {
    let refuse = |why: String| Error::BadParameter {
        parameter: "body".into(),
        rule: format!("a JSON object {{\"sql\": \"<one SELECT statement>\"}}: {why}"),
    };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| refuse(format!("not JSON ({e})")))?;
    let serde_json::Value::Object(fields) = value else {
        return Err(refuse("not an object".into()));
    };
    if let Some(other) = fields.keys().find(|k| *k != "sql") {
        return Err(refuse(format!("unknown field `{}`", other.escape_debug())));
    }
    match fields.get("sql") {
        Some(serde_json::Value::String(sql)) => Ok(sql.clone()),
        Some(_) => Err(refuse("`sql` is not a string".into())),
        None => Err(refuse("`sql` is missing".into())),
    }
}

/// One answer: status, body, content type and any further headers.
struct Reply {
    status: u16,
    body: Bytes,
    content_type: &'static str,
    headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    /// A JSON answer.
    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            body: Bytes::from(body),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }
}

/// The current time, unix seconds: where a `window` ends when no `to` is given.
fn now_s() -> u32 {
    u32::try_from(dc_config::event::now_ms() / 1000).unwrap_or(u32::MAX)
}

/// The name part of a `Host` header: without the port, an IPv6 literal
/// without its brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Serves `service` on `listener` within [`LIMITS`] until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: Arc<QueryService>,
    shutdown: impl Future<Output = ()>,
) {
    let http = service.http.clone();
    httpd::serve(
        listener,
        "query",
        LIMITS,
        http,
        move |head, body| {
            let service = service.clone();
            async move { service.handle(head, body).await }
        },
        shutdown,
    )
    .await;
}
