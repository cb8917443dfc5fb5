//! The sync protocol on a raw WebSocket: version rules, errors to the offending client only,
//! re-runs only for written tables, pings.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(running: &crate::Running) -> Socket {
    let url = format!("ws://{}/api/1.48.0/sync", running.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects");
    send(
        &mut ws,
        json!({"type": "Connect", "sessionId": "s", "connectionCount": 0, "lastCloseReason": null}),
    )
    .await;
    ws
}

async fn send(ws: &mut Socket, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message, skipping Pings unless asked for; within 10 s in all (Pings included).
async fn recv(ws: &mut Socket) -> Value {
    let next = async {
        loop {
            let m = ws.next().await.expect("open").unwrap();
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "Ping" {
                    return v;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("a message")
}

/// Waits, at most 10 s, for the socket to close (after a fatal error).
async fn closed(ws: &mut Socket) {
    let close = async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), close)
        .await
        .expect("closes")
}

fn add(base: u32, id: u32, path: &str, args: Value) -> Value {
    json!({"type": "ModifyQuerySet", "baseVersion": base, "newVersion": base + 1,
           "modifications": [{"type": "Add", "queryId": id, "udfPath": path, "args": [args]}]})
}

#[tokio::test]
async fn transitions_follow_the_version_rules() {
    let running = crate::spawn(None).await;
    let mut ws = connect(&running).await;
    send(
        &mut ws,
        add(0, 0, "messages:list", json!({"channel": "general"})),
    )
    .await;
    let t = recv(&mut ws).await;
    assert_eq!(t["type"], "Transition");
    assert_eq!(
        t["startVersion"],
        json!({"querySet": 0, "identity": 0, "ts": "AAAAAAAAAAA="})
    );
    assert_eq!(t["endVersion"]["querySet"], 1);
    assert_eq!(t["endVersion"]["identity"], 0);
    assert_eq!(
        t["modifications"],
        json!([{"type": "QueryUpdated", "queryId": 0, "value": [], "logLines": [], "journal": null}])
    );

    // Anonymous identity: the identity version moves by one.
    send(
        &mut ws,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "None"}),
    )
    .await;
    let t2 = recv(&mut ws).await;
    assert_eq!(t2["startVersion"], t["endVersion"]);
    assert_eq!(t2["endVersion"]["identity"], 1);

    // An unknown function fails that query only.
    send(&mut ws, add(1, 1, "nope:missing", json!({}))).await;
    let t3 = recv(&mut ws).await;
    assert_eq!(t3["startVersion"], t2["endVersion"]);
    assert_eq!(t3["modifications"][0]["type"], "QueryFailed");
    assert!(
        t3["modifications"][0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Could not find public function")
    );

    // An anonymous mutation fails with a response, not a fatal error.
    send(&mut ws, json!({"type": "Mutation", "requestId": 0, "udfPath": "messages:send", "args": [{"channel": "general", "body": "x"}]})).await;
    let r = recv(&mut ws).await;
    assert_eq!(r["type"], "MutationResponse");
    assert_eq!(r["success"], false);
    // Convex's sync worker follows every mutation answer, a failure too, with a transition
    // (`worker.rs` `go_inner` schedules an update for each): here one that moves nothing.
    let still = recv(&mut ws).await;
    assert_eq!(still["type"], "Transition", "{still}");
    assert_eq!(still["startVersion"], t3["endVersion"]);
    assert_eq!(still["endVersion"], t3["endVersion"]);

    // Removing a query.
    send(&mut ws, json!({"type": "ModifyQuerySet", "baseVersion": 2, "newVersion": 3, "modifications": [{"type": "Remove", "queryId": 1}]})).await;
    let t4 = recv(&mut ws).await;
    assert_eq!(
        t4["modifications"],
        json!([{"type": "QueryRemoved", "queryId": 1}])
    );
    assert_eq!(t4["endVersion"]["querySet"], 3);
}

#[tokio::test]
async fn protocol_violations_end_only_that_session() {
    let running = crate::spawn(None).await;
    let mut bystander = connect(&running).await;
    send(&mut bystander, add(0, 0, "config:get", json!({}))).await;
    recv(&mut bystander).await;

    let violations = [
        add(5, 0, "messages:list", json!({"channel": "general"})),
        json!({"type": "Bogus"}),
        json!({"type": "Authenticate", "baseVersion": 3, "tokenType": "None"}),
        json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [{"type": "Remove", "queryId": 9}]}),
    ];
    for violation in violations {
        let mut ws = connect(&running).await;
        send(&mut ws, violation.clone()).await;
        let m = recv(&mut ws).await;
        assert_eq!(m["type"], "FatalError", "{violation}");
        assert!(!m["error"].as_str().unwrap().is_empty());
        closed(&mut ws).await;
    }
    let mut ws = connect(&running).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "FatalError");
    assert!(m["error"].as_str().unwrap().contains("malformed"));

    let mut ws = connect(&running).await;
    ws.send(Message::Text("x".repeat(300 * 1024).into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("answer")
    {
        Some(Ok(Message::Text(t))) => assert!(t.contains("FatalError"), "{t}"),
        other => assert!(
            matches!(other, None | Some(Err(_)) | Some(Ok(Message::Close(_)))),
            "{other:?}"
        ),
    }

    // The bystander still works.
    send(
        &mut bystander,
        add(1, 1, "messages:list", json!({"channel": "general"})),
    )
    .await;
    let t = recv(&mut bystander).await;
    assert_eq!(t["type"], "Transition");
    assert_eq!(t["endVersion"]["querySet"], 2);
}

#[tokio::test]
async fn bad_tokens_get_auth_error_then_close() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let mut ws = connect(&running).await;
    send(
        &mut ws,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": "garbage"}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["type"], "AuthError");
    assert_eq!(m["baseVersion"], 0);
    closed(&mut ws).await;

    // A good token confirms with the identity version moving.
    let token = auth.token_for("ws@example.com").await;
    let mut ws = connect(&running).await;
    send(&mut ws, add(0, 0, "users:me", json!({}))).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token}),
    )
    .await;
    let t = recv(&mut ws).await;
    assert_eq!(t["endVersion"]["identity"], 1);
    assert_eq!(t["modifications"][0]["value"]["email"], "ws@example.com");

    // Mutations complete: the response's ts is reached by a following transition.
    send(&mut ws, json!({"type": "Mutation", "requestId": 7, "udfPath": "messages:send", "args": [{"channel": "c", "body": "b"}]})).await;
    let r = recv(&mut ws).await;
    assert_eq!(
        (
            r["type"].as_str(),
            r["requestId"].as_u64(),
            r["success"].as_bool()
        ),
        (Some("MutationResponse"), Some(7), Some(true))
    );
    let ts = edge_convex::Timestamp::decode(r["ts"].as_str().unwrap()).unwrap();
    let t = recv(&mut ws).await;
    assert!(edge_convex::Timestamp::decode(t["endVersion"]["ts"].as_str().unwrap()).unwrap() >= ts);
}

