//! Bad input gets a clear 4xx in Better Auth's error shape and writes nothing.

use serde_json::{Value, json};

use crate::{PASSWORD, Stack, http, sign_up};

async fn expect_error(r: reqwest::Response, status: u16, code: &str) {
    assert_eq!(r.status(), status);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(!body["message"].as_str().unwrap().is_empty());
}

#[tokio::test]
async fn malformed_bodies_change_nothing() {
    let stack = Stack::start().await;
    let (_, cookie) = sign_up(&stack, "exists@example.com").await;
    let before = stack.counts().await;
    let client = http();
    let post = |path: &str, body: &'static str| {
        client
            .post(stack.url(path))
            .header("content-type", "application/json")
            .body(body)
    };
    for path in ["/api/auth/sign-up/email", "/api/auth/sign-in/email"] {
        expect_error(
            post(path, "{not json").send().await.unwrap(),
            400,
            "BAD_REQUEST",
        )
        .await;
        expect_error(
            post(path, "[1,2]").send().await.unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        expect_error(
            post(path, "{}").send().await.unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        expect_error(
            post(path, r#"{"email": 5, "password": "x", "name": "y"}"#)
                .send()
                .await
                .unwrap(),
            400,
            "VALIDATION_ERROR",
        )
        .await;
        let r = client
            .post(stack.url(path))
            .header("content-type", "text/plain")
            .body("email=a")
            .send()
            .await
            .unwrap();
        expect_error(r, 415, "UNSUPPORTED_MEDIA_TYPE").await;
        let huge = format!(
            r#"{{"name":"{}","email":"a@b.co","password":"{PASSWORD}"}}"#,
            "x".repeat(200_000)
        );
        let r = client
            .post(stack.url(path))
            .header("content-type", "application/json")
            .body(huge)
            .send()
            .await
            .unwrap();
        expect_error(r, 413, "PAYLOAD_TOO_LARGE").await;
    }
    let sign_up = |body: &'static str| post("/api/auth/sign-up/email", body);
    expect_error(
        sign_up(r#"{"name":"a","email":"nope","password":"correct horse"}"#)
            .send()
            .await
            .unwrap(),
        400,
        "VALIDATION_ERROR",
    )
    .await;
    expect_error(
        post(
            "/api/auth/sign-in/email",
            r#"{"email":"nope","password":"correct horse"}"#,
        )
        .send()
        .await
        .unwrap(),
        400,
        "INVALID_EMAIL",
    )
    .await;
    expect_error(
        sign_up(r#"{"name":"a","email":"a@b.co","password":"short"}"#)
            .send()
            .await
            .unwrap(),
        400,
        "PASSWORD_TOO_SHORT",
    )
    .await;
    expect_error(
        sign_up(r#"{"name":"a","email":"exists@example.com","password":"correct horse"}"#)
            .send()
            .await
            .unwrap(),
        422,
        "USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL",
    )
    .await;
    assert_eq!(stack.counts().await, before, "no row written");

    // Garbage and tampered cookies: 401 on the token route, `null` session, nothing ended.
    let tampered = {
        let (token, sig) = cookie.split_once('.').unwrap();
        let mut t = token.to_owned().into_bytes();
        t[0] = if t[0] == b'A' { b'B' } else { b'A' };
        format!("{}.{sig}", String::from_utf8(t).unwrap())
    };
    let forged_sig = format!(
        "{}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D",
        cookie.split_once('.').unwrap().0
    );
    let long = "x".repeat(5000);
    for bad in [
        "garbage",
        "%%%",
        ".",
        tampered.as_str(),
        forged_sig.as_str(),
        long.as_str(),
    ] {
        let header = format!("better-auth.session_token={bad}");
        let r = client
            .get(stack.url("/api/auth/convex/token"))
            .header("cookie", &header)
            .send()
            .await
            .unwrap();
        expect_error(r, 401, "UNAUTHORIZED").await;
        let r = client
            .get(stack.url("/api/auth/get-session"))
            .header("cookie", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap(), Value::Null);
        // Better Auth 1.7 answers every sign-out `{"success": true}` and clears the cookie.
        let r = client
            .post(stack.url("/api/auth/sign-out"))
            .header("origin", &stack.base)
            .header("cookie", &header)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"success": true}));
    }
    assert_eq!(stack.counts().await, before, "no row written or deleted");
    // The real cookie still works.
    let r = stack.get("/api/auth/convex/token", Some(&cookie)).await;
    assert_eq!(r.status(), 200);
}
