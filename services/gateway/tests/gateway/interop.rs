//! Two-way interop with the real better-auth npm package on one Postgres database, and our JWTs
//! under `jose` with Convex's rules.

use serde_json::{Value, json};

use crate::{PASSWORD, SECRET, Stack};

fn arg(v: Value) -> String {
    v.to_string()
}

#[tokio::test]
async fn better_auth_and_convex_edge_share_users_sessions_and_passwords() {
    // Better Auth creates its own schema first: convex-edge must take the database as it is.
    let db = edge_testkit::test_database().await;
    let migrated = edge_testkit::node(
        "better-auth.mjs",
        &["migrate".into(), arg(json!({"databaseUrl": db.url}))],
    )
    .await;
    assert_eq!(migrated["migrated"], true, "{migrated}");
    let by_ba = edge_testkit::node(
        "better-auth.mjs",
        &["sign-up".into(), arg(json!({"databaseUrl": db.url, "secret": SECRET, "email": "ba@example.com", "password": PASSWORD, "name": "From Better Auth"}))],
    )
    .await;
    let ba_cookie = by_ba["cookie"]
        .as_str()
        .unwrap_or_else(|| panic!("{by_ba}"))
        .to_owned();

    let stack = Stack::start_on(db, |_| {}).await;

    // Better Auth's cookie gets a token from convex-edge.
    let r = stack.get("/api/auth/convex/token", Some(&ba_cookie)).await;
    assert_eq!(r.status(), 200);
    let jwt = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // ...which jose verifies under Convex's rules against our JWKS endpoint.
    let verified = edge_testkit::node(
        "jose-verify.mjs",
        &[arg(json!({"jwksUrl": stack.url("/api/auth/convex/jwks"), "jwt": jwt, "issuer": "http://localhost:8080", "audience": "convex"}))],
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["payload"]["sub"], by_ba["userId"]);
    assert_eq!(verified["header"]["alg"], "RS256");
    assert!(verified["header"]["kid"].is_string());
    // jose refuses the same token for another audience.
    let wrong = edge_testkit::node(
        "jose-verify.mjs",
        &[arg(json!({"jwksUrl": stack.url("/api/auth/convex/jwks"), "jwt": jwt, "issuer": "http://localhost:8080", "audience": "other"}))],
    )
    .await;
    assert_eq!(wrong["ok"], false);

    // Better Auth's password hash signs in through convex-edge.
    let r = stack
        .post(
            "/api/auth/sign-in/email",
            json!({"email": "ba@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let edge_cookie_of_ba_user = crate::cookie_of(&r).unwrap();

    // A user created by convex-edge signs in through Better Auth.
    let (body, edge_cookie) = crate::sign_up(&stack, "edge@example.com").await;
    let by_edge = edge_testkit::node(
        "better-auth.mjs",
        &["sign-in".into(), arg(json!({"databaseUrl": stack.db.url, "secret": SECRET, "email": "edge@example.com", "password": PASSWORD}))],
    )
    .await;
    assert_eq!(by_edge["userId"], body["user"]["id"], "{by_edge}");

    // And Better Auth accepts the session cookies convex-edge writes.
    for cookie in [&edge_cookie, &edge_cookie_of_ba_user] {
        let session = edge_testkit::node(
            "better-auth.mjs",
            &[
                "session".into(),
                arg(json!({"databaseUrl": stack.db.url, "secret": SECRET, "cookie": cookie})),
            ],
        )
        .await;
        assert!(session["userId"].is_string(), "{session}");
    }

    // On the database Better Auth created, the triggers convex-edge installed log a session
    // Better Auth's app ends: the cached token stops.
    crate::revocation::wait_ready(&stack.base).await;
    for _ in 0..2 {
        assert_eq!(
            stack
                .get("/api/auth/convex/token", Some(&ba_cookie))
                .await
                .status(),
            200
        );
    }
    let revoked = edge_testkit::node(
        "better-auth.mjs",
        &["revoke-other-sessions".into(), arg(json!({"databaseUrl": stack.db.url, "secret": SECRET, "cookie": edge_cookie_of_ba_user}))],
    )
    .await;
    assert_eq!(revoked["ok"], true, "{revoked}");
    crate::revocation::until_refused(&stack.base, &ba_cookie, "better-auth's own session").await;
}

#[tokio::test]
async fn es256_tokens_verify_with_jose() {
    let db = edge_testkit::test_database().await;
    let stack = Stack::start_on(db, |c| c.alg = edge_keys::Alg::ES256).await;
    let (_, cookie) = crate::sign_up(&stack, "es@example.com").await;
    let r: Value = stack
        .get("/api/auth/convex/token", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    let verified = edge_testkit::node(
        "jose-verify.mjs",
        &[arg(json!({"jwksUrl": stack.url("/api/auth/jwks"), "jwt": r["token"], "issuer": "http://localhost:8080", "audience": "convex"}))],
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["header"]["alg"], "ES256");
    for claim in [
        "iat",
        "exp",
        "iss",
        "aud",
        "sub",
        "sessionId",
        "name",
        "email",
        "emailVerified",
    ] {
        assert!(verified["payload"].get(claim).is_some(), "{claim}");
    }
}
