//! `docs/openapi.yaml` and the router agree: the router's route list
//! (`query::api::ROUTES`) is exactly the documented set, and every
//! documented operation is answered by the running service (anything but
//! the "no such endpoint" 404), while an undocumented one is not.

mod common;

use std::collections::BTreeSet;

use common::openapi::operations;
use common::Harness;

#[test]
fn documented_routes_are_the_routers() {
    let documented: BTreeSet<(String, String)> = operations()
        .into_iter()
        .map(|o| (o.method, o.path))
        .collect();
    let routed: BTreeSet<(String, String)> = query::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        routed.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routed but not in docs/openapi.yaml"
    );
    assert_eq!(
        documented.difference(&routed).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "in docs/openapi.yaml but not in query::api::ROUTES"
    );
}

#[test]
fn every_documented_operation_is_answered() {
    let h = Harness::start(|_| {});
    let no_route = |v: &serde_json::Value| {
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no such endpoint"))
    };
    for op in operations() {
        let query = op.query_with(None);
        let url = format!("{}?{query}", op.path_with(None));
        let (s, v) = match op.method.as_str() {
            "GET" => h.get(&url),
            "POST" => h.post(&url, br#"{"sql": "SELECT 1"}"#),
            m => panic!("{m} {}: no client for this method in the test", op.path),
        };
        assert!(!(s == 404 && no_route(&v)), "{} {url}: {s} {v}", op.method);
        assert!(s < 500, "{} {url}: {s} {v}", op.method);
    }
    // And the router does say so for what is not documented.
    let (s, v) = h.get("/v1/nothing");
    assert!(s == 404 && no_route(&v), "{s} {v}");
    let (s, v) = h.post("/v1/series", b"");
    assert_eq!(s, 405, "{v}");
}
