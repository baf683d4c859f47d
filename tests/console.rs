//! The web console in headless Chromium (Debian's `chromium`, driven by
//! playwright-core from `query/console/test/visit.mjs`) against dc1's query
//! service, the real binary, over two real DCs whose collectors, shippers
//! and query services run as processes, linked by the launcher's relays.
//! Five weeks of registrations with an injected drop are loaded straight
//! into ClickHouse; live votes and a watch-progress event go through the
//! collectors. Every page loads with no console error and no failed
//! request; the series chart has one point per step of its range and the
//! API's figures; a per-DC chart has a line per DC; the injected drop is
//! the first drop and the first anomaly; the progress lookup finds what
//! was sent; health shows both DCs flowing. Then dc2 is cut off: health
//! marks it missing, a global chart says it is without it, and the per-DC
//! chart names it as not answering.
//!
//! Screenshots are kept in `target/tmp/console-screenshots/` (printed).
//! Chromium, Node.js and the npm packages come from `scripts/setup.sh`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{get_json, linked_cluster, start_dc, wait_for, Load, LIMIT};
use dc_config::event::{ValidEvent, Value};
use serde_json::json;

/// Start of the evaluation range (2025-11-25 10:00 UTC): three hours.
const E: u32 = 1_764_028_800 + 10 * 3_600;
const HOUR: u32 = 3_600;
const WEEK: u32 = 7 * 86_400;
/// The series the drop is injected into.
const INJECTED: &str = "registration.count(){gender=female}";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Registrations of DC `dc` in hours 0..3 of the range, this week (k = 0)
/// and the four before: about 60 female and 60 male an hour, over two
/// countries and 25 users; this week's hour 1 has 10 female only.
fn history(dc: u64) -> Vec<ValidEvent> {
    let mut out = Vec::new();
    for k in 0..5u32 {
        for h in 0..3u32 {
            let hour = E + h * HOUR - k * WEEK;
            let female = if k == 0 && h == 1 {
                10
            } else {
                60 + u64::from((k + h) % 3)
            };
            for (gender, n) in [("female", female), ("male", 60 + u64::from(k % 2))] {
                for i in 0..n {
                    out.push(ValidEvent {
                        event: "registration".into(),
                        time_ms: u64::from(hour + 60 * (i % 2) as u32) * 1000 + i,
                        attrs: vec![
                            ("user_id".into(), Value::UInt(dc * 1_000 + i % 25)),
                            ("gender".into(), Value::Str(gender.into())),
                            ("country_id".into(), Value::UInt(47 + i % 2)),
                        ],
                    });
                }
            }
        }
    }
    out
}

