//! The Ansible roles and playbooks of `ansible/`, for real, with ansible-core
//! and ansible-lint from PyPI (installed once into a cached venv by
//! `scripts/ansible-venv.sh`):
//!
//! - `ansible-lint` (production profile) and `--syntax-check` of every playbook;
//! - a deployment of two datacenters of three app hosts each by `site.yml`
//!   (one `--limit` per DC) with `ansible_connection=local` into a temporary
//!   prefix, from a topology on free loopback ports rendered by the library, with
//!   `spoolhouse_service_manager=process` (no systemd as PID 1 here):
//!   afterwards ZooKeeper, Redis (dc2's a three-master Redis Cluster) and
//!   ClickHouse answer, the collector, shipper and query service answer
//!   `/healthz`, an event sent to a deployed collector reaches ClickHouse, a
//!   second run changes nothing, and `rolling-restart.yml --limit dc1`, with
//!   votes sent to each of dc1's app hosts throughout, replaces every process
//!   of dc1 (new pids) with everything healthy again and every acknowledged
//!   vote in ClickHouse once, per host.
//!
//! Everything the playbooks start is stopped when the test ends, also on
//! failure (the supervisor's `stop-all`, from `Drop`). Skipped, with a
//! message, only where no python3 with venv is installed.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod common;

use dc_config::check::{Checker, Declaration};
use dc_config::credentials::Credentials;
use dc_config::schema::user::WRITER_USER;
use dc_config::topology::{RedisMode, ReplicaRef, Topology};
use launcher::probe::{self, ClickHouseHttp};

/// App hosts per datacenter, each with its collector and shipper.
const APP_HOSTS: usize = 3;
/// Every playbook of `ansible/`.
const PLAYBOOKS: &[&str] = &["site.yml", "rolling-restart.yml"];
/// Longest one `ansible-playbook` or `ansible-lint` run may take; each wait
/// inside the playbooks is bounded far below this.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// Time each deployed process gets to stop on SIGTERM at teardown.
const STOP_TIMEOUT_S: &str = "20";

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

/// Renders into `dir` as `spoolhouse config render` does (passwords in its
/// `secrets/`); the inventory's path.
fn render_into(topology: &Topology, dir: &Path) -> PathBuf {
    let files = dc_config::render::render(
        topology,
        &dc_config::examples::declared().registry,
        dc_config::examples::REGISTRY,
        &Credentials::load_or_create(&dir.join("secrets")).unwrap(),
    );
    for dc in topology.datacenter.iter().filter(|dc| !dc.relay.is_empty()) {
        dc_config::credentials::relay_secret_load_or_create(&dir.join("secrets"), &dc.name)
            .unwrap();
    }
    dc_config::render::write_all(dir, &files).unwrap();
    dir.join("ansible/inventory.ini")
}

