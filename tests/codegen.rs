//! `spoolhouse codegen` as a developer meets it, for Python, Go, PHP and
//! Rust: the generated package compiles (`py_compile`; `go vet`, `gofmt`;
//! `php -l`; `cargo clippy -D warnings`, offline), sends
//! every event type of the example registry to a real collector through
//! its socket and through an inbox file, the rows reach ClickHouse with
//! their typed values, invalid values are refused on the client with the
//! collector's own field, rule and message, and the Python README's
//! example runs as printed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{start_dc, wait_for};
use launcher::{LaunchOptions, LocalCluster};

fn generate(lang: &str, out: &Path) {
    stdout_of(
        Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
            .args([
                "codegen",
                "--lang",
                lang,
                "--registry",
                "examples/events.toml",
                "--out",
            ])
            .arg(out)
            .current_dir(env!("CARGO_MANIFEST_DIR")),
        &[],
        "cargo build",
    );
}

/// Runs `c` (its program missing: `install` says how to get it) with
/// `env` added; asserts it succeeded (showing both outputs if not) and
/// returns its standard output.
fn stdout_of(c: &mut Command, env: &[(&str, &Path)], install: &str) -> String {
    let o = c
        .envs(env.iter().map(|(k, v)| (k, v.as_os_str())))
        .output()
        .unwrap_or_else(|e| panic!("{c:?}: {e} ({install})"));
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{c:?}:\n{out}\n{err}");
    out
}

