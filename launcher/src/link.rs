//! The link between two local datacenters: a TCP relay on every cross-DC
//! path that delays each direction and can be cut and healed.
//!
//! Two kinds of traffic cross a datacenter boundary: ClickHouse's (the
//! Distributed tables' reads of the other DC's servers) and the query
//! service's scrapes of the other DCs' service `/metrics` (`GET
//! /v1/pipeline`), so a relay per remote server and remote service
//! address, per viewing DC, is the whole link. The kernels this runs on have no
//! `sch_netem`, so the delay is added here: every chunk read is forwarded
//! `delay` after it arrived, which keeps the byte stream's order and costs
//! no throughput (chunks in flight overlap), exactly like a long wire.
//!
//! A cut is a flag file, `<links dir>/<dc>.cut`, so that any process (the
//! `spoolhouse dc cut` command, a test) can cut a DC that another process
//! launched. While a DC is cut, every relay to or from it drops its
//! connections and closes new ones at once: the other side sees the DC as
//! unreachable and `skip_unavailable_shards` skips it without waiting.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often relays look at the cut flags.
pub const CUT_POLL: Duration = Duration::from_millis(50);
/// Longest wait for the remote server to accept a relayed connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest chunk read at once.
const CHUNK: usize = 64 << 10;

/// The flag file that cuts datacenter `dc`.
pub fn cut_flag(links_dir: &Path, dc: &str) -> PathBuf {
    links_dir.join(format!("{dc}.cut"))
}

/// Cuts `dc` off from every other datacenter (idempotent).
pub fn cut(links_dir: &Path, dc: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(links_dir)?;
    std::fs::write(cut_flag(links_dir, dc), b"cut\n")
}

/// Heals `dc`'s links (idempotent).
pub fn heal(links_dir: &Path, dc: &str) -> std::io::Result<()> {
    match std::fs::remove_file(cut_flag(links_dir, dc)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `dc` is cut now.
pub fn is_cut(links_dir: &Path, dc: &str) -> bool {
    cut_flag(links_dir, dc).exists()
}

struct Shared {
    from_dc: String,
    to_dc: String,
    target: SocketAddr,
    delay: Duration,
    links_dir: PathBuf,
    cut: AtomicBool,
    stop: AtomicBool,
    next_id: AtomicU64,
    /// Open relayed connections (both ends), to drop them on a cut.
    open: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl Shared {
    fn refresh_cut(&self) -> bool {
        let cut = is_cut(&self.links_dir, &self.from_dc) || is_cut(&self.links_dir, &self.to_dc);
        let was = self.cut.swap(cut, Ordering::SeqCst);
        if cut && !was {
            for (_, (a, b)) in self.open.lock().expect("relay lock").drain() {
                let _ = a.shutdown(Shutdown::Both);
                let _ = b.shutdown(Shutdown::Both);
            }
        }
        cut
    }
}

/// One relay: listens on a free port of the host, forwards to one remote server.
pub struct Relay {
    listen: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Starts a relay from datacenter `from_dc` to server `target` of
    /// `to_dc`, on a free port of `listen_ip` (loopback, or the bridge when
    /// DCs run in network namespaces), adding `delay` each way.
    pub fn start(
        from_dc: &str,
        to_dc: &str,
        listen_ip: IpAddr,
        target: SocketAddr,
        delay: Duration,
        links_dir: &Path,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind((listen_ip, 0))?;
        let listen = listener.local_addr()?;
        let shared = Arc::new(Shared {
            from_dc: from_dc.to_string(),
            to_dc: to_dc.to_string(),
            target,
            delay,
            links_dir: links_dir.to_path_buf(),
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        });
        shared.refresh_cut();
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("link-{from_dc}-{to_dc}"))
            .spawn(move || accept_loop(listener, s))?;
        let s = shared.clone();
        let watch = std::thread::Builder::new()
            .name(format!("link-watch-{from_dc}-{to_dc}"))
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    s.refresh_cut();
                    std::thread::sleep(CUT_POLL);
                }
            })?;
        Ok(Self {
            listen,
            shared,
            threads: vec![accept, watch],
        })
    }

    /// Where the relay listens.
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    /// The server it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("from", &self.shared.from_dc)
            .field("to", &self.shared.to_dc)
            .field("listen", &self.listen)
            .field("target", &self.shared.target)
            .field("delay", &self.shared.delay)
            .finish()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept.
        let _ = TcpStream::connect_timeout(&self.listen, Duration::from_secs(1));
        for (_, (a, b)) in self.shared.open.lock().expect("relay lock").drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        if shared.refresh_cut() {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("link-conn".into())
            .spawn(move || relay_connection(client, s));
    }
}

