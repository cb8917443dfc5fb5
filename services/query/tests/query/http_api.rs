//! HTTP and gRPC queries: served from live subscriptions, coalesced otherwise; mutations are
//! never merged.

use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::{Value, json};

use crate::{Client, Options, Stack};

async fn post(url: String, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_subscription_answers_http_and_grpc_queries_without_an_upstream_call() {
    let stack = Stack::start().await;
    let token = stack.token_for("h@example.com").await;
    let mut c = Client::connect(&stack.query_url()).await;
    c.authenticate(&token);
    c.subscribe(0, "tasks:list", json!({}));
    c.subscribe(1, "messages:list", json!({"channel": "general"}));
    c.mutation("tasks:add", json!({"text": "live"}));
    c.until("the task", |v| {
        v.values
            .get(&0)
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() == 1)
    })
    .await;

    let upstream_before = stack.stats.upstream_queries.load(Ordering::Relaxed);
    let served_before = stack.stats.served_from_subscription.load(Ordering::Relaxed);
    let (status, body) = post(
        format!("{}/api/query", stack.query_url()),
        json!({"path": "tasks:list", "args": {}, "format": "json"}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["value"][0]["text"], "live");
    // A shared function is served from the anonymous subscription to anyone.
    let (_, body) = post(
        format!("{}/api/query", stack.query_url()),
        json!({"path": "messages:list", "args": {"channel": "general"}}),
        None,
    )
    .await;
    assert_eq!(body["status"], "success");
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    let r = grpc
        .query(pb::FunctionCall {
            path: "tasks:list".into(),
            args_json: "{}".into(),
            jwt: token.clone(),
            format: "json".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.from_subscription);
    assert!(r.result_json.contains("live"));
    assert_eq!(
        stack.stats.upstream_queries.load(Ordering::Relaxed),
        upstream_before,
        "no upstream call"
    );
    assert_eq!(
        stack.stats.served_from_subscription.load(Ordering::Relaxed),
        served_before + 3
    );

    // Another user's HTTP query is not served from this user's subscription.
    let other = stack.token_for("other@example.com").await;
    let (_, body) = post(
        format!("{}/api/query", stack.query_url()),
        json!({"path": "tasks:list", "args": {}}),
        Some(&other),
    )
    .await;
    assert_eq!(body["value"], json!([]));
    assert_eq!(
        stack.stats.upstream_queries.load(Ordering::Relaxed),
        upstream_before + 1
    );

    // Mutations and actions through gRPC.
    let r = grpc
        .mutation(pb::FunctionCall {
            path: "tasks:add".into(),
            args_json: r#"{"text":"via grpc"}"#.into(),
            jwt: token.clone(),
            format: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.result_json.contains("success"), "{}", r.result_json);
    let err = grpc
        .query(pb::FunctionCall {
            path: "tasks:list".into(),
            args_json: "{}".into(),
            jwt: "garbage".into(),
            format: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_queries_make_one_upstream_call_and_mutations_are_never_merged() {
    // A slow network in front of devconvex keeps the first call in flight while the others arrive.
    let stack = Stack::start_with(Options {
        slow_upstream: Some(Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let before = stack.stats.upstream_queries.load(Ordering::Relaxed);
    let calls = (0..20).map(|_| {
        post(
            format!("{}/api/query", stack.query_url()),
            json!({"path": "config:get", "args": {}, "format": "json"}),
            None,
        )
    });
    let results = futures_util::future::join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|(s, b)| *s == 200 && b["value"]["siteName"] == "convex-edge demo")
    );
    assert_eq!(
        stack.stats.upstream_queries.load(Ordering::Relaxed),
        before + 1,
        "one upstream call for 20 identical queries"
    );

    let token = stack.token_for("m@example.com").await;
    let mutations = (0..5).map(|i| {
        post(
            format!("{}/api/mutation", stack.query_url()),
            json!({"path": "tasks:add", "args": {"text": format!("t{i}")}}),
            Some(&token),
        )
    });
    let results = futures_util::future::join_all(mutations).await;
    assert!(results.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        stack.stats.upstream_mutations.load(Ordering::Relaxed),
        5,
        "each mutation is its own call"
    );

    // Bad tokens never reach Convex.
    let (status, body) = post(
        format!("{}/api/query", stack.query_url()),
        json!({"path": "config:get", "args": {}}),
        Some("bad"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("Unauthenticated"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_read_linger_reads_subscribe_and_the_next_ones_cost_convex_nothing() {
    let stack = Stack::start_with(Options {
        read_linger: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    let token = stack.token_for("linger@example.com").await;
    let read = |path: &'static str| {
        let (url, token) = (format!("{}/api/query", stack.query_url()), token.clone());
        async move {
            post(
                url,
                json!({"path": path, "args": {}, "format": "json"}),
                Some(&token),
            )
            .await
        }
    };
    let upstream_before = stack.stats.upstream_queries.load(Ordering::Relaxed);
    let served_before = stack.stats.served_from_subscription.load(Ordering::Relaxed);
    // The first read subscribes (no HTTP call); the subscription stays for the next ones.
    let (status, body) = read("tasks:list").await;
    assert_eq!((status, &body["value"]), (200, &json!([])));
    assert_eq!(stack.upstream_subscriptions(), 1);
    let (_, body) = read("tasks:list").await;
    assert_eq!(body["value"], json!([]));
    // It stays live: a mutation shows in the next read.
    let (_, r) = post(
        format!("{}/api/mutation", stack.query_url()),
        json!({"path": "tasks:add", "args": {"text": "seen"}}),
        Some(&token),
    )
    .await;
    assert_eq!(r["status"], "success");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = read("tasks:list").await;
        if body["value"][0]["text"] == "seen" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lingering value never moved"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Twenty concurrent first reads of another query share one subscription.
    let reads: Vec<_> = (0..20).map(|_| tokio::spawn(read("users:me"))).collect();
    for r in reads {
        let (_, body) = r.await.unwrap();
        assert_eq!(body["value"]["email"], "linger@example.com");
    }
    assert_eq!(stack.upstream_subscriptions(), 2);
    assert_eq!(
        stack.stats.upstream_queries.load(Ordering::Relaxed),
        upstream_before,
        "no read went over HTTP"
    );
    assert!(stack.stats.served_from_subscription.load(Ordering::Relaxed) >= served_before + 23);
    // After the linger the subscriptions are released.
    crate::eventually("lingering subscriptions released", || {
        stack.upstream_subscriptions() == 0
    })
    .await;
}