/// ClickHouse server `r`, asked as the writer with the password rendered
/// into `rendered`.
fn clickhouse(r: &ReplicaRef<'_>, rendered: &Path) -> ClickHouseHttp {
    let credentials = Credentials::load(&rendered.join("secrets")).unwrap();
    ClickHouseHttp::new(r.http_url(), Duration::from_secs(10))
        .with_login(WRITER_USER, &credentials.writer)
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

/// A deployment into a prefix; dropping it stops every process the
/// playbooks started there, newest first.
struct Deployment {
    bin: PathBuf,
    prefix: tempfile::TempDir,
    topology: Topology,
    inventory: PathBuf,
    runs: usize,
}

impl Deployment {
    /// The last lines of every Spoolhouse service's log under the prefix:
    /// why a service the first run started was no longer running.
    fn service_logs(&self) -> String {
        let dir = self.prefix.path().join("var/log/spoolhouse");
        let mut out = String::new();
        let mut logs: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            out.push_str(&format!("--- {}\n{}\n", log.display(), tail(&text, 15)));
        }
        out
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.prefix.path().join(rel)
    }

    fn run_dir(&self) -> PathBuf {
        self.path("run/spoolhouse")
    }

    /// Runs `playbook` with the prefix settings; panics with the end of its
    /// output when it fails. Returns the output.
    fn playbook(&mut self, playbook: &str, extra: &[&str]) -> String {
        self.runs += 1;
        let vars = serde_json::json!({
            "ansible_connection": "local",
            "ansible_python_interpreter": self.bin.join("python").display().to_string(),
            "spoolhouse_service_manager": "process",
            "spoolhouse_prefix": self.prefix.path().display().to_string(),
            "spoolhouse_become": false,
            "spoolhouse_binary_src": env!("CARGO_BIN_EXE_spoolhouse"),
            "spoolhouse_ready_retries": 60,
        });
        let vars_file = self.path("test-vars.json");
        std::fs::write(&vars_file, vars.to_string()).unwrap();
        let at_vars = format!("@{}", vars_file.display());
        let mut args = vec![
            "-i",
            self.inventory.to_str().unwrap(),
            "-e",
            &at_vars,
            playbook,
        ];
        args.extend_from_slice(extra);
        let log = self.path(&format!("ansible-{}-{playbook}.log", self.runs));
        let started = Instant::now();
        let (ok, out) = run_ansible(
            &self.bin,
            "ansible-playbook",
            &args,
            self.prefix.path(),
            &log,
        );
        assert!(
            ok,
            "ansible-playbook {playbook} {extra:?} failed:\n{}",
            tail(&out, 60)
        );
        println!(
            "ansible-playbook {playbook} {extra:?}: {:.1} s\n{}",
            started.elapsed().as_secs_f64(),
            recap(&out)
        );
        out
    }

    /// Service name → pid, from the supervisor's pid files.
    fn pids(&self) -> BTreeMap<String, String> {
        std::fs::read_dir(self.run_dir())
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                let name = p.file_name()?.to_str()?.strip_suffix(".pid")?.to_string();
                let text = std::fs::read_to_string(&p).ok()?;
                Some((name, text.split_whitespace().next()?.to_string()))
            })
            .collect()
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        let supervisor = ansible_dir().join("roles/spoolhouse_service/files/spoolhouse-supervise");
        let out = Command::new(supervisor)
            .args(["stop-all", self.run_dir().to_str().unwrap(), STOP_TIMEOUT_S])
            .output();
        match out {
            Ok(o) => eprint!(
                "teardown:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("teardown: running the supervisor failed: {e}"),
        }
    }
}

/// The PLAY RECAP lines of an ansible-playbook run.
/// Each task that reported `changed`, with its host line, from a run's output.
fn changed_tasks(out: &str) -> String {
    let mut task = "";
    let mut found = Vec::new();
    for line in out.lines() {
        if line.starts_with("TASK [") {
            task = line;
        } else if line.starts_with("changed:") {
            found.push(format!("{task}\n  {line}"));
        }
    }
    found.join("\n")
}

fn recap(out: &str) -> String {
    out.lines()
        .skip_while(|l| !l.starts_with("PLAY RECAP"))
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Status code of `GET path` on `addr` (HTTP/1.0, so the server closes).
fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, text))
}

/// Asserts every server and service of `topology` answers.
fn assert_all_answer(topology: &Topology, rendered: &Path) {
    for dc in &topology.datacenter {
        for z in &dc.zookeeper {
            let addr = SocketAddr::new(z.host.parse().unwrap(), z.port);
            assert!(
                probe::zookeeper_serving(addr),
                "ZooKeeper {addr} does not serve"
            );
        }
        for n in &dc.redis.nodes {
            assert!(probe::redis_ready(*n), "Redis {n} does not answer PING");
            if dc.redis.mode == RedisMode::Cluster {
                let info = probe::redis_command(*n, &["CLUSTER", "INFO"]).unwrap();
                assert!(info.contains("cluster_state:ok"), "Redis {n}: {info}");
            }
        }
        for r in dc.replicas() {
            let ch = clickhouse(&r, rendered);
            let tables = ch
                .query("SELECT count() FROM system.tables WHERE database = 'spoolhouse'")
                .unwrap_or_else(|e| panic!("ClickHouse {}: {e}", r.name()));
            assert_ne!(tables.trim(), "0", "no schema on {}", r.name());
        }
        let hosts = dc.app_hosts();
        let services = hosts
            .iter()
            .flat_map(|h| {
                [
                    ("collector", h.collector.admin),
                    ("shipper", h.shipper.admin),
                ]
            })
            .chain(dc.relay.iter().map(|r| ("relay", r.admin)))
            .chain([("query service", dc.query.listen)]);
        for (what, addr) in services {
            let (code, text) = http_status(addr, "/healthz")
                .unwrap_or_else(|e| panic!("{} {what} at {addr}: {e}", dc.name));
            assert_eq!(code, 200, "{} {what} /healthz:\n{text}", dc.name);
        }
    }
}