fn relay_connection(client: TcpStream, shared: Arc<Shared>) {
    let Ok(server) = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let clones = (|| Some((client.try_clone().ok()?, server.try_clone().ok()?)))();
    let Some(clones) = clones else { return };
    shared.open.lock().expect("relay lock").insert(id, clones);
    // A cut between the check in accept and the insert above.
    if shared.cut.load(Ordering::SeqCst) {
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
    }
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(s)) => (c, s),
        _ => return,
    };
    let delay = shared.delay;
    let up = std::thread::Builder::new()
        .name("link-up".into())
        .spawn(move || pump(client, server, delay));
    pump(s2, c2, delay);
    if let Ok(up) = up {
        let _ = up.join();
    }
    shared.open.lock().expect("relay lock").remove(&id);
}

/// Copies `from` to `to`, each chunk `delay` after it arrived; on EOF or
/// error, shuts the write side so the other end sees the close in order.
fn pump(mut from: TcpStream, to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let mut writer_to = match to.try_clone() {
        Ok(t) => t,
        Err(_) => return,
    };
    let writer = std::thread::Builder::new()
        .name("link-write".into())
        .spawn(move || {
            for (due, chunk) in rx {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                if writer_to.write_all(&chunk).is_err() {
                    return false;
                }
            }
            true
        });
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let wrote_all = writer.map(|w| w.join().unwrap_or(false)).unwrap_or(false);
    if wrote_all {
        let _ = to.shutdown(Shutdown::Write);
    } else {
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// A relay from dc1 to an echo server of dc2, without delay.
    fn undelayed_relay(links_dir: &Path) -> Relay {
        Relay::start(
            "dc1",
            "dc2",
            LOOPBACK,
            echo_server(),
            Duration::ZERO,
            links_dir,
        )
        .unwrap()
    }

    /// An echo server on loopback; returns its address.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<(Vec<u8>, Duration)> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let started = Instant::now();
        s.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back)?;
        Ok((back, started.elapsed()))
    }

    #[test]
    fn bytes_arrive_in_order_after_the_delay_each_way() {
        let dir = tempfile::tempdir().unwrap();
        let relay = Relay::start(
            "dc1",
            "dc2",
            LOOPBACK,
            echo_server(),
            Duration::from_millis(60),
            dir.path(),
        )
        .unwrap();
        let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (back, took) = round_trip(relay.listen(), &msg).unwrap();
        assert!(back == msg, "the echoed bytes differ");
        // A lower bound only: the relay must never forward early.
        assert!(took >= Duration::from_millis(120), "{took:?}");
    }

    #[test]
    fn a_cut_drops_open_connections_and_refuses_new_ones_until_healed() {
        let dir = tempfile::tempdir().unwrap();
        let relay = undelayed_relay(dir.path());
        let mut open = TcpStream::connect(relay.listen()).unwrap();
        open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        open.write_all(b"x").unwrap();
        let mut one = [0u8; 1];
        open.read_exact(&mut one).unwrap();

        cut(dir.path(), "dc2").unwrap();
        assert!(is_cut(dir.path(), "dc2"));
        // The open connection ends (EOF or reset) within a few polls.
        let mut rest = Vec::new();
        let ended = open.read_to_end(&mut rest);
        assert!(ended.is_err() || rest.is_empty(), "{ended:?} {rest:?}");
        assert!(round_trip(relay.listen(), b"hello").is_err());

        heal(dir.path(), "dc2").unwrap();
        heal(dir.path(), "dc2").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match round_trip(relay.listen(), b"hello") {
                Ok((back, _)) => {
                    assert_eq!(back, b"hello");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "not healed: {e}"),
            }
            std::thread::sleep(CUT_POLL);
        }
    }

    #[test]
    fn cutting_the_viewing_dc_cuts_its_relays_too() {
        let dir = tempfile::tempdir().unwrap();
        let relay = undelayed_relay(dir.path());
        cut(dir.path(), "dc1").unwrap();
        std::thread::sleep(CUT_POLL * 2);
        assert!(round_trip(relay.listen(), b"hello").is_err());
        cut(dir.path(), "dc3").unwrap();
        heal(dir.path(), "dc1").unwrap();
        std::thread::sleep(CUT_POLL * 2);
        assert_eq!(round_trip(relay.listen(), b"hello").unwrap().0, b"hello");
    }
}
