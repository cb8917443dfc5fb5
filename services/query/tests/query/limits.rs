//! What one client can make the query service hold: queries per socket, the re-subscribe
//! after an upstream reconnect, and a client that does not read.

use std::sync::atomic::Ordering;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::client::bodies;
use crate::{Client, Options, Stack, eventually};

/// A raw anonymous socket that adds `count` queries of `messages:list` whose channel is
/// `size` bytes long, `batch` per `ModifyQuerySet`, and reads (and drops) everything it is
/// sent, so it is never cut off as too slow. Returns the reader task (it ends on close) and
/// whether the socket was closed.
async fn abuser(
    stack: &Stack,
    tag: &str,
    count: usize,
    size: usize,
    batch: usize,
) -> tokio::task::JoinHandle<Option<String>> {
    let url = format!("ws://{}/api/sync", stack.query.addr);
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let (mut tx, mut rx) = ws.split();
    for (version, start) in (0..count).step_by(batch).enumerate() {
        let modifications: Vec<_> = (start..(start + batch).min(count))
            .map(|i| {
                let channel = format!("{tag}-{i}-{}", "x".repeat(size));
                json!({"type": "Add", "queryId": i, "udfPath": "messages:list", "args": [{"channel": channel}]})
            })
            .collect();
        let message = json!({"type": "ModifyQuerySet", "baseVersion": version,
            "newVersion": version + 1, "modifications": modifications});
        tx.send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }
    tokio::spawn(async move {
        let _keep = tx;
        let mut fatal = None;
        while let Some(Ok(message)) = rx.next().await {
            if let Message::Text(text) = message
                && text.contains("FatalError")
            {
                fatal = Some(text.to_string());
            }
        }
        fatal
    })
}

