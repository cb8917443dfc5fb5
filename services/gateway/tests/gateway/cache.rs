//! The token cache in the gateway: hits skip auth; a sign-out on one gateway is refused by
//! every gateway within a second.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::{Stack, sign_up};

async fn token_status(base: &str, cookie: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Calls the token route until a call is served without a session read (the cache is trusted
/// once the revocation stream has caught up).
pub(crate) async fn until_cached(stack: &Stack, base: &str, cookie: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = stack.auth.store().reads().session.load(Ordering::Relaxed);
        assert_eq!(token_status(base, cookie).await, 200);
        if stack.auth.store().reads().session.load(Ordering::Relaxed) == before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{base} never served from its cache"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cached_tokens_skip_auth_and_sign_out_revokes_on_every_gateway() {
    let mut stack = Stack::start().await;
    let redis = edge_testkit::redis_url();
    let others = [
        stack.extra_gateway(&redis).await,
        stack.extra_gateway(&redis).await,
    ];
    let (_, cookie) = sign_up(&stack, "cached@example.com").await;
    let first = stack.base.clone();
    for base in [&first, &others[0], &others[1]] {
        until_cached(&stack, base, &cookie).await;
    }
    // Ten more requests on each gateway read no session at all.
    let before = stack.auth.store().reads().session.load(Ordering::Relaxed);
    for base in [&first, &others[0], &others[1]] {
        for _ in 0..10 {
            assert_eq!(token_status(base, &cookie).await, 200);
        }
    }
    assert_eq!(
        stack.auth.store().reads().session.load(Ordering::Relaxed),
        before
    );

    // Sign out through the first gateway: refused there at once, and elsewhere within 1 s.
    let r = reqwest::Client::new()
        .post(stack.url("/api/auth/sign-out"))
        .header("origin", &stack.base)
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let signed_out = Instant::now();
    assert_eq!(token_status(&first, &cookie).await, 401);
    for base in &others {
        loop {
            let status = token_status(base, &cookie).await;
            if status == 401 {
                break;
            }
            assert!(
                signed_out.elapsed() < Duration::from_secs(1),
                "{base} still served a revoked token"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The token route's answer for `cookie`, with `Cache-Control: no-cache` when `fresh` (how a
/// Convex client's `forceRefreshToken` reaches it): the status and the JWT, if any.
async fn token(base: &str, cookie: &str, fresh: bool) -> (u16, Option<String>) {
    let mut request = reqwest::Client::new()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"));
    if fresh {
        request = request.header("cache-control", "no-cache");
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    (status, body["token"].as_str().map(str::to_owned))
}

fn jti(jwt: &str) -> String {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["jti"]
        .as_str()
        .expect("every token has a jti")
        .to_owned()
}

/// A client that forces a refresh (`Cache-Control: no-cache`) gets a token newly issued by
/// auth — a different string, even within the same second — which then replaces the cached one
/// in L1 and Redis, so other requests keep being served from the cache; a sign-out refuses
/// both kinds of request.
#[tokio::test]
async fn a_forced_refresh_gets_a_new_token_that_replaces_the_cached_one() {
    let mut stack = Stack::start().await;
    let redis = edge_testkit::redis_url();
    // Tokens stay servable for the whole test however slow the machine: age is not the subject.
    let long_lived = |config: &mut edge_gateway::Config| {
        let cache = config.cache.as_mut().unwrap();
        cache.redis_url = Some(redis.clone());
        cache.max_token_age = Duration::from_secs(3600);
    };
    let base = stack.gateway_with(long_lived).await;
    let (_, cookie) = sign_up(&stack, "forced@example.com").await;
    until_cached(&stack, &base, &cookie).await;
    let reads = || stack.auth.store().reads().session.load(Ordering::Relaxed);

    let before = reads();
    let (status, cached) = token(&base, &cookie, false).await;
    assert_eq!(status, 200);
    let cached = cached.unwrap();
    assert_eq!(
        token(&base, &cookie, false).await.1.as_deref(),
        Some(&*cached)
    );
    assert_eq!(reads(), before, "plain requests are cache hits");

    let (status, fresh) = token(&base, &cookie, true).await;
    assert_eq!(status, 200);
    let fresh = fresh.unwrap();
    assert_ne!(fresh, cached, "a forced refresh is a new token");
    assert_ne!(jti(&fresh), jti(&cached));
    assert_eq!(reads(), before + 1, "issued by auth");
    // Pragma: no-cache (HTTP/1.0's form) asks the same.
    let pragma = reqwest::Client::new()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .header("pragma", "no-cache")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_ne!(pragma["token"].as_str(), Some(&*fresh));
    let newest = pragma["token"].as_str().unwrap().to_owned();

    // The newest token is what the cache now serves, here and (from Redis) on another gateway.
    let before = reads();
    assert_eq!(
        token(&base, &cookie, false).await.1.as_deref(),
        Some(&*newest)
    );
    assert_eq!(reads(), before);
    let other = stack.gateway_with(long_lived).await;
    until_cached(&stack, &other, &cookie).await;
    assert_eq!(
        token(&other, &cookie, false).await.1.as_deref(),
        Some(&*newest)
    );

    // Signed out: refused with or without no-cache, on both gateways.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", &base)
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(token(&base, &cookie, true).await, (401, None));
    assert_eq!(token(&base, &cookie, false).await, (401, None));
    let deadline = Instant::now() + Duration::from_secs(30);
    while token(&other, &cookie, false).await.0 != 401 {
        assert!(
            Instant::now() < deadline,
            "the other gateway never refused the revoked session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(token(&other, &cookie, true).await, (401, None));
}

/// The token route's answer for `cookie` with `convex_jwt` as the Convex JWT cookie the
/// client sends back (none when `None`): the JWT, and the cookie the answer sets.
async fn token_with_jar(
    base: &str,
    path: &str,
    cookie: &str,
    convex_jwt: Option<&str>,
) -> (String, Option<String>) {
    let mut header = format!("better-auth.session_token={cookie}");
    if let Some(jwt) = convex_jwt {
        header.push_str(&format!("; better-auth.convex_jwt={jwt}"));
    }
    let response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .header("cookie", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let set = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("better-auth.convex_jwt="));
    let body: serde_json::Value = response.json().await.unwrap();
    (body["token"].as_str().unwrap().to_owned(), set)
}

/// The Convex client fetches a token, and as soon as the server confirms it fetches another
/// with `forceRefreshToken`; a `fetchToken` that sends nothing for it must still get a new
/// string, or the client stops refreshing. A browser keeps the `convex_jwt` cookie the route
/// sets (as `@convex-dev/better-auth`'s `convex` plugin sets it) and sends it back: a request
/// that carries it is answered with a newly issued token, which then replaces the cached one.
/// Callers without it (server-side renders) keep getting the cached token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_cookies_gets_a_new_token_each_time_it_asks() {
    let mut stack = Stack::start().await;
    let base = stack
        .gateway_with(|config| {
            config.cache.as_mut().unwrap().max_token_age = Duration::from_secs(3600);
        })
        .await;
    let (_, cookie) = sign_up(&stack, "jar@example.com").await;
    until_cached(&stack, &base, &cookie).await;
    let reads = || stack.auth.store().reads().session.load(Ordering::Relaxed);

    // The first fetch, with no token held: the cached one, and the cookie that now holds it.
    let before = reads();
    let (cached, set) = token_with_jar(&base, "/api/auth/convex/token", &cookie, None).await;
    assert_eq!(reads(), before, "a cache hit");
    let set = set.expect("the route sets the Convex JWT cookie");
    assert!(
        set.starts_with(&format!("better-auth.convex_jwt={cached};")),
        "{set}"
    );
    assert!(set.contains("HttpOnly") && set.contains("Path=/") && set.contains("SameSite=Lax"));
    let max_age: i64 = set
        .split("; ")
        .find_map(|a| a.strip_prefix("Max-Age="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=900).contains(&max_age),
        "the token's remaining lifetime: {set}"
    );

    // The forced refetch right after, sending back what the browser kept: a new token.
    let (second, set) =
        token_with_jar(&base, "/api/auth/convex/token", &cookie, Some(&cached)).await;
    assert_ne!(
        second, cached,
        "the client must not get the string it holds"
    );
    assert_ne!(jti(&second), jti(&cached));
    assert_eq!(reads(), before + 1, "issued by auth");
    assert!(
        set.unwrap()
            .starts_with(&format!("better-auth.convex_jwt={second};"))
    );
    let (third, _) = token_with_jar(&base, "/api/auth/convex/token", &cookie, Some(&second)).await;
    assert_ne!(third, second);

    // The newest is what a caller without the cookie now shares, at cache speed.
    let before = reads();
    let (shared, _) = token_with_jar(&base, "/api/auth/convex/token", &cookie, None).await;
    assert_eq!(shared, third);
    assert_eq!(reads(), before);
    // The jwt plugin's `/api/auth/token` sets no such cookie, as in Better Auth.
    let (_, set) = token_with_jar(&base, "/api/auth/token", &cookie, None).await;
    assert_eq!(set, None);

    // Signing out clears it with the session's cookies (a browser without it gets what Better
    // Auth alone sends, as `parity::` checks).
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", &base)
        .header(
            "cookie",
            format!("better-auth.session_token={cookie}; better-auth.convex_jwt={third}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get_all("set-cookie").iter().any(|v| v
            .to_str()
            .unwrap()
            .starts_with("better-auth.convex_jwt=; Max-Age=0")),
        "{:?}",
        r.headers()
    );
}
