//! The one allocator of ports of a launch. A port it hands out, and every
//! port derived from it (a ZooKeeper member's quorum and election ports, a
//! Redis Cluster node's bus port), is free when chosen, never handed out
//! twice by the same book, and reserved machine-wide until the book is
//! dropped: each is held by an exclusive `flock` on
//! `TMPDIR/spoolhouse-ports/PORT`, so launches running at once (tests in
//! parallel threads or processes) never choose the same one. The kernel
//! drops the locks of a launcher killed with `kill -9`.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// Tries before giving up on finding a port whose derived ports are free.
const TRIES: usize = 256;

/// The ports of one launch, reserved until dropped.
#[derive(Debug, Default)]
pub struct PortBook {
    taken: BTreeSet<u16>,
    locks: Vec<File>,
}

fn lock_dir() -> PathBuf {
    std::env::temp_dir().join("spoolhouse-ports")
}

/// An exclusive, non-blocking lock on `port`'s file: `None` if another
/// book holds it.
fn reserve(port: u16) -> std::io::Result<Option<File>> {
    let dir = lock_dir();
    std::fs::create_dir_all(&dir)?;
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(port.to_string()))?;
    // SAFETY: flock on a file descriptor this function owns.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(Some(f))
    } else {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

impl PortBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every port handed out so far, derived ones included.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.taken.iter().copied()
    }

    /// A port free on loopback now, with `port + offset` free too for each
    /// of `offsets`; none of them handed out before by this book nor
    /// reserved by another. All of them are reserved.
    pub fn take(&mut self, offsets: &[u16]) -> std::io::Result<u16> {
        for _ in 0..TRIES {
            let first = TcpListener::bind("127.0.0.1:0")?;
            let port = first.local_addr()?.port();
            let Some(all) = std::iter::once(Some(port))
                .chain(offsets.iter().map(|o| port.checked_add(*o)))
                .collect::<Option<Vec<u16>>>()
            else {
                continue;
            };
            if all.iter().any(|p| self.taken.contains(p)) {
                continue;
            }
            // Derived ports must be free too; hold them while reserving.
            let Ok(_held) = all[1..]
                .iter()
                .map(|p| TcpListener::bind(("127.0.0.1", *p)))
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let mut locks = Vec::with_capacity(all.len());
            for p in &all {
                match reserve(*p)? {
                    Some(l) => locks.push(l),
                    None => break,
                }
            }
            if locks.len() < all.len() {
                continue;
            }
            self.taken.extend(all);
            self.locks.extend(locks);
            return Ok(port);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("no free port with free ports at offsets {offsets:?} after {TRIES} tries"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_at_once_never_share_a_port() {
        let books: Vec<PortBook> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let mut b = PortBook::new();
                        for i in 0..40 {
                            let offsets: &[u16] = match i % 3 {
                                0 => &[],
                                1 => &[1000, 2000],
                                _ => &[10000],
                            };
                            b.take(offsets).unwrap();
                        }
                        b
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all = BTreeSet::new();
        let mut count = 0;
        for b in &books {
            for p in b.ports() {
                count += 1;
                assert!(all.insert(p), "port {p} handed out twice");
            }
        }
        // 8 books × 40 ports, a third with two derived ports, a third with one.
        assert_eq!(count, 8 * (14 + 13 * 3 + 13 * 2));
    }
}