/// Two anonymous sockets hold thousands of large queries on the anonymous upstream: together
/// more than devconvex accepts in one message (8 MiB). After devconvex restarts, the upstream
/// must re-subscribe in messages it accepts, so another anonymous client on the same upstream
/// keeps getting updates (on main it re-sent everything in one message and looped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusive_anonymous_sockets_cannot_break_the_shared_upstream_across_a_restart() {
    let mut stack = Stack::start().await;
    let token = stack.token_for("writer@example.com").await;
    let mut good = Client::connect(&stack.query_url()).await;
    good.subscribe(0, "messages:list", json!({"channel": "general"}));
    good.until("the first value", |v| v.values.contains_key(&0))
        .await;
    // 2 × 1,500 queries of ~4 KB: 6 MB each (within one socket's limits), 12 MB together.
    let a = abuser(&stack, "a", 1_500, 4_000, 100).await;
    let b = abuser(&stack, "b", 1_500, 4_000, 100).await;
    eventually("devconvex to hold every query", || {
        stack.upstream_subscriptions() >= 3_001
    })
    .await;

    stack.restart_devconvex().await;
    eventually("the upstream to re-subscribe everything", || {
        stack.upstream_subscriptions() >= 3_001
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/mutation", stack.devconvex_url()))
        .bearer_auth(&token)
        .json(&json!({"path": "messages:send", "args": {"channel": "general", "body": "after restart"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = good
        .until("the post-restart message", |v| {
            bodies(v.values.get(&0)) == ["after restart"]
        })
        .await;
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert!(
        v.fatal.is_none() && v.errors.is_empty() && !v.closed,
        "{v:?}"
    );
    // The abusers, within their limits, were served too.
    assert!(!a.is_finished() && !b.is_finished());
}

/// A socket that adds more queries than one socket may hold gets `FatalError` and is closed;
/// another anonymous client on the same upstream is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_over_its_query_limits_alone_gets_a_fatal_error() {
    let stack = Stack::start().await;
    let mut good = Client::connect(&stack.query_url()).await;
    good.subscribe(0, "messages:list", json!({"channel": "general"}));
    good.until("the first value", |v| v.values.contains_key(&0))
        .await;
    let limits = stack.query_config.query_limits;
    let too_many = abuser(&stack, "many", limits.max_queries + 1, 10, 500).await;
    let fatal = tokio::time::timeout(std::time::Duration::from_secs(20), too_many)
        .await
        .expect("the socket over the limit is closed")
        .unwrap()
        .expect("a FatalError before the close");
    assert!(fatal.contains("too many queries"), "{fatal}");
    // 9 queries of 1 MB: over the socket's 8 MiB.
    let too_large = abuser(&stack, "large", 9, 1_000_000 - 100, 1).await;
    let fatal = tokio::time::timeout(std::time::Duration::from_secs(20), too_large)
        .await
        .expect("the socket over the limit is closed")
        .unwrap()
        .expect("a FatalError before the close");
    assert!(fatal.contains("too large"), "{fatal}");
    eventually("the abusers' subscriptions to go", || {
        stack.upstream_subscriptions() == 1
    })
    .await;
    let v = good.view();
    assert!(
        v.fatal.is_none() && v.errors.is_empty() && !v.closed,
        "{v:?}"
    );
}

/// A client that stops reading while its query's result grows large is cut off once its
/// queue holds more than `QUERY_SOCKET_QUEUE_BYTES` of results (not after 1,024 events of
/// any size); the most one socket's queue ever held stays within the bound plus one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_client_with_large_results_is_bounded_in_bytes() {
    const BOUND: usize = 2 * 1024 * 1024;
    let stack = Stack::start_with(Options {
        socket_queue_bytes: BOUND,
        ..Options::default()
    })
    .await;
    let token = stack.token_for("big@example.com").await;
    let url = format!("ws://{}/api/sync", stack.query.addr);
    let (mut paused, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let add = json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
        "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "big"}]}]});
    paused
        .send(Message::Text(add.to_string().into()))
        .await
        .unwrap();
    let mut good = Client::connect(&stack.query_url()).await;
    good.subscribe(0, "messages:list", json!({"channel": "big"}));
    good.until("first", |v| v.values.contains_key(&0)).await;
    eventually("both connected", || {
        stack.stats.downstream_connections.load(Ordering::Relaxed) == 2
    })
    .await;
    // Each message 50 KB; the list holds the last 100, so results grow to 5 MB.
    let body = "y".repeat(50_000);
    let http = reqwest::Client::new();
    let mut sent = 0;
    let mut largest_result = 0;
    while stack.stats.downstream_connections.load(Ordering::Relaxed) == 2 {
        // With 1,024 events of up to 5 MB each, main held gigabytes before cutting it off.
        assert!(sent < 400, "the paused client was never cut off");
        http.post(format!("{}/api/mutation", stack.devconvex_url()))
            .bearer_auth(&token)
            .json(&json!({"path": "messages:send", "args": {"channel": "big", "body": format!("{sent} {body}")}}))
            .send()
            .await
            .unwrap();
        sent += 1;
        largest_result = largest_result.max(sent.min(100) * (body.len() + 100));
        // The good client reads along, so only the paused one falls behind.
        let last = format!("{} {body}", sent - 1);
        good.until("the latest message", |v| {
            bodies(v.values.get(&0)).last() == Some(&last)
        })
        .await;
    }
    let peak = stack
        .stats
        .downstream_queue_peak_bytes
        .load(Ordering::Relaxed);
    let peak = usize::try_from(peak).unwrap();
    assert!(
        peak <= BOUND + largest_result + 64 * 1024,
        "one socket queued {peak} bytes (bound {BOUND}, largest result {largest_result})"
    );
    assert!(peak > 0, "nothing was ever queued");
    eventually("the queue's bytes to be given back", || {
        stack.stats.downstream_queued_bytes.load(Ordering::Relaxed) == 0
    })
    .await;
    let v = good.view();
    assert!(!v.closed && v.violations.is_empty(), "{v:?}");
    drop(paused);
}

async fn grpc(
    stack: &Stack,
) -> edge_proto::query::v1::query_service_client::QueryServiceClient<tonic::transport::Channel> {
    edge_proto::query::v1::query_service_client::QueryServiceClient::connect(format!(
        "http://{}",
        stack.query_grpc()
    ))
    .await
    .unwrap()
}

fn call(path: &str, args: String) -> edge_proto::query::v1::FunctionCall {
    edge_proto::query::v1::FunctionCall {
        path: path.into(),
        args_json: args,
        jwt: String::new(),
        format: "json".into(),
    }
}

/// What page routes do with long URL parameters: many gRPC watches of a shared query with
/// large arguments, together more than devconvex accepts in one message. Across a devconvex
/// restart another anonymous client keeps getting updates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_watches_with_long_parameters_cannot_break_the_shared_upstream_across_a_restart() {
    use edge_proto::query::v1 as pb;
    let mut stack = Stack::start().await;
    let token = stack.token_for("pages@example.com").await;
    let mut good = Client::connect(&stack.query_url()).await;
    good.subscribe(0, "messages:list", json!({"channel": "general"}));
    good.until("the first value", |v| v.values.contains_key(&0))
        .await;
    let grpc = grpc(&stack).await;
    let mut streams = Vec::new();
    // 25 pages × 500 KB of parameters: 12.5 MB on the anonymous upstream.
    for i in 0..25 {
        let channel = format!("page-{i}-{}", "p".repeat(500_000));
        let args = json!({ "channel": channel }).to_string();
        let request = pb::QueryBatchRequest {
            queries: vec![call("messages:list", args)],
        };
        let mut batches = grpc.clone().watch(request).await.unwrap().into_inner();
        batches.message().await.unwrap().expect("a first batch");
        streams.push(batches);
    }
    eventually("devconvex to hold every page's query", || {
        stack.upstream_subscriptions() >= 26
    })
    .await;
    stack.restart_devconvex().await;
    eventually("the upstream to re-subscribe", || {
        stack.upstream_subscriptions() >= 1
    })
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/api/mutation", stack.devconvex_url()))
        .bearer_auth(&token)
        .json(&json!({"path": "messages:send", "args": {"channel": "general", "body": "after restart"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = good
        .until("the post-restart message", |v| {
            bodies(v.values.get(&0)) == ["after restart"]
        })
        .await;
    assert!(v.violations.is_empty(), "{:?}", v.violations);
    assert!(
        v.fatal.is_none() && v.errors.is_empty() && !v.closed,
        "{v:?}"
    );
}

/// A page request over the limits (one call's arguments, the number of calls) is refused
/// with a message naming the limit, and subscribes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_requests_over_the_limits_are_refused_and_subscribe_nothing() {
    use edge_proto::query::v1 as pb;
    let stack = Stack::start().await;
    let limits = stack.query_config.query_limits;
    let mut grpc = grpc(&stack).await;
    let large = json!({ "channel": "l".repeat(limits.max_query_bytes) }).to_string();
    let request = pb::QueryBatchRequest {
        queries: vec![call("messages:list", large.clone())],
    };
    let status = grpc.watch(request).await.unwrap_err();
    assert!(status.message().contains("too large"), "{status:?}");
    let status = grpc
        .query_batch(pb::QueryBatchRequest {
            queries: vec![call("messages:list", large)],
        })
        .await
        .unwrap_err();
    assert!(status.message().contains("too large"), "{status:?}");
    let many: Vec<_> = (0..=limits.max_queries)
        .map(|i| {
            call(
                "messages:list",
                json!({ "channel": i.to_string() }).to_string(),
            )
        })
        .collect();
    let status = grpc
        .watch(pb::QueryBatchRequest { queries: many })
        .await
        .unwrap_err();
    assert!(
        status.message().contains("queries in one request"),
        "{status:?}"
    );
    assert_eq!(stack.upstream_subscriptions(), 0);
    assert_eq!(
        stack.stats.upstream_subscriptions.load(Ordering::Relaxed),
        0
    );
}

/// Subscribes `count` queries of `messages:list` on channels named after `tag`, one
/// `ModifyQuerySet` each, with query ids from `first`.
fn subscribe_many(client: &mut Client, tag: &str, first: u32, count: u32) {
    for i in first..first + count {
        client.subscribe(
            i,
            "messages:list",
            json!({ "channel": format!("{tag}-{i}") }),
        );
    }
}

/// Waits until `client` holds a value for every query id in `first..first + count`.
async fn until_values(client: &mut Client, first: u32, count: u32) {
    client
        .until("every query's first value", |v| {
            (first..first + count).all(|i| v.values.contains_key(&u64::from(i)))
        })
        .await;
}

/// One client cannot multiply its limits by opening sockets. Behind a trusted proxy the
/// signed-out sockets of one client address share one query budget, and the sockets of one
/// signed-in identity share theirs (a socket that signs in brings its queries along). The
/// socket whose `Add` (or `Authenticate`) goes past it gets `FatalError` and is closed, and
/// what it held is given back; the owner's other sockets, other addresses on the same
/// anonymous upstream and other users keep their queries and get every update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sockets_of_one_identity_or_address_share_one_query_budget() {
    const BUDGET: u32 = 50;
    let stack = Stack::start_with(Options {
        owner_limits: edge_query::owners::OwnerLimits {
            max_queries: BUDGET as usize,
            max_bytes: 1024 * 1024,
            ..Default::default()
        },
        trusted_proxies: "127.0.0.1",
        ..Options::default()
    })
    .await;
    let token = stack.token_for("many@example.com").await;
    let other_token = stack.token_for("other@example.com").await;
    let url = stack.query_url();
    let mut good = Client::connect_as(&url, "203.0.113.5").await;
    good.subscribe(0, "messages:list", json!({"channel": "general"}));
    good.until("the first value", |v| v.values.contains_key(&0))
        .await;

    // Signed out, one address: two sockets of 20 queries, then a third that goes past 50.
    let mut anonymous = Vec::new();
    for s in 0..2 {
        let mut c = Client::connect_as(&url, "198.51.100.7").await;
        subscribe_many(&mut c, &format!("anon-{s}"), 0, 20);
        until_values(&mut c, 0, 20).await;
        anonymous.push(c);
    }
    let mut third = Client::connect_as(&url, "198.51.100.7").await;
    subscribe_many(&mut third, "anon-2", 0, 20);
    let v = third.until("the FatalError and close", |v| v.closed).await;
    let fatal = v.fatal.expect("a FatalError before the close");
    assert!(
        fatal.contains("too many queries for this client address"),
        "{fatal}"
    );
    // What the closed socket held (10 queries) was given back: another socket from the same
    // address fits exactly in what is left.
    let mut refill = Client::connect_as(&url, "198.51.100.7").await;
    subscribe_many(&mut refill, "anon-3", 0, 10);
    until_values(&mut refill, 0, 10).await;
    // Another address has its own budget, on the same anonymous upstream.
    subscribe_many(&mut good, "good", 1, 40);
    until_values(&mut good, 1, 40).await;

    // Signed in: two sockets of one identity hold 40; a socket with 20 queries of its own
    // (within its address's budget) that signs in as the same identity goes past 50.
    let mut user = Vec::new();
    for s in 0..2 {
        let mut c = Client::connect_as(&url, "192.0.2.10").await;
        c.authenticate(&token);
        subscribe_many(&mut c, &format!("user-{s}"), 0, 20);
        until_values(&mut c, 0, 20).await;
        user.push(c);
    }
    let mut joining = Client::connect_as(&url, "192.0.2.11").await;
    subscribe_many(&mut joining, "joining", 0, 20);
    until_values(&mut joining, 0, 20).await;
    joining.authenticate(&token);
    let v = joining
        .until("the FatalError and close", |v| v.closed)
        .await;
    let fatal = v.fatal.expect("a FatalError before the close");
    assert!(
        fatal.contains("too many queries for this identity"),
        "{fatal}"
    );
    // Another user is not affected by that identity's budget.
    let mut other = Client::connect_as(&url, "192.0.2.10").await;
    other.authenticate(&other_token);
    subscribe_many(&mut other, "other", 0, 40);
    until_values(&mut other, 0, 40).await;

    // Everyone within their budgets gets the next updates.
    let http = reqwest::Client::new();
    for channel in ["general", "anon-1-5", "user-0-3"] {
        let r = http
            .post(format!("{}/api/mutation", stack.devconvex_url()))
            .bearer_auth(&token)
            .json(&json!({"path": "messages:send", "args": {"channel": channel, "body": "still live"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let live = |id: u64| move |v: &crate::client::View| bodies(v.values.get(&id)) == ["still live"];
    good.until("the new message", live(0)).await;
    anonymous[1].until("the new message", live(5)).await;
    user[0].until("the new message", live(3)).await;
    other.subscribe(99, "messages:list", json!({"channel": "general"}));
    other.until("the new message", live(99)).await;
    for c in anonymous
        .iter()
        .chain(&user)
        .chain([&good, &refill, &other])
    {
        let v = c.view();
        assert!(
            v.fatal.is_none() && !v.closed && v.violations.is_empty(),
            "{v:?}"
        );
    }
}

/// Every signed-out client shares the anonymous upstream and its slots for mutations and
/// actions: the sockets of one client address hold at most `QUERY_MAX_REQUESTS_PER_ADDRESS` of
/// them; past it a request is answered at once with `try again` and the socket stays open,
/// while another address's action goes through on the same upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_signed_out_address_cannot_take_the_anonymous_upstreams_request_slots() {
    let stack = Stack::start_with(Options {
        owner_limits: edge_query::owners::OwnerLimits {
            max_address_requests: 3,
            ..Default::default()
        },
        trusted_proxies: "127.0.0.1",
        // Answers take a while: the first requests are still in flight when the rest arrive.
        slow_upstream: Some(std::time::Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let url = stack.query_url();
    let mut flood = Client::connect_as(&url, "198.51.100.9").await;
    let mut other = Client::connect_as(&url, "198.51.100.10").await;
    let ids: Vec<u64> = (0..10)
        .map(|n| flood.action("demo:echo", json!({"n": n})))
        .collect();
    let mine = other.action("demo:echo", json!({"n": "other"}));
    let v = flood
        .until("ten answers", |v| {
            ids.iter().all(|id| v.responses.contains_key(id))
        })
        .await;
    let served = ids.iter().filter(|id| v.responses[*id].0).count();
    assert_eq!(served, 3, "{:?}", v.responses);
    for (success, result, _) in ids.iter().map(|id| &v.responses[id]) {
        if !success {
            let message = result.as_str().unwrap_or_default();
            assert!(
                message.contains("in flight from this client address"),
                "{message}"
            );
        }
    }
    let v = other
        .until("its answer", |v| v.responses.contains_key(&mine))
        .await;
    assert!(v.responses[&mine].0, "{:?}", v.responses[&mine]);
    // The flooding socket is still open, and with its answers in, it may send again.
    let again = flood.action("demo:echo", json!({"n": "again"}));
    let v = flood
        .until("the answer", |v| v.responses.contains_key(&again))
        .await;
    assert!(v.responses[&again].0 && !v.closed, "{v:?}");
}

/// Subscribes `count` queries of about `QUERY_BYTES` each (path, canonical arguments) on
/// channels named after `tag`, one `ModifyQuerySet` each, with query ids from `first`.
fn subscribe_large(client: &mut Client, tag: &str, first: u32, count: u32) {
    for i in first..first + count {
        let channel = large_channel(tag, i);
        client.subscribe(i, "messages:list", json!({ "channel": channel }));
    }
}

/// The channel of query `i` of [`subscribe_large`]: with its path and the arguments' JSON, a
/// little under [`QUERY_BYTES`] (for tags of up to 20 characters).
fn large_channel(tag: &str, i: u32) -> String {
    format!("{tag}-{i}-{}", "x".repeat(QUERY_BYTES - 60))
}

/// About the size of each query of [`subscribe_large`].
const QUERY_BYTES: usize = 10_000;

/// A handful of client addresses, each within its own budget, cannot together take the query
/// service past its total (`QUERY_MAX_TOTAL_QUERY_BYTES`): once they fill it, the next `Add`
/// from a further client, signed out or signed in, ends that socket with `FatalError` naming
/// the service's limit, as an owner's own limit does; the clients within it keep their queries
/// and get every update, and a query removed frees room for the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_addresses_within_their_budgets_cannot_take_the_service_past_its_total() {
    // An owner may hold four queries, the service ten.
    let stack = Stack::start_with(Options {
        owner_limits: edge_query::owners::OwnerLimits {
            max_bytes: 4 * QUERY_BYTES,
            max_total_bytes: 10 * QUERY_BYTES,
            ..Default::default()
        },
        trusted_proxies: "127.0.0.1",
        ..Options::default()
    })
    .await;
    let token = stack.token_for("late@example.com").await;
    let url = stack.query_url();
    // Two addresses at their own limit (4 each, a fifth would be refused as theirs), one
    // with two: 10 queries of a little under 10 KB, just under the total.
    let mut holders = Vec::new();
    for (address, count) in [
        ("198.51.100.1", 4),
        ("198.51.100.2", 4),
        ("198.51.100.3", 2),
    ] {
        let mut c = Client::connect_as(&url, address).await;
        subscribe_large(&mut c, address, 0, count);
        until_values(&mut c, 0, count).await;
        holders.push(c);
    }
    let held = stack.owners.total_bytes();
    assert!(held > 9 * QUERY_BYTES && held <= 10 * QUERY_BYTES, "{held}");

    // A further address, and a signed-in user, each with one query: over the total.
    let mut late = Client::connect_as(&url, "198.51.100.4").await;
    subscribe_large(&mut late, "late", 0, 1);
    let mut user = Client::connect_as(&url, "198.51.100.5").await;
    user.authenticate(&token);
    subscribe_large(&mut user, "user", 0, 1);
    for c in [&mut late, &mut user] {
        let v = c.until("the FatalError and close", |v| v.closed).await;
        let fatal = v.fatal.expect("a FatalError before the close");
        assert!(
            fatal.contains("the query service holds too many queries")
                && fatal.contains(&format!("the limit is {}", 10 * QUERY_BYTES)),
            "{fatal}"
        );
    }
    assert_eq!(stack.owners.total_bytes(), held);

    // One query removed: the next client fits.
    holders[0].unsubscribe(0);
    holders[0]
        .until("the query removed", |v| !v.values.contains_key(&0))
        .await;
    let mut next = Client::connect_as(&url, "198.51.100.6").await;
    subscribe_large(&mut next, "next", 0, 1);
    until_values(&mut next, 0, 1).await;

    // Everyone within the total is served: an update reaches a holder and the newcomer.
    let http = reqwest::Client::new();
    for channel in [large_channel("198.51.100.3", 1), large_channel("next", 0)] {
        let r = http
            .post(format!("{}/api/mutation", stack.devconvex_url()))
            .bearer_auth(&token)
            .json(&json!({"path": "messages:send", "args": {"channel": channel, "body": "still live"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let live = |id: u64| move |v: &crate::client::View| bodies(v.values.get(&id)) == ["still live"];
    holders[2].until("the new message", live(1)).await;
    next.until("the new message", live(0)).await;
    for c in holders.iter().chain([&next]) {
        let v = c.view();
        assert!(
            v.fatal.is_none() && !v.closed && v.violations.is_empty(),
            "{v:?}"
        );
    }
}
