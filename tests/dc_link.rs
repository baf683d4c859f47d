//! `spoolhouse dc cut|heal|status` against a local cluster launched with
//! cross-DC relays by another process (here, the test): the cut makes
//! global reads from dc1 skip dc2, the heal brings it back.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{linked_cluster, wait_for};

use launcher::LocalCluster;

const LIMIT: Duration = Duration::from_secs(30);

fn spoolhouse(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn dcs_answering(cluster: &LocalCluster) -> Vec<String> {
    cluster
        .datacenters_answering("dc1-s1-r1")
        .unwrap_or_default()
}

#[test]
fn cut_and_heal_a_datacenter_from_another_process() {
    let cluster = linked_cluster(Duration::from_millis(20));
    let state = cluster.state_dir().to_str().unwrap().to_string();
    assert_eq!(dcs_answering(&cluster), ["dc1", "dc2"]);

    let (ok, out) = spoolhouse(&["dc", "cut", "dc2", "--state", &state]);
    assert!(ok, "{out}");
    assert!(out.starts_with("dc2 cut"), "{out}");
    wait_for("dc2 to be skipped", LIMIT, || {
        dcs_answering(&cluster) == ["dc1"]
    });
    let (ok, out) = spoolhouse(&["dc", "status", "--state", &state]);
    assert!(ok, "{out}");
    assert_eq!(out, "dc1\tlinked\ndc2\tcut\n");

    let (ok, out) = spoolhouse(&["dc", "heal", "dc2", "--state", &state]);
    assert!(ok, "{out}");
    wait_for("dc2 to answer again", LIMIT, || {
        dcs_answering(&cluster) == ["dc1", "dc2"]
    });

    // What a user can get wrong is named, with what to do.
    let (ok, out) = spoolhouse(&["dc", "cut", "dc9", "--state", &state]);
    assert!(!ok);
    assert!(
        out.contains("no datacenter `dc9`") && out.contains("dc1, dc2"),
        "{out}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (ok, out) = spoolhouse(&[
        "dc",
        "cut",
        "dc2",
        "--state",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(out.contains("has no cross-DC links"), "{out}");
}
