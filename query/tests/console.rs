//! The console's files as the query service serves them: the page and
//! every file it names, each with its content type and cache policy, the
//! page with its content security policy; nothing outside the fixed table
//! (no path reaches the file system), and the registry the console's
//! pickers are built from.

mod common;

use common::{get_text, Harness};

#[test]
fn console_files_are_served_from_the_binary_and_nothing_else() {
    let h = Harness::start(|_| {});
    for path in ["/console/", "/console", "/console/index.html"] {
        let (s, headers, page) = get_text(&h.base, path);
        assert_eq!(s, 200, "{path}");
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-cache");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let csp = &headers["content-security-policy"];
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(page.contains("/console/console.js"), "{page}");
    }
    for (file, ctype, cache) in [
        ("console.js", "text/javascript; charset=utf-8", "no-cache"),
        ("charts.js", "text/javascript; charset=utf-8", "no-cache"),
        ("console.css", "text/css; charset=utf-8", "no-cache"),
        (
            "uPlot.iife.min.js",
            "text/javascript; charset=utf-8",
            "public, max-age=3600",
        ),
        (
            "uPlot.min.css",
            "text/css; charset=utf-8",
            "public, max-age=3600",
        ),
    ] {
        let (s, headers, body) = get_text(&h.base, &format!("/console/{file}"));
        assert_eq!(
            (
                s,
                headers["content-type"].as_str(),
                headers["cache-control"].as_str()
            ),
            (200, ctype, cache),
            "{file}"
        );
        assert_eq!(
            body,
            query::console::asset(file).unwrap().body,
            "{file} as built in"
        );
    }
    for path in [
        "/console/..%2F..%2FCargo.toml",
        "/console/%2e%2e%2fsrc%2flib.rs",
        "/console/package.json",
        "/console/vendor.sh",
        "/console/README",
        "/console/nothing.js",
    ] {
        let (s, headers, body) = get_text(&h.base, path);
        assert_eq!(s, 404, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json", "{path}");
        assert!(body.contains("the console starts at /console/"), "{body}");
    }
    // A path with more segments is no route at all.
    let (s, _, _) = get_text(&h.base, "/console/vendor/uPlot.min.css");
    assert_eq!(s, 404);

    let (s, v) = h.get("/v1/registry");
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["dc"], &v["datacenters"]),
        (&"dc1".into(), &serde_json::json!(["dc1", "dc2"]))
    );
    let registration = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "registration")
        .unwrap();
    assert_eq!(registration["metrics"][0]["name"], "registration.count()");
    assert_eq!(
        registration["metrics"][0]["dimensions"][0],
        serde_json::json!({"name": "gender", "values": ["male", "female", "unknown"]})
    );
    let progress = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "watch_progress")
        .unwrap();
    assert_eq!(
        progress["state"],
        serde_json::json!({"key": ["user_id", "video_id"], "value": "video_time"})
    );
}
