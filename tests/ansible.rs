//! The Ansible roles and playbooks of `ansible/`, for real, with ansible-core
//! and ansible-lint from PyPI (installed once into a cached venv by
//! `scripts/ansible-venv.sh`):
//!
//! - `ansible-lint` (production profile) and `--syntax-check` of every playbook;
//!
//! Skipped, with a message, only where no python3 with venv is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use dc_config::topology::Topology;

/// Every playbook of `ansible/`.
const PLAYBOOKS: &[&str] = &["site.yml", "rolling-restart.yml"];
/// Longest one `ansible-playbook` or `ansible-lint` run may take; each wait
/// inside the playbooks is bounded far below this.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn ansible_dir() -> PathBuf {
    repo().join("ansible")
}

/// The venv's bin folder, made once per test process; `None` (and a message)
/// where python3 with venv is missing.
fn ansible_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("scripts/ansible-venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/ansible-venv.sh");
        match out.status.code() {
            Some(0) => Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())),
            Some(3) => {
                eprintln!("SKIPPED: the Ansible tests need python3 with the venv module");
                None
            }
            _ => panic!("scripts/ansible-venv.sh failed: {}", out.status),
        }
    })
    .clone()
}

/// Runs an Ansible program from the venv in `ansible/`, bounded by
/// [`RUN_TIMEOUT`], its output in `log`; returns whether it succeeded and
/// what it printed.
fn run_ansible(
    bin: &Path,
    program: &str,
    args: &[&str],
    home: &Path,
    log: &Path,
) -> (bool, String) {
    let path = std::env::join_paths(std::iter::once(bin.to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(bin.join(program));
    cmd.args(args)
        .current_dir(ansible_dir())
        .env("PATH", path)
        .env("ANSIBLE_CONFIG", ansible_dir().join("ansible.cfg"))
        .env("ANSIBLE_HOME", home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // Its own process group, so a run that overstays is killed with its workers.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let until = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > until {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(s) => (s.success(), text),
        None => (false, format!("{text}\n(killed after {RUN_TIMEOUT:?})")),
    }
}

/// The last `n` lines of `text`, for failure messages.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn render_into(topology: &Topology, dir: &Path) -> PathBuf {
    let files = dc_config::render::render(topology, dc_config::examples::REGISTRY);
    dc_config::render::write_all(dir, &files).unwrap();
    dir.join("ansible/inventory.ini")
}

#[test]
fn roles_and_playbooks_pass_ansible_lint_and_syntax_check() {
    let Some(bin) = ansible_bin() else { return };
    let dir = tempfile::tempdir().unwrap();
    let inventory = render_into(
        &dc_config::examples::declared().topology,
        &dir.path().join("rendered"),
    );
    let log = dir.path().join("lint.log");
    let (ok, out) = run_ansible(&bin, "ansible-lint", &["--offline"], dir.path(), &log);
    assert!(ok, "ansible-lint found problems:\n{out}");
    println!("{}", tail(&out, 3));
    for playbook in PLAYBOOKS {
        let log = dir.path().join(format!("syntax-{playbook}.log"));
        let (ok, out) = run_ansible(
            &bin,
            "ansible-playbook",
            &[
                "--syntax-check",
                "-i",
                inventory.to_str().unwrap(),
                playbook,
            ],
            dir.path(),
            &log,
        );
        assert!(ok, "ansible-playbook --syntax-check {playbook}:\n{out}");
    }
}
