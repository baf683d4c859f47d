//! Every registry rule, with the error text an operator sees.

use std::path::Path;

use dc_config::registry::Registry;

const BASE: &str = dc_config::examples::REGISTRY;

fn errors(src: &str) -> Vec<String> {
    match Registry::parse(Path::new("r.toml"), src) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// Checks that `src` yields `rule` at `key` on the line holding `needle`.
fn expect(src: &str, needle: &str, key: &str, rule: &str) {
    let line = src.lines().position(|l| l.contains(needle)).expect(needle) + 1;
    let want = format!("r.toml:{line}: `{key}`: {rule}");
    let got = errors(src);
    assert!(
        got.contains(&want),
        "wanted\n  {want}\ngot\n  {}",
        got.join("\n  ")
    );
}

#[test]
fn the_example_is_valid_and_ordered() {
    let r = Registry::parse(Path::new("events.toml"), BASE).unwrap();
    let names: Vec<_> = r.event.keys().cloned().collect();
    assert_eq!(
        names,
        ["registration", "watch_progress", "vote", "screen_view"]
    );
    let fields: Vec<_> = r.event["registration"].fields.keys().cloned().collect();
    assert_eq!(fields, ["user_id", "gender", "country_id", "platform"]);
    let st = r.event["watch_progress"].state.as_ref().unwrap();
    assert_eq!(st.key, ["user_id", "video_id"]);
    assert_eq!(st.ttl_s, 2_592_000);
}

#[test]
fn unknown_field_type() {
    let src = BASE.replace(
        "fields.country_id = { type = \"u16\" }\nfields.platform",
        "fields.country_id = { type = \"u128\" }\nfields.platform",
    );
    let got = errors(&src);
    assert_eq!(got.len(), 1, "{got:?}");
    let line = src.lines().position(|l| l.contains("u128")).unwrap() + 1;
    assert!(
        got[0].starts_with(&format!(
            "r.toml:{line}: `event.registration.fields.country_id"
        )),
        "{}",
        got[0]
    );
    assert!(
        got[0].contains("unknown variant `u128`, expected one of `i8`"),
        "{}",
        got[0]
    );
}

#[test]
fn enum_rules() {
    let src = BASE.replace("values = [\"yes\", \"no\"]", "values = []");
    expect(
        &src,
        "values = []",
        "event.vote.fields.vote.values",
        "an enum needs at least one value",
    );
    let src = BASE.replace("values = [\"yes\", \"no\"]", "values = [\"yes\", \"yes\"]");
    expect(
        &src,
        "\"yes\", \"yes\"",
        "event.vote.fields.vote.values[1]",
        "duplicate enum value `yes`",
    );
    let src = BASE.replace("fields.country_id = { type = \"u16\" }\nmetric = [\n  { kind = \"count\", dimensions = [\"vote\"", "fields.country_id = { type = \"u16\", values = [\"a\"] }\nmetric = [\n  { kind = \"count\", dimensions = [\"vote\"");
    expect(
        &src,
        "values = [\"a\"]",
        "event.vote.fields.country_id.values",
        "values apply to `enum` fields only, not `u16`",
    );
}

#[test]
fn string_rules() {
    let src = BASE.replace("max_len = 64", "max_len = 0");
    expect(
        &src,
        "max_len = 0",
        "event.screen_view.fields.screen.max_len",
        "max_len must be from 1 to 65536",
    );
    let src = BASE.replace(
        "fields.load_ms = { type = \"u32\"",
        "fields.load_ms = { type = \"u32\", max_len = 3",
    );
    expect(
        &src,
        "max_len = 3",
        "event.screen_view.fields.load_ms.max_len",
        "max_len applies to `string` fields only, not `u32`",
    );
}

#[test]
fn metric_over_missing_field() {
    let src = BASE.replace(
        "{ kind = \"sum\", field = \"load_ms\"",
        "{ kind = \"sum\", field = \"load_time\"",
    );
    expect(
        &src,
        "load_time",
        "event.screen_view.metric[1].field",
        "no field `load_time` in this event",
    );
}

#[test]
fn metric_field_rules() {
    let src = BASE.replace(
        "{ kind = \"sum\", field = \"load_ms\"",
        "{ kind = \"sum\", field = \"screen\"",
    );
    expect(
        &src,
        "kind = \"sum\", field = \"screen\"",
        "event.screen_view.metric[1].field",
        "`sum` needs a numeric field; `screen` is `string`",
    );
    let src = BASE.replace(
        "{ kind = \"count\" },",
        "{ kind = \"count\", field = \"user_id\" },",
    );
    expect(
        &src,
        "kind = \"count\", field = \"user_id\"",
        "event.watch_progress.metric[0].field",
        "`count` counts events and takes no field",
    );
    let src = BASE.replace(
        "{ kind = \"uniq\", field = \"user_id\" },",
        "{ kind = \"uniq\" },",
    );
    expect(
        &src,
        "{ kind = \"uniq\" },",
        "event.watch_progress.metric[1]",
        "`uniq` needs a `field`",
    );
    let src = BASE.replace(
        "{ kind = \"uniq\", field = \"user_id\" },",
        "{ kind = \"count\"  },",
    );
    expect(
        &src,
        "{ kind = \"count\"  },",
        "event.watch_progress.metric[1]",
        "a `count` metric over the same field is declared twice; merge their dimensions",
    );
}

#[test]
fn dimension_rules() {
    let src = BASE.replace(
        "dimensions = [\"vote\", \"country_id\"]",
        "dimensions = [\"vote\", \"vote\"]",
    );
    expect(
        &src,
        "[\"vote\", \"vote\"]",
        "event.vote.metric[0].dimensions[1]",
        "dimension `vote` is listed twice",
    );
    let src = BASE.replace(
        "dimensions = [\"vote\", \"country_id\"]",
        "dimensions = [\"vote\", \"city\"]",
    );
    expect(
        &src,
        "\"city\"",
        "event.vote.metric[0].dimensions[1]",
        "no field `city` in this event",
    );
    let src = BASE.replace(
        "dimensions = [\"vote\", \"country_id\"]",
        "dimensions = [\"vote\", \"country_id\", \"user_id\", \"target_user_id\", \"vote\"]",
    );
    expect(
        &src,
        "\"target_user_id\", \"vote\"]",
        "event.vote.metric[0].dimensions",
        "at most 4 dimensions: each adds a doubling of roll-ups",
    );
}

#[test]
fn state_rules() {
    let src = BASE.replace(
        "key = [\"user_id\", \"video_id\"]",
        "key = [\"user_id\", \"film_id\"]",
    );
    expect(
        &src,
        "film_id",
        "event.watch_progress.state.key[1]",
        "no field `film_id` in this event",
    );
    let src = BASE.replace(
        "value = \"video_time\", ttl_s = 2_592_000",
        "value = \"video_id\", ttl_s = 2_592_000",
    );
    expect(
        &src,
        "value = \"video_id\"",
        "event.watch_progress.state.value",
        "`video_id` is part of the key; the value must be another field",
    );
    let src = BASE.replacen(
        r#"values = ["web", "ios", "android"]"#,
        r#"values = ["web", "i\u001Fos", "android"]"#,
        1,
    );
    let line = src.lines().position(|l| l.contains("i\\u001Fos")).unwrap() + 1;
    let got = errors(&src);
    assert!(
        got.iter()
            .any(|e| e.starts_with(&format!("r.toml:{line}: `event."))
                && e.ends_with(
                    "may not contain U+001F (it separates key fields in the keyed-state table)"
                )),
        "{got:?}"
    );
    let src = BASE.replacen(
        "[event.vote]",
        "[event.vote]\naccept_future_s = 2_000_000",
        1,
    );
    expect(
        &src,
        "accept_future_s = 2_000_000",
        "event.vote.accept_future_s",
        "must be from 1 to 604800 (7 days): a future minute never closes",
    );
    for ttl in ["0", "315_360_001", "9_223_372_036_854_775_807"] {
        let src = BASE.replace("ttl_s = 2_592_000", &format!("ttl_s = {ttl}"));
        expect(
            &src,
            &format!("ttl_s = {ttl}"),
            "event.watch_progress.state.ttl_s",
            "must be from 1 second (Redis keeps the latest state only for a while) to 315360000 (ten years)",
        );
    }
    let src = BASE.replace(
        "fields.video_id = { type = \"u64\" }",
        "fields.video_id = { type = \"u64\", required = false }",
    );
    expect(
        &src,
        "key = [\"user_id\", \"video_id\"]",
        "event.watch_progress.state.key[1]",
        "key field `video_id` must be required: an event without it has no key",
    );
}

#[test]
fn event_and_field_names() {
    let src = BASE.replace("[event.vote]", "[event.Vote]");
    expect(&src, "[event.Vote]", "event.Vote", "event name must be a lower-case identifier: a letter, then letters, digits or `_` (at most 64)");
    let src = BASE.replace("fields.target_user_id", "fields.\"target-user\"");
    expect(&src, "target-user", "event.vote.fields.target-user", "field name must be a lower-case identifier: a letter, then letters, digits or `_` (at most 64)");
}

#[test]
fn empty_registry() {
    assert_eq!(
        errors("event = {}"),
        ["r.toml: declare at least one event type ([event.NAME])"]
    );
}

#[test]
fn dimension_value_bounds() {
    let r = Registry::parse(Path::new("events.toml"), BASE).unwrap();
    let f = |e: &str, n: &str| r.event[e].fields[n].dimension_bound();
    assert_eq!(f("screen_view", "screen"), Some(200));
    assert_eq!(f("vote", "country_id"), Some(1_000));
    assert_eq!(f("vote", "vote"), None);
    for n in ["0", "100_001"] {
        let src = BASE.replace(
            "max_values_per_minute = 200",
            &format!("max_values_per_minute = {n}"),
        );
        expect(
            &src,
            &format!("max_values_per_minute = {n}"),
            "event.screen_view.fields.screen.max_values_per_minute",
            "must be from 1 to 100000",
        );
    }
    let src = BASE.replace(
        "fields.vote = { type = \"enum\", values = [\"yes\", \"no\"] }",
        "fields.vote = { type = \"enum\", values = [\"yes\", \"no\"], max_values_per_minute = 5 }",
    );
    expect(
        &src,
        "max_values_per_minute = 5",
        "event.vote.fields.vote.max_values_per_minute",
        "`enum` fields are bounded by their type; the key is for the other types",
    );
}
