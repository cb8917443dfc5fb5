//! Bad input reaches only the client that sent it.

use serde_json::json;

use crate::{Client, Stack};

#[tokio::test]
async fn bad_input_gets_an_error_for_that_client_only() {
    let stack = Stack::start().await;
    let mut bystander = Client::connect(&stack.query_url()).await;
    bystander.subscribe(0, "config:get", json!({}));
    bystander
        .until("config", |v| v.values.contains_key(&0))
        .await;

    let bad: Vec<Box<dyn Fn(&mut Client)>> = vec![
        Box::new(|c| c.send_raw("{not json".into())),
        Box::new(|c| c.send(json!({"type": "Bogus"}))),
        Box::new(|c| {
            c.send(json!({"type": "ModifyQuerySet", "baseVersion": 4, "newVersion": 5, "modifications": []}))
        }),
        Box::new(|c| {
            c.send(json!({"type": "Authenticate", "baseVersion": 9, "tokenType": "None"}))
        }),
        Box::new(|c| {
            c.send_raw(format!(
                "{{\"type\":\"Event\",\"eventType\":\"x\",\"event\":\"{}\"}}",
                "x".repeat(9 * 1024 * 1024)
            ))
        }),
    ];
    for (i, send) in bad.iter().enumerate() {
        let mut c = Client::connect(&stack.query_url()).await;
        send(&mut c);
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
