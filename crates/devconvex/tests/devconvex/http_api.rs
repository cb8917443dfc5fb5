//! The HTTP API directly: formats, GET queries, batches, timestamps, statuses.

use serde_json::{Value, json};

async fn post(url: String, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).json(&body);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn http_api_routes_formats_and_statuses() {
    let auth = crate::Auth::start().await;
    let running = crate::spawn(Some(auth.convex_auth_config())).await;
    let url = |p: &str| format!("{}{p}", running.url());
    let token = auth.token_for("http@example.com").await;

    // A mutation through /api/run with plain JSON, then reads in both formats.
    let (status, body) = post(
        url("/api/run/messages/send"),
        json!({"args": {"channel": "g", "body": "one"}, "format": "json"}),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("success")),
        "{body}"
    );
    let (_, body) = post(
        url("/api/query"),
        json!({"path": "messages:list", "args": {"channel": "g"}, "format": "json"}),
        None,
    )
    .await;
    assert_eq!(body["value"][0]["body"], "one");
    assert_eq!(body["value"][0]["author"], "Test User");
    // What a query logs comes back in `logLines`, as over the sync protocol.
    let (_, body) = post(
        url("/api/query"),
        json!({"path": "demo:check", "args": {"body": "abc"}, "format": "json"}),
        None,
    )
    .await;
    let lines = body["logLines"].as_array().expect("logLines");
    assert!(
        lines.iter().any(|l| l
            .as_str()
            .unwrap_or_default()
            .contains("checking 3 characters")),
        "{body}"
    );
    let r = reqwest::get(url(
        "/api/query?path=messages:list&args=%7B%22channel%22%3A%22g%22%7D&format=json",
    ))
    .await
    .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["value"][0]["body"], "one");

    // Int64 in both formats.
    let encoded = edge_convex::value::encode_int64(7);
    let (_, body) = post(
        url("/api/action"),
        json!({"path": "demo:echo", "args": [{"n": encoded}], "format": "convex_encoded_json"}),
        None,
    )
    .await;
    assert_eq!(body["value"]["n"], encoded);
    let (_, body) = post(
        url("/api/action"),
        json!({"path": "demo:echo", "args": {"n": encoded}, "format": "json"}),
        None,
    )
    .await;
    assert_eq!(body["value"]["n"], 7);

    // /api/function picks the kind; a failing function is HTTP 560 with the error body.
    let (status, body) = post(
        url("/api/function"),
        json!({"path": "users:me", "args": {}}),
        Some(&token),
    )
    .await;
    assert_eq!(
        (status, body["value"]["email"].as_str()),
        (200, Some("http@example.com"))
    );
    let (status, body) = post(
        url("/api/mutation"),
        json!({"path": "messages:send", "args": {"channel": "g", "body": "x"}}),
        None,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (560, Some("error")));
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Not signed in")
    );
    let (status, body) = post(
        url("/api/query"),
        json!({"path": "messages:send", "args": {"channel": "g", "body": "x"}}),
        Some(&token),
    )
    .await;
    assert_eq!(status, 560, "a mutation cannot run as a query: {body}");

    // Batches, and reads at a timestamp.
    let (_, body) = post(
        url("/api/query_batch"),
        json!({"queries": [
            {"path": "config:get", "args": {}}, {"path": "nope:x", "args": {}}
        ]}),
        None,
    )
    .await;
    assert_eq!(body["results"][0]["status"], "success");
    assert_eq!(body["results"][1]["status"], "error");
    let (_, ts) = post(url("/api/query_ts"), json!({}), None).await;
    post(
        url("/api/mutation"),
        json!({"path": "messages:send", "args": {"channel": "g", "body": "two"}}),
        Some(&token),
    )
    .await;
    let (_, then) = post(
        url("/api/query_at_ts"),
        json!({"path": "messages:list", "args": {"channel": "g"}, "ts": ts["ts"]}),
        None,
    )
    .await;
    assert_eq!(
        then["value"].as_array().unwrap().len(),
        1,
        "the snapshot before the second message"
    );
    let (_, now) = post(
        url("/api/query"),
        json!({"path": "messages:list", "args": {"channel": "g"}}),
        None,
    )
    .await;
    assert_eq!(now["value"].as_array().unwrap().len(), 2);

    // Bad requests and bad tokens.
    let r = reqwest::Client::new()
        .post(url("/api/query"))
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let (status, _) = post(
        url("/api/query"),
        json!({"path": "config:get", "args": 5}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(
        url("/api/query"),
        json!({"path": "config:get", "args": {}}),
        Some("garbage"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("Unauthenticated"))
    );
    let (status, body) = post(
        url("/api/query"),
        json!({"path": "messages:list", "args": {"channel": 5}}),
        None,
    )
    .await;
    assert_eq!(status, 560);
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("ArgumentValidationError")
    );
}
