//! Bad input reaches only the client that sent it.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Client, Stack};

#[tokio::test]
async fn bad_input_gets_an_error_for_that_client_only() {
    let stack = Stack::start().await;
    let mut bystander = Client::connect(&stack.query_url()).await;
    bystander.subscribe(0, "config:get", json!({}));
    bystander
        .until("config", |v| v.values.contains_key(&0))
        .await;

    // Raw frames: malformed JSON, an unknown type, wrong versions, an oversized message.
    let bad = [
        "{not json".to_owned(),
        json!({"type": "Bogus"}).to_string(),
        json!({"type": "ModifyQuerySet", "baseVersion": 4, "newVersion": 5, "modifications": []})
            .to_string(),
        json!({"type": "Authenticate", "baseVersion": 9, "tokenType": "None"}).to_string(),
        format!(
            "{{\"type\":\"Event\",\"eventType\":\"x\",\"event\":\"{}\"}}",
            "x".repeat(9 * 1024 * 1024)
        ),
    ];
    for (i, frame) in bad.iter().enumerate() {
        let mut c = Client::connect(&stack.query_url()).await;
        c.send_raw(frame.clone());
        let v = c.until("the session to end", |v| v.closed).await;
        if i < 4 {
            assert!(
                v.fatal.as_deref().is_some_and(|e| !e.is_empty()),
                "case {i}: {v:?}"
            );
        }
    }

    // A garbage token: AuthError without reaching Convex, then close.
    let mut c = Client::connect(&stack.query_url()).await;
    c.authenticate("garbage.token.here");
    let v = c.until("auth error", |v| v.closed).await;
    assert_eq!(v.auth_errors.len(), 1, "{v:?}");

    // An unknown function fails that query only.
    let mut c = Client::connect(&stack.query_url()).await;
    c.subscribe(0, "nope:missing", json!({}));
    c.subscribe(1, "config:get", json!({}));
    let v = c
        .until("both answers", |v| {
            !v.errors.is_empty() && v.values.contains_key(&1)
        })
        .await;
    assert!(v.errors[0].contains("Could not find public function"));

    // The bystander still gets answers.
    bystander.subscribe(1, "messages:list", json!({"channel": "x"}));
    let v = bystander
        .until("a second query", |v| v.values.contains_key(&1))
        .await;
    assert!(v.violations.is_empty() && v.fatal.is_none() && !v.closed);
}

/// Sends a raw HTTP request to the query service and returns its response head.
async fn response_head(stack: &Stack, request: &str) -> String {
    let addr = stack.query_url().replacen("http://", "", 1);
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .expect("a response head within 10 s")
            .unwrap();
        assert!(n > 0, "the connection closed before the response head");
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn bad_handshakes_are_refused_with_a_clear_status() {
    let stack = Stack::start().await;
    // Plain GET of a sync route.
    let plain = reqwest::get(format!("{}/api/1.48.0/sync", stack.query_url()))
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    assert_eq!(plain.text().await.unwrap(), "expected a WebSocket upgrade");

    let handshake = |path: &str, version: &str, key: bool| {
        let key = if key {
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        } else {
            ""
        };
        format!(
            "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
             upgrade: websocket\r\nsec-websocket-version: {version}\r\n{key}\r\n"
        )
    };
    // The RFC 6455 example key gets the RFC's accept value.
    let ok = response_head(&stack, &handshake("/api/sync", "13", true)).await;
    assert!(
        ok.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{ok}"
    );
    assert!(
        ok.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{ok}"
    );
    for (request, expected) in [
        (
            handshake("/api/1.48.0/sync", "8", true),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            handshake("/api/1.48.0/sync", "13", false),
            "HTTP/1.1 400 Bad Request",
        ),
        (
            handshake("/api/elsewhere", "13", true),
            "HTTP/1.1 404 Not Found",
        ),
        (
            handshake("/api/a/b/sync", "13", true),
            "HTTP/1.1 404 Not Found",
        ),
    ] {
        let head = response_head(&stack, &request).await;
        assert!(head.starts_with(expected), "{request} → {head}");
    }

    // The service still serves sockets afterwards.
    let mut c = Client::connect(&stack.query_url()).await;
    c.subscribe(0, "config:get", json!({}));
    c.until("a value", |v| v.values.contains_key(&0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_socket_gets_pings_and_stays_open() {
    let stack = Stack::start_with(crate::Options {
        ping_interval: std::time::Duration::from_millis(200),
        ..crate::Options::default()
    })
    .await;
    let mut client = Client::connect(&stack.query_url()).await;
    client.subscribe(0, "config:get", json!({}));
    client
        .until("the first value", |v| v.values.contains_key(&0))
        .await;
    let view = client.until("three pings", |v| v.pings >= 3).await;
    assert!(!view.closed && view.fatal.is_none(), "{view:?}");
    assert!(view.violations.is_empty(), "{:?}", view.violations);
}