/// `systemd-analyze verify` on every unit in `dir` (syntax, quoting,
/// executables), where systemd-analyze is installed: the systemd path cannot
/// run here, but its units can be checked.
fn verify_units(dir: &Path) {
    let units: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
    {
        Ok(o) => assert!(
            o.status.success(),
            "systemd-analyze verify:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("units not verified: systemd-analyze: {e}"),
    }
}

/// The two-DC example on free loopback ports under `state`, dc2's Redis a
/// three-master cluster (so the redis role forms one).
fn test_topology(state: &Path) -> Topology {
    let t = launcher::with_app_hosts(&dc_config::examples::declared().topology, APP_HOSTS);
    // dc1 in relay mode (docs/adr/0017): its app hosts through one relay,
    // deployed and restarted by the relay role; dc2 direct.
    let mut t = launcher::with_relays(&t, "dc1", 1);
    let dc2 = t.datacenter.iter_mut().find(|d| d.name == "dc2").unwrap();
    dc2.redis.mode = RedisMode::Cluster;
    dc2.redis.nodes = (1..=3)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .collect();
    // The launcher's one port book gives every port of the topology, the
    // Redis Cluster buses (port + 10000) included, so none of them clash.
    let t = launcher::localize(&t, state).unwrap();
    let mut c = Checker::default();
    t.check(&mut c);
    let problems = c.into_errors(Path::new("<test topology>"), "");
    assert!(
        problems.is_empty(),
        "the test topology is invalid: {problems:?}"
    );
    t
}

#[test]
fn site_deploys_two_datacenters_into_a_prefix_and_rolling_restart_replaces_every_process() {
    let Some(bin) = ansible_bin() else { return };
    let prefix = tempfile::Builder::new()
        .prefix("spoolhouse-ansible-")
        .tempdir()
        .unwrap();
    let topology = test_topology(&prefix.path().join("var/lib/spoolhouse"));
    // On the controller, beside the prefix, as an operator's render would be.
    let inventory = render_into(&topology, &prefix.path().join("rendered"));
    let mut d = Deployment {
        bin,
        prefix,
        topology,
        inventory,
        runs: 0,
    };

    d.playbook("site.yml", &["--limit", "dc1"]);
    d.playbook("site.yml", &["--limit", "dc2"]);
    assert_all_answer(&d.topology, &d.path("rendered"));

    // Both service managers come from the same variables: every instance has
    // its unit, with the command line the supervisor ran.
    let units = d.path("etc/systemd/system");
    let pids = d.pids();
    // ZooKeeper 2, Redis 1 + 3, ClickHouse 3, per DC a collector and a
    // shipper per app host and a query service, dc1's relay.
    assert_eq!(
        pids.len(),
        2 + 4 + 3 + 2 * (2 * APP_HOSTS + 1) + 1,
        "{pids:?}"
    );
    assert!(pids.contains_key("spoolhouse-relay-dc1-relay1"), "{pids:?}");
    for name in pids.keys() {
        let unit = std::fs::read_to_string(units.join(format!("{name}.service")))
            .unwrap_or_else(|e| panic!("unit of {name}: {e}"));
        assert!(unit.contains("\nExecStart=/"), "{name}:\n{unit}");
    }
    verify_units(&units);
    let collector_unit =
        std::fs::read_to_string(units.join("spoolhouse-collector-dc1-app1.service")).unwrap();
    let config = d.path("etc/spoolhouse/dc1/dc1-app1/collector.toml");
    assert!(
        collector_unit.contains(&format!("collector --config {}", config.display())),
        "{collector_unit}"
    );

    // The deployed pipeline works: an event sent to dc1's collector is in
    // dc1's ClickHouse.
    let dc1 = d.topology.dc("dc1").unwrap().clone();
    let input = d.path("event.jsonl");
    std::fs::write(
        &input,
        format!("{{\"event\":\"vote\",\"time\":{},\"attrs\":{{\"user_id\":1,\"target_user_id\":2,\"vote\":\"yes\",\"country_id\":3}}}}\n", dc_config::event::now_ms()),
    )
    .unwrap();
    let sent = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args(["send", input.to_str().unwrap(), "--to"])
        .arg(format!("unix:{}", dc1.collector.socket.display()))
        .output()
        .unwrap();
    assert!(sent.status.success(), "{sent:?}");
    let ch = clickhouse(&dc1.replicas().next().unwrap(), &d.path("rendered"));
    let until = Instant::now() + Duration::from_secs(60);
    while ch
        .query("SELECT count() FROM spoolhouse.events_dc WHERE event = 'vote'")
        .map(|n| n.trim() != "1")
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < until,
            "the event did not reach ClickHouse in 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Idempotent: a second run of dc1 changes nothing.
    let again = d.playbook("site.yml", &["--limit", "dc1"]);
    for line in recap(&again).lines().skip(1) {
        assert!(
            line.contains(" changed=0 "),
            "a second run changed something: {line}\n{}\n{}",
            changed_tasks(&again),
            d.service_logs()
        );
    }
    assert_eq!(d.pids(), pids, "a second run restarted something");

    // One DC's rolling restart (both would double the test's time and
    // show nothing more), under load on each of its app hosts: every dc1
    // process is replaced, dc2's are not, and nothing is lost or doubled.
    let hosts = dc1.app_hosts();
    let mut load = common::Load::start(hosts.iter().map(|h| h.collector.socket.clone()).collect());
    std::thread::sleep(Duration::from_secs(2));
    d.playbook("rolling-restart.yml", &["--limit", "dc1"]);
    std::thread::sleep(Duration::from_secs(2));
    load.stop();
    for (k, h) in hosts.iter().enumerate() {
        let acked = load.acked(k);
        assert!(acked > 0, "{}: no vote acknowledged", h.name);
        let sql = format!(
            "SELECT count(), uniqExact(spool_segment, spool_offset) FROM spoolhouse.events_dc \
             WHERE event = 'vote' AND host = '{}' AND toUInt64(attr_values[indexOf(attr_names, 'user_id')]) >= 1000000000 FORMAT TSV",
            h.name
        );
        let until = Instant::now() + Duration::from_secs(120);
        let want = format!("{acked}\t{acked}");
        loop {
            let got = ch.query(&sql).unwrap_or_default();
            if got.trim() == want {
                break;
            }
            assert!(
                Instant::now() < until,
                "{}: {acked} votes acknowledged through the rolling restart, ClickHouse holds (rows, positions) {got:?}\n{}",
                h.name,
                d.service_logs()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        eprintln!(
            "{}: {acked} votes acknowledged through the rolling restart, each in ClickHouse once",
            h.name
        );
    }
    let after = d.pids();
    assert_eq!(after.len(), pids.len(), "{after:?}");
    for (name, pid) in &pids {
        if name.contains("-dc1") {
            assert_ne!(&after[name], pid, "{name} was not restarted");
        } else {
            assert_eq!(&after[name], pid, "{name} of dc2 was restarted");
        }
    }
    assert_all_answer(&d.topology, &d.path("rendered"));
}
