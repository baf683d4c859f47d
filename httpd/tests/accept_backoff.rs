//! Out of file descriptors, the accept loop backs off (10 ms doubling to
//! 1 s) instead of spinning, and serves again once descriptors are free.
//! A test binary of its own: it lowers this process's descriptor limit.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

#[test]
fn accept_errors_back_off_and_serving_resumes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = httpd::Metrics::register(&mut registry);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(httpd::serve(
        listener,
        "test",
        httpd::Limits::ADMIN,
        metrics,
        |_, _: Bytes| async { hyper::Response::new(Full::new(Bytes::from("ok"))) },
        std::future::pending(),
    ));
    let errors = || {
        let text = httpd::exposition::encode(&registry).unwrap();
        httpd::exposition::sum(
            &httpd::exposition::samples(&text),
            "spoolhouse_http_accept_errors_total",
            "listener=\"test\"",
        )
        .map_or(0, |v| v as u64)
    };

    // Use up every descriptor but one, which the client takes: the server's
    // accept then fails with EMFILE for as long as the fillers are open.
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe { assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0) };
    let low = libc::rlimit {
        rlim_cur: 256.min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &low), 0) };
    let mut fillers = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        fillers.push(f);
    }
    fillers.pop();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let failed = errors();
    // Backing off, 2 s hold about 8 tries; a spinning loop, thousands.
    assert!((1..=20).contains(&failed), "{failed} accept errors in 2 s");

    drop(fillers);
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &old), 0) };
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
        "{answer}"
    );
}
