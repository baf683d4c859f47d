//! The admin HTTP endpoint every service serves: `GET /metrics` (Prometheus
//! text format) and `GET /healthz` (JSON; 200 when healthy, 503 when not).
//! One piece of code for the collector, the shipper and whatever comes next.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode};
use prometheus_client::registry::Registry;

/// Reports health: whether the service is healthy, and a JSON body saying why.
pub type HealthFn = Arc<dyn Fn() -> (bool, serde_json::Value) + Send + Sync>;

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn route(
    head: &hyper::http::request::Parts,
    registry: &Registry,
    health: &HealthFn,
) -> Response<Full<Bytes>> {
    match (&head.method, head.uri.path()) {
        (&Method::GET, "/metrics") => match httpd::exposition::encode(registry) {
            Ok(text) => respond(StatusCode::OK, httpd::exposition::CONTENT_TYPE, text),
            Err(e) => respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                e.to_string(),
            ),
        },
        (&Method::GET, "/healthz") => {
            let (ok, body) = health();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this admin port serves GET /metrics and GET /healthz\n".into(),
        ),
    }
}

/// Binds `addr` (so a port clash fails at start-up, with the address named)
/// and returns the serving future, which runs until `shutdown` resolves.
/// The listener's own figures ([`httpd::Metrics`]) join `registry`; its
/// limits are [`httpd::Limits::ADMIN`]: an admin port must never take
/// resources from the data path.
pub async fn bind(
    addr: SocketAddr,
    mut registry: Registry,
    health: HealthFn,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("binding the admin endpoint on {addr}; is another service using that port?")
    })?;
    let http = httpd::Metrics::register(&mut registry);
    let registry = Arc::new(registry);
    Ok(httpd::serve(
        listener,
        "admin",
        httpd::Limits::ADMIN,
        http,
        move |head, _body| {
            let resp = route(&head, &registry, &health);
            async move { resp }
        },
        shutdown,
    ))
}

/// For a service whose work runs on threads stopped by a flag (the shipper,
/// the relay): serves the admin endpoint on `runtime` and sets `shutdown`
/// on SIGTERM or Ctrl-C, logging `stopping`. The endpoint stops when the
/// returned sender is sent to or dropped.
pub fn serve_until_stopped(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    registry: Registry,
    health: HealthFn,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
    stopping: &'static str,
) -> anyhow::Result<tokio::sync::oneshot::Sender<()>> {
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = runtime.block_on(bind(addr, registry, health, async {
        let _ = admin_stopped.await;
    }))?;
    runtime.spawn(admin);
    runtime.spawn(async move {
        terminated().await;
        tracing::info!("{stopping}");
        shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    Ok(stop_admin)
}

/// Resolves when the process gets SIGTERM or Ctrl-C: when a service starts
/// its graceful stop.
pub async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
