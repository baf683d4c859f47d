//! Child server processes that never outlive the launcher: each gets
//! `PR_SET_PDEATHSIG`, so even a `kill -9` of the launcher takes it down, and
//! `Drop` stops it on every other path (test failure, panic, Ctrl-C).
//!
//! A process may run in a network namespace: it is then started as
//! `ip netns exec NS program …`, and since `ip` execs the program in place,
//! the child's pid is the program's own and every signal below reaches it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a graceful stop may take before the process is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(15);

/// What a server is started from, kept so it can be started again.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Program to run.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// File that receives stdout and stderr.
    pub log: PathBuf,
}

/// One running (or stopped) server process.
#[derive(Debug)]
pub struct Proc {
    /// Name used in messages, e.g. `clickhouse dc1-s1-r1`.
    pub name: String,
    /// How it is started.
    pub spec: Spec,
    /// The network namespace it runs in; `None`: this process's.
    pub netns: Option<String>,
    child: Option<Child>,
}

impl Proc {
    /// Starts the process described by `spec`.
    pub fn spawn(name: String, spec: Spec) -> std::io::Result<Self> {
        Self::spawn_in(name, spec, None)
    }

    /// Starts the process described by `spec` in network namespace `netns`
    /// (`None`: this process's); a restart goes back into it.
    pub fn spawn_in(name: String, spec: Spec, netns: Option<String>) -> std::io::Result<Self> {
        let mut p = Self {
            name,
            spec,
            netns,
            child: None,
        };
        p.start()?;
        Ok(p)
    }

    /// Starts the process again after [`Proc::stop`] or [`Proc::kill`].
    pub fn start(&mut self) -> std::io::Result<()> {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.spec.log)?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let ip = super::netns::ip_program().map_err(std::io::Error::other)?;
                let mut c = Command::new(ip);
                c.args(["netns", "exec", ns]).arg(&self.spec.program);
                c
            }
            None => Command::new(&self.spec.program),
        };
        cmd.args(&self.spec.args)
            .current_dir(&self.spec.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no Rust state.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn()?);
        Ok(())
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL now: a crash, as a test or a throw-away state wants it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.spec.log, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last `n` lines of the file at `path` (reads at most its last 64 KiB).
pub fn tail(path: &Path, n: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut s = String::new();
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() {
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
