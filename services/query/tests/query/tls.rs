//! Convex over TLS: the query service reaches a `https://` deployment (devconvex behind a TLS
//! relay with a test CA's certificate) trusting the CA named by its `SSL_CERT_FILE`.

use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::json;

use crate::{Options, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_convex_npm_client_works_through_the_proxy_to_a_tls_deployment() {
    let stack = Stack::start_with(Options {
        tls_upstream: Some(true),
        ..Options::default()
    })
    .await;
    assert!(stack.query_config.convex_url.starts_with("https://"));
    let token = stack.token_for("tls@example.com").await;
    let other = stack.token_for("tls-other@example.com").await;
    let out = edge_testkit::node(
        "convex-client.mjs",
        &[json!({"url": stack.query_url(), "token": token, "otherToken": other}).to_string()],
    )
    .await;
    assert_eq!(out["ok"], true, "{out:#}");
    // HTTP round trip, action and mutation (ConvexHttpClient through the proxy's reqwest).
    assert_eq!(out["httpEchoInt64"], true, "{out:#}");
    assert_eq!(out["httpList"], json!(["over http"]));
    assert_eq!(out["httpMe"], "tls@example.com");
    // WebSocket: live update, mutation, action (through the wss:// upstream).
    assert_eq!(out["me"]["email"], "tls@example.com");
    assert_eq!(out["seenByA"], json!(["hello from B"]), "live update");
    assert_eq!(out["bTasks"][0]["done"], true, "mutations");
    assert_eq!(out["echoInt64"], true, "action");
    assert_eq!(out["otherTasks"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_whose_ca_is_not_trusted_is_refused_with_the_reason() {
    let stack = Stack::start_with(Options {
        tls_upstream: Some(false),
        ..Options::default()
    })
    .await;
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    let call = grpc.query(pb::FunctionCall {
        path: "config:get".into(),
        args_json: "{}".into(),
        jwt: String::new(),
        format: "json".into(),
    });
    // A refused certificate must fail the call, not leave it waiting.
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), call)
        .await
        .expect("the call ends")
        .expect_err("an untrusted deployment is refused");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("certificate") && status.message().contains("UnknownIssuer"),
        "the reason names the certificate: {}",
        status.message()
    );
    let r = reqwest::Client::new()
        .post(format!("{}/api/query", stack.query_url()))
        .json(&json!({"path": "config:get", "args": {}, "format": "json"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502, "HTTP callers get Bad Gateway");
}