/// Runs `go ARGS` in the generated module `dir`, offline, with its caches in `dir`.
fn go(args: &[&str], dir: &Path, env: &[(&str, &Path)]) -> String {
    let mut c = Command::new("go");
    c.args(args)
        .current_dir(dir)
        .env("GOCACHE", dir.join(".gocache"))
        .env("GOPATH", dir.join(".gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off");
    stdout_of(&mut c, env, "apt-get install -y golang-go")
}

fn python(args: &[&str], pythonpath: &Path, env: &[(&str, &Path)]) -> String {
    let mut c = Command::new("python3");
    c.args(args).env("PYTHONPATH", pythonpath);
    stdout_of(&mut c, env, "apt-get install -y python3")
}

/// A client program's output: four events stored through the socket,
/// four through the inbox, every check passed.
fn assert_sent(printed: &str) {
    assert!(printed.contains("socket stored 4\n"), "{printed}");
    assert!(printed.contains("inbox stored 4\n"), "{printed}");
    assert!(printed.ends_with("ok\n"), "{printed}");
}

/// Waits until ClickHouse holds the eight events a client sent (user ids
/// from `base + 1` through the socket, from `base + 1001` through the
/// inbox), then checks each is there with its typed values.
fn assert_typed_rows(ch: &launcher::probe::ClickHouseHttp, base: u64) {
    let rows = || {
        ch.query(&format!(
            "SELECT event, arrayStringConcat(arrayMap((n, v) -> concat(n, '=', v), attr_names, attr_values), ' ') \
             FROM spoolhouse.events_dc WHERE toUInt64OrZero(attr_values[indexOf(attr_names, 'user_id')]) BETWEEN {} AND {} \
             ORDER BY toUInt64OrZero(attr_values[indexOf(attr_names, 'user_id')]) FORMAT TSV",
            base + 1,
            base + 1004
        ))
        .unwrap()
    };
    wait_for(
        &format!("the typed events from {base} in ClickHouse"),
        Duration::from_secs(60),
        || rows().lines().count() >= 8,
    );
    let want = |base: u64| {
        format!(
            "registration\tuser_id={} gender=female country_id=7 platform=ios\n\
             watch_progress\tuser_id={} video_id=99 video_time=1234\n\
             vote\tuser_id={} target_user_id=5 vote=yes country_id=250\n\
             screen_view\tuser_id={} screen=home \u{e9} platform=web load_ms=42 is_first_launch=1\n",
            base + 1,
            base + 2,
            base + 3,
            base + 4
        )
    };
    assert_eq!(rows(), format!("{}{}", want(base), want(base + 1000)));
}

#[test]
fn the_generated_clients_send_every_event_type_typed() {
    let out = tempfile::tempdir().unwrap();
    let gen = Command::new(env!("CARGO_BIN_EXE_spoolhouse"))
        .args([
            "codegen",
            "--lang",
            "python",
            "--registry",
            "examples/events.toml",
            "--out",
        ])
        .arg(out.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let module = out.path().join("spoolhouse_events/__init__.py");
    let text = std::fs::read_to_string(&module).unwrap();
    let version = dc_config::codegen::registry_version(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/events.toml"))
            .unwrap(),
    );
    assert!(
        text.starts_with("# Generated by `spoolhouse codegen --lang python`")
            && text.contains(&version),
        "the module says it is generated, and from which registry"
    );
    python(
        &["-m", "py_compile", module.to_str().unwrap()],
        out.path(),
        &[],
    );

    let cluster =
        LocalCluster::start(&dc_config::examples::declared(), LaunchOptions::default()).unwrap();
    let dir = cluster.state_dir().join("services-dc1");
    let _procs = start_dc(&cluster, "dc1", &dir);
    let dc = cluster.topology().dc("dc1").unwrap().clone();
    let host = dc.first_app_host().unwrap();
    let (socket, inbox) = (&host.collector.socket, &host.collector.inbox);
    let env = [
        ("SPOOLHOUSE_SOCKET", socket.as_path()),
        ("SPOOLHOUSE_INBOX", inbox.as_path()),
    ];
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/codegen/send_every_event.py"
    );
    let printed = python(&[script], out.path(), &env);
    assert_sent(&printed);

    // The rows, typed as the registry says, from the socket and the inbox.
    let server = dc.replicas().next().unwrap().name();
    let ch = cluster.clickhouse(&server).unwrap();
    assert_typed_rows(&ch, 1000);

    // The README's example, as printed.
    let readme = std::fs::read_to_string(out.path().join("README.md")).unwrap();
    let example = readme
        .split("```python\n")
        .nth(1)
        .and_then(|r| r.split("```").next())
        .expect("a python block in the README");
    assert_eq!(example.lines().count(), 4, "four lines to send:\n{example}");
    let example_file = out.path().join("example.py");
    std::fs::write(&example_file, example).unwrap();
    python(
        &[example_file.to_str().unwrap()],
        out.path(),
        &[("SPOOLHOUSE_SOCKET", socket.as_path())],
    );
    wait_for(
        "the README's event in ClickHouse",
        Duration::from_secs(60),
        || {
            ch.query(
                "SELECT count() FROM spoolhouse.events_dc WHERE event = 'registration' \
             AND attr_values[indexOf(attr_names, 'user_id')] = '7' FORMAT TSV",
            )
            .unwrap()
            .trim()
                == "1"
        },
    );
    // The Go module: vetted, gofmt-clean, and the same sends and checks.
    let gomod = tempfile::tempdir().unwrap();
    generate("go", gomod.path());
    let src = std::fs::read_to_string(gomod.path().join("events.go")).unwrap();
    assert!(
        src.starts_with("// Code generated by spoolhouse codegen --lang go")
            && src.lines().next().unwrap().ends_with("DO NOT EDIT.")
            && src.contains(&version),
        "the Go file says it is generated, and from which registry"
    );
    std::fs::create_dir_all(gomod.path().join("sendall")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/codegen/send_every_event.go"
        ),
        gomod.path().join("sendall/main.go"),
    )
    .unwrap();
    go(&["vet", "./..."], gomod.path(), &[]);
    let unformatted = Command::new("gofmt")
        .args(["-l", "events.go"])
        .current_dir(gomod.path())
        .output()
        .unwrap();
    assert!(
        unformatted.status.success() && unformatted.stdout.is_empty(),
        "gofmt: {}",
        String::from_utf8_lossy(&unformatted.stdout)
    );
    let printed = go(&["run", "./sendall"], gomod.path(), &env);
    assert_sent(&printed.replace(" <nil>", ""));
    assert_typed_rows(&ch, 3000);
    // The PHP package: every file lints, and the same sends and checks.
    let php_dir = tempfile::tempdir().unwrap();
    generate("php", php_dir.path());
    let mut php_files = vec![php_dir.path().join("autoload.php")];
    for f in std::fs::read_dir(php_dir.path().join("src")).unwrap() {
        php_files.push(f.unwrap().path());
    }
    for f in &php_files {
        stdout_of(
            Command::new("php").arg("-l").arg(f),
            &[],
            "apt-get install -y php-cli",
        );
    }
    let printed = stdout_of(
        Command::new("php")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/codegen/send_every_event.php"
            ))
            .arg(php_dir.path()),
        &env,
        "apt-get install -y php-cli",
    );
    assert_sent(&printed);
    assert_typed_rows(&ch, 5000);
    // The Rust crate: clippy-clean, and the same sends and checks.
    let crate_dir = tempfile::tempdir().unwrap();
    generate("rust", crate_dir.path());
    std::fs::create_dir_all(crate_dir.path().join("examples")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/codegen/send_every_event.rs"
        ),
        crate_dir.path().join("examples/send_every_event.rs"),
    )
    .unwrap();
    let cargo = |args: &[&str]| {
        stdout_of(
            Command::new(env!("CARGO"))
                .args(args)
                .current_dir(crate_dir.path())
                .env("CARGO_TARGET_DIR", crate_dir.path().join("target")),
            &env,
            "rustup",
        )
    };
    cargo(&["clippy", "--offline", "--lib", "--", "-D", "warnings"]);
    let printed = cargo(&[
        "run",
        "--offline",
        "--quiet",
        "--example",
        "send_every_event",
    ]);
    assert_sent(&printed);
    assert_typed_rows(&ch, 7000);
}
