//! The official `convex` npm client, unchanged, against devconvex.

use serde_json::json;

#[tokio::test]
async fn convex_npm_client_subscribes_mutates_authenticates_and_round_trips_values() {
    let auth = crate::Auth::start().await;
    let devconvex = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("bee@example.com").await;
    let other = auth.token_for("cee@example.com").await;
    let out = edge_testkit::node(
        "convex-client.mjs",
        &[json!({"url": devconvex.url(), "token": token, "otherToken": other}).to_string()],
    )
    .await;
    assert_eq!(out["ok"], true, "{out:#}");

    // HTTP client.
    assert_eq!(out["httpConfig"]["siteName"], "convex-edge demo");
    assert_eq!(out["httpEchoInt64"], true, "64-bit integers round-trip");
    assert_eq!(
        out["httpEchoBytes"],
        json!([0, 1, 254, 255]),
        "bytes round-trip"
    );
    assert_eq!(out["httpEchoNested"], json!({"list": [1.5, null, true]}));
    assert!(
        out["httpAnonymousSend"]
            .as_str()
            .unwrap()
            .contains("Not signed in"),
        "{}",
        out["httpAnonymousSend"]
    );
    assert_eq!(out["httpList"], json!(["over http"]));
    assert_eq!(out["httpMe"], "bee@example.com");
    assert!(
        out["httpMissing"]
            .as_str()
            .unwrap()
            .contains("Could not find public function")
    );

    // WebSocket client.
    assert_eq!(out["initial"], json!([]));
    assert_eq!(out["me"]["email"], "bee@example.com");
    assert_eq!(
        out["me"]["tokenIdentifier"]
            .as_str()
            .unwrap()
            .split('|')
            .next(),
        Some("http://localhost:8080")
    );
    assert_eq!(out["authChanges"], json!([true]));
    assert_eq!(out["sentId"], true);
    assert_eq!(out["seenByA"], json!(["hello from B"]));
    assert_eq!(out["bTasks"][0]["text"], "write tests");
    assert_eq!(out["bTasks"][0]["done"], true);
    assert_eq!(out["anonTasks"], json!([]));
    assert_eq!(
        out["otherTasks"],
        json!([]),
        "another user never sees B's tasks"
    );
    assert!(
        out["anonMutation"]
            .as_str()
            .unwrap()
            .contains("Not signed in")
    );
    assert_eq!(out["echoInt64"], true);
    assert!(
        out["badTokenChanges"]
            .as_array()
            .unwrap()
            .contains(&json!(false))
    );

    // The metrics say what ran.
    assert!(devconvex.engine.stats.executions("messages:list") >= 2);
    let metrics = reqwest::get(format!("{}/metrics", devconvex.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("devconvex_function_executions_total{path=\"messages:send\"}"));
    assert!(
        metrics.contains("devconvex_subscriptions 0"),
        "every client closed: {metrics}"
    );
}
