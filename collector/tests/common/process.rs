//! The collector as a process of its own: the test binary started again
//! with [`CHILD_ENV`] set runs its ignored test `collector_process`, which
//! calls [`child_main`]. So a test can kill it as a crash would, or run it
//! as another user than the app writing the inbox.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Set in the collector process: its directory ([`super::config_in`]).
pub const CHILD_ENV: &str = "SPOOLHOUSE_TEST_COLLECTOR_DIR";
/// Set in the collector process to run it as this uid (and gid), dropped
/// to once started by root.
const CHILD_UID_ENV: &str = "SPOOLHOUSE_TEST_COLLECTOR_UID";
/// Set in the collector process to other limits than [`super::fast_limits`]
/// (JSON).
const CHILD_LIMITS_ENV: &str = "SPOOLHOUSE_TEST_COLLECTOR_LIMITS";
/// The collector process stops gracefully once this file is in its directory.
const STOP_FILE: &str = "stop";
/// Where the collector process keeps its metrics' text, rewritten every 50 ms.
pub const METRICS_FILE: &str = "metrics.txt";
/// Its log (and anything it prints).
pub const LOG_FILE: &str = "collector.log";
/// No collector process outlives this, whatever the test does.
const CHILD_LIFETIME: Duration = Duration::from_secs(300);

/// A running collector process on `dir`.
pub struct CollectorProcess {
    child: std::process::Child,
    dir: PathBuf,
}

impl CollectorProcess {
    pub fn start(dir: &Path) -> Self {
        Self::spawn(dir, None, None)
    }

    /// Runs it as user `uid` (group `uid` too); needs root.
    pub fn start_as(dir: &Path, uid: u32) -> Self {
        Self::spawn(dir, Some(uid), None)
    }

    /// Runs it with `limits` instead of [`super::fast_limits`].
    pub fn start_with(dir: &Path, limits: &dc_config::services::CollectorLimits) -> Self {
        Self::spawn(dir, None, Some(limits))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn spawn(
        dir: &Path,
        uid: Option<u32>,
        limits: Option<&dc_config::services::CollectorLimits>,
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LOG_FILE))
            .unwrap();
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "collector_process", "--ignored", "--nocapture"])
            .env(CHILD_ENV, dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(uid) = uid {
            cmd.env(CHILD_UID_ENV, uid.to_string());
        }
        if let Some(limits) = limits {
            cmd.env(CHILD_LIMITS_ENV, serde_json::to_string(limits).unwrap());
        }
        Self {
            child: cmd.spawn().unwrap(),
            dir: dir.to_path_buf(),
        }
    }

    /// Stops it gracefully; it must exit cleanly.
    pub fn stop(mut self) {
        let stop = self.dir.join(STOP_FILE);
        std::fs::write(&stop, b"").unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < until, "the collector did not stop in 30 s");
            std::thread::sleep(Duration::from_millis(10));
        };
        std::fs::remove_file(&stop).unwrap();
        assert!(
            status.success(),
            "the collector failed: {status}; its log:\n{}",
            self.log()
        );
    }

    /// `SIGKILL`, as a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Its metrics as last written (empty before the first write).
    pub fn metrics(&self) -> String {
        std::fs::read_to_string(self.dir.join(METRICS_FILE)).unwrap_or_default()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default()
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of the collector process: nothing unless [`CHILD_ENV`] is set.
pub fn child_main() {
    let Some(dir) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    if let Some(uid) = std::env::var(CHILD_UID_ENV)
        .ok()
        .and_then(|u| u.parse().ok())
    {
        // SAFETY: plain system calls (glibc applies them to every thread of
        // the process); the groups first, while still allowed.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
            assert_eq!(libc::setgid(uid), 0, "setgid");
            assert_eq!(libc::setuid(uid), 0, "setuid");
        }
    }
    let limits = std::env::var(CHILD_LIMITS_ENV)
        .ok()
        .map(|l| serde_json::from_str(&l).unwrap())
        .unwrap_or_else(super::fast_limits);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut prom = prometheus_client::registry::Registry::default();
        let metrics = std::sync::Arc::new(collector::Metrics::register(&mut prom));
        let c = collector::Collector::open(
            super::config_in(&dir, limits, 1 << 30),
            dc_config::examples::declared().registry,
            metrics,
            std::sync::Arc::new(collector::Health::default()),
        )
        .unwrap();
        let running = c.start().await.unwrap();
        let started = Instant::now();
        let (metrics_file, tmp) = (dir.join(METRICS_FILE), dir.join("metrics.tmp"));
        while !dir.join(STOP_FILE).exists() && started.elapsed() < CHILD_LIFETIME {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &prom).unwrap();
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, &metrics_file);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.shutdown().await.unwrap();
    });
}
