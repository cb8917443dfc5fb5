//! Rate limits as Better Auth's defaults (3 per 10 s per client address on sign-in and sign-up,
//! counted in the shared `rateLimit` table) and the client address they key on: forwarding
//! headers count only from `GATEWAY_TRUSTED_PROXIES`.

use edge_auth::config::RateLimit;
use serde_json::{Value, json};

use crate::{PASSWORD, Stack, http};

/// POSTs `body` to `path` on `base` as a client behind the proxy at `forwarded_for`.
async fn post_as(
    base: &str,
    path: &str,
    forwarded_for: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut request = http().post(format!("{base}{path}")).json(&body);
    if let Some(xff) = forwarded_for {
        request = request.header("x-forwarded-for", xff);
    }
    request.send().await.unwrap()
}

async fn wrong_sign_in(base: &str, forwarded_for: Option<&str>, email: &str) -> reqwest::Response {
    post_as(
        base,
        "/api/auth/sign-in/email",
        forwarded_for,
        json!({"email": email, "password": "not the password"}),
    )
    .await
}

/// A 429 exactly as Better Auth 1.7 answers it: `{"message"}` and `X-Retry-After` in seconds
/// (at most the rule's window: 10 s per address, 60 s per account).
async fn assert_429_within(r: reqwest::Response, window_secs: u64) {
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["x-retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=window_secs).contains(&retry), "{retry}");
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "Too many requests. Please try again later."})
    );
}

async fn assert_better_auth_429(r: reqwest::Response) {
    assert_429_within(r, 10).await;
}

