//! The gateway's outbound TLS: gRPC to auth over `https://` and the token cache on a Redis
//! that speaks only TLS (`rediss://`), both trusting a test CA through `SSL_CERT_FILE`.

use crate::{PASSWORD, Stack, cookie_of, http};

async fn sign_up_at(base: &str, email: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&serde_json::json!({"name": "Ada", "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

/// Keys in the TLS-only Redis, read with `redis-cli --tls` trusting `ca`.
fn dbsize(redis: &edge_testkit::TestRedis, ca: &edge_testkit::TestCa) -> u64 {
    let out = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca.ca_file)
        .args(["-h", "127.0.0.1", "-p", &redis.port.to_string(), "DBSIZE"])
        .output()
        .expect("redis-cli runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().parse().unwrap_or_else(|_| {
        panic!(
            "DBSIZE over TLS: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_auth_over_https_and_the_token_cache_on_rediss() {
    let mut stack = Stack::start().await;
    let ca = edge_testkit::TestCa::new();
    let redis = edge_testkit::spawn_redis_tls(&ca).expect("redis-server with TLS");
    // auth serves plaintext gRPC; a TLS relay (HTTP/2 by ALPN) proves the gateway's client.
    let cert = ca.issue("auth", &["127.0.0.1", "localhost"]);
    let relay = edge_testkit::TlsRelay::start(&cert, stack.auth_grpc, &["h2"]).await;
    let auth_url = format!("https://127.0.0.1:{}", relay.addr.port());

    let (ca_file, redis_url, url) = (ca.ca_file.clone(), redis.url.clone(), auth_url.clone());
    let base = stack
        .gateway_with(move |c| {
            c.auth_grpc_url = url;
            c.ssl_cert_file = Some(ca_file);
            if let Some(cache) = c.cache.as_mut() {
                cache.redis_url = Some(redis_url);
            }
        })
        .await;
    let r = sign_up_at(&base, "tls@example.com").await;
    assert_eq!(r.status(), 200, "sign-up over gRPC through TLS");
    let cookie = cookie_of(&r).expect("session cookie");
    assert_eq!(dbsize(&redis, &ca), 0);
    crate::cache::until_cached(&stack, &base, &cookie).await;
    assert!(
        dbsize(&redis, &ca) >= 1,
        "the token reached the cache's Redis tier over rediss://"
    );

    // A second gateway on the same TLS-only Redis comes up and serves from its cache.
    let (ca_file, redis_url) = (ca.ca_file.clone(), redis.url.clone());
    let second = stack
        .gateway_with(move |c| {
            c.ssl_cert_file = Some(ca_file);
            if let Some(cache) = c.cache.as_mut() {
                cache.redis_url = Some(redis_url);
            }
        })
        .await;
    crate::cache::until_cached(&stack, &second, &cookie).await;

    // Without the CA the gateway refuses auth's certificate: sign-up fails, it does not hang.
    let untrusted = stack
        .gateway_with(move |c| c.auth_grpc_url = auth_url)
        .await;
    let r = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        sign_up_at(&untrusted, "untrusted@example.com"),
    )
    .await
    .expect("the refusal is prompt");
    assert!(r.status().is_server_error(), "{}", r.status());
}
