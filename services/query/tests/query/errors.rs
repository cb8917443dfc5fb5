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

    // Raw frames: malformed JSON, an unknown type, wrong versions, an oversized message.
    let bad = [
        "{not json".to_owned(),
        json!({"type": "Bogus"}).to_string(),
        json!({"type": "ModifyQuerySet", "baseVersion": 4, "newVersion": 5, "modifications": []})
            .to_string(),
        json!({"type": "Authenticate", "baseVersion": 9, "tokenType": "None"}).to_string(),
        format!(
            "{{\"type\":\"Event\",\"eventType\":\"x\",\"event\":\"{}\"}}",
            "x".repeat(9 * 1024 * 1024)
        ),
    ];
    for (i, frame) in bad.iter().enumerate() {
        let mut c = Client::connect(&stack.query_url()).await;
        c.send_raw(frame.clone());
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
