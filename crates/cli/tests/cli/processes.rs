//! The services as separate processes: `dev`, and `auth` + `gateway` whose process-wide
//! `edge_auth_jwks_db_reads_total` must not move while tokens are issued.

use serde_json::{Value, json};

use crate::{Proc, SECRET, read_lines_until, spawn, wait_ready};

/// A Convex HTTP query with no arguments, in the `json` format.
async fn query(origin: &str, path: &str, jwt: Option<&str>) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{origin}/api/query"))
        .json(&json!({"path": path, "args": {}, "format": "json"}));
    if let Some(jwt) = jwt {
        request = request.bearer_auth(jwt);
    }
    request.send().await.unwrap().json().await.unwrap()
}

fn port() -> String {
    edge_testkit::free_port().to_string()
}

fn metric(text: &str, name: &str) -> f64 {
    crate::metric(text, name).unwrap_or_else(|| panic!("{name} missing"))
}

struct Services {
    base: String,
    auth_metrics: String,
    _procs: (Proc, Proc),
}

async fn start(extra: &[(&str, String)]) -> Services {
    let db = edge_testkit::test_database().await;
    let (grpc, http, gw) = (port(), port(), port());
    let mut env: Vec<(String, String)> = vec![
        ("BETTER_AUTH_SECRET".into(), SECRET.into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("AUTH_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL".into(), format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{gw}")),
        // 1,000 tokens from one address, past Better Auth's default rule.
        ("GATEWAY_READ_RATE_LIMIT_MAX".into(), "0".into()),
        // Every request must reach auth: this counts auth's reads per issued token.
        ("AUTH_CACHE_ENABLED".into(), "false".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let auth = spawn(&["auth"], &env, None);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    let gateway = spawn(&["gateway"], &env, None);
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await;
    Services {
        base,
        auth_metrics: format!("http://127.0.0.1:{http}/metrics"),
        _procs: (auth, gateway),
    }
}

async fn thousand_tokens_read_no_key(services: &Services) {
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/api/auth/sign-up/email", services.base))
        .json(&json!({"name": "P", "email": "p@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    let cookie = crate::cookie_from(&r);
    let before = client
        .get(&services.auth_metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for _ in 0..1000 {
        let r = client
            .get(format!("{}/api/auth/convex/token", services.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let after = client
        .get(&services.auth_metrics)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&after, "edge_auth_jwks_db_reads_total"),
        metric(&before, "edge_auth_jwks_db_reads_total")
    );
    assert_eq!(
        metric(&after, "edge_auth_tokens_issued_total")
            - metric(&before, "edge_auth_tokens_issued_total"),
        1000.0
    );
    let session_reads = metric(&after, "edge_auth_session_db_reads_total")
        - metric(&before, "edge_auth_session_db_reads_total");
    assert!(
        session_reads <= 1000.0,
        "at most one session read per token: {session_reads}"
    );
}

#[tokio::test]
async fn dynamic_keys_process_reads_no_key_for_1000_tokens() {
    let services = start(&[]).await;
    thousand_tokens_read_no_key(&services).await;
}

#[tokio::test]
async fn static_keys_process_reads_no_key_for_1000_tokens() {
    let secret = edge_keys::Secret::new(SECRET);
    let rows = vec![
        edge_keys::jwk::generate_row(edge_keys::Alg::RS256, &secret, chrono::Utc::now()).unwrap(),
    ];
    let services = start(&[("JWKS", serde_json::to_string(&rows).unwrap())]).await;
    let metrics = reqwest::get(&services.auth_metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "edge_auth_jwks_db_reads_total"),
        0.0,
        "static mode never reads the table"
    );
    thousand_tokens_read_no_key(&services).await;
}

#[tokio::test]
async fn dev_serves_the_auth_routes_on_sqlite_with_generated_keys() {
    let dir = edge_testkit::TempDir::default();
    let env: Vec<(String, String)> = vec![
        ("GATEWAY_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("AUTH_GRPC_ADDR".into(), "127.0.0.1:0".into()),
        ("AUTH_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("DEVCONVEX_ADDR".into(), "127.0.0.1:0".into()),
        ("QUERY_HTTP_ADDR".into(), "127.0.0.1:0".into()),
        ("QUERY_GRPC_ADDR".into(), "127.0.0.1:0".into()),
    ];
    let mut dev = spawn(&["dev"], &env, Some(dir.path()));
    let lines = read_lines_until(&mut dev, "data:");
    let url_after = |label: &str| {
        let line = lines
            .iter()
            .find(|l| l.contains(label))
            .unwrap_or_else(|| panic!("{label} in {lines:?}"));
        line.rsplit(' ').next().unwrap().to_owned()
    };
    let base = url_after("site (gateway):");
    let convex = url_after("Convex (devconvex");
    let proxy = url_after("Convex clients (query proxy)");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&json!({"name": "Dev", "email": "dev@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = crate::cookie_from(&r);
    let token: Value = client
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwks = client
        .get(format!("{base}/api/auth/jwks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let verifier = edge_keys::Verifier::from_jwks(&jwks)
        .unwrap()
        .with_audience("convex");
    verifier
        .verify(
            token["token"].as_str().unwrap(),
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    // devconvex trusts the same tokens, and the query service in front of it verifies them and
    // proxies the call: users:me answers with the signed-up user on both.
    let jwt = token["token"].as_str().unwrap();
    for origin in [&convex, &proxy] {
        let me = query(origin, "users:me", Some(jwt)).await;
        assert_eq!(me["value"]["email"], "dev@example.com", "{origin}: {me}");
    }
    assert!(dir.path().join(".convex-edge/dev.db").exists());
    let secret = std::fs::read_to_string(dir.path().join(".convex-edge/secret")).unwrap();
    assert!(secret.len() >= 32);
}

#[tokio::test]
async fn devconvex_serves_the_demo_app() {
    let port = port();
    let _proc = spawn(
        &["devconvex"],
        &[("DEVCONVEX_ADDR".into(), format!("127.0.0.1:{port}"))],
        None,
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/readyz")).await;
    let r = query(&base, "config:get", None).await;
    assert_eq!(r["value"]["defaultChannel"], "general");
}
