//! Horizontal scale as deployed: separate `auth` and `gateway` processes on one Postgres and
//! one Redis. A sign-out on one gateway is refused by all; a cut revocation stream never lets
//! a revoked token through after it resumes; Redis killed under load fails no request.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::{Proc, SECRET, cookie_from, scrape, sign_up, spawn, wait_ready};

fn port() -> u16 {
    edge_testkit::free_port()
}

/// One `convex-edge auth` process's addresses.
struct AuthAddrs {
    grpc: u16,
    http: u16,
}

impl AuthAddrs {
    fn new() -> Self {
        AuthAddrs {
            grpc: port(),
            http: port(),
        }
    }

    fn start(&self, db_url: &str) -> Proc {
        spawn(
            &["auth"],
            &[
                ("BETTER_AUTH_SECRET".into(), SECRET.into()),
                ("DATABASE_URL".into(), db_url.into()),
                ("AUTH_GRPC_ADDR".into(), format!("127.0.0.1:{}", self.grpc)),
                ("AUTH_HTTP_ADDR".into(), format!("127.0.0.1:{}", self.http)),
                // Every request comes from 127.0.0.1; these tests are about scale.
                ("AUTH_SIGN_IN_LIMIT_PER_ADDRESS".into(), "100000".into()),
                ("AUTH_RATE_LIMIT_MAX".into(), "100000".into()),
            ],
            None,
        )
    }

    fn ready(&self) -> String {
        format!("http://127.0.0.1:{}/readyz", self.http)
    }

    fn metrics(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.http)
    }
}

/// A `convex-edge gateway` process on `auth`, caching in Redis at `redis_url`.
async fn gateway(auth: &AuthAddrs, redis_url: &str) -> (Proc, String) {
    gateway_with(auth, redis_url, &[]).await
}

