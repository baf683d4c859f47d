//! Run by tests/codegen.rs as an example of the generated crate, with
//! SPOOLHOUSE_SOCKET and SPOOLHOUSE_INBOX set: every event type of the
//! example registry through the socket and through an inbox file, then
//! invalid values refused on the client with the collector's own field,
//! rule and message (the same raw line sent to the collector beside it).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use spoolhouse_events::*;

fn every(base: u64) -> Vec<Box<dyn Event>> {
    vec![
        Box::new(Registration {
            user_id: base + 1,
            gender: RegistrationGender::Female,
            country_id: 7,
            platform: Some(RegistrationPlatform::Ios),
            time_ms: None,
        }),
        Box::new(WatchProgress { user_id: base + 2, video_id: 99, video_time: 1234, time_ms: None }),
        Box::new(Vote { user_id: base + 3, target_user_id: 5, vote: VoteVote::Yes, country_id: 250, time_ms: None }),
        Box::new(ScreenView {
            user_id: base + 4,
            screen: "home \u{e9}".into(),
            platform: ScreenViewPlatform::Web,
            load_ms: 42,
            is_first_launch: Some(true),
            time_ms: None,
        }),
    ]
}

fn raw(line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(std::env::var("SPOOLHOUSE_SOCKET").unwrap()).unwrap();
    s.write_all(format!("{line}\n").as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut text = String::new();
    BufReader::new(s).read_line(&mut text).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn main() {
    let socket = every(7000);
    let mut client = Client::new(Target::Socket(std::env::var("SPOOLHOUSE_SOCKET").unwrap().into()));
    let events: Vec<&dyn Event> = socket.iter().map(|e| &**e).collect();
    println!("socket stored {}", client.send(&events).unwrap());
    let inbox = every(8000);
    let path = std::path::Path::new(&std::env::var("SPOOLHOUSE_INBOX").unwrap()).join("typed-rust.log");
    let mut client = Client::new(Target::Inbox(path));
    let events: Vec<&dyn Event> = inbox.iter().map(|e| &**e).collect();
    println!("inbox stored {}", client.send(&events).unwrap());

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    let x65 = "x".repeat(65);
    let cases: Vec<(Box<dyn Event>, String)> = vec![
        (
            Box::new(ScreenView { user_id: 1, screen: x65.clone(), platform: ScreenViewPlatform::Web, load_ms: 1, is_first_launch: None, time_ms: None }),
            format!(r#"{{"event":"screen_view","time":{now},"attrs":{{"user_id":1,"screen":"{x65}","platform":"web","load_ms":1}}}}"#),
        ),
        (
            Box::new(ScreenView { user_id: 1, screen: "a\u{1f}b".into(), platform: ScreenViewPlatform::Web, load_ms: 1, is_first_launch: None, time_ms: None }),
            format!(r#"{{"event":"screen_view","time":{now},"attrs":{{"user_id":1,"screen":"a\u001fb","platform":"web","load_ms":1}}}}"#),
        ),
        (
            Box::new(WatchProgress { user_id: 1, video_id: 2, video_time: 3, time_ms: Some(17_000_000_000) }),
            r#"{"event":"watch_progress","time":17000000000,"attrs":{"user_id":1,"video_id":2,"video_time":3}}"#.to_string(),
        ),
    ];
    for (event, line) in &cases {
        let e = event.line().expect_err("refused on the client");
        let got = raw(line);
        let want = serde_json::json!({"field": e.field, "rule": e.rule, "error": format!("line 1: {e}")});
        if got["field"] != want["field"] || got["rule"] != want["rule"] || got["error"] != want["error"] {
            println!("client: {want}\ncollector: {got}");
            std::process::exit(1);
        }
    }
    println!("client errors equal the collector's: {}", cases.len());
    println!("ok");
}
