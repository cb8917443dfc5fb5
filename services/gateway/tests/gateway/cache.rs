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