async fn default_limits() -> Stack {
    let db = edge_testkit::test_database().await;
    Stack::start_on(db, |c| c.sign_in_limit = RateLimit::default()).await
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_are_per_client() {
    let mut stack = default_limits().await;
    let gateway = stack
        .gateway_with(|c| c.trusted_proxies = "127.0.0.0/8".parse().unwrap())
        .await;
    crate::sign_up(&stack, "victim@example.com").await;
    // The attacker's own claim (left) is not believed; the proxy's hop (right) is.
    let attacker = Some("6.6.6.6, 198.51.100.1");
    for _ in 0..3 {
        let r = wrong_sign_in(&gateway, attacker, "victim@example.com").await;
        assert_eq!(r.status(), 401);
    }
    assert_better_auth_429(wrong_sign_in(&gateway, attacker, "victim@example.com").await).await;
    // Another client behind the same proxy is not locked out, and signs in.
    let r = post_as(
        &gateway,
        "/api/auth/sign-in/email",
        Some("198.51.100.2"),
        json!({"email": "victim@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // The session records the client, not the proxy.
    let cookie = crate::cookie_of(&r).unwrap();
    let session: Value = stack
        .get("/api/auth/get-session", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["session"]["ipAddress"], "198.51.100.2");

    // Sign-up: 3 per 10 s per client too (it had no limit at all).
    for i in 0..3 {
        let r = post_as(
            &gateway,
            "/api/auth/sign-up/email",
            Some("198.51.100.3"),
            json!({"name": "N", "email": format!("n{i}@example.com"), "password": PASSWORD}),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let r = post_as(
        &gateway,
        "/api/auth/sign-up/email",
        Some("198.51.100.3"),
        json!({"name": "N", "email": "n3@example.com", "password": PASSWORD}),
    )
    .await;
    assert_better_auth_429(r).await;
    assert_eq!(
        stack.counts().await.0,
        4,
        "the refused sign-up created nobody"
    );
    let r = post_as(
        &gateway,
        "/api/auth/sign-up/email",
        Some("198.51.100.4"),
        json!({"name": "N", "email": "n4@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    // The stack's gateway trusts no proxy: a client cannot pick its own address.
    let stack = default_limits().await;
    crate::sign_up(&stack, "victim@example.com").await;
    for i in 0..3 {
        let spoof = format!("203.0.113.{i}");
        let r = wrong_sign_in(&stack.base, Some(&spoof), "victim@example.com").await;
        assert_eq!(r.status(), 401);
    }
    let r = wrong_sign_in(&stack.base, Some("203.0.113.99"), "victim@example.com").await;
    assert_better_auth_429(r).await;
    let r = http()
        .post(stack.url("/api/auth/sign-in/email"))
        .header("forwarded", "for=203.0.113.100")
        .json(&json!({"email": "victim@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_better_auth_429(r).await;
}

#[tokio::test]
async fn limits_hold_across_auth_replicas() {
    let db = edge_testkit::test_database().await;
    let url = db.url.clone();
    let mut stack = Stack::start_on(db, |c| c.sign_in_limit = RateLimit::default()).await;
    // A second auth replica on the same database, with its own gateway.
    let mut config = crate::auth_config(&url);
    config.sign_in_limit = RateLimit::default();
    let other = edge_auth::Application::build(config).await.unwrap();
    let other_grpc = other.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(other.run_until(async {
        let _ = stopped.await;
    }));
    let second = stack
        .gateway_with(|c| c.auth_grpc_url = format!("http://{other_grpc}"))
        .await;
    crate::sign_up(&stack, "victim@example.com").await;
    let mut statuses = Vec::new();
    for base in [&stack.base, &second, &stack.base, &second] {
        statuses.push(
            wrong_sign_in(base, None, "victim@example.com")
                .await
                .status(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
    // Per account too, whatever the address: the 11th attempt on one account within a minute.
    let mut stack2 = default_limits().await;
    let spread = stack2
        .gateway_with(|c| c.trusted_proxies = "127.0.0.0/8".parse().unwrap())
        .await;
    crate::sign_up(&stack2, "target@example.com").await;
    for i in 0..10 {
        let r = wrong_sign_in(&spread, Some(&format!("192.0.2.{i}")), "target@example.com").await;
        assert_eq!(r.status(), 401);
    }
    let r = wrong_sign_in(&spread, Some("192.0.2.200"), "target@example.com").await;
    assert_429_within(r, 60).await;
    drop(stop);
}

/// The per-account rule (10 failed sign-ins per 60 s, from any address) stops a guesser spread
/// over many addresses without letting it lock the owner out: a right password does not count,
/// and an address the account already has a session from is not held to the account rule (the
/// address rule still is).
#[tokio::test]
async fn the_account_rule_counts_failures_and_cannot_lock_the_owner_out() {
    let mut stack = default_limits().await;
    let gateway = stack
        .gateway_with(|c| c.trusted_proxies = "127.0.0.0/8".parse().unwrap())
        .await;
    let sign_in = |from: String, password: &'static str| {
        let gateway = gateway.clone();
        async move {
            post_as(
                &gateway,
                "/api/auth/sign-in/email",
                Some(&from),
                json!({"email": "owner@example.com", "password": password}),
            )
            .await
        }
    };
    // The owner signs up from home: a session from 198.51.100.50.
    let r = post_as(
        &gateway,
        "/api/auth/sign-up/email",
        Some("198.51.100.50"),
        json!({"name": "Owner", "email": "owner@example.com", "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Right passwords from twelve fresh addresses, past the rule's 10: none of them counts.
    for i in 0..12 {
        let r = sign_in(format!("203.0.113.{i}"), PASSWORD).await;
        assert_eq!(r.status(), 200, "right password from 203.0.113.{i}");
    }
    // A guesser on ten fresh addresses fills the rule ...
    for i in 0..10 {
        let r = wrong_sign_in(&gateway, Some(&format!("192.0.2.{i}")), "owner@example.com").await;
        assert_eq!(r.status(), 401);
    }
    // ... after which a fresh address is refused even with the right password.
    let r = sign_in("192.0.2.200".into(), PASSWORD).await;
    assert_429_within(r, 60).await;
    // The owner, from where it signed up, still signs in.
    let r = sign_in("198.51.100.50".into(), PASSWORD).await;
    assert_eq!(r.status(), 200);
    // That address is still held to the address rule: 3 sign-ins per 10 s.
    for _ in 0..2 {
        let r = sign_in("198.51.100.50".into(), "not the password").await;
        assert_eq!(r.status(), 401);
    }
    assert_better_auth_429(sign_in("198.51.100.50".into(), PASSWORD).await).await;
}

/// POSTs a JSON body to `path` as the client `forwarded_for` says, `n` times; the statuses.
async fn statuses(base: &str, path: &str, forwarded_for: Option<&str>, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = post_as(base, path, forwarded_for, json!({"email": "x@example.com"})).await;
        out.push(r.status().as_u16());
    }
    out
}

#[tokio::test]
async fn the_other_auth_routes_have_better_auths_limits_per_client() {
    let mut stack = default_limits().await;
    let gateway = stack
        .gateway_with(|c| c.trusted_proxies = "127.0.0.0/8".parse().unwrap())
        .await;
    // (path, Better Auth's max, its window): the strict rule, the mail rule, the default.
    for (path, max, window) in [
        ("/api/auth/change-password", 3, 10),
        ("/api/auth/change-email", 3, 10),
        ("/api/auth/request-password-reset", 3, 60),
        ("/api/auth/send-verification-email", 3, 60),
        ("/api/auth/forget-password", 3, 60),
        ("/api/auth/update-user", 100, 10),
        ("/api/auth/sign-out", 100, 10),
    ] {
        let client = Some("198.51.100.10");
        let seen = statuses(&gateway, path, client, max).await;
        assert!(
            seen.iter().all(|s| *s != 429),
            "{path}: refused within its {max}: {seen:?}"
        );
        let r = post_as(&gateway, path, client, json!({"email": "x@example.com"})).await;
        assert_429_within(r, window).await;
        // Another client behind the same proxy is not limited.
        let seen = statuses(&gateway, path, Some("198.51.100.11"), 1).await;
        assert_ne!(seen, [429], "{path}");
    }
    // Counted in Better Auth's table, one row per client and path.
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
    let (rows,): (i64,) =
        sqlx::query_as(r#"SELECT COUNT(*) FROM "rateLimit" WHERE key LIKE '198.51.100.10|%'"#)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows, 7,
        "one row per client and path, in Better Auth's table"
    );
    // Made-up paths are 404 and count nothing (they would grow the shared table without
    // bound); a route with a parameter counts under its pattern, never the token in the path.
    for i in 0..50 {
        let r = post_as(
            &gateway,
            &format!("/api/auth/made-up-{i}"),
            Some("198.51.100.12"),
            json!({}),
        )
        .await;
        assert_eq!(r.status(), 404);
    }
    let r = http()
        .get(format!(
            "{gateway}/api/auth/reset-password/SECRETTOKEN123?callbackURL=/r"
        ))
        .header("x-forwarded-for", "198.51.100.12")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_redirection(), "{}", r.status());
    let keys: Vec<(String,)> =
        sqlx::query_as(r#"SELECT key FROM "rateLimit" WHERE key LIKE '198.51.100.12|%'"#)
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        keys,
        [("198.51.100.12|/reset-password/{token}".to_owned(),)],
        "made-up paths add no rows; the token stays out of the key"
    );
}

#[tokio::test]
async fn the_other_routes_ignore_spoofed_forwarding_headers() {
    let stack = default_limits().await;
    for i in 0..3 {
        let spoof = format!("203.0.113.{i}");
        let seen = statuses(&stack.base, "/api/auth/change-password", Some(&spoof), 1).await;
        assert_ne!(seen, [429]);
    }
    let r = post_as(
        &stack.base,
        "/api/auth/change-password",
        Some("203.0.113.99"),
        json!({}),
    )
    .await;
    assert_429_within(r, 10).await;
}

#[tokio::test]
async fn the_other_routes_limits_hold_across_gateways_and_auth_replicas() {
    let db = edge_testkit::test_database().await;
    let url = db.url.clone();
    let stack = Stack::start_on(db, |c| c.sign_in_limit = RateLimit::default()).await;
    let mut config = crate::auth_config(&url);
    config.sign_in_limit = RateLimit::default();
    let other = edge_auth::Application::build(config).await.unwrap();
    let other_grpc = other.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(other.run_until(async {
        let _ = stopped.await;
    }));
    let mut stack = stack;
    let second = stack
        .gateway_with(|c| c.auth_grpc_url = format!("http://{other_grpc}"))
        .await;
    let mut seen = Vec::new();
    for base in [&stack.base, &second, &stack.base, &second] {
        seen.extend(statuses(base, "/api/auth/request-password-reset", None, 1).await);
    }
    assert!(seen[..3].iter().all(|s| *s != 429), "{seen:?}");
    assert_eq!(seen[3], 429, "{seen:?}");
    drop(stop);
}

/// `get-session`, `token`, `convex/token` and the JWKS routes: Better Auth's default rule (100
/// per 10 s per client address and path), counted in each gateway's memory as Better Auth's
/// default store counts per process; concurrent requests of one client never get more.
#[tokio::test]
async fn the_cached_read_routes_hold_better_auths_default_rule_per_client() {
    let mut stack = Stack::start().await;
    let gateway = stack
        .gateway_with(|c| {
            c.trusted_proxies = "127.0.0.0/8".parse().unwrap();
            c.read_rate_limit = Some(edge_gateway::config::ReadRateLimit {
                max: 100,
                window: std::time::Duration::from_secs(10),
            });
        })
        .await;
    let (_, value) = crate::sign_up(&stack, "reader@example.com").await;
    let cookie = format!("better-auth.session_token={value}");
    let read = |path: &'static str, client: &'static str| {
        let (gateway, cookie) = (gateway.clone(), cookie.clone());
        tokio::spawn(async move {
            http()
                .get(format!("{gateway}/api/auth{path}"))
                .header("cookie", cookie)
                .header("x-forwarded-for", client)
                .send()
                .await
                .unwrap()
        })
    };
    // 150 at once from one client: exactly 100 served, the rest refused as Better Auth refuses.
    let answers: Vec<reqwest::Response> =
        futures_util::future::join_all((0..150).map(|_| read("/convex/token", "198.51.100.7")))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let served = answers.iter().filter(|r| r.status() == 200).count();
    assert_eq!(served, 100);
    for r in answers.into_iter().filter(|r| r.status() != 200) {
        assert_better_auth_429(r).await;
    }
    // Its other routes, and other clients on this one, have their own counts.
    for (path, client) in [
        ("/get-session", "198.51.100.7"),
        ("/convex/jwks", "198.51.100.7"),
        ("/convex/token", "198.51.100.8"),
    ] {
        assert_eq!(read(path, client).await.unwrap().status(), 200, "{path}");
    }
    // The limit is this gateway's: the first, with the rule off, still serves that client.
    let r = http()
        .get(stack.url("/api/auth/convex/token"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
