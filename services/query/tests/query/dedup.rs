//! Subscription dedup and fan-out, with per-identity isolation and the consistent frontier.

use serde_json::json;

use crate::client::bodies;
use crate::{Client, Stack, eventually};

async fn send_via_http(stack: &Stack, token: &str, body: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/mutation", stack.devconvex_url()))
        .bearer_auth(token)
        .json(&json!({"path": "messages:send", "args": {"channel": "general", "body": body}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_share_one_upstream_subscription_and_one_execution() {
    let stack = Stack::start().await;
    let mut clients = Vec::new();
    for _ in 0..500 {
        let mut c = Client::connect(&stack.query_url()).await;
        c.subscribe(0, "messages:list", json!({"channel": "general"}));
        clients.push(c);
    }
    for c in &mut clients {
        c.until("the first value", |v| v.values.contains_key(&0))
            .await;
    }
    assert_eq!(
        stack.upstream_subscriptions(),
        1,
        "devconvex holds one subscription"
    );
    let runs = stack.devconvex_engine.stats.executions("messages:list");
    let token = stack.token_for("writer@example.com").await;
    send_via_http(&stack, &token, "to everyone").await;
    for c in &mut clients {
        let v = c
            .until("the update", |v| {
                bodies(v.values.get(&0)) == ["to everyone"]
            })
            .await;
        assert!(v.violations.is_empty(), "{:?}", v.violations);
    }
    assert_eq!(
        stack.devconvex_engine.stats.executions("messages:list"),
        runs + 1,
        "one execution per change"
    );
    assert_eq!(
        stack
            .stats
            .downstream_connections
            .load(std::sync::atomic::Ordering::Relaxed),
        500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_never_see_each_others_data_even_under_churn() {
    let stack = Stack::start().await;
    let (ta, tb) = (
        stack.token_for("a@example.com").await,
        stack.token_for("b@example.com").await,
    );
    let mut a = Client::connect(&stack.query_url()).await;
    let mut b = Client::connect(&stack.query_url()).await;
    a.authenticate(&ta);
    b.authenticate(&tb);
    a.subscribe(0, "tasks:list", json!({}));
    b.subscribe(0, "tasks:list", json!({}));
    a.until("a's list", |v| v.values.contains_key(&0)).await;
    b.until("b's list", |v| v.values.contains_key(&0)).await;
    assert_eq!(stack.upstream_subscriptions(), 2, "one per identity");
    a.mutation("tasks:add", json!({"text": "a's secret"}));
    b.mutation("tasks:add", json!({"text": "b's secret"}));
    let texts = |v: &crate::client::View| -> Vec<String> {
        v.values
            .get(&0)
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .map(|t| t["text"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    a.until("a's task", |v| texts(v) == ["a's secret"]).await;
    b.until("b's task", |v| texts(v) == ["b's secret"]).await;

    // Churn: more sockets of both users subscribe and unsubscribe concurrently while tasks
    // are added; every value any socket was ever shown, in any round, belongs to its own user.
    let mut handles = Vec::new();
    for i in 0..20 {
        let (url, token, mine) = if i % 2 == 0 {
            (stack.query_url(), ta.clone(), "a's")
        } else {
            (stack.query_url(), tb.clone(), "b's")
        };
        handles.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.authenticate(&token);
            for round in 0..5u32 {
                c.subscribe(round, "tasks:list", json!({}));
                if round % 2 == 0 {
                    c.mutation(
                        "tasks:add",
                        json!({"text": format!("{mine} churn {i}.{round}")}),
                    );
                }
                c.until("a value", |v| v.values.contains_key(&u64::from(round)))
                    .await;
                c.unsubscribe(round);
            }
            (mine, c.view())
        }));
    }
    let mut views = Vec::new();
    for h in handles {
        views.push(h.await.unwrap());
    }
    views.push(("a's", a.view()));
    views.push(("b's", b.view()));
    let mut values = 0;
    for (mine, view) in &views {
        assert!(view.violations.is_empty(), "{:?}", view.violations);
        assert!(view.errors.is_empty(), "{:?}", view.errors);
        for (query, value) in &view.seen {
            for t in value.as_array().expect("tasks:list is a list") {
                assert!(
                    t["text"].as_str().unwrap().starts_with(mine),
                    "{mine} socket was shown {t} (query {query})"
                );
            }
            values += 1;
        }
    }
    // Each churn socket saw at least one value per round; the check above covered them all.
    assert!(values >= 20 * 5, "only {values} values seen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_function_across_fifty_users_is_one_subscription_and_mutations_are_consistent() {
    let stack = Stack::start().await;
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(stack.token_for(&format!("user{i}@example.com")).await);
    }
    let mut clients = Vec::new();
    for i in 0..500 {
        let mut c = Client::connect(&stack.query_url()).await;
        c.authenticate(&tokens[i % 50]);
        c.subscribe(0, "messages:list", json!({"channel": "general"}));
        clients.push(c);
    }
    for c in &mut clients {
        c.until("the first value", |v| v.values.contains_key(&0))
            .await;
    }
    assert_eq!(
        stack.upstream_subscriptions(),
        1,
        "a shared function is one subscription for every identity"
    );
    // One user sends over its own socket: when its mutation completes (a transition at or past
    // the mutation's ts), its own list already shows the message.
    let request = clients[7].mutation(
        "messages:send",
        json!({"channel": "general", "body": "consistent"}),
    );
    let view = clients[7]
        .until("completion", |v| v.at_completion.contains_key(&request))
        .await;
    assert!(view.responses[&request].0, "the mutation succeeded");
    assert!(
        bodies(view.at_completion[&request].get(&0)).contains(&"consistent".to_owned()),
        "{view:?}"
    );
    eventually("every client updated", || {
        clients
            .iter()
            .all(|c| bodies(c.view().values.get(&0)) == ["consistent"])
    })
    .await;
    assert!(clients.iter().all(|c| c.view().violations.is_empty()));
}
