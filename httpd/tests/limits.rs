//! Each limit of the listener against a real client on loopback: slow
//! headers, slow and oversized bodies, more connections than allowed, slow
//! senders holding no request slot, a client that never reads its answer,
//! idle keep-alives, a long request not cut, and accept errors backing off.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use httpd::{Limits, Metrics};

const LIMITS: Limits = Limits {
    connections: 8,
    in_flight: 2,
    header_timeout: Duration::from_millis(300),
    body_timeout: Duration::from_millis(300),
    body_bytes: 1000,
    idle_timeout: Duration::from_millis(400),
};

/// A server on loopback: `GET /` answers "ok", `GET /big` 8 MiB,
/// `GET /slow` after twice the idle timeout, `POST /` the body's length.
struct Server {
    addr: SocketAddr,
    registry: std::sync::Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Server {
    fn start(limits: Limits) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(httpd::serve(
            listener,
            "test",
            limits,
            metrics,
            |head: hyper::http::request::Parts, body: Bytes| async move {
                let text: Bytes = match head.uri.path() {
                    "/big" => vec![b'x'; 8 << 20].into(),
                    "/slow" => {
                        tokio::time::sleep(LIMITS.idle_timeout * 2).await;
                        "slow".into()
                    }
                    _ if head.method == hyper::Method::POST => body.len().to_string().into(),
                    _ => "ok".into(),
                };
                hyper::Response::new(Full::new(text))
            },
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            registry: std::sync::Arc::new(std::sync::Mutex::new(registry)),
            rt,
            stop: Some(stop),
        }
    }

    /// The value of the sample written as `line_start` (`name{labels} `).
    fn metric(&self, line_start: &str) -> u64 {
        let text = httpd::exposition::encode(&self.registry.lock().unwrap()).unwrap();
        httpd::exposition::samples(&text)
            .into_iter()
            .find(|(name, labels, _)| {
                let series = if labels.is_empty() {
                    format!("{name} ")
                } else {
                    format!("{name}{{{labels}}} ")
                };
                series == line_start
            })
            .map_or(0, |(_, _, v)| v as u64)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// One request on a new connection; the whole answer.
    fn request(&self, text: &str) -> String {
        let mut s = self.connect();
        s.write_all(text.as_bytes()).unwrap();
        read_to_close(&mut s)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = &self.rt;
    }
}

fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

const GET: &str = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[test]
fn headers_sent_too_slowly_close_the_connection() {
    let srv = Server::start(LIMITS);
    let mut s = srv.connect();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = Instant::now();
    let answer = read_to_close(&mut s);
    assert!(!answer.contains("200 OK"), "{answer}");
    // Closed by the server, well before the client's own 10 s timeout.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn a_body_sent_too_slowly_is_answered_408_and_a_long_one_413() {
    let srv = Server::start(LIMITS);
    let mut s = srv.connect();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let answer = read_to_close(&mut s);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
    assert_eq!(
        srv.metric("spoolhouse_http_timeouts_total{listener=\"test\",phase=\"body\"} "),
        1
    );

    let body = "x".repeat(5000);
    let answer = srv.request(&format!(
        "POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = srv
        .request("POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n3"),
        "{answer}"
    );
}

#[test]
fn connections_over_the_limit_are_closed_at_once_and_counted() {
    let srv = Server::start(Limits {
        idle_timeout: Duration::from_secs(30),
        header_timeout: Duration::from_secs(30),
        ..LIMITS
    });
    // Held open, each having sent nothing.
    let held: Vec<TcpStream> = (0..LIMITS.connections).map(|_| srv.connect()).collect();
    let mut extra = srv.connect();
    extra.write_all(GET.as_bytes()).ok();
    assert_eq!(read_to_close(&mut extra), "");
    assert_eq!(
        srv.metric("spoolhouse_http_connections_refused_total{listener=\"test\"} "),
        1
    );
    assert_eq!(
        srv.metric("spoolhouse_http_connections{listener=\"test\"} "),
        LIMITS.connections as u64
    );
    drop(held);
    // Their slots come back.
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = srv.request(GET);
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < until, "no slot came back: {answer:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_senders_hold_no_request_slot() {
    let srv = Server::start(Limits {
        body_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..LIMITS
    });
    // More slow bodies than request slots, each still sending.
    let slow: Vec<TcpStream> = (0..LIMITS.in_flight + 3)
        .map(|_| {
            let mut s = srv.connect();
            s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let answer = srv.request(GET);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(slow);
}

#[test]
fn a_client_that_never_reads_its_answer_is_cut_off_and_an_idle_keepalive_closed() {
    let srv = Server::start(LIMITS);
    // 8 MiB asked for, none of it read.
    let mut s = srv.connect();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let open = || srv.metric("spoolhouse_http_connections{listener=\"test\"} ");
    while open() == 0 {
        assert!(Instant::now() < until, "the connection never opened");
        std::thread::sleep(Duration::from_millis(5));
    }
    while open() > 0 {
        assert!(Instant::now() < until, "the stalled connection stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(srv.metric("spoolhouse_http_timeouts_total{listener=\"test\",phase=\"idle\"} ") >= 1);
    // The answer was cut: far less than 8 MiB arrives.
    let got = read_to_close(&mut s);
    assert!(got.len() < 8 << 20, "{}", got.len());

    // A keep-alive connection that asks once, then nothing.
    let mut k = srv.connect();
    k.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = read_to_close(&mut k);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_request_that_takes_longer_than_the_idle_timeout_is_not_cut() {
    let srv = Server::start(LIMITS);
    let answer = srv.request("GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("slow"),
        "{answer}"
    );
}

#[test]
fn the_blocking_client_reads_answers_from_plain_and_async_callers_and_bounds_its_wait() {
    let server = Server::start(LIMITS);
    let t = Duration::from_secs(5);
    // Twice on one thread (its runtime is built once and reused), then from
    // inside a runtime, where it runs on a thread of its own.
    for _ in 0..2 {
        let (status, body) = httpd::client::get_blocking(server.addr, "/", t).unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let addr = server.addr;
    let inside = server
        .rt
        .block_on(async move { httpd::client::get_blocking(addr, "/", t) })
        .unwrap();
    assert_eq!(inside, (200, "ok".to_string()));
    // An answer slower than the timeout is a Timeout, within about it.
    let short = Duration::from_millis(200);
    let started = Instant::now();
    let e = httpd::client::get_blocking(server.addr, "/slow", short).unwrap_err();
    assert!(matches!(e, httpd::client::GetError::Timeout { .. }), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A port nobody listens on is a Connect error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = httpd::client::get_blocking(closed, "/", t).unwrap_err();
    assert!(matches!(e, httpd::client::GetError::Connect { .. }), "{e}");
}
