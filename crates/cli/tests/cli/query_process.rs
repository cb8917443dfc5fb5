//! `convex-edge dev` as a process at `RUST_LOG=trace`: no token in any log line, and SIGTERM
//! closes client sockets with "restart" (1012, which the convex client retries) and ends the
//! process within its drain deadline.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{BIN, Proc, read_lines_until};

#[tokio::test]
async fn at_trace_level_no_token_reaches_the_log_and_sigterm_closes_sockets_with_restart() {
    let dir = edge_testkit::TempDir::default();
    let log_path = dir.path().join("stderr.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("dev")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log));
    for var in [
        "GATEWAY_HTTP_ADDR",
        "AUTH_GRPC_ADDR",
        "AUTH_HTTP_ADDR",
        "DEVCONVEX_ADDR",
        "QUERY_HTTP_ADDR",
        "QUERY_GRPC_ADDR",
    ] {
        cmd.env(var, "127.0.0.1:0");
    }
    let mut dev = Proc(cmd.spawn().expect("spawn convex-edge dev"));
    let lines = read_lines_until(&mut dev, "data:");
    let url_after = |label: &str| {
        let line = lines
            .iter()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("{label} in {lines:?}"));
        line.rsplit(' ').next().unwrap().to_owned()
    };
    let base = url_after("site (gateway):");
    let proxy = url_after("Convex clients (query proxy)");

    let client = reqwest::Client::new();
    let password = "correct horse battery staple";
    let r = client
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&json!({"name": "Tracy", "email": "trace@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = crate::cookie_from(&r);
    let token: Value = client
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["token"].as_str().unwrap().to_owned();

    // A client socket that authenticates with the JWT and sees its own user.
    let ws_url = format!("{}/api/sync", proxy.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    for message in [
        json!({"type": "Connect", "sessionId": "trace-session", "connectionCount": 0}),
        json!({"type": "Authenticate", "baseVersion": 0, "tokenType": "User", "value": jwt}),
        json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
            "modifications": [{"type": "Add", "queryId": 0, "udfPath": "users:me", "args": [{}]}]}),
    ] {
        ws.send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, ws.next())
            .await
            .expect("users:me within 20 s");
        match next {
            Some(Ok(Message::Text(text))) if text.contains("trace@example.com") => break,
            Some(Ok(_)) => {}
            other => panic!("socket ended before users:me: {other:?}"),
        }
    }
    // The HTTP API with the bearer token, too.
    let me: Value = client
        .post(format!("{proxy}/api/query"))
        .bearer_auth(&jwt)
        .json(&json!({"path": "users:me", "args": {}, "format": "json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["value"]["email"], "trace@example.com", "{me}");

    // SIGTERM: the socket is closed with 1012 and the process exits within its drain.
    let pid = dev.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let close = loop {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        match tokio::time::timeout(left, ws.next())
            .await
            .expect("a close within the drain")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
    let exit_deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = dev.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < exit_deadline,
            "dev still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("TRACE"),
        "trace level was not on: {} bytes",
        log.len()
    );
    let session_token = cookie
        .split_once('=')
        .map_or(cookie.as_str(), |(_, v)| v)
        .split(['.', ';', '%'])
        .next()
        .unwrap()
        .to_owned();
    let jwt_signature = jwt.rsplit('.').next().unwrap();
    for (what, secret) in [
        ("the JWT", jwt.as_str()),
        ("the JWT's signature", jwt_signature),
        ("the session token", session_token.as_str()),
        ("the password", password),
    ] {
        if let Some(at) = log.find(secret) {
            let line_start = log[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = log[at..].find('\n').map_or(log.len(), |i| at + i);
            panic!(
                "{what} is in the log: {}",
                &log[line_start..line_end.min(line_start + 400)]
            );
        }
    }
}

/// `convex-edge query` alone, on SIGTERM: a gateway's page watch (gRPC stream) ends with
/// UNAVAILABLE (the gateway watches again elsewhere), a client socket gets close 1012, the
/// process exits within its drain deadline, and both its ports are free again.
#[tokio::test]
async fn sigterm_ends_watches_with_unavailable_closes_sockets_and_frees_every_port() {
    use edge_proto::query::v1 as pb;
    let free = || edge_testkit::free_port().to_string();
    let (convex_port, http_port, grpc_port, auth_port) = (free(), free(), free(), free());
    let _devconvex = crate::spawn(
        &["devconvex"],
        &[("DEVCONVEX_ADDR".into(), format!("127.0.0.1:{convex_port}"))],
        None,
    );
    crate::wait_ready(&format!("http://127.0.0.1:{convex_port}/readyz")).await;
    let mut query = crate::spawn(
        &["query"],
        &[
            (
                "CONVEX_URL".into(),
                format!("http://127.0.0.1:{convex_port}"),
            ),
            ("QUERY_HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")),
            ("QUERY_GRPC_ADDR".into(), format!("127.0.0.1:{grpc_port}")),
            // Nobody listens: anonymous reads need no JWKS.
            (
                "AUTH_GRPC_URL".into(),
                format!("http://127.0.0.1:{auth_port}"),
            ),
            ("QUERY_SHARED_FUNCTIONS".into(), "messages:list".into()),
        ],
        None,
    );
    crate::wait_ready(&format!("http://127.0.0.1:{http_port}/readyz")).await;

    let mut grpc = edge_proto::query::v1::query_service_client::QueryServiceClient::connect(
        format!("http://127.0.0.1:{grpc_port}"),
    )
    .await
    .unwrap();
    let request = pb::QueryBatchRequest {
        queries: vec![pb::FunctionCall {
            path: "messages:list".into(),
            args_json: json!({"channel": "general"}).to_string(),
            jwt: String::new(),
            format: "json".into(),
        }],
    };
    let mut watch = grpc.watch(request).await.unwrap().into_inner();
    watch.message().await.unwrap().expect("a first batch");

    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http_port}/api/sync"))
            .await
            .unwrap();
    let add = json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
        "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "general"}]}]});
    ws.send(Message::Text(add.to_string().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a transition within 20 s")
        {
            Some(Ok(Message::Text(text))) if text.contains("Transition") => break,
            Some(Ok(_)) => {}
            other => panic!("socket ended before its first transition: {other:?}"),
        }
    }

    let pid = query.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let ended = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("the watch ends within the drain");
    let status = ended.expect_err("the watch ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a close within the drain")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Restart));
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = query.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "query still running 20 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "{exit:?}");
    for port in [&http_port, &grpc_port] {
        std::net::TcpListener::bind(format!("127.0.0.1:{port}"))
            .unwrap_or_else(|e| panic!("port {port} still held after exit: {e}"));
    }
}