/// As Convex (`check_mutation_status`): a mutation runs once per `(sessionId, requestId)`. A
/// client that reconnects under its session and sends a mutation again (convex-js's
/// `RequestManager.restart`) gets the first run's result and `ts`, and a transition after it.
/// The query service asks an idle upstream for a fresh `ts` with an empty `ModifyQuerySet`:
/// accepted, and answered, as Convex does, with a transition at the latest commit's `ts`.
#[tokio::test]
async fn an_empty_modify_query_set_is_answered_with_a_transition_at_the_latest_ts() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("advance@example.com").await;
    let mut ws = connect(&running).await;
    send(
        &mut ws,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token}),
    )
    .await;
    recv(&mut ws).await;
    send(&mut ws, json!({"type": "Mutation", "requestId": 0, "udfPath": "messages:send", "args": [{"channel": "advance", "body": "b"}]})).await;
    let answer = recv(&mut ws).await;
    assert_eq!(answer["success"], true, "{answer}");
    let after = recv(&mut ws).await;
    assert_eq!(after["type"], "Transition", "{after}");

    send(
        &mut ws,
        json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": []}),
    )
    .await;
    let t = recv(&mut ws).await;
    assert_eq!(t["type"], "Transition", "{t}");
    assert_eq!(t["startVersion"], after["endVersion"]);
    assert_eq!(t["endVersion"]["querySet"], 1);
    assert_eq!(
        t["endVersion"]["ts"], answer["ts"],
        "at the mutation's commit"
    );
    assert_eq!(t["modifications"], json!([]));
}

#[tokio::test]
async fn a_mutation_sent_again_under_its_session_runs_once() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("once@example.com").await;
    let authenticate =
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token});
    let mutation = json!({"type": "Mutation", "requestId": 3, "udfPath": "messages:send", "args": [{"channel": "once", "body": "b"}]});
    let mut ws = connect(&running).await;
    send(&mut ws, authenticate.clone()).await;
    recv(&mut ws).await;
    send(&mut ws, mutation.clone()).await;
    let first = recv(&mut ws).await;
    assert_eq!(first["success"], true, "{first}");
    recv(&mut ws).await;
    drop(ws);

    let mut ws = connect(&running).await;
    send(&mut ws, authenticate).await;
    recv(&mut ws).await;
    send(
        &mut ws,
        add(0, 0, "messages:list", json!({"channel": "once"})),
    )
    .await;
    let t = recv(&mut ws).await;
    send(&mut ws, mutation).await;
    let again = recv(&mut ws).await;
    assert_eq!(
        (
            &again["type"],
            &again["success"],
            &again["ts"],
            &again["result"]
        ),
        (
            &first["type"],
            &first["success"],
            &first["ts"],
            &first["result"]
        )
    );
    let still = recv(&mut ws).await;
    assert_eq!(still["type"], "Transition", "{still}");
    assert_eq!(still["startVersion"], t["endVersion"]);
    assert_eq!(still["endVersion"], t["endVersion"]);
    assert_eq!(
        t["modifications"][0]["value"].as_array().unwrap().len(),
        1,
        "written once: {t}"
    );
}

