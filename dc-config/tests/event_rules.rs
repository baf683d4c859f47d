//! Event validation: every rule, with the error text a sender sees.

use dc_config::event::{validate, Event, Value};
use dc_config::registry::Registry;

fn registry() -> Registry {
    dc_config::examples::declared().registry
}

/// Validates one wire line; returns the error text, or "ok".
fn check(line: &str) -> String {
    let r = registry();
    match Event::parse_line(line.as_bytes()).and_then(|e| validate(&e, &r)) {
        Ok(_) => "ok".into(),
        Err(e) => format!("{}: {e}", e.code()),
    }
}

const T: u64 = 1_764_000_000_000;

#[test]
fn a_good_event_is_typed_in_registry_order() {
    let r = registry();
    let line = format!(
        r#"{{"event":"registration","time":{T},"attrs":{{"country_id":47,"gender":"male","user_id":7}}}}"#
    );
    let ev = validate(&Event::parse_line(line.as_bytes()).unwrap(), &r).unwrap();
    assert_eq!(ev.event, "registration");
    assert_eq!(ev.time_ms, T);
    let names: Vec<_> = ev.attrs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["user_id", "gender", "country_id"],
        "registry order, optional platform absent"
    );
    assert_eq!(ev.attr("gender"), Some(&Value::Str("male".into())));
    assert_eq!(ev.attr("country_id"), Some(&Value::UInt(47)));
}

#[test]
fn line_level_rules() {
    assert!(check("{not json").starts_with("not_json: not valid JSON ("));
    assert_eq!(check("[1,2]"), "not_object: must be a JSON object");
    assert_eq!(
        check(&format!(r#"{{"time":{T}}}"#)),
        "missing: `event` is required but missing"
    );
    assert_eq!(
        check(r#"{"event":"vote"}"#),
        "missing: `time` is required but missing"
    );
    assert_eq!(
        check(&format!(r#"{{"event":1,"time":{T}}}"#)),
        "wrong_type: `event` must be a string"
    );
    assert_eq!(
        check(r#"{"event":"vote","time":1.5}"#),
        "wrong_type: `time` must be a whole number of milliseconds"
    );
    assert_eq!(
        check(&format!(r#"{{"event":"vote","time":{T},"attrs":[]}}"#)),
        "not_object: `attrs` must be a JSON object"
    );
    assert_eq!(
        check(&format!(r#"{{"event":"vote","time":{T},"extra":1}}"#)),
        "unknown_field: `extra` is not declared for this event type"
    );
    assert_eq!(
        check(&format!(r#"{{"event":"login","time":{T}}}"#)),
        "unknown_event: `event` is not an event type in the registry"
    );
}

#[test]
fn time_in_seconds_is_explained() {
    let e = check(r#"{"event":"vote","time":1764000000,"attrs":{}}"#);
    assert_eq!(e, "time_out_of_range: `time` must be milliseconds since the Unix epoch, from 946684800000 (2000-01-01) to 4291747199999 (2105-12-31); a value near 1.7e9 is seconds, multiply by 1000");
}

fn vote(attrs: &str) -> String {
    check(&format!(
        r#"{{"event":"vote","time":{T},"attrs":{{{attrs}}}}}"#
    ))
}

#[test]
fn attribute_rules() {
    let ok = r#""user_id":1,"target_user_id":2,"vote":"yes","country_id":3"#;
    assert_eq!(vote(ok), "ok");
    assert_eq!(
        vote(r#""user_id":1,"target_user_id":2,"vote":"yes""#),
        "missing: `attrs.country_id` is required but missing"
    );
    assert_eq!(
        vote(r#""user_id":1,"target_user_id":2,"vote":"yes","country_id":null"#),
        "missing: `attrs.country_id` is required but missing"
    );
    assert_eq!(
        vote(&format!("{ok},\"city\":\"x\"")),
        "unknown_field: `attrs.city` is not declared for this event type"
    );
    assert_eq!(
        vote(r#""user_id":1,"target_user_id":2,"vote":"maybe","country_id":3"#),
        "not_in_enum: `attrs.vote` must be one of: yes, no"
    );
    assert_eq!(
        vote(r#""user_id":1,"target_user_id":2,"vote":"yes","country_id":70000"#),
        "out_of_range: `attrs.country_id` must be from 0 to 65535"
    );
    assert_eq!(
        vote(r#""user_id":-1,"target_user_id":2,"vote":"yes","country_id":3"#),
        "out_of_range: `attrs.user_id` must be from 0 to 18446744073709551615"
    );
    assert_eq!(
        vote(r#""user_id":"1","target_user_id":2,"vote":"yes","country_id":3"#),
        "wrong_type: `attrs.user_id` must be an integer (u64)"
    );
    assert_eq!(
        vote(r#""user_id":1.5,"target_user_id":2,"vote":"yes","country_id":3"#),
        "wrong_type: `attrs.user_id` must be an integer (u64)"
    );
    assert_eq!(
        vote(r#""user_id":1,"target_user_id":2,"vote":true,"country_id":3"#),
        "wrong_type: `attrs.vote` must be a string"
    );
}

fn screen(attrs: &str) -> String {
    check(&format!(
        r#"{{"event":"screen_view","time":{T},"attrs":{{"user_id":1,"platform":"ios","load_ms":5,{attrs}}}}}"#
    ))
}

#[test]
fn string_and_bool_rules() {
    assert_eq!(screen(r#""screen":"home""#), "ok");
    assert_eq!(
        screen(&format!(r#""screen":"{}""#, "x".repeat(65))),
        "too_long: `attrs.screen` is longer than its max_len of 64 bytes"
    );
    // The keyed-state table joins key fields with U+001F: a string holding
    // it could make two keys one ("a\u001fb" + "c" and "a" + "b\u001fc").
    assert_eq!(
        screen(r#""screen":"a\u001fb""#),
        "key_separator: `attrs.screen` may not contain U+001F (the unit separator, which joins key fields in the keyed-state table)"
    );
    assert_eq!(screen(r#""screen":"home","is_first_launch":true"#), "ok");
    assert_eq!(
        screen(r#""screen":"home","is_first_launch":1"#),
        "wrong_type: `attrs.is_first_launch` must be true or false"
    );
}

#[test]
fn column_text_is_canonical() {
    assert_eq!(Value::Bool(true).to_column_text(), "1");
    assert_eq!(Value::Float(0.1).to_column_text(), "0.1");
    assert_eq!(Value::Int(-5).to_column_text(), "-5");
    assert_eq!(
        Value::UInt(u64::MAX).to_column_text(),
        "18446744073709551615"
    );
}