async fn gateway_with(auth: &AuthAddrs, redis_url: &str, extra: &[(&str, &str)]) -> (Proc, String) {
    let port = port();
    let mut env: Vec<(String, String)> = vec![
        ("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
        // Polls the token route from one address, past Better Auth's default rule.
        ("GATEWAY_READ_RATE_LIMIT_MAX".into(), "0".into()),
        (
            "AUTH_GRPC_URL".into(),
            format!("http://127.0.0.1:{}", auth.grpc),
        ),
        ("REDIS_URL".into(), redis_url.into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let proc = spawn(&["gateway"], &env, None);
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/readyz")).await;
    (proc, base)
}

/// Session reads on every auth process.
async fn session_reads(auths: &[&AuthAddrs]) -> f64 {
    let mut total = 0.0;
    for a in auths {
        total += scrape(&a.metrics(), "edge_auth_session_db_reads_total").await;
    }
    total
}

async fn token_status(client: &reqwest::Client, base: &str, cookie: &str) -> u16 {
    client
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", cookie)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Calls the token route on `base` until a call reads no session on any auth process.
async fn until_cached(auths: &[&AuthAddrs], base: &str, cookie: &str) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = session_reads(auths).await;
        assert_eq!(token_status(&client, base, cookie).await, 200);
        if session_reads(auths).await == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} never served from its cache"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Opens another session for an existing user; returns its `Cookie` header value.
async fn sign_in(base: &str, email: &str) -> String {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-in/email"))
        .json(&json!({"email": email, "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cookie_from(&r)
}

async fn sign_out(base: &str, cookie: &str) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", base)
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn three_gateways_on_two_auths_refuse_a_signed_out_cookie_and_survive_a_stream_cut() {
    let db = edge_testkit::test_database().await;
    let redis = edge_testkit::redis_url();
    let (a, b) = (AuthAddrs::new(), AuthAddrs::new());
    let _auth_a = a.start(&db.url);
    wait_ready(&a.ready()).await;
    let mut auth_b = a_proc(&b, &db.url).await;
    let (_g1, gw1) = gateway(&a, &redis).await;
    let (_g2, gw2) = gateway(&a, &redis).await;
    let (_g3, gw3) = gateway(&b, &redis).await;
    let client = reqwest::Client::new();

    // A token cached by all three; a sign-out on the first is refused everywhere within 1 s.
    let cookie = sign_up(&gw1, "Scale", "scale@example.com").await;
    for base in [&gw1, &gw2, &gw3] {
        until_cached(&[&a, &b], base, &cookie).await;
    }
    sign_out(&gw1, &cookie).await;
    let signed_out = Instant::now();
    assert_eq!(token_status(&client, &gw1, &cookie).await, 401);
    for base in [&gw2, &gw3] {
        while token_status(&client, base, &cookie).await != 401 {
            assert!(
                signed_out.elapsed() < Duration::from_secs(1),
                "{base} still serves a signed-out session"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("revoked on every gateway after {:?}", signed_out.elapsed());

    // The third gateway's stream is cut (its auth dies); the session ends meanwhile; once the
    // stream resumes the token is never served again.
    let cookie = sign_up(&gw1, "Scale", "cut@example.com").await;
    until_cached(&[&a, &b], &gw3, &cookie).await;
    drop(auth_b);
    // With its stream broken the gateway stops trusting its cache (auth is down: 503).
    let deadline = Instant::now() + Duration::from_secs(5);
    while token_status(&client, &gw3, &cookie).await == 200 {
        assert!(
            Instant::now() < deadline,
            "cache still trusted with the stream cut"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sign_out(&gw1, &cookie).await;
    auth_b = a_proc(&b, &db.url).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = token_status(&client, &gw3, &cookie).await;
        assert_ne!(
            status, 200,
            "a revoked token was served after the stream resumed"
        );
        if status == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway never recovered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it keeps refusing once the stream is trusted again, while live sessions are cached.
    let fresh = sign_up(&gw3, "Scale", "after@example.com").await;
    until_cached(&[&a, &b], &gw3, &fresh).await;
    assert_eq!(token_status(&client, &gw3, &cookie).await, 401);
    drop(auth_b);
}

async fn a_proc(addrs: &AuthAddrs, db_url: &str) -> Proc {
    let proc = addrs.start(db_url);
    wait_ready(&addrs.ready()).await;
    proc
}

#[tokio::test]
async fn redis_killed_under_load_fails_no_request_and_l2_heals() {
    let db = edge_testkit::test_database().await;
    let mut redis = edge_testkit::spawn_redis(0).expect("redis-server starts");
    let auth = AuthAddrs::new();
    let _auth = a_proc(&auth, &db.url).await;
    // A one-second TTL keeps L1 missing, so Redis is on the path of many requests.
    let short = [("AUTH_CACHE_TTL", "1")];
    let (_g1, gw1) = gateway_with(&auth, &redis.url, &short).await;
    let (_g2, gw2) = gateway_with(&auth, &redis.url, &short).await;
    let mut cookies = Vec::new();
    for i in 0..4 {
        let email = format!("load{i}@example.com");
        cookies.push(sign_up(&gw1, "Scale", &email).await);
        for _ in 0..3 {
            cookies.push(sign_in(&gw2, &email).await);
        }
    }

    // Eight clients call the token route on both gateways; Redis dies once they have made 200
    // calls, and they go on until both gateways have met its failure and made 400 more calls
    // (cached tokens expire from L1 after 1 s, so the load goes on reaching for Redis).
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let (calls, stop) = (
        Arc::new(AtomicU32::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let mut workers = Vec::new();
    for w in 0..8usize {
        let (cookies, bases) = (cookies.clone(), [gw1.clone(), gw2.clone()]);
        let (calls, stop) = (calls.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed, mut i) = (0u32, 0u32, w);
            while !stop.load(Ordering::Relaxed) {
                let status =
                    token_status(&client, &bases[i % 2], &cookies[i % cookies.len()]).await;
                if status == 200 {
                    ok += 1
                } else {
                    failed += 1
                }
                calls.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            (ok, failed)
        }));
    }
    let until_calls = async |n: u32, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while calls.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the load stalled {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    until_calls(200, "before Redis died").await;
    redis.kill();
    let killed_at = calls.load(Ordering::Relaxed);
    until_calls(killed_at + 400, "after Redis died").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for base in [&gw1, &gw2] {
        let metrics = format!("{base}/metrics");
        while scrape(&metrics, "edge_gateway_redis_errors_total").await < 1.0 {
            assert!(Instant::now() < deadline, "{base} never met the dead Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.await.unwrap();
        ok += o;
        failed += f;
    }
    eprintln!("under load with Redis killed: {ok} succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "too little load to mean anything: {ok}");

    // Redis back on the same port: a token one gateway cached is an L2 hit on the other.
    let _redis = edge_testkit::spawn_redis(redis.port).expect("redis-server restarts");
    let metrics = format!("{gw2}/metrics");
    let series = "edge_gateway_token_cache_total{result=\"l2_hit\"}";
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        let before = scrape(&metrics, series).await;
        let cookie = sign_up(&gw1, "Scale", &format!("healed{n}@example.com")).await;
        n += 1;
        assert_eq!(token_status(&client, &gw1, &cookie).await, 200);
        assert_eq!(token_status(&client, &gw2, &cookie).await, 200);
        if scrape(&metrics, series).await > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "L2 never served again after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
