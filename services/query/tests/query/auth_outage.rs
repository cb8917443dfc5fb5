//! auth unreachable from the query service (a partition that swallows its gRPC traffic): a
//! token whose check needs auth's JWKS is answered "unavailable, retry" (HTTP 503, gRPC
//! `UNAVAILABLE`, a socket closed for the client to reconnect), never as a bad token, and every
//! path heals by itself once auth answers. Tokens the claims alone condemn are still refused.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge_proto::error::ErrorCode;
use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::{Value, json};

use crate::{Client, NodeScript, Options, Stack};

async fn post(url: String, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn call(path: &str, args: &str, jwt: &str) -> pb::FunctionCall {
    pb::FunctionCall {
        path: path.into(),
        args_json: args.into(),
        jwt: jwt.into(),
        format: "json".into(),
    }
}

/// `token` with its header's `kid` replaced (a key auth has not published, or one this
/// service has not learnt yet: a JWKS rotated while auth is unreachable).
fn with_kid(token: &str, kid: &str) -> String {
    let (header, rest) = token.split_once('.').unwrap();
    let mut header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    header["kid"] = json!(kid);
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()))
}

/// `token` with other claims (the signature no longer matches them).
fn with_claims(token: &str, change: impl FnOnce(&mut Value)) -> String {
    let mut parts = token.split('.');
    let (header, payload, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    change(&mut claims);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.{signature}")
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Polls `request` until it answers `want` (within 60 s); every answer before is `before`.
async fn until_status<F, Fut>(what: &str, before: u16, want: u16, mut request: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, Value)>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = request().await;
        if status == want {
            return body;
        }
        assert_eq!(status, before, "{what}: {body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never answered {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A query service that started while auth was unreachable has no JWKS: every signed-in HTTP
/// route answers 503 (`AuthUnavailable`, with `Retry-After`), signed-out ones work, tokens the
/// claims alone condemn get 401; once auth answers, the same requests succeed without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_in_http_requests_are_503_while_auth_is_unreachable_and_heal() {
    let stack = Stack::start_with(Options {
        auth_partitioned: true,
        ..Options::default()
    })
    .await;
    let token = stack.token_for("outage-http@example.com").await;
    let base = stack.query_url();
    let query = json!({"path": "users:me", "args": {}, "format": "json"});
    let mutation = json!({"path": "tasks:add", "args": {"text": "during the outage"}});
    let action = json!({"path": "demo:echo", "args": {"n": 1}});

    let r = reqwest::Client::new()
        .post(format!("{base}/api/query"))
        .bearer_auth(&token)
        .json(&query)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()),
        Some("2")
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "AuthUnavailable", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("auth service did not answer for the JWKS")),
        "{body}"
    );
    for (route, body) in [
        ("/api/mutation", &mutation),
        ("/api/action", &action),
        ("/api/function", &query),
        ("/api/run/users/me", &json!({"args": {}})),
    ] {
        let (status, answer) = post(format!("{base}{route}"), body.clone(), Some(&token)).await;
        assert_eq!(status, 503, "{route}: {answer}");
        assert_eq!(answer["code"], "AuthUnavailable", "{route}: {answer}");
    }
    let r = reqwest::Client::new()
        .get(format!("{base}/api/query?path=users:me&format=json"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);

    // Signed out: nothing to check.
    let (status, body) = post(
        format!("{base}/api/query"),
        json!({"path": "config:get", "args": {}, "format": "json"}),
        None,
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("success")),
        "{body}"
    );

    // Bad whatever the JWKS says: refused as before.
    let expired = with_claims(&token, |c| c["exp"] = json!(unix_now() - 60));
    let no_subject = with_claims(&token, |c| c["sub"] = json!(""));
    for bad in ["not-a-jwt", expired.as_str(), no_subject.as_str()] {
        let (status, body) = post(format!("{base}/api/query"), query.clone(), Some(bad)).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["code"], "Unauthenticated", "{body}");
    }

    stack.auth_relay.as_ref().unwrap().heal();
    let body = until_status("the signed-in query", 503, 200, || {
        post(format!("{base}/api/query"), query.clone(), Some(&token))
    })
    .await;
    assert_eq!(body["value"]["email"], "outage-http@example.com", "{body}");
    let (status, body) = post(format!("{base}/api/mutation"), mutation, Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    // With the JWKS learnt, a forged signature is refused.
    let forged = with_claims(&token, |c| c["email"] = json!("someone-else@example.com"));
    let (status, body) = post(format!("{base}/api/query"), query, Some(&forged)).await;
    assert_eq!(status, 401, "{body}");
}

