//! Upstream loss, proxy restarts and slow clients.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;

use crate::client::bodies;
use crate::{Client, Options, Stack, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_mid_stream_heals_without_errors() {
    let mut stack = Stack::start().await;
    let token = stack.token_for("w@example.com").await;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = Client::connect(&stack.query_url()).await;
        if i % 2 == 0 {
            c.authenticate(&token);
        }
        c.subscribe(0, "messages:list", json!({"channel": "general"}));
        c.subscribe(1, "tasks:list", json!({}));
        clients.push(c);
    }
    for c in &mut clients {
        c.until("values", |v| {
            v.values.contains_key(&0) && v.values.contains_key(&1)
        })
        .await;
    }
    // Kill devconvex mid-stream and start a fresh one on the same port.
    let addr = stack.devconvex.addr;
    let old = std::mem::replace(
        &mut stack.devconvex,
        crate::Running {
            addr,
            stop: None,
            task: None,
        },
    );
    // `stop` returns once the old backend has shut down; nothing else is waited for (the proxy
    // meets a dead port, then a new backend, whenever it next tries).
    old.stop().await;
    // The new backend trusts the same auth; it binds the port as soon as the OS lets it.
    let config = crate::devconvex_config(stack.auth_http, addr);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let app = loop {
        match edge_devconvex::Application::build(config.clone()).await {
            Ok(app) => break app,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "devconvex could not bind {addr} again: {e:#}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
    };
    stack.devconvex_engine = app.engine();
    stack.devconvex = crate::run(addr, |s| app.run_until(s));

    // After reconnecting, a new message must reach everyone through re-added subscriptions.
    eventually("the proxy to re-subscribe", || {
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
    for c in &mut clients {
        let v = c
            .until("the post-restart value", |v| {
                bodies(v.values.get(&0)) == ["after restart"]
            })
            .await;
        assert!(v.violations.is_empty(), "{:?}", v.violations);
        assert!(
            v.fatal.is_none() && v.errors.is_empty() && !v.closed,
            "{v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_others_keep_going() {
    let stack = Stack::start_with(Options {
        socket_queue: 8,
        ..Options::default()
    })
    .await;
    let token = stack.token_for("spam@example.com").await;
    // The slow client: subscribes, then never reads.
    let url = format!("ws://{}/api/sync", stack.query.addr);
    let (mut slow, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::SinkExt;
    let add = json!({"type": "ModifyQuerySet", "baseVersion": 0, "newVersion": 1,
        "modifications": [{"type": "Add", "queryId": 0, "udfPath": "messages:list", "args": [{"channel": "general"}]}]});
    slow.send(tokio_tungstenite::tungstenite::Message::Text(
        add.to_string().into(),
    ))
    .await
    .unwrap();

    let mut good = Client::connect(&stack.query_url()).await;
    good.subscribe(0, "messages:list", json!({"channel": "general"}));
    good.until("first", |v| v.values.contains_key(&0)).await;
    eventually("both connected", || {
        stack.stats.downstream_connections.load(Ordering::Relaxed) == 2
    })
    .await;

    let body = "x".repeat(4000);
    let http = reqwest::Client::new();
    let mut i = 0;
    while stack.stats.downstream_connections.load(Ordering::Relaxed) == 2 {
        assert!(i < 2000, "the slow client was never cut off");
        http.post(format!("{}/api/mutation", stack.devconvex_url()))
            .bearer_auth(&token)
            .json(&json!({"path": "messages:send", "args": {"channel": "general", "body": format!("{i} {body}")}}))
            .send()
            .await
            .unwrap();
        i += 1;
    }
    // The good client is still served, with the latest value.
    let last = format!("{} {body}", i - 1);
    let v = good
        .until("the latest message", |v| {
            bodies(v.values.get(&0)).last() == Some(&last)
        })
        .await;
    assert!(!v.closed && v.violations.is_empty());
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reconnect_after_the_proxy_restarts() {
    let mut stack = Stack::start().await;
    let mut before = Client::connect(&stack.query_url()).await;
    before.subscribe(0, "config:get", json!({}));
    before.until("config", |v| v.values.contains_key(&0)).await;
    stack.restart_query().await;
    before.until("the old socket to close", |v| v.closed).await;
    let mut after = Client::connect(&stack.query_url()).await;
    after.subscribe(0, "config:get", json!({}));
    after
        .until("config again", |v| v.values.contains_key(&0))
        .await;
}

/// A connection to Convex whose traffic is swallowed (a NAT or load balancer that dropped the
/// flow: no FIN, no RST) is taken for dead after `upstream_inactivity` without a message
/// (Convex pings an idle socket) and made again, so clients get what changed meanwhile
/// instead of staying on stale data while the query service pings them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_connection_is_made_again() {
    let stack = Stack::start_with(Options {
        upstream_inactivity: Some(Duration::from_secs(2)),
        ..Options::default()
    })
    .await;
    let token = stack.token_for("s@example.com").await;
    let mut client = Client::connect(&stack.query_url()).await;
    client.subscribe(0, "messages:list", json!({"channel": "general"}));
    client
        .until("the first value", |v| v.values.contains_key(&0))
        .await;
    let relay = stack.upstream_relay.as_ref().expect("a relay");
    relay.partition();
    // The change's transition is swallowed with everything else.
    let r = reqwest::Client::new()
        .post(format!("{}/api/mutation", stack.devconvex_url()))
        .bearer_auth(&token)
        .json(&json!({"path": "messages:send", "args": {"channel": "general", "body": "while silent"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The partition outlasts the inactivity limit, then heals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    relay.heal();
    let v = client
        .until("the change made while the upstream was silent", |v| {
            bodies(v.values.get(&0)) == ["while silent"]
        })
        .await;
    assert!(v.fatal.is_none() && !v.closed, "{v:?}");
}

/// The official `convex` client's requests while the query service's connection to Convex is
/// lost, as convex-js itself carries them over a reconnect of its own socket
/// (`RequestManager.restart`): the client's socket to the query service stays up, so the query
/// service does it for it. An action in flight when the connection drops fails with convex-js's
/// "Connection lost while action was in flight"; a mutation sent while it is down waits, goes
/// once the connection is back, and resolves with its write in the client's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_client_requests_cross_an_upstream_reconnect_as_convex_js_carries_them() {
    let stack = Stack::start_with(Options {
        upstream_inactivity: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let mut node = crate::NodeScript::start("convex-requests-reconnect.mjs", &arg);
    let relay = stack.upstream_relay.as_ref().expect("a relay");

    let ready = node.next_phase().await;
    assert_eq!(ready["phase"], "ready", "{ready:#}");
    // The upstream was heard from a moment ago: it is taken for dead only `upstream_inactivity`
    // from now, long after the action below is forwarded into the partition.
    relay.partition();
    node.say("partitioned").await;
    let action = node.next_phase().await;
    assert_eq!(action["phase"], "action", "{action:#}");
    // Word for word what convex-js rejects with when its own socket drops under an action.
    assert_eq!(
        action["rejected"],
        "[CONVEX A(demo:echo)] Connection lost while action was in flight\n  Called by client",
        "{action:#}"
    );

    // The connection is down (that is what failed the action) and stays down until healed.
    let sent = node.next_phase().await;
    assert_eq!(sent["phase"], "mutation-sent", "{sent:#}");
    let body = "sent while the upstream was down";
    relay.heal();
    node.say("healed").await;
    let done = node.next_phase().await;
    assert_eq!(done["phase"], "done", "{done:#}");
    assert_eq!(done["resolved"], true, "{done:#}");
    assert_eq!(
        done["seenAtResolve"], true,
        "await mutation() resolved only once the list showed it: {done:#}"
    );
    // Written once.
    let list = done["list"].as_array().unwrap();
    assert_eq!(list.iter().filter(|b| *b == body).count(), 1, "{done:#}");
}

/// On Convex, the requests a socket sent before an `Authenticate` still run and are answered
/// on that socket. Here the upstream they went on belongs to the identity the socket leaves:
/// a mutation made as ada, still in flight (the connection to Convex partitioned) when the
/// socket signs out (onto the anonymous upstream its shared query uses) and then signs in as
/// bob, and one made as bob, still in flight when it signs in as cy, are both answered once
/// the connection is back, and each resolves with its write in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_before_an_identity_change_are_answered_on_the_socket() {
    let stack = Stack::start_with(Options {
        upstream_inactivity: Some(Duration::from_secs(3)),
        ..Options::default()
    })
    .await;
    let ada = stack.token_for("ada-switch@example.com").await;
    let bob = stack.token_for("bob-switch@example.com").await;
    let cy = stack.token_for("cy-switch@example.com").await;
    let mut c = Client::connect(&stack.query_url()).await;
    c.authenticate(&ada);
    // A shared function: on the anonymous upstream, which becomes main at the sign-out.
    c.subscribe(0, "messages:list", json!({"channel": "switch"}));
    c.until("the list", |v| v.values.contains_key(&0)).await;
    let relay = stack.upstream_relay.as_ref().expect("a relay");
    relay.partition();
    let as_ada = c.mutation(
        "messages:send",
        json!({"channel": "switch", "body": "sent as ada"}),
    );
    c.sign_out();
    c.authenticate(&bob);
    let as_bob = c.mutation(
        "messages:send",
        json!({"channel": "switch", "body": "sent as bob"}),
    );
    c.authenticate(&cy);
    // cy's upstream (the fourth) exists once the proxy took every message above.
    eventually("the switch to cy", || {
        stack.stats.upstream_connections.load(Ordering::Relaxed) >= 4
    })
    .await;
    relay.heal();
    let v = c
        .until("both mutations resolved", |v| {
            [as_ada, as_bob]
                .iter()
                .all(|id| v.at_completion.contains_key(id))
        })
        .await;
    for (id, body) in [(as_ada, "sent as ada"), (as_bob, "sent as bob")] {
        assert!(v.responses[&id].0, "{id}: {:?}", v.responses[&id]);
        let list = bodies(v.at_completion[&id].get(&0));
        assert!(
            list.iter().any(|b| b == body),
            "{id} resolved before its write showed: {list:?}"
        );
    }
    assert!(
        v.fatal.is_none() && !v.closed && v.violations.is_empty(),
        "{v:?}"
    );
}

/// A signed-out client address holds at most `QUERY_MAX_REQUESTS_PER_ADDRESS` requests in
/// flight (a socket's charge follows it across identity changes); requests in flight across
/// identity changes give their charge back when answered, so a socket that switched many times
/// with requests in flight can still make as many requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_changes_with_requests_in_flight_leak_no_request_slot() {
    let stack = Stack::start_with(Options {
        upstream_inactivity: Some(Duration::from_secs(3)),
        owner_limits: edge_query::owners::OwnerLimits {
            max_address_requests: 3,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let ada = stack.token_for("ada-leak@example.com").await;
    let bob = stack.token_for("bob-leak@example.com").await;
    let mut c = Client::connect(&stack.query_url()).await;
    c.subscribe(0, "messages:list", json!({"channel": "leak"}));
    c.until("the list", |v| v.values.contains_key(&0)).await;
    let relay = stack.upstream_relay.as_ref().expect("a relay");
    relay.partition();
    let mut ids = Vec::new();
    // Each signed-out action is charged to the address until answered; four identity changes
    // with it in flight, three times.
    for n in 0..3 {
        ids.push(c.action("demo:echo", json!({"n": n})));
        c.authenticate(&ada);
        c.sign_out();
        c.authenticate(&bob);
        c.sign_out();
    }
    // The actions reached the proxy before the identity changes that follow them, and the
    // proxy forwards each one at once into the partition: in flight across those changes.
    eventually("the proxy to take every change", || c.view().version.1 >= 8).await;
    relay.heal();
    let v = c
        .until("every answer", |v| {
            ids.iter().all(|id| v.responses.contains_key(id))
        })
        .await;
    for id in &ids {
        let message = v.responses[id].1.as_str().unwrap_or_default().to_owned();
        assert!(
            !message.contains("in flight from this client address"),
            "{id}: {message}"
        );
    }
    // Signed out again, with all three answered: the address's slots are free.
    let again: Vec<u64> = (0..3)
        .map(|n| c.action("demo:echo", json!({"n": format!("again {n}")})))
        .collect();
    let v = c
        .until("the answers", |v| {
            again.iter().all(|id| v.responses.contains_key(id))
        })
        .await;
    for id in &again {
        assert!(v.responses[id].0, "{id}: {:?}", v.responses[id]);
    }
    assert!(v.fatal.is_none() && !v.closed, "{v:?}");
}

/// convex-js sends again, on each new socket, every mutation still in flight (and every one
/// answered whose transition it has not seen); Convex runs each once per the client's
/// `(sessionId, requestId)`. Through the proxy, which sends them upstream under its own
/// sessions, the mutation journal keeps that promise:
/// - 20 mutations in flight as ada when the client switches to a token the proxy refuses
///   (the socket ends with `AuthError`, the client goes on signed out and sends them again)
///   each run once, as ada, and each promise resolves with that run's result;
/// - a mutation whose answer is swallowed by a partition between the query service and
///   Convex, while the client's own socket is torn down and the client sends it again on a new
///   one, runs once: the upstream sends it again under its first request id when its
///   connection is made again, and that answer reaches the client's new socket;
/// - the same when the user signs out meanwhile (auth revokes the token the upstream holds):
///   the upstream sends it again with no token, and Convex answers from its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_mutations_sent_again_on_a_new_socket_run_once() {
    let stack = Stack::start_with(Options {
        // Convex's answers come back 300 ms after it ran each mutation.
        slow_upstream: Some(Duration::from_millis(300)),
        upstream_inactivity: Some(Duration::from_secs(3)),
        // Signed out, the client's 20 repeats are far past its address's requests in flight:
        // a repeat answered from the journal runs nothing and is not charged.
        owner_limits: edge_query::owners::OwnerLimits {
            max_address_requests: 5,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let mut node = crate::NodeScript::start("convex-resend.mjs", &arg);
    let relay = stack.upstream_relay.as_ref().expect("a relay");
    // What devconvex ran (a repeat it answers from its session requests is not a run).
    let runs = || stack.devconvex_engine.stats.executions("messages:send");

    let switched = node.next_phase().await;
    assert_eq!(switched["phase"], "switched", "{switched:#}");
    let outcomes = switched["outcomes"].as_array().unwrap();
    assert!(
        outcomes.iter().all(|o| o["resolved"].is_string()),
        "every mutation resolved with its first run's result: {switched:#}"
    );
    let channel = switched["channel"].as_array().unwrap();
    for i in 0..20 {
        let body = format!("m{i}");
        let runs: Vec<&serde_json::Value> = channel.iter().filter(|m| m["body"] == body).collect();
        assert_eq!(
            runs.len(),
            1,
            "{body} ran {} times: {switched:#}",
            runs.len()
        );
        assert_eq!(runs[0]["author"], "ada", "{switched:#}");
    }
    assert_eq!(runs(), 20, "{switched:#}");

    // The client's own socket torn down while the answer is lost.
    let (dropped, done) = lose_the_answer_of_the_next_mutation(&mut node, relay, &runs).await;
    assert_eq!(dropped["phase"], "dropped", "{dropped:#}");
    assert_eq!(dropped["answeredBeforeDrop"], false, "{dropped:#}");
    assert_eq!(written_once(&done)["author"], "ada", "{done:#}");

    // The same lost answer while the user signs out: auth revokes the token the upstream
    // holds, the client goes on signed out and sends the mutation again. It ran as bea before
    // she signed out, and that run's answer is the one the client gets.
    let (signed_out, done) = lose_the_answer_of_the_next_mutation(&mut node, relay, &runs).await;
    assert_eq!(signed_out["phase"], "signed-out", "{signed_out:#}");
    assert_eq!(written_once(&done)["author"], "bea", "{done:#}");
}

/// One round of `convex-resend.mjs` after "ready": its mutation runs on devconvex, its answer
/// is swallowed on the way back, the script does what it does on "cut" (the phase it answers
/// is returned), and the partition heals once the upstream took its connection for dead (3 s
/// without a word, so the lost answer is not waited for on the old one). Checks that the
/// mutation resolved and ran once; returns the "cut" phase and the "done" one.
async fn lose_the_answer_of_the_next_mutation(
    node: &mut crate::NodeScript,
    relay: &edge_testkit::Relay,
    runs: &impl Fn() -> u64,
) -> (serde_json::Value, serde_json::Value) {
    let ready = node.next_phase().await;
    assert_eq!(ready["phase"], "ready", "{ready:#}");
    let before = runs();
    node.say("go").await;
    let sent = node.next_phase().await;
    assert_eq!(sent["phase"], "sent", "{sent:#}");
    // Convex ran it; its answer is still in the 300 ms relay when this swallows it.
    eventually("devconvex to run the mutation", || runs() > before).await;
    relay.partition();
    node.say("cut").await;
    let cut = node.next_phase().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    relay.heal();
    node.say("healed").await;
    let done = node.next_phase().await;
    assert_eq!(done["phase"], "done", "{done:#}");
    assert!(done["outcome"]["resolved"].is_string(), "{done:#}");
    assert_eq!(runs(), before + 1, "{done:#}");
    (cut, done)
}

/// The one message `once` in a "done" phase's channel.
fn written_once(done: &serde_json::Value) -> &serde_json::Value {
    let channel = done["channel"].as_array().unwrap();
    let written: Vec<&serde_json::Value> = channel.iter().filter(|m| m["body"] == "once").collect();
    assert_eq!(written.len(), 1, "{done:#}");
    written[0]
}

/// A rolling deploy: the query service restarts while the official client's mutations are in
/// flight (Convex's answers come back 300 ms after it ran them). The mutation journal lives in
/// the old process and convex-js sends every mutation it has no transition past again on its
/// next socket, so the old process keeps the socket until those are settled, and runs none it
/// receives meanwhile (the client sends them again to the new process). Each runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_mutations_in_flight_across_a_query_service_restart_run_once() {
    let mut stack = Stack::start_with(Options {
        slow_upstream: Some(Duration::from_millis(300)),
        ..Options::default()
    })
    .await;
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let mut node = crate::NodeScript::start("convex-resend-restart.mjs", &arg);
    let engine = stack.devconvex_engine.clone();
    let runs = move || engine.stats.executions("messages:send");

    let sent = node.next_phase().await;
    assert_eq!(sent["phase"], "sent", "{sent:#}");
    eventually("devconvex to run the 20", || runs() == 20).await;
    // Their answers are still on their way when the shutdown starts.
    let more = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        node.say("more").await;
    };
    tokio::join!(stack.restart_query(), more);
    let done = node.next_phase().await;
    assert_eq!(done["phase"], "done", "{done:#}");
    let outcomes = done["outcomes"].as_array().unwrap();
    assert!(
        outcomes.iter().all(|o| o["resolved"].is_string()),
        "{done:#}"
    );
    let channel = done["channel"].as_array().unwrap();
    for i in 0..30 {
        let body = format!("m{i}");
        let written = channel.iter().filter(|b| **b == body).count();
        assert_eq!(written, 1, "{body} written {written} times: {done:#}");
    }
    assert_eq!(runs(), 30, "{done:#}");
}

/// While the query service drains a socket's unanswered mutation on shutdown, `/readyz` says
/// so at once (503 `shutting down`), so a load balancer sends new clients elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_query_service_is_not_ready() {
    let mut stack = Stack::start_with(Options {
        upstream_inactivity: Some(Duration::from_secs(30)),
        ..Options::default()
    })
    .await;
    let token = stack.token_for("drain@example.com").await;
    let mut client = Client::connect(&stack.query_url()).await;
    client.authenticate(&token);
    client.subscribe(0, "messages:list", json!({"channel": "drain"}));
    client
        .until("the list", |v| v.values.contains_key(&0))
        .await;
    // Its answer never comes while the connection to Convex swallows traffic.
    stack.upstream_relay.as_ref().expect("a relay").partition();
    client.mutation("messages:send", json!({"channel": "drain", "body": "held"}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stack.query.begin_stop();
    let readyz = format!("{}/readyz", stack.query_url());
    let http = reqwest::Client::new();
    let mut answer = None;
    for _ in 0..50 {
        if let Ok(r) = http.get(&readyz).send().await {
            let status = r.status();
            answer = Some((status, r.text().await.unwrap_or_default()));
            if status == 503 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = answer.expect("the draining service answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert!(!client.view().closed, "the socket still drains");
}
