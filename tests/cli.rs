//! The `spoolhouse` binary as an operator meets it: help, validation
//! messages, rendering into a folder.

use std::path::Path;
use std::process::{Command, Output};

fn spoolhouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn help_names_the_commands() {
    let o = spoolhouse(&["--help"]);
    assert!(o.status.success());
    let (out, _) = text(&o);
    for cmd in ["config", "local", "demo"] {
        assert!(out.contains(cmd), "{cmd} missing from --help:\n{out}");
    }
}

#[test]
fn validate_accepts_the_examples() {
    let o = spoolhouse(&[
        "config",
        "validate",
        "examples/two-dc.toml",
        "examples/events.toml",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(
        out,
        "ok: 2 datacenter(s), 2 app host(s), 3 ClickHouse server(s); 4 event type(s), 10 metric(s)\n"
    );
}

#[test]
fn a_fleet_of_401_hosts_in_18_lines_validates_and_renders_every_host() {
    let src = std::fs::read_to_string("examples/fleet.toml").unwrap();
    assert!(
        src.lines().count() < 20,
        "the example is meant to stay short"
    );
    let o = spoolhouse(&[
        "config",
        "validate",
        "examples/fleet.toml",
        "examples/events.toml",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        out.starts_with("ok: 1 datacenter(s), 401 app host(s), 4 ClickHouse server(s)"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = spoolhouse(&[
        "config",
        "render",
        "examples/fleet.toml",
        "examples/events.toml",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let hosts = std::fs::read_dir(dir.path().join("services/dc1"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("collector.toml").exists())
        .count();
    assert_eq!(hosts, 401);
    let inventory = std::fs::read_to_string(dir.path().join("ansible/inventory.ini")).unwrap();
    assert!(inventory.contains("\ndc1-app001\ndc1-app002\n"));
    assert!(
        inventory.contains("\ndc1-batch1 spool_quota_bytes=107374182400\n"),
        "{inventory}"
    );
    assert!(inventory.contains("\n[dc1_query]\ndc1-query1 query_listen=10.1.0.10:7104\n"));
    // Hosts listening on every address are reached by name for pipeline health.
    let query = std::fs::read_to_string(dir.path().join("services/dc1/query.toml")).unwrap();
    assert!(
        query.contains("collector_admin = \"dc1-app400:7102\""),
        "{query}"
    );
}

#[test]
fn validate_reports_problems_of_both_files_with_lines() {
    let dir = tempfile::tempdir().unwrap();
    let topo = std::fs::read_to_string("examples/two-dc.toml")
        .unwrap()
        .replace("http_port = 18111", "http_port = 18101");
    let reg = std::fs::read_to_string("examples/events.toml")
        .unwrap()
        .replace(
            "field = \"load_ms\", dimensions = [\"platform\"] },\n  { kind = \"max\"",
            "field = \"load_time\", dimensions = [\"platform\"] },\n  { kind = \"max\"",
        );
    let t = dir.path().join("t.toml");
    let r = dir.path().join("r.toml");
    std::fs::write(&t, &topo).unwrap();
    std::fs::write(&r, &reg).unwrap();
    let o = spoolhouse(&[
        "config",
        "validate",
        t.to_str().unwrap(),
        r.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    let tline = topo
        .lines()
        .position(|l| l.contains("http_port = 18101, interserver_port = 19211"))
        .unwrap()
        + 1;
    let rline = reg.lines().position(|l| l.contains("load_time")).unwrap() + 1;
    assert!(
        err.contains("2 problems in the declared configuration"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{}:{tline}: `datacenter[1].clickhouse.shard[0].replica[0].http_port`: duplicate port: 127.0.0.1:18101 is already used by `datacenter[0].clickhouse.shard[0].replica[0].http_port`", t.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{}:{rline}: `event.screen_view.metric[1].field`: no field `load_time` in this event",
            r.display()
        )),
        "{err}"
    );
}

#[test]
fn validate_names_a_missing_file() {
    let o = spoolhouse(&["config", "validate", "nope.toml", "examples/events.toml"]);
    assert!(!o.status.success());
    let (_, err) = text(&o);
    assert!(err.contains("cannot read nope.toml"), "{err}");
    assert!(err.contains("check the path"), "{err}");
}

#[test]
fn render_writes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let o = spoolhouse(&[
        "config",
        "render",
        "examples/two-dc.toml",
        "examples/events.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    let (listed, _) = text(&o);
    // 4 password files, 3 servers × 3, 2 zoo.cfg, 2 schemas, 2 DCs × 4
    // service files, 1 inventory.
    assert_eq!(listed.lines().count(), 26);
    for f in listed.lines() {
        assert!(Path::new(f).is_file(), "{f} listed but not written");
    }
    let sql = std::fs::read_to_string(out.join("ddl/dc1.sql")).unwrap();
    assert!(sql.contains("ENGINE = Distributed(dc1, spoolhouse, events_local, rand())"));

    // Passwords are made once: a second render keeps them.
    let secret = out.join("secrets/clickhouse-spoolhouse_shipper.password");
    let first = std::fs::read_to_string(&secret).unwrap();
    let o = spoolhouse(&[
        "config",
        "render",
        "examples/two-dc.toml",
        "examples/events.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), first);

    // A shipper whose password file other users may read does not start,
    // and says what to do.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = std::fs::read_to_string(out.join("services/dc1/dc1-app1/shipper.toml"))
        .unwrap()
        .replace(
            "/etc/spoolhouse/secrets/clickhouse-spoolhouse_shipper.password",
            secret.to_str().unwrap(),
        );
    let shipper_toml = out.join("services/dc1/dc1-app1/shipper-test.toml");
    std::fs::write(&shipper_toml, config).unwrap();
    let o = spoolhouse(&["shipper", "--config", shipper_toml.to_str().unwrap()]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("mode 0644") && err.contains(&format!("chmod 600 {}", secret.display())),
        "{err}"
    );
}

/// `registry diff`: safe changes pass, a breaking one fails unless
/// allowed, each line says what the change breaks.
#[test]
fn registry_diff_tells_safe_from_breaking_and_fails_on_breaking() {
    let dir = tempfile::tempdir().unwrap();
    let old = std::fs::read_to_string("examples/events.toml").unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let old_path = write("old.toml", &old);
    let safe = write(
        "safe.toml",
        &format!("{old}\n[event.click]\nfields.x = {{ type = \"u8\" }}\n"),
    );
    let o = spoolhouse(&["registry", "diff", &old_path, &safe]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        out,
        "safe     click: new event type: senders may send it from now on\n1 change(s), 0 breaking\n"
    );

    let breaking = write(
        "breaking.toml",
        &old.replacen("[event.vote]", "[event.vote]\naccept_past_s = 60", 1),
    );
    let o = spoolhouse(&["registry", "diff", &old_path, &breaking]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.starts_with("breaking vote.accept_past_s: narrowed"),
        "{out}"
    );
    assert!(out.contains("(breaks senders)"), "{out}");
    assert!(err.contains("--allow-breaking"), "{err}");
    let o = spoolhouse(&["registry", "diff", "--allow-breaking", &old_path, &breaking]);
    assert!(o.status.success());

    let o = spoolhouse(&["registry", "diff", &old_path, "missing.toml"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("missing.toml"), "{err}");
}