#[tokio::test]
async fn queries_rerun_only_when_their_tables_are_written_and_idle_sockets_get_pings() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("rerun@example.com").await;
    let mut ws = connect(&running).await;
    send(
        &mut ws,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token}),
    )
    .await;
    recv(&mut ws).await;
    send(&mut ws, json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1, "modifications": [
        {"type": "Add", "queryId": 0, "udfPath": "config:get", "args": [{}]},
        {"type": "Add", "queryId": 1, "udfPath": "messages:list", "args": [{"channel": "general"}]},
    ]})).await;
    recv(&mut ws).await;
    let stats = &running.engine.stats;
    let (config_runs, list_runs) = (
        stats.executions("config:get"),
        stats.executions("messages:list"),
    );
    assert_eq!(stats.subscriptions(), 2);
    send(&mut ws, json!({"type": "Mutation", "requestId": 0, "udfPath": "messages:send", "args": [{"channel": "general", "body": "hi"}]})).await;
    let _response = recv(&mut ws).await;
    let t = recv(&mut ws).await;
    assert_eq!(
        t["modifications"].as_array().unwrap().len(),
        1,
        "only messages:list changed: {t}"
    );
    assert_eq!(t["modifications"][0]["queryId"], 1);
    assert_eq!(stats.executions("messages:list"), list_runs + 1);
    assert_eq!(
        stats.executions("config:get"),
        config_runs,
        "config:get reads no written table"
    );

    // A tasks write changes neither query: a transition moves ts without modifications.
    send(&mut ws, json!({"type": "Mutation", "requestId": 1, "udfPath": "tasks:add", "args": [{"text": "t"}]})).await;
    recv(&mut ws).await;
    let t = recv(&mut ws).await;
    assert_eq!(t["modifications"], json!([]));
    assert_eq!(stats.executions("messages:list"), list_runs + 1);
    drop(ws);

    let mut config = edge_devconvex::Config::local();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.ping_interval = Duration::from_millis(100);
    let app = edge_devconvex::Application::build(config).await.unwrap();
    let addr = app.addr();
    tokio::spawn(app.run_until(std::future::pending()));
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api/sync"))
        .await
        .unwrap();
    let ping = async {
        loop {
            let m = ws.next().await.unwrap().unwrap();
            if m.to_text().unwrap_or_default().contains("\"Ping\"") {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ping)
        .await
        .expect("a ping");
}

/// As Convex's sync worker, a commit sends a transition only to sockets with a query it
/// invalidated: a socket whose queries read none of the written tables gets nothing, so the
/// next transition it sees is the one answering its own `ModifyQuerySet`.
#[tokio::test]
async fn a_commit_sends_a_transition_only_to_sockets_whose_queries_it_invalidated() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("commit@example.com").await;
    let mut idle = connect(&running).await;
    send(&mut idle, add(0, 0, "config:get", json!({}))).await;
    let held = recv(&mut idle).await;
    let mut reader = connect(&running).await;
    send(
        &mut reader,
        add(0, 0, "messages:list", json!({"channel": "general"})),
    )
    .await;
    recv(&mut reader).await;

    let mut writer = connect(&running).await;
    send(
        &mut writer,
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": token}),
    )
    .await;
    recv(&mut writer).await;
    send(&mut writer, json!({"type": "Mutation", "requestId": 0, "udfPath": "messages:send", "args": [{"channel": "general", "body": "hi"}]})).await;
    let answer = recv(&mut writer).await;
    assert_eq!(answer["success"], true, "{answer}");

    let update = recv(&mut reader).await;
    assert_eq!(update["type"], "Transition", "{update}");
    assert_eq!(update["endVersion"]["ts"], answer["ts"]);
    assert_eq!(update["modifications"][0]["value"][0]["body"], "hi");

    send(
        &mut idle,
        json!({"type": "ModifyQuerySet", "baseVersion": 1, "newVersion": 2, "modifications": []}),
    )
    .await;
    let next = recv(&mut idle).await;
    assert_eq!(
        next["startVersion"], held["endVersion"],
        "no transition for the commit: {next}"
    );
    assert_eq!(next["endVersion"]["querySet"], 2);
    assert_eq!(next["endVersion"]["ts"], answer["ts"]);
}