/// Later in life: the JWKS was learnt, then auth became unreachable. A token naming a key the
/// cached JWKS lacks (auth rotated its keys) cannot be checked: 503 over HTTP, `UNAVAILABLE`
/// over gRPC, not a refusal; tokens of known keys keep working, and what is bad whatever the
/// JWKS says (a wrong signature, another issuer, expired) is still refused. Once auth answers,
/// the unknown key is really unknown: 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_while_auth_is_unreachable_is_unavailable_not_refused() {
    let stack = Stack::start_with(Options {
        auth_partitioned: true,
        ..Options::default()
    })
    .await;
    let relay = stack.auth_relay.as_ref().unwrap();
    relay.heal();
    let token = stack.token_for("outage-kid@example.com").await;
    let base = stack.query_url();
    let query = json!({"path": "users:me", "args": {}, "format": "json"});
    until_status("the first signed-in query", 503, 200, || {
        post(format!("{base}/api/query"), query.clone(), Some(&token))
    })
    .await;
    relay.partition();
    // A JWKS learnt under 2 s ago is taken as current (an unknown `kid` is then refused); past
    // that, an unknown `kid` asks auth again.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let rotated = with_kid(&token, "a-key-published-during-the-outage");
    let (status, body) = post(format!("{base}/api/query"), query.clone(), Some(&rotated)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "AuthUnavailable", "{body}");
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    let err = grpc
        .query(call("users:me", "{}", &rotated))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");

    // A known key decides alone.
    let (status, body) = post(format!("{base}/api/query"), query.clone(), Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let forged = with_claims(&token, |c| c["email"] = json!("someone-else@example.com"));
    let (status, _) = post(format!("{base}/api/query"), query.clone(), Some(&forged)).await;
    assert_eq!(status, 401);
    // Claims no key can mend, under the unknown key.
    let elsewhere = with_kid(
        &with_claims(&token, |c| c["iss"] = json!("https://elsewhere.example")),
        "a-key-published-during-the-outage",
    );
    let expired = with_kid(
        &with_claims(&token, |c| c["exp"] = json!(unix_now() - 60)),
        "a-key-published-during-the-outage",
    );
    for bad in [&elsewhere, &expired] {
        let (status, body) = post(format!("{base}/api/query"), query.clone(), Some(bad)).await;
        assert_eq!(status, 401, "{body}");
        let err = grpc.query(call("users:me", "{}", bad)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    }

    relay.heal();
    until_status("the unknown key to be judged", 503, 401, || {
        post(format!("{base}/api/query"), query.clone(), Some(&rotated))
    })
    .await;
}

/// The gateway's gRPC API: `Query`, `QueryBatch`, `Watch` and `Mutation` answer `UNAVAILABLE`
/// (`AUTH_UNAVAILABLE`), not `UNAUTHENTICATED`, and a gateway page rendered for a signed-in
/// viewer is answered 503 rather than as signed out; both heal once auth answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_and_pages_are_unavailable_while_auth_is_unreachable_and_heal() {
    let stack = Stack::start_with(Options {
        auth_partitioned: true,
        ..Options::default()
    })
    .await;
    let (cookie, token) = stack.session_for("outage-grpc@example.com").await;
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    let unavailable = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(ErrorCode::from_status(&status), ErrorCode::AUTH_UNAVAILABLE);
    };
    unavailable(
        grpc.query(call("users:me", "{}", &token))
            .await
            .unwrap_err(),
    );
    let batch = || pb::QueryBatchRequest {
        queries: vec![call("users:me", "{}", &token)],
    };
    unavailable(grpc.query_batch(batch()).await.unwrap_err());
    unavailable(grpc.watch(batch()).await.unwrap_err());
    unavailable(
        grpc.mutation(call("tasks:add", r#"{"text":"x"}"#, &token))
            .await
            .unwrap_err(),
    );
    // Signed out works.
    let r = grpc
        .query(call("config:get", "{}", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(r.result_json.contains("success"), "{}", r.result_json);

    // A gateway rendering the demo's pages from this query service (it reaches auth itself).
    let mut config = edge_gateway::Config::local();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.auth_grpc_url = format!("http://{}", stack.auth_grpc);
    config.query_grpc_url = format!("http://{}", stack.query_grpc());
    config.workers = 1;
    config.read_rate_limit = None;
    let app = edge_gateway::Application::build(config).await.unwrap();
    let addr = app.addr();
    let _gateway = crate::run(addr, |s| app.run_until(s));
    let page = || async {
        let r = reqwest::Client::new()
            .get(format!("http://{addr}/tasks"))
            .header("cookie", format!("better-auth.session_token={cookie}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, Value::String(r.text().await.unwrap()))
    };
    let (status, body) = page().await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, "auth service unavailable");

    stack.auth_relay.as_ref().unwrap().heal();
    let body = until_status("the signed-in page", 503, 200, page).await;
    assert!(
        body.as_str().unwrap().contains("Signed in as"),
        "rendered signed in: {body}"
    );
    let r = grpc
        .query(call("users:me", "{}", &token))
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.result_json.contains("outage-grpc@example.com"),
        "{}",
        r.result_json
    );
}

/// A socket's `Authenticate` whose token cannot be checked closes the socket with 1013 (try
/// again later) and no `AuthError`, so the client keeps its token and sends it again when it
/// reconnects; a socket that reconnects once auth answers is signed in. A token the claims
/// condemn still gets `AuthError`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_authenticating_while_auth_is_unreachable_is_closed_to_retry() {
    let stack = Stack::start_with(Options {
        auth_partitioned: true,
        ..Options::default()
    })
    .await;
    let token = stack.token_for("outage-ws@example.com").await;
    let mut c = Client::connect(&stack.query_url()).await;
    c.subscribe(0, "users:me", json!({}));
    c.authenticate(&token);
    let v = c.until("the socket to close", |v| v.closed).await;
    assert!(v.auth_errors.is_empty(), "{v:?}");
    assert!(v.fatal.is_none(), "{v:?}");
    let (code, reason) = v.close_frame.clone().expect("a Close frame");
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.starts_with("AuthUnavailable"), "{reason}");

    let expired = with_claims(&token, |c| c["exp"] = json!(unix_now() - 60));
    let mut bad = Client::connect(&stack.query_url()).await;
    bad.authenticate(&expired);
    let v = bad.until("AuthError", |v| !v.auth_errors.is_empty()).await;
    assert!(v.auth_errors[0].contains("expired"), "{v:?}");

    stack.auth_relay.as_ref().unwrap().heal();
    // The client reconnects with the same token, as convex-js does, until it is signed in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut again = Client::connect(&stack.query_url()).await;
        again.subscribe(0, "users:me", json!({}));
        again.authenticate(&token);
        let v = again
            .until("signed in or closed", |v| {
                v.closed || v.values.get(&0).is_some_and(|me| me["email"].is_string())
            })
            .await;
        if !v.closed {
            assert_eq!(v.values[&0]["email"], "outage-ws@example.com");
            break;
        }
        assert!(v.auth_errors.is_empty(), "{v:?}");
        assert!(tokio::time::Instant::now() < deadline, "never signed in");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The official `convex` client signed in through a query service that cannot reach auth:
/// it is never signed out (no `onAuthChange(false)`), reconnects with backoff, and gets its
/// data once auth answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_client_stays_signed_in_through_an_auth_outage() {
    let stack = Stack::start_with(Options {
        auth_partitioned: true,
        ..Options::default()
    })
    .await;
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let mut node = NodeScript::start("convex-auth-outage.mjs", &arg);
    let down = node.next_phase().await;
    assert_eq!(down["phase"], "down", "{down:#}");
    assert_eq!(
        down["authChanges"],
        json!([]),
        "signed out by the outage: {down:#}"
    );
    assert!(down["me"].is_null(), "{down:#}");
    stack.auth_relay.as_ref().unwrap().heal();
    node.say("healed").await;
    let done = node.next_phase().await;
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["me"], "outage-npm@example.com", "{done:#}");
    // convex-js reports each confirmation of its token; never a sign-out.
    let changes = done["authChanges"].as_array().unwrap();
    assert!(
        changes.last() == Some(&json!(true)) && !changes.contains(&json!(false)),
        "{done:#}"
    );
}