/// Node.js, Chromium and the console's npm packages, or a failure that
/// says how to get them.
fn browser_tools() -> PathBuf {
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("query/console");
    // playwright-core needs Node.js 20 or later.
    let node = std::process::Command::new("node").arg("--version").output();
    let major = node.ok().filter(|o| o.status.success()).and_then(|o| {
        let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    assert!(
        major.is_some_and(|m| m >= 20),
        "Node.js 20 or later not found (major version found: {}): run `bash scripts/setup.sh` (as root), which says what the console test needs",
        major.map_or("none".to_string(), |m| m.to_string())
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: run `bash scripts/setup.sh` (as root; it installs Debian's chromium)"
    );
    assert!(
        console.join("node_modules/playwright-core").exists(),
        "playwright-core is not installed in {}: run `bash scripts/setup.sh` (it runs `npm ci` there)",
        console.display()
    );
    console
}

/// Runs the browser over `visits` (see visit.mjs); its report, pages by name.
fn browse(
    console: &Path,
    base: &str,
    shots: &Path,
    visits: serde_json::Value,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let plan = serde_json::json!({
        "base": base,
        "shots": shots,
        "chromium": CHROMIUM,
        "visits": visits,
    });
    let out = std::process::Command::new("node")
        .arg(console.join("test/visit.mjs"))
        .arg(plan.to_string())
        .current_dir(console)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "visit.mjs failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut pages = std::collections::BTreeMap::new();
    for p in report["pages"].as_array().unwrap() {
        // Every page: drawn, and nothing went wrong in the browser.
        assert!(p.get("failure").is_none(), "{p:#}");
        for key in ["console_errors", "page_errors", "failed_requests"] {
            assert_eq!(
                p[key],
                serde_json::json!([]),
                "{key} on {}: {p:#}",
                p["url"]
            );
        }
        assert_eq!(p["error"], serde_json::Value::Null, "{p:#}");
        pages.insert(p["name"].as_str().unwrap().to_string(), p["data"].clone());
    }
    pages
}

/// One page for visit.mjs: `name` (of its screenshot), the console's URL
/// fragment, which reader reads it, and `more` options (`polls`: wait for
/// that many health readings; `open_first`: open the first alert).
fn visit(name: &str, hash: &str, read: &str, more: serde_json::Value) -> serde_json::Value {
    let mut v = serde_json::json!({"name": name, "hash": hash, "read": read});
    if let (Some(v), Some(more)) = (v.as_object_mut(), more.as_object()) {
        v.extend(more.clone());
    }
    v
}

#[test]
fn console_pages_chart_the_pipeline_and_show_a_cut_datacenter() {
    let console = browser_tools();
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    println!("console screenshots: {}", shots.display());

    let cluster = linked_cluster(Duration::from_millis(20));
    let dir = tempfile::tempdir().unwrap();
    let _dc1 = start_dc(&cluster, "dc1", &dir.path().join("dc1"));
    let _dc2 = start_dc(&cluster, "dc2", &dir.path().join("dc2"));
    let t = cluster.topology().clone();
    let q1 = t.dc("dc1").unwrap().query.listen;
    let base = format!("http://{q1}");

    for (n, dc, servers) in [
        (1, "dc1", &["dc1-s1-r1", "dc1-s2-r1"][..]),
        (2, "dc2", &["dc2-s1-r1"][..]),
    ] {
        let events = history(n);
        let part = events.len().div_ceil(servers.len());
        for (server, chunk) in servers.iter().zip(events.chunks(part)) {
            cluster.load_events(server, dc, chunk).unwrap();
        }
        cluster.aggregate_minutes(servers[0], dc, &events).unwrap();
    }
    let _load = Load::start(vec![
        t.dc("dc1").unwrap().collector.socket.clone(),
        t.dc("dc2").unwrap().collector.socket.clone(),
    ]);
    send_progress(&t.dc("dc1").unwrap().collector.socket);
    wait_for("the watch progress in dc1's Redis", LIMIT, || {
        get_json(q1, "/v1/progress/7/42").0 == 200
    });
    wait_for("both DCs' collectors counting events", LIMIT, || {
        let (_, p) = get_json(q1, "/v1/pipeline");
        p["datacenters"].as_array().is_some_and(|dcs| {
            dcs.iter()
                .all(|d| d["events_in_total"].as_f64().is_some_and(|n| n > 0.0))
        })
    });
    // Each DC's one app host is its aggregator, and none is silent.
    wait_for("each DC's aggregator in pipeline health", LIMIT, || {
        let (_, p) = get_json(q1, "/v1/pipeline");
        p["datacenters"].as_array().is_some_and(|dcs| {
            dcs.iter().all(|d| {
                d["aggregator"] == format!("{}-app1", d["name"].as_str().unwrap_or(""))
                    && d["silent_hosts"] == 0.0
            })
        })
    });

    let (from, to) = (E - HOUR, E + 3 * HOUR);
    let series_hash = format!(
        "series?event=registration&metric=registration.count()&d.gender=female&from={from}&to={to}&step=5min&compare=last_week"
    );
    let global_hash = "series?event=vote&metric=vote.count()&range=1h&step=minute";
    let each_hash = format!(
        "series?event=registration&metric=registration.count()&from={from}&to={to}&step=hour&scope=each"
    );
    let drops_hash = format!(
        "drops?event=registration&window=1h&to={}&reference=previous&direction=down",
        E + 2 * HOUR
    );
    let anomalies_hash = format!(
        "anomalies?event=registration&window=3h&step=hour&to={}",
        E + 3 * HOUR
    );
    let pages = browse(
        &console,
        &base,
        &shots,
        serde_json::json!([
            visit("series", &series_hash, "series", json!({"zoom": true})),
            visit("series-global", global_hash, "series", json!({})),
            visit("series-each", &each_hash, "series", json!({})),
            visit("drops", &drops_hash, "drops", json!({})),
            visit(
                "anomalies",
                &anomalies_hash,
                "anomalies",
                json!({"open_first": true})
            ),
            visit(
                "progress",
                "progress?user=7&videos=42,43",
                "progress",
                json!({})
            ),
            visit("health", "health", "health", json!({"polls": 2})),
        ]),
    );

    // The chart: one point per step of the range, the API's figures on them.
    let s = &pages["series"];
    let (_, api) = get_json(
        q1,
        &format!("/v1/series?metric=registration.count%28%29%7Bgender%3Dfemale%7D&from={from}&to={to}&step=5min"),
    );
    let api_points = api["series"][0]["points"].as_array().unwrap().len();
    assert!(api_points >= 3, "{api}");
    assert_eq!(s["points"], (to - from) / 300, "{s}");
    assert_eq!(s["non_null"][0], api_points, "{s}");
    assert_eq!(s["series"], INJECTED, "{s}");
    assert_eq!(
        s["dims"],
        json!([["d.gender", "female"], ["d.country_id", ""]]),
        "{s}"
    );
    assert_eq!(s["missing"], "", "{s}");
    assert!(s["canvases"].as_u64().unwrap() >= 1, "{s}");
    // Zoomed into the middle two hours: read again by the minute.
    let zoom = s["zoom_link"].as_str().unwrap();
    assert!(
        zoom.starts_with("#series?") && zoom.contains("step=minute"),
        "{s}"
    );
    let global = &pages["series-global"];
    assert_eq!(global["missing"], "", "{global}");
    assert_eq!(global["lines"], json!(["vote.count()"]), "{global}");
    // Each DC its own line, from one read split by DC.
    let each = &pages["series-each"];
    assert_eq!(each["lines"], json!(["dc1", "dc2"]), "{each}");
    assert_eq!(each["non_null"], json!([3, 3]), "{each}");

    // The injected drop leads both lists, and opens into its hierarchy.
    assert_eq!(pages["drops"]["series"][0], INJECTED, "{}", pages["drops"]);
    assert!(pages["drops"]["charts"].as_u64().unwrap() >= 1);
    let a = &pages["anomalies"];
    assert_eq!(a["series"][0], INJECTED, "{a}");
    assert!(a["charts"].as_u64().unwrap() >= 1, "{a}");
    // Its hierarchy: the event total it explains above it, itself, and
    // the gender × country series it spreads over.
    let tree: Vec<&str> = a["hierarchy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(tree[0], "registration.count()", "{a}");
    assert!(
        tree.contains(&"registration.count(){gender=female} (the alert)"),
        "{a}"
    );
    assert!(
        tree.contains(&"registration.count(){gender=female,country_id=47}"),
        "{a}"
    );

    assert_eq!(
        pages["progress"]["rows"],
        serde_json::json!([{"video": "42", "value": "300"}])
    );
    let health = &pages["health"];
    assert_eq!(health["missing"], "", "{health}");
    for row in health["rows"].as_array().unwrap() {
        assert_eq!(row["state"], "ok", "{health}");
        assert!(row["events_per_s"].as_f64().unwrap() > 0.0, "{health}");
    }
    assert_eq!(health["rows"].as_array().unwrap().len(), 2, "{health}");

    // The figures health reads: every service of both DCs answered;
    // dc1's progress reads counted, dc2's none yet (0, not unknown).
    let (_, p) = get_json(q1, "/v1/pipeline");
    assert_eq!(
        (&p["partial"], &p["missing"]),
        (&json!(false), &json!([])),
        "{p}"
    );
    for (dc, reads) in p["datacenters"]
        .as_array()
        .unwrap()
        .iter()
        .zip([true, false])
    {
        for service in ["collector", "shipper", "query"] {
            assert_eq!(dc["services"][service]["up"], true, "{dc}");
        }
        assert!(dc["events_in_total"].as_f64().unwrap() > 0.0, "{dc}");
        assert!(dc["spool_bytes"].as_f64().unwrap() > 0.0, "{dc}");
        assert!(dc["clickhouse_rows_total"].as_f64().is_some(), "{dc}");
        assert!(
            dc["shipper_lag_seconds"]["clickhouse"].as_f64().is_some(),
            "{dc}"
        );
        let n = dc["progress_reads_total"].as_f64().unwrap();
        assert_eq!(n > 0.0, reads, "{dc}");
    }

    // Cut dc2 off: health marks it missing, and the global chart says so.
    cluster.cut("dc2").unwrap();
    wait_for("dc1's query service to lose dc2", LIMIT, || {
        get_json(q1, "/v1/pipeline").1["missing"] == serde_json::json!(["dc2"])
    });
    let cut = browse(
        &console,
        &base,
        &shots,
        serde_json::json!([
            visit("health-cut", "health", "health", json!({"polls": 2})),
            visit("series-global-cut", global_hash, "series", json!({})),
            visit("series-each-cut", &each_hash, "series", json!({})),
        ]),
    );
    let health = &cut["health-cut"];
    assert_eq!(health["missing"], "dc2", "{health}");
    let states: Vec<(&str, &str)> = health["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["dc"].as_str().unwrap(), r["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("dc1", "ok"), ("dc2", "missing")], "{health}");
    let global = &cut["series-global-cut"];
    assert_eq!(global["missing"], "dc2", "{global}");
    let each = &cut["series-each-cut"];
    assert_eq!(each["missing"], "dc2", "{each}");
    assert_eq!(
        each["lines"],
        json!(["dc1", "dc2 (did not answer)"]),
        "{each}"
    );
    assert_eq!(each["non_null"], json!([3, 0]), "{each}");
}

/// One watch-progress event (user 7, video 42 at 300 s) through `socket`.
fn send_progress(socket: &Path) {
    use collector::client::{Client, ClientConfig, Endpoint, LineOutcome};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = Client::connect(Endpoint::Unix(socket.to_path_buf()), ClientConfig::default())
            .await
            .unwrap();
        let line = format!(
            "{{\"event\":\"watch_progress\",\"time\":{},\"attrs\":{{\"user_id\":7,\"video_id\":42,\"video_time\":300}}}}",
            common::now_ms()
        );
        let outcomes = client.send_batch(&[line]).await.unwrap();
        assert!(matches!(outcomes[..], [LineOutcome::Acked]), "{outcomes:?}");
    });
}
