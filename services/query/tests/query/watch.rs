//! `Watch`: a page's queries held live for the gateway on the identity's shared upstream.

use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

use crate::{Client, Options, Stack, eventually, run};

async fn grpc(stack: &Stack) -> QueryServiceClient<Channel> {
    QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap()
}

fn call(path: &str, args: &str, jwt: &str) -> pb::FunctionCall {
    pb::FunctionCall {
        path: path.into(),
        args_json: args.into(),
        jwt: jwt.into(),
        format: "json".into(),
    }
}

fn value(result: &pb::FunctionResult) -> Value {
    let body: Value = serde_json::from_str(&result.result_json).unwrap();
    assert_eq!(body["status"], "success", "{body}");
    body["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sends_the_batch_then_each_change_and_releases_its_subscriptions() {
    let stack = Stack::start().await;
    let token = stack.token_for("watch@example.com").await;
    let mut grpc = grpc(&stack).await;
    let request = pb::QueryBatchRequest {
        queries: vec![
            call("tasks:list", "{}", &token),
            call("messages:list", r#"{"channel":"general"}"#, &token),
            // Fails in Convex (no `channel`): a result like the others, not the watch's end.
            call("messages:list", "{}", &token),
        ],
    };
    let mut batches = grpc.watch(request).await.unwrap().into_inner();
    let first = batches.message().await.unwrap().unwrap();
    assert_eq!(first.results.len(), 3);
    let failed: Value = serde_json::from_str(&first.results[2].result_json).unwrap();
    assert_eq!(failed["status"], "error", "{failed}");
    assert!(
        failed["errorMessage"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert!(first.results.iter().all(|r| r.from_subscription));
    assert_eq!(value(&first.results[0]), serde_json::json!([]));
    assert_eq!(stack.stats.watches.load(Ordering::Relaxed), 1);
    let upstream_queries = stack.stats.upstream_queries.load(Ordering::Relaxed);

    // A browser of the same user on the same upstream: its change reaches the watch.
    let mut browser = Client::connect(&stack.query_url()).await;
    browser.authenticate(&token);
    browser.mutation("tasks:add", serde_json::json!({"text": "watched"}));
    let next = tokio::time::timeout(Duration::from_secs(10), batches.message())
        .await
        .expect("a batch after the change")
        .unwrap()
        .unwrap();
    assert_eq!(value(&next.results[0])[0]["text"], "watched");
    assert_eq!(value(&next.results[1]), value(&first.results[1]));
    // Both queries came from subscriptions: nothing was read over HTTP.
    assert_eq!(
        stack.stats.upstream_queries.load(Ordering::Relaxed),
        upstream_queries
    );

    // Cancelling the stream releases the watch and, with it, its subscriptions.
    drop(batches);
    drop(browser);
    eventually("the watch to end", || {
        stack.stats.watches.load(Ordering::Relaxed) == 0
    })
    .await;
    eventually("devconvex's subscriptions to be released", || {
        stack.upstream_subscriptions() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_with_bad_input_is_refused_and_subscribes_nothing() {
    let stack = Stack::start().await;
    let token = stack.token_for("refused@example.com").await;
    let other = stack.token_for("other@example.com").await;
    let mut grpc = grpc(&stack).await;
    let cases = [
        (vec![], tonic::Code::InvalidArgument, "at least one query"),
        (
            vec![
                call("tasks:list", "{}", &token),
                call("tasks:list", "{}", &other),
            ],
            tonic::Code::InvalidArgument,
            "same JWT",
        ),
        (
            vec![
                call("tasks:list", "{}", &token),
                call("no such/path!", "{}", &token),
            ],
            tonic::Code::InvalidArgument,
            "invalid function path `no such/path!`",
        ),
        (
            vec![call("tasks:list", "not json", &token)],
            tonic::Code::InvalidArgument,
            "args_json is not JSON",
        ),
        (
            vec![call("tasks:list", "{}", "garbage")],
            tonic::Code::Unauthenticated,
            "",
        ),
    ];
    for (queries, code, words) in cases {
        let err = grpc
            .watch(pb::QueryBatchRequest { queries })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
        assert!(err.message().contains(words), "{err:?}");
    }
    assert_eq!(stack.stats.watches.load(Ordering::Relaxed), 0);
    assert_eq!(
        stack.stats.upstream_subscriptions.load(Ordering::Relaxed),
        0
    );
    assert_eq!(stack.upstream_subscriptions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ends_when_its_token_expires() {
    let stack = Stack::start_with(Options {
        token_ttl: Duration::from_secs(3),
        ..Options::default()
    })
    .await;
    let token = stack.token_for("expiring@example.com").await;
    let mut grpc = grpc(&stack).await;
    let request = pb::QueryBatchRequest {
        queries: vec![call("tasks:list", "{}", &token)],
    };
    let mut batches = grpc.watch(request).await.unwrap().into_inner();
    batches.message().await.unwrap().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), batches.message())
        .await
        .expect("the watch to end");
    let err = end.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{err:?}");
    eventually("the watch to be released", || {
        stack.stats.watches.load(Ordering::Relaxed) == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_watches_share_one_connection() {
    // A gateway thread keeps every page watch on one HTTP/2 connection: more of them than
    // HTTP/2's customary 100–200 concurrent streams must neither wait nor stall other calls.
    let stack = Stack::start().await;
    let grpc = grpc(&stack).await;
    let mut streams = Vec::new();
    for i in 0..300 {
        let request = pb::QueryBatchRequest {
            queries: vec![call(
                "messages:list",
                &format!(r#"{{"channel":"c{i}"}}"#),
                "",
            )],
        };
        let mut batches = grpc.clone().watch(request).await.unwrap().into_inner();
        let first = batches.message().await.unwrap().unwrap();
        assert_eq!(value(&first.results[0]), serde_json::json!([]));
        streams.push(batches);
    }
    assert_eq!(stack.stats.watches.load(Ordering::Relaxed), 300);
    let r = grpc
        .clone()
        .query(call("config:get", "{}", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(r.result_json.contains("convex-edge demo"));
    drop(streams);
    eventually("every watch to end", || {
        stack.stats.watches.load(Ordering::Relaxed) == 0
    })
    .await;
}

/// A gateway rendering the demo's pages from this stack's query service.
async fn gateway(stack: &Stack) -> (crate::Running, String) {
    let mut config = edge_gateway::Config::local();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.auth_grpc_url = format!("http://{}", stack.auth_grpc);
    config.query_grpc_url = format!("http://{}", stack.query_grpc());
    config.workers = 1;
    // Many token fetches from one address: past Better Auth's default rule.
    config.read_rate_limit = None;
    let app = edge_gateway::Application::build(config).await.unwrap();
    let addr = app.addr();
    (run(addr, |s| app.run_until(s)), format!("http://{addr}"))
}

async fn send(stack: &Stack, token: &str, body: &str) {
    let mut grpc = grpc(stack).await;
    let args = serde_json::json!({"channel": "general", "body": body}).to_string();
    let r = grpc
        .mutation(call("messages:send", &args, token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.result_json.contains("success"), "{}", r.result_json);
}

/// Renders `/` until it shows `text`; every render must succeed.
async fn home_until(site: &str, text: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = reqwest::get(format!("{site}/")).await.unwrap();
        assert_eq!(r.status(), 200);
        let page = r.text().await.unwrap();
        if page.contains(text) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{text}` never reached the page: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_render_from_a_new_watch_after_the_query_service_restarts() {
    let mut stack = Stack::start().await;
    let (_gateway, site) = gateway(&stack).await;
    let token = stack.token_for("restart@example.com").await;
    send(&stack, &token, "before the restart").await;
    home_until(&site, "before the restart").await;
    assert_eq!(stack.stats.watches.load(Ordering::Relaxed), 1);

    // The watch ends with the query service; renders fetch until a new one serves them.
    stack.restart_query().await;
    send(&stack, &token, "after the restart").await;
    home_until(&site, "after the restart").await;
    eventually("a new watch on the new query service", || {
        stack.stats.watches.load(Ordering::Relaxed) == 1
    })
    .await;
    send(&stack, &token, "through the new watch").await;
    home_until(&site, "through the new watch").await;
}
