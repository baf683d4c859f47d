//! Round trips through the real Unix socket and TCP listener into a real spool.

mod common;

use std::time::Duration;

use collector::protocol::Response;
use collector::{Client, ClientConfig, Endpoint, LineOutcome};
use common::*;
use dc_config::services::CollectorLimits;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

async fn responses(stream: impl tokio::io::AsyncRead + Unpin, until_ack: u64) -> Vec<Response> {
    let mut rd = BufReader::new(stream);
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line))
            .await
            .expect("a response within 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        let r = Response::parse(line.trim_end().as_bytes()).unwrap();
        let done = matches!(&r, Response::Ack { ack, .. } if *ack >= until_ack)
            || matches!(&r, Response::Refused { through, .. } if *through >= until_ack)
            || matches!(&r, Response::Closing { .. });
        out.push(r);
        if done {
            break;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_pipelined_lines_with_bad_ones_among_good() {
    let h = Harness::standard();
    let (running, spool) = h.start().await;
    let mut s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let mut text = String::new();
    for i in 1..=5 {
        text.push_str(&vote(i));
        text.push('\n');
    }
    text.push_str(&format!("{{\"event\":\"vote\",\"time\":{},\"attrs\":{{\"user_id\":6,\"target_user_id\":2,\"vote\":\"maybe\",\"country_id\":7}}}}\n", now_ms()));
    text.push_str("not json\n\n");
    for i in 9..=10 {
        text.push_str(&vote(i));
        text.push('\n');
    }
    s.write_all(text.as_bytes()).await.unwrap();
    let (rd, _wr) = s.into_split();
    let resp = responses(rd, 10).await;
    let rejected: Vec<_> = resp
        .iter()
        .filter_map(|r| match r {
            Response::Rejected {
                line, field, rule, ..
            } => Some((*line, field.as_str(), rule.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        [(6, "attrs.vote", "not_in_enum"), (7, "", "not_json")]
    );
    let accepted: u64 = resp
        .iter()
        .map(|r| match r {
            Response::Ack { accepted, .. } => *accepted,
            _ => 0,
        })
        .sum();
    assert_eq!(accepted, 7);
    assert!(matches!(resp.last(), Some(Response::Ack { ack: 10, .. })));
    running.shutdown().await.unwrap();
    let ids = user_ids(&read_all(&spool));
    assert_eq!(ids, [1, 2, 3, 4, 5, 9, 10]);
    let m = h.metrics_text();
    assert!(
        m.contains(
            "spoolhouse_collector_events_accepted_total{event=\"vote\",endpoint=\"unix\"} 7"
        ),
        "{m}"
    );
    assert!(
        m.contains(
            "spoolhouse_collector_events_rejected_total{event=\"vote\",reason=\"not_in_enum\"} 1"
        ),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_client_batches_and_single_sends_are_acked_once_each() {
    let h = Harness::standard();
    let (running, spool) = h.start().await;
    let mut client = Client::connect(Endpoint::Tcp(running.tcp_addr), ClientConfig::default())
        .await
        .unwrap();
    let lines: Vec<String> = (1..=5_000).map(vote).collect();
    let out = client.send_batch(&lines).await.unwrap();
    assert!(out.iter().all(|o| *o == LineOutcome::Acked));
    assert_eq!(
        client.send(vote(5_001).as_bytes()).await.unwrap(),
        LineOutcome::Acked
    );
    let bad = client
        .send(b"{\"event\":\"nope\",\"time\":1700000000000}")
        .await
        .unwrap();
    assert!(
        matches!(bad, LineOutcome::Rejected { ref field, ref rule, .. } if field == "event" && rule == "unknown_event"),
        "{bad:?}"
    );
    running.shutdown().await.unwrap();
    let mut ids = user_ids(&read_all(&spool));
    ids.sort_unstable();
    assert_eq!(ids, (1..=5_001).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_over_the_limit_are_rejected_and_the_next_line_still_counts() {
    let limits = CollectorLimits {
        line_bytes_max: 300,
        read_buffer_bytes: 4096,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, spool) = h.start().await;
    let s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let (rd, mut wr) = s.into_split();
    // Line 1 fits in one read but is too long; line 2 spans many reads
    // without a newline; line 3 is good.
    let mut text = format!("{}\n", "x".repeat(400));
    text.push_str(&"y".repeat(20_000));
    text.push('\n');
    text.push_str(&vote(3));
    text.push('\n');
    wr.write_all(text.as_bytes()).await.unwrap();
    let resp = responses(rd, 3).await;
    let rejected: Vec<_> = resp
        .iter()
        .filter_map(|r| match r {
            Response::Rejected {
                line, rule, error, ..
            } => Some((*line, rule.clone(), error.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 2, "{resp:?}");
    assert_eq!(
        (rejected[0].0, rejected[0].1.as_str()),
        (1, "line_too_long")
    );
    assert_eq!(
        (rejected[1].0, rejected[1].1.as_str()),
        (2, "line_too_long")
    );
    assert!(
        rejected[1].2.contains("limit of 300 bytes"),
        "{}",
        rejected[1].2
    );
    assert!(
        matches!(resp.last(), Some(Response::Ack { ack: 3, .. })),
        "{resp:?}"
    );
    running.shutdown().await.unwrap();
    assert_eq!(user_ids(&read_all(&spool)), [3]);
    assert!(h
        .metrics_text()
        .contains("spoolhouse_collector_lines_too_long_total{endpoint=\"unix\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_with_a_reason() {
    let limits = CollectorLimits {
        idle_timeout_ms: 200,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, _spool) = h.start().await;
    // Before connecting: the collector's idle clock starts at its accept,
    // which may run before this thread gets back from connect.
    let t0 = std::time::Instant::now();
    let s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let resp = responses(s, u64::MAX).await;
    assert!(t0.elapsed() >= Duration::from_millis(200));
    assert!(
        matches!(&resp[..], [Response::Closing { closing }] if closing.starts_with("idle for 200 ms")),
        "{resp:?}"
    );
    running.shutdown().await.unwrap();
    assert!(h
        .metrics_text()
        .contains("spoolhouse_collector_idle_timeouts_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bound_are_turned_away() {
    let limits = CollectorLimits {
        max_connections: 1,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, _spool) = h.start().await;
    let _first = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let resp = responses(second, u64::MAX).await;
    assert!(
        matches!(&resp[..], [Response::Closing { closing }] if closing.contains("too many unix connections (max 1)")),
        "{resp:?}"
    );
    drop(_first);
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_with_the_figures_and_nothing_acked_is_lost() {
    let limits = CollectorLimits {
        spool_segment_bytes: 4096,
        read_buffer_bytes: 4096,
        // The inbox reader commits often, so retention is free to delete.
        inbox_checkpoint_ms: 20,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 3 * 4096);
    let (running, spool) = h.start().await;
    let s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let (rd, mut wr) = s.into_split();
    let mut rd = BufReader::new(rd);
    let mut acked = Vec::new();
    let mut refusal = None;
    // Bounded: ~70 B per record (random ids, so sealed segments compress
    // little), 12 KiB of quota; 5 000 lines are far past it.
    for i in 1..=5_000u64 {
        let id = i | (rand::random::<u64>() & !0xffff_ffff);
        wr.write_all(format!("{}\n", vote(id)).as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).await.unwrap();
        match Response::parse(line.trim_end().as_bytes()).unwrap() {
            Response::Ack { accepted: 1, .. } => acked.push(id),
            Response::Refused { refused, .. } => {
                refusal = Some(refused);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let refusal = refusal.expect("the quota is reached within 5 000 events");
    assert!(
        refusal.starts_with("spool full: ") && refusal.ends_with(" of 12288 bytes, retry later"),
        "{refusal}"
    );
    assert!(!acked.is_empty());
    // Everything acknowledged so far is in the spool, in order.
    assert_eq!(user_ids(&read_all(&spool)), acked);
    let m = h.metrics_text();
    assert!(
        m.contains("spoolhouse_collector_quota_refusals_total 1"),
        "{m}"
    );
    // Recovery: a consumer commits everything, retention frees segments,
    // and the same line is accepted on a later try.
    let mut shipper = spool.reader("shipper").unwrap();
    while !shipper.next(10_000, 1 << 20).unwrap().is_empty() {}
    shipper.commit_read().unwrap();
    let mut accepted_again = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        wr.write_all(format!("{}\n", vote(1)).as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        rd.read_line(&mut line).await.unwrap();
        if matches!(
            Response::parse(line.trim_end().as_bytes()).unwrap(),
            Response::Ack { accepted: 1, .. }
        ) {
            accepted_again = true;
            break;
        }
    }
    assert!(accepted_again, "space freed by retention is usable again");
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_validation_rule_names_line_field_and_rule() {
    let h = Harness::standard();
    let (running, _spool) = h.start().await;
    let t = now_ms();
    let cases: Vec<(String, &str, &str, &str)> = vec![
        ("{".into(), "", "not_json", "not valid JSON"),
        ("[1]".into(), "", "not_object", "must be a JSON object"),
        (
            format!(r#"{{"time":{t}}}"#),
            "event",
            "missing",
            "`event` is required but missing",
        ),
        (
            format!(r#"{{"event":"nope","time":{t}}}"#),
            "event",
            "unknown_event",
            "`event` is not an event type in the registry",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{t},"attrs":{{"user_id":1,"target_user_id":2,"vote":"yes","country_id":7,"x":1}}}}"#
            ),
            "attrs.x",
            "unknown_field",
            "`attrs.x` is not declared for this event type",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{t},"attrs":{{"user_id":"1","target_user_id":2,"vote":"yes","country_id":7}}}}"#
            ),
            "attrs.user_id",
            "wrong_type",
            "`attrs.user_id` must be",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{t},"attrs":{{"user_id":1,"target_user_id":2,"vote":"yes","country_id":70000}}}}"#
            ),
            "attrs.country_id",
            "out_of_range",
            "`attrs.country_id` must be from 0 to 65535",
        ),
        (
            format!(
                r#"{{"event":"screen_view","time":{t},"attrs":{{"user_id":1,"screen":"{}","platform":"web","load_ms":5}}}}"#,
                "s".repeat(65)
            ),
            "attrs.screen",
            "too_long",
            "`attrs.screen` is longer than its max_len of 64 bytes",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{t},"attrs":{{"user_id":1,"target_user_id":2,"vote":"maybe","country_id":7}}}}"#
            ),
            "attrs.vote",
            "not_in_enum",
            "`attrs.vote` must be one of: yes, no",
        ),
        (
            r#"{"event":"vote","time":1700000000,"attrs":{}}"#.into(),
            "time",
            "time_out_of_range",
            "multiply by 1000",
        ),
        // The accepted window around the collector's clock: 7 days back
        // and an hour ahead by default (the registry's accept_past_s and
        // accept_future_s).
        (
            format!(
                r#"{{"event":"vote","time":{},"attrs":{{"user_id":1,"target_user_id":2,"vote":"yes","country_id":7}}}}"#,
                t - 8 * 86_400_000
            ),
            "time",
            "time_too_old",
            "is more than 604800 s before the collector's clock",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{},"attrs":{{"user_id":1,"target_user_id":2,"vote":"yes","country_id":7}}}}"#,
                t + 2 * 3_600_000
            ),
            "time",
            "time_too_new",
            "is more than 3600 s after the collector's clock",
        ),
        (
            format!(
                r#"{{"event":"vote","time":{t},"attrs":{{"user_id":1,"target_user_id":2,"vote":"yes"}}}}"#
            ),
            "attrs.country_id",
            "missing",
            "`attrs.country_id` is required but missing",
        ),
    ];
    let mut client = Client::connect(
        Endpoint::Unix(running.socket.clone()),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let lines: Vec<&str> = cases.iter().map(|c| c.0.as_str()).collect();
    let out = client.send_batch(&lines).await.unwrap();
    for (i, ((_, field, rule, text), o)) in cases.iter().zip(&out).enumerate() {
        match o {
            LineOutcome::Rejected {
                field: f,
                rule: r,
                error,
            } => {
                assert_eq!(
                    (f.as_str(), r.as_str()),
                    (*field, *rule),
                    "case {i}: {error}"
                );
                assert!(
                    error.starts_with(&format!("line {}: ", i + 1)),
                    "case {i}: {error}"
                );
                assert!(error.contains(text), "case {i}: {error:?} lacks {text:?}");
            }
            other => panic!("case {i} was {other:?}"),
        }
    }
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_batch_in_hand_and_closes_idle_connections() {
    let h = Harness::standard();
    let (running, spool) = h.start().await;
    let idle = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let mut client = Client::connect(
        Endpoint::Unix(running.socket.clone()),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let lines: Vec<String> = (1..=2_000).map(vote).collect();
    assert!(client
        .send_batch(&lines)
        .await
        .unwrap()
        .iter()
        .all(|o| *o == LineOutcome::Acked));
    let stopper = running.stopper();
    let waiter = tokio::spawn(running.wait());
    stopper.send(true).unwrap();
    let resp = responses(idle, u64::MAX).await;
    assert!(
        matches!(&resp[..], [Response::Closing { closing }] if closing == "collector shutting down"),
        "{resp:?}"
    );
    waiter.await.unwrap().unwrap();
    assert_eq!(read_all(&spool).len(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_gets_the_configured_mode_and_group() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut h = Harness::standard();
    // The test's own group, by number: chown to it needs no privilege.
    let gid = std::fs::metadata(h.dir.path()).unwrap().gid();
    h.config.socket_group = Some(gid.to_string());
    h.config.socket_mode = 0o660;
    let (running, spool) = h.start().await;
    let meta = std::fs::metadata(&running.socket).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    running.shutdown().await.unwrap();
    // Release the spool's writer lock so it can be opened again below.
    drop(spool);
    assert!(
        !h.config.socket.exists(),
        "the socket file is removed on shutdown"
    );
    h.config.socket_group = Some("no-such-group-spoolhouse".into());
    let d = dc_config::examples::declared();
    let c = collector::Collector::open(
        h.config.clone(),
        d.registry,
        h.metrics.clone(),
        std::sync::Arc::new(collector::Health::default()),
    )
    .unwrap();
    let err = c
        .start()
        .await
        .err()
        .expect("an unknown group fails the start");
    assert!(err.to_string().contains("no group named"), "{err}");
}

/// TCP (any local user) and the socket (the apps its mode admits) have
/// slots apart: TCP clients holding every TCP slot leave the socket's free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_cannot_take_the_sockets_slots() {
    let limits = CollectorLimits {
        max_connections: 1,
        max_tcp_connections: 1,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, spool) = h.start().await;
    let _held = tokio::net::TcpStream::connect(running.tcp_addr)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::net::TcpStream::connect(running.tcp_addr)
        .await
        .unwrap();
    let resp = responses(second, u64::MAX).await;
    assert!(
        matches!(&resp[..], [Response::Closing { closing }] if closing.contains("too many tcp connections (max 1)")),
        "{resp:?}"
    );
    let mut app = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    app.write_all(format!("{}\n", vote(1)).as_bytes())
        .await
        .unwrap();
    let resp = responses(app, 1).await;
    assert!(
        matches!(
            &resp[..],
            [Response::Ack {
                ack: 1,
                accepted: 1
            }]
        ),
        "{resp:?}"
    );
    running.shutdown().await.unwrap();
    assert_eq!(user_ids(&read_all(&spool)), [1]);
}

/// Tiny bad lines are answered at most 256 rejections per reply, so the
/// answers a chunk causes are not held all at once; every line is still
/// answered, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_of_a_chunk_of_tiny_bad_lines_come_in_bounded_replies() {
    let h = Harness::standard();
    let (running, spool) = h.start().await;
    let mut s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let mut text = "x\n".repeat(1000);
    text.push_str(&format!("{}\n", vote(7)));
    s.write_all(text.as_bytes()).await.unwrap();
    let resp = responses(s, 1001).await;
    let mut rejected = Vec::new();
    let mut since_reply = 0;
    let mut replies = 0;
    for r in &resp {
        match r {
            Response::Rejected { line, .. } => {
                rejected.push(*line);
                since_reply += 1;
                assert!(since_reply <= collector::MAX_REJECTIONS_PER_REPLY);
            }
            Response::Ack { .. } => {
                since_reply = 0;
                replies += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rejected, (1..=1000).collect::<Vec<u64>>());
    assert!(replies >= 4, "{replies} replies");
    assert!(matches!(
        resp.last(),
        Some(Response::Ack {
            ack: 1001,
            accepted: 1
        })
    ));
    running.shutdown().await.unwrap();
    assert_eq!(user_ids(&read_all(&spool)), [7]);
}

/// A client that sends but never reads its answers: once the answers fill
/// the socket, the collector waits `idle_timeout_ms` for it to read, then
/// closes the connection (counted), freeing its slot and buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_answers_is_closed() {
    let limits = CollectorLimits {
        idle_timeout_ms: 300,
        ..CollectorLimits::default()
    };
    let h = Harness::new(limits, 1 << 30);
    let (running, _spool) = h.start().await;
    let s = tokio::net::UnixStream::connect(&running.socket)
        .await
        .unwrap();
    let (_rd, mut wr) = tokio::io::split(s);
    // Each 2-byte bad line causes a ~100-byte rejection: the answers fill
    // the socket long before this runs out.
    let chunk = "x\n".repeat(32 << 10);
    let started = std::time::Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(2), wr.write_all(chunk.as_bytes())).await {
            Ok(Ok(())) => sent += chunk.len(),
            // Closed by the collector, or blocked: it stopped reading.
            _ => break,
        }
    }
    let closed = eventually(Duration::from_secs(10), || {
        h.metrics_text()
            .contains("spoolhouse_collector_write_timeouts_total 1")
    })
    .await;
    assert!(closed, "sent {sent} bytes; {}", h.metrics_text());
    assert!(h
        .metrics_text()
        .contains("spoolhouse_collector_connections_open{endpoint=\"unix\"} 0"));
    running.shutdown().await.unwrap();
}

/// Older history is loaded on purpose by raising `limits.history_s`; the
/// window still refuses what is older than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_older_than_the_window_is_accepted_only_when_asked_for() {
    let line = |id: u64, days: u64| {
        format!(
            r#"{{"event":"vote","time":{},"attrs":{{"user_id":{id},"target_user_id":2,"vote":"yes","country_id":7}}}}"#,
            now_ms() - days * 86_400_000
        )
    };
    let h = Harness::new(
        CollectorLimits {
            history_s: 30 * 86_400,
            ..CollectorLimits::default()
        },
        1 << 30,
    );
    let (running, spool) = h.start().await;
    let mut client = Client::connect(
        Endpoint::Unix(running.socket.clone()),
        ClientConfig::default(),
    )
    .await
    .unwrap();
    let (a, b) = (line(1, 20), line(2, 40));
    let out = client.send_batch(&[a.as_str(), b.as_str()]).await.unwrap();
    assert_eq!(out[0], LineOutcome::Acked);
    assert!(
        matches!(&out[1], LineOutcome::Rejected { rule, .. } if rule == "time_too_old"),
        "{:?}",
        out[1]
    );
    running.shutdown().await.unwrap();
    assert_eq!(user_ids(&read_all(&spool)), [1]);
    assert!(h.metrics_text().contains(
        "spoolhouse_collector_events_rejected_total{event=\"vote\",reason=\"time_too_old\"} 1"
    ));
}
