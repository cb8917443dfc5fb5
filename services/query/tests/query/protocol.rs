//! The sync protocol as current Convex speaks it, through the query service and from devconvex
//! alike: per-socket clocks on transitions, `AuthError` when a held token expires,
//! `maxObservedTimestamp` on `Connect`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::Client;

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_carry_each_sockets_clock_skew_and_the_server_time() {
    let stack = crate::Stack::start().await;
    for (n, base) in [stack.query_url(), stack.devconvex_url()]
        .into_iter()
        .enumerate()
    {
        let before = now_ns();
        // Two sockets on one query: one transition text fanned out, each its own skew.
        let mut on_time = Client::connect(&base).await;
        let mut an_hour_ahead = Client::connect_with_clock(&base, 3_600_000).await;
        for c in [&mut on_time, &mut an_hour_ahead] {
            c.subscribe(0, "messages:list", json!({"channel": format!("clocks{n}")}));
            c.until("the first result", |v| v.values.contains_key(&0))
                .await;
        }
        let mut writer = Client::connect(&base).await;
        writer.authenticate(&stack.token_for(&format!("clock{n}@example.com")).await);
        writer.mutation(
            "messages:send",
            json!({"channel": format!("clocks{n}"), "body": "tick"}),
        );
        for c in [&mut on_time, &mut an_hour_ahead] {
            c.until("the update", |v| {
                crate::client::bodies(v.values.get(&0)) == ["tick"]
            })
            .await;
        }
        let after = now_ns();
        for (client, ahead) in [(&on_time, 0i64), (&an_hour_ahead, 3_600_000)] {
            let view = client.view();
            assert!(view.transitions >= 2, "{base}: {view:?}");
            for (skew, server_ts) in &view.clocks {
                let skew = skew.unwrap_or_else(|| panic!("{base}: no clientClockSkew"));
                // clientTs − server time at Connect: the offset, less the message's latency.
                assert!(
                    (ahead - 5_000..=ahead + 5).contains(&skew),
                    "{base}: skew {skew} for a clock {ahead} ms ahead"
                );
                let server_ts = server_ts.unwrap_or_else(|| panic!("{base}: no serverTs"));
                assert!(
                    (before..=after).contains(&server_ts),
                    "{base}: serverTs {server_ts} outside [{before}, {after}]"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_whose_token_expires_gets_auth_error_like_convex() {
    let stack = crate::Stack::start_with(crate::Options {
        token_ttl: Duration::from_secs(3),
        ..crate::Options::default()
    })
    .await;
    for (n, base) in [stack.query_url(), stack.devconvex_url()]
        .into_iter()
        .enumerate()
    {
        let token = stack.token_for(&format!("expiring{n}@example.com")).await;
        let mut client = Client::connect(&base).await;
        client.authenticate(&token);
        client.subscribe(0, "tasks:list", json!({}));
        client
            .until("the signed-in result", |v| {
                v.values.contains_key(&0) && v.version.1 == 1
            })
            .await;
        // No refresh: at `exp` the socket is told, and closed, as Convex does.
        let view = client
            .until("AuthError at exp", |v| !v.auth_error_messages.is_empty())
            .await;
        let message = &view.auth_error_messages[0];
        assert_eq!(message["authUpdateAttempted"], false, "{base}: {message}");
        assert_eq!(message["baseVersion"], 1, "{base}: the identity it holds");
        assert!(
            message["error"].as_str().unwrap().contains("expired"),
            "{base}: {message}"
        );
        client.until("the close", |v| v.closed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devconvex_refuses_a_client_that_observed_a_newer_timestamp() {
    let stack = crate::Stack::start().await;
    let url = format!(
        "{}/api/1.49.0/sync",
        stack.devconvex_url().replacen("http://", "ws://", 1)
    );
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let connect = |ts: u64| {
        json!({"type": "Connect", "sessionId": "s", "connectionCount": 1, "lastCloseReason": null,
               "maxObservedTimestamp": edge_convex::Timestamp(ts).encode(), "clientTs": 0})
        .to_string()
    };
    let ahead = stack.devconvex_engine.ts() + 1_000_000;
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    ws.send(Message::text(connect(ahead))).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("devconvex closes the socket");
    assert_eq!(end, Some(1011), "an internal error, as Convex closes it");

    // One that has seen only what devconvex has is served.
    let mut client = Client::connect(&stack.devconvex_url()).await;
    client.send_raw(connect(stack.devconvex_engine.ts()));
    client.subscribe(0, "messages:list", json!({"channel": "x"}));
    client
        .until("a result", |v| v.values.contains_key(&0))
        .await;
}

/// Reads a sync socket until `done` says so; returns every text frame.
async fn frames_until(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut frames = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !done(&frames) {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => frames.push(t.to_string()),
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("the frames arrive in time");
    frames
}

/// A transition over Convex's 5 MB goes as `TransitionChunk`s to a client that announces a
/// version that takes them (npm ≥ 1.28), whole to one that does not; devconvex chunks towards
/// the query service, which joins them and chunks again towards its own clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_over_the_chunk_size_go_as_transition_chunks() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let stack = crate::Stack::start().await;
    let mut writer = Client::connect(&stack.query_url()).await;
    writer.authenticate(&stack.token_for("big@example.com").await);
    let body = "x".repeat(60_000);
    for i in 0..100 {
        writer.mutation(
            "messages:send",
            json!({"channel": "big", "body": format!("{i}{body}")}),
        );
    }
    writer
        .until("100 mutations", |v| v.responses.len() == 100)
        .await;
    for base in [stack.query_url(), stack.devconvex_url()] {
        for (path, chunked) in [("/api/1.49.0/sync", true), ("/api/sync", false)] {
            let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
            for m in [
                json!({"type": "Connect", "sessionId": "big", "connectionCount": 0, "lastCloseReason": null, "clientTs": 0}),
                json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
                    {"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "big"}]}]}),
            ] {
                ws.send(Message::text(m.to_string())).await.unwrap();
            }
            // Until the result: a whole transition with modifications, or the last chunk.
            let frames = frames_until(&mut ws, |f| {
                f.last().is_some_and(|t| {
                    let v: serde_json::Value = serde_json::from_str(t).unwrap();
                    match v["type"].as_str() {
                        Some("TransitionChunk") => {
                            v["partNumber"].as_u64().unwrap() + 1
                                == v["totalParts"].as_u64().unwrap()
                        }
                        Some("Transition") => !v["modifications"].as_array().unwrap().is_empty(),
                        _ => false,
                    }
                })
            })
            .await;
            // Earlier frames that carry no result (a version-only transition, a Ping) aside.
            let (frames, parsed): (Vec<String>, Vec<serde_json::Value>) = frames
                .into_iter()
                .map(|t| {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    (t, v)
                })
                .filter(|(_, v)| {
                    v["type"] == "TransitionChunk"
                        || (v["type"] == "Transition"
                            && !v["modifications"].as_array().unwrap().is_empty())
                })
                .unzip();
            let text = if chunked {
                assert!(parsed.len() >= 2, "{base}{path}: {} frames", parsed.len());
                let mut joined = edge_convex::sync::ChunkAssembler::default();
                let mut whole = None;
                for (i, v) in parsed.iter().enumerate() {
                    assert_eq!(v["type"], "TransitionChunk", "{base}{path}");
                    assert_eq!(v["partNumber"], i as u64);
                    let chunk = v["chunk"].as_str().unwrap();
                    assert!(chunk.len() <= edge_convex::sync::TRANSITION_CHUNK_BYTES);
                    whole = joined
                        .push(
                            chunk.to_owned(),
                            v["partNumber"].as_u64().unwrap() as u32,
                            v["totalParts"].as_u64().unwrap() as u32,
                            v["transitionId"].as_str().unwrap().to_owned(),
                        )
                        .unwrap();
                }
                whole.expect("all parts joined")
            } else {
                assert_eq!(parsed.len(), 1, "{base}{path}: one frame");
                frames[0].clone()
            };
            let transition: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(transition["type"], "Transition", "{base}{path}");
            assert!(transition["serverTs"].is_u64(), "{base}{path}");
            let page = transition["modifications"][0]["value"].as_array().unwrap();
            assert_eq!(page.len(), 100, "{base}{path}");
            assert!(page[99]["body"].as_str().unwrap().starts_with("99"));
        }
    }
}

/// A query that logs and throws a `ConvexError`: its `errorData` and log lines reach the client
/// as Convex sends them, from devconvex and through the query service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_error_data_and_log_lines_reach_the_client() {
    let stack = crate::Stack::start().await;
    for base in [stack.query_url(), stack.devconvex_url()] {
        let mut client = Client::connect(&base).await;
        client.subscribe(0, "demo:check", json!({"body": "short"}));
        client.subscribe(1, "demo:check", json!({"body": "y".repeat(1001)}));
        let view = client
            .until("both results", |v| {
                v.values.contains_key(&0) && !v.failures.is_empty()
            })
            .await;
        assert_eq!(view.values[&0], json!(true), "{base}");
        let failed = &view.failures[0];
        assert_eq!(failed["queryId"], 1, "{base}");
        assert_eq!(
            failed["errorData"],
            json!({"code": "TooLong", "max": 1000, "length": 1001}),
            "{base}"
        );
        assert_eq!(
            failed["logLines"],
            json!(["[LOG] 'checking 1001 characters'"]),
            "{base}"
        );
        assert!(
            view.log_lines
                .contains(&"[LOG] 'checking 5 characters'".to_owned()),
            "{base}: {:?}",
            view.log_lines
        );
    }
}

/// The query service checks the issuer auth signs with, learnt over gRPC; one configured apart
/// from auth's refuses tokens with an error that says what it expected and where from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_issuer_comes_from_auth_unless_set_and_a_mismatch_says_so() {
    let mut stack = crate::Stack::start().await;
    assert_eq!(stack.query_config.issuer, None, "nothing configured");
    let token = stack.token_for("issuer@example.com").await;
    let mut client = Client::connect(&stack.query_url()).await;
    client.authenticate(&token);
    client
        .until("accepted with auth's issuer", |v| v.version.1 == 1)
        .await;

    stack.query_config.issuer = Some("https://elsewhere.example".into());
    stack.restart_query().await;
    let mut client = Client::connect(&stack.query_url()).await;
    client.authenticate(&token);
    let view = client.until("refused", |v| !v.auth_errors.is_empty()).await;
    let error = &view.auth_errors[0];
    assert!(
        error.contains("wrong issuer")
            && error.contains("https://elsewhere.example")
            && error.contains("JWT_ISSUER"),
        "{error}"
    );
}

/// Convex serves a client only the root component's functions, and ends the socket of one that
/// calls another's (only admins may). devconvex and the query service (which calls every
/// function as the root's) end it the same way, instead of running the root's function of that
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_of_a_non_root_component_ends_the_socket_as_convex_ends_it() {
    let stack = crate::Stack::start().await;
    for base in [stack.query_url(), stack.devconvex_url()] {
        let mut client = Client::connect(&base).await;
        client.send(
            json!({"type": "Action", "requestId": 0, "udfPath": "demo:echo",
                           "args": [{"n": 1}], "componentPath": "someComponent"}),
        );
        let v = client
            .until("the socket to end", |v| v.fatal.is_some())
            .await;
        assert_eq!(
            v.fatal.as_deref(),
            Some("Only admin or system users can call functions on non-root components directly"),
            "{base}"
        );
    }
}
