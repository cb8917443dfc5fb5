//! The happy paths with Better Auth's bodies and cookies, and the sign-in rate limit.

use chrono::DateTime;
use serde_json::{Value, json};

use crate::{PASSWORD, Stack, cookie_of, http, sign_up};

#[tokio::test]
async fn sign_up_sign_in_session_token_sign_out() {
    let stack = Stack::start().await;
    let client = http();
    let (body, cookie) = sign_up(&stack, "Grace@Example.com").await;
    let user = &body["user"];
    assert_eq!(
        user["email"], "grace@example.com",
        "emails are lowercased like Better Auth"
    );
    assert_eq!(user["emailVerified"], false);
    assert_eq!(body["token"].as_str().unwrap().len(), 32);
    for field in ["createdAt", "updatedAt"] {
        let s = user[field].as_str().unwrap();
        assert!(
            s.ends_with('Z') && s.len() == 24,
            "{s}: JavaScript Date JSON"
        );
        DateTime::parse_from_rfc3339(s).unwrap();
    }

    let r = stack
        .post(
            "/api/auth/sign-in/email",
            json!({"email": "grace@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let set_cookie = r
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        set_cookie.ends_with("; Max-Age=604800; Path=/; HttpOnly; SameSite=Lax"),
        "{set_cookie}"
    );
    let signed_in_cookie = cookie_of(&r).unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["redirect"], false);
    assert_eq!(body["user"]["id"], user["id"]);
    assert_ne!(signed_in_cookie, cookie, "a new session");

    let with_cookie = |c: &str| format!("better-auth.session_token={c}");
    let session: Value = stack
        .get("/api/auth/get-session", Some(&signed_in_cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"]["id"], user["id"]);
    assert_eq!(session["session"]["userId"], user["id"]);
    assert_eq!(session["session"]["token"], body["token"]);

    // Both token routes answer {"token"} with a JWT that our JWKS verifies.
    let jwks = stack.get("/api/auth/convex/jwks", None).await;
    assert!(
        jwks.headers()
            .get("cache-control")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let jwks = jwks.text().await.unwrap();
    assert_eq!(
        jwks,
        stack
            .get("/api/auth/jwks", None)
            .await
            .text()
            .await
            .unwrap()
    );
    let verifier = edge_keys::Verifier::from_jwks(&jwks)
        .unwrap()
        .with_audience("convex")
        .with_issuer("http://localhost:8080");
    for path in ["/api/auth/convex/token", "/api/auth/token"] {
        let r: Value = client
            .get(stack.url(path))
            .header("cookie", with_cookie(&cookie))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let claims = verifier
            .verify(r["token"].as_str().unwrap(), chrono::Utc::now().timestamp())
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], user["id"]);
        assert_eq!(claims["email"], "grace@example.com");
        assert_eq!(claims["name"], "Grace Hopper");
    }

    // Sign-out clears the cookie and ends the session; the token route then refuses it.
    let r = client
        .post(stack.url("/api/auth/sign-out"))
        .header("origin", &stack.base)
        .header("cookie", with_cookie(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));
    let r = stack.get("/api/auth/convex/token", Some(&cookie)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "UNAUTHORIZED");
    let session: Value = stack
        .get("/api/auth/get-session", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session, Value::Null);
    // The other session is untouched.
    let r = stack.get("/api/auth/token", Some(&signed_in_cookie)).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn errors_have_better_auths_codes() {
    let stack = Stack::start().await;
    let client = http();
    sign_up(&stack, "taken@example.com").await;
    let r = stack
        .post(
            "/api/auth/sign-up/email",
            json!({"name": "X", "email": "taken@example.com", "password": PASSWORD}),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL"
    );
    let r = stack
        .post(
            "/api/auth/sign-in/email",
            json!({"email": "taken@example.com", "password": "wrong password"}),
        )
        .await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"code": "INVALID_EMAIL_OR_PASSWORD", "message": "Invalid email or password"})
    );
    // Without a cookie, as Better Auth 1.7: `{"success": true}`.
    let r = client
        .post(stack.url("/api/auth/sign-out"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));
    let r = stack.get("/api/auth/get-session", None).await;
    assert_eq!(r.json::<Value>().await.unwrap(), Value::Null);
    let r = stack.get("/api/auth/nope", None).await;
    assert_eq!(r.status(), 404);
    // Cross-site sign-in attempts are refused like Better Auth's origin check.
    let r = client
        .post(stack.url("/api/auth/sign-in/email"))
        .header("origin", "https://evil.example")
        .json(&json!({"email": "taken@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "INVALID_ORIGIN");
}

#[tokio::test]
async fn sign_in_is_rate_limited_with_429() {
    let db = edge_testkit::test_database().await;
    let stack = Stack::start_on(db, |c| c.sign_in_limit.per_address = 4).await;
    sign_up(&stack, "rl@example.com").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = stack
            .post(
                "/api/auth/sign-in/email",
                json!({"email": "rl@example.com", "password": "not the password"}),
            )
            .await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            assert!(r.headers().get("x-retry-after").is_some());
            assert_eq!(
                r.json::<Value>().await.unwrap(),
                json!({"message": "Too many requests. Please try again later."})
            );
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429, 429]);
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let stack = Stack::start().await;
    let client = http();
    assert_eq!(stack.get("/healthz", None).await.status(), 200);
    // Ready once auth answers and the session log's backlog is read.
    crate::revocation::wait_ready(&stack.base).await;
    stack.get("/api/auth/get-session", None).await;
    let metrics = stack.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(
            "edge_gateway_request_duration_seconds_bucket{route=\"/api/auth/get-session\""
        ),
        "{metrics}"
    );
    let auth = format!("http://{}", stack.auth_http);
    for path in ["/healthz", "/readyz", "/metrics", "/api/auth/jwks"] {
        assert_eq!(
            client
                .get(format!("{auth}{path}"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{path}"
        );
    }
    let metrics = client
        .get(format!("{auth}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "edge_auth_jwks_db_reads_total",
        "edge_auth_tokens_issued_total",
        "edge_auth_session_db_reads_total",
    ] {
        assert!(metrics.contains(name), "{name}");
    }
}
