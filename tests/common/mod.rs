//! Helpers the root crate's process tests share.

// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::io::Read;
use std::time::Duration;

/// A plain HTTP/1.1 GET on loopback; the whole response as text.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// A child process killed (and reaped) when dropped, so a failing test
/// leaves none behind.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `spoolhouse ARGS`, its output into `log`.
pub fn spawn(args: &[&str], log: &std::path::Path) -> Proc {
    use std::process::{Command, Stdio};
    let log = std::fs::File::create(log).unwrap();
    Proc(
        Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Polls `ok` every 100 ms until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !ok() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
