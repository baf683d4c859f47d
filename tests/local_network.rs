//! `spoolhouse local up --network …` as an operator meets it: without the
//! capabilities namespaces need it runs on loopback and says why; a launcher
//! killed with `kill -9` leaves its namespaces, veths and bridge behind, and
//! the next launch removes them; `spoolhouse dc` finds the cluster a running
//! `local up` runs without being told where. Needs root, as CI runs it.

mod common;

use std::path::Path;
use std::process::Command;

use common::{wait_for, LIMIT};
use launcher::process::{Proc, Spec};

const TOPOLOGY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/two-dc.toml");
const REGISTRY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.toml");

/// `spoolhouse local up` with `args` after the files, run through
/// `wrapper` (a command that execs the rest; `[]`: none), its output into
/// `log`; waits until it serves and returns it with what it printed.
fn local_up(wrapper: &[&str], args: &[&str], log: &Path) -> (Proc, String) {
    let mut command: Vec<String> = wrapper.iter().map(|a| a.to_string()).collect();
    command.push(env!("CARGO_BIN_EXE_spoolhouse").into());
    command.extend(["local", "up", TOPOLOGY, REGISTRY].map(String::from));
    command.extend(args.iter().map(|a| a.to_string()));
    let spec = Spec {
        program: command.remove(0).into(),
        args: command,
        cwd: log.parent().unwrap().to_path_buf(),
        log: log.to_path_buf(),
    };
    let mut proc = Proc::spawn("local up".into(), spec).unwrap();
    wait_for("local up to serve", LIMIT, || {
        let printed = std::fs::read_to_string(log).unwrap_or_default();
        assert!(proc.exited().is_none(), "local up exited:\n{printed}");
        printed.contains("running; Ctrl-C stops every server")
    });
    (proc, std::fs::read_to_string(log).unwrap())
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn without_the_capabilities_for_namespaces_local_up_runs_on_loopback_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // uid 0 still, but without a single capability: `ip netns add` is refused.
    let no_caps = [
        "setpriv",
        "--bounding-set=-all",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        "--",
    ];
    let (mut proc, printed) = local_up(
        &no_caps,
        &["--state", state.to_str().unwrap()],
        &dir.path().join("up.log"),
    );
    assert!(
        printed.contains(
            "network: loopback (every server on 127.0.0.1), not network namespaces: `ip "
        ),
        "{printed}"
    );
    assert!(printed.contains("Operation not permitted"), "{printed}");
    assert!(
        printed.contains("network namespaces need root"),
        "{printed}"
    );
    assert!(
        printed.contains("clickhouse  dc1-s1-r1  http http://127.0.0.1:"),
        "{printed}"
    );
    // SIGTERM stops it as Ctrl-C does.
    proc.stop();
}

#[test]
fn a_launch_killed_with_sigkill_leaves_namespaces_that_the_next_launch_removes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (mut proc, printed) = local_up(
        &[],
        &[
            "--network",
            "namespaces",
            "--state",
            state.to_str().unwrap(),
        ],
        &dir.path().join("up.log"),
    );
    let netns: Vec<String> = printed
        .split_whitespace()
        .filter(|w| w.starts_with("spoolhouse-"))
        .map(String::from)
        .collect();
    assert_eq!(netns.len(), 2, "{printed}");
    proc.kill();
    let listed = ip(&["netns", "list"]);
    assert!(
        netns.iter().all(|n| listed.contains(n.as_str())),
        "{listed}"
    );

    // What every launch does first.
    let removed = launcher::netns::remove_leftovers().unwrap();
    assert!(netns.iter().all(|n| removed.contains(n)), "{removed:?}");
    let listed = ip(&["netns", "list"]);
    assert!(
        netns.iter().all(|n| !listed.contains(n.as_str())),
        "{listed}"
    );
    let links = ip(&["-o", "link", "show"]);
    for name in removed {
        assert!(!links.contains(&format!(": {name}")), "{name} in\n{links}");
    }
}

/// `spoolhouse dc cut|heal|status` without `--state` find the cluster a
/// running `spoolhouse local up` runs; with none or several running they
/// say so and what to do.
#[test]
fn dc_commands_find_the_running_local_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // A note folder of this test's own: other launches on the machine are
    // not counted.
    let run_dir = dir.path().join("run");
    let run_env = format!("SPOOLHOUSE_RUN_DIR={}", run_dir.display());
    let dc = |args: &[&str]| -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
            .arg("dc")
            .args(args)
            .env("SPOOLHOUSE_RUN_DIR", &run_dir)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, out) = dc(&["status"]);
    assert!(
        !ok && out.contains("no running `spoolhouse local up`"),
        "{out}"
    );
    assert!(out.contains("--state DIR"), "{out}");

    let up_args = ["--network", "loopback", "--cross-dc-delay-ms", "20"];
    let (mut first, _) = local_up(&["env", &run_env], &up_args, &dir.path().join("first.log"));
    let (ok, out) = dc(&["cut", "dc2"]);
    assert!(ok && out.starts_with("dc2 cut"), "{out}");
    let (ok, out) = dc(&["status"]);
    assert!(ok, "{out}");
    assert_eq!(out, "dc1\tlinked\ndc2\tcut\n");
    let (ok, out) = dc(&["heal", "dc2"]);
    assert!(ok && out.starts_with("dc2 healed"), "{out}");

    let (mut second, _) = local_up(&["env", &run_env], &up_args, &dir.path().join("second.log"));
    let (ok, out) = dc(&["status"]);
    assert!(
        !ok && out.contains("several local clusters are running"),
        "{out}"
    );
    second.stop();
    let (ok, out) = dc(&["status"]);
    assert!(ok, "{out}");
    assert_eq!(out, "dc1\tlinked\ndc2\tlinked\n");
    first.stop();
    let (ok, out) = dc(&["status"]);
    assert!(!ok && out.contains("no running"), "{out}");
}
