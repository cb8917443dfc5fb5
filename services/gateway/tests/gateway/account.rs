//! Better Auth's session and account routes and the email flows: the official client
//! (`better-auth/client`) against the gateway, mail delivered to a real SMTP server
//! (aiosmtpd, `tests/smtp/sink.py`), and bad input on each route.

use serde_json::{Value, json};

use crate::{PASSWORD, Stack, cookie_of, http};

pub use edge_testkit::SmtpSink as Smtp;

async fn stack_with_mail(smtp: &Smtp, tweak: impl FnOnce(&mut edge_auth::Config)) -> Stack {
    let db = edge_testkit::test_database().await;
    let url = smtp.url();
    Stack::start_on(db, move |c| {
        c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
        c.mail.from = "Edge Tests <tests@example.com>".into();
        c.account.delete_user_enabled = true;
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn the_official_client_runs_an_apps_account_and_session_screens() {
    let smtp = Smtp::start().await;
    // Links are made for the site's public origin (BETTER_AUTH_URL, here the default: the
    // issuer); the script opens them on this gateway.
    let stack = stack_with_mail(&smtp, |c| c.account.change_email_enabled = true).await;
    let out = edge_testkit::node(
        "account-client.mjs",
        &[json!({"baseURL": stack.base, "mailDir": smtp.dir, "publicURL": "http://localhost:8080", "email": "ada@example.com", "password": PASSWORD}).to_string()],
    )
    .await;
    assert_eq!(out["ok"], true, "{out:#}");
    // Every mail came from EMAIL_FROM with both bodies and its own Message-ID on the
    // sender's domain (RFC 5322 §3.6.4).
    let mut ids = std::collections::HashSet::new();
    for m in smtp.messages() {
        assert_eq!(m["from"], "tests@example.com");
        assert!(m["html"].as_str().unwrap().contains("<a href="), "{m}");
        let id = m["message_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no Message-ID: {m}"));
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
        assert!(ids.insert(id.to_owned()), "Message-ID {id} used twice");
    }
}

/// `AUTH_REQUIRE_EMAIL_VERIFICATION`: sign-up opens no session and mails a link; sign-in is
/// refused with Better Auth's code until the link is opened.
#[tokio::test]
async fn sign_in_waits_for_a_verified_address() {
    let smtp = Smtp::start().await;
    let stack = stack_with_mail(&smtp, |c| {
        c.account.require_email_verification = true;
        c.account.send_verification_on_sign_up = true;
    })
    .await;
    let body = json!({"name": "Grace", "email": "grace@example.com", "password": PASSWORD, "callbackURL": "/welcome"});
    let r = stack.post("/api/auth/sign-up/email", body.clone()).await;
    assert_eq!(r.status(), 200);
    assert!(cookie_of(&r).is_none(), "no session before verification");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["token"], Value::Null);
    assert_eq!(answer["user"]["emailVerified"], false);
    // A second sign-up with the same address gets the same kind of answer and no mail.
    let again = stack.post("/api/auth/sign-up/email", body).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["token"], Value::Null);

    let sign_in = json!({"email": "grace@example.com", "password": PASSWORD});
    let r = stack.post("/api/auth/sign-in/email", sign_in.clone()).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "EMAIL_NOT_VERIFIED"
    );

    let (mail, link) = smtp.link(0).await;
    assert_eq!(mail["to"], json!(["grace@example.com"]));
    let path = link.strip_prefix("http://localhost:8080").unwrap();
    assert!(path.starts_with("/api/auth/verify-email?token="), "{path}");
    assert!(path.ends_with("&callbackURL=%2Fwelcome"), "{path}");
    let r = http().get(stack.url(path)).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/welcome");

    let r = stack.post("/api/auth/sign-in/email", sign_in).await;
    assert_eq!(r.status(), 200);
    let cookie = cookie_of(&r).unwrap();
    let session: Value = stack
        .get("/api/auth/get-session", Some(&cookie))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(session["user"]["emailVerified"], true);
    // The token's claims say so too.
    let r = stack.get("/api/auth/convex/token", Some(&cookie)).await;
    let jwt = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = jwt.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["emailVerified"], true);
    assert_eq!(smtp.messages().len(), 1, "one mail in all");
}

/// Row counts of `verification` (bad input must not add any).
async fn verifications(stack: &Stack) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
    let (n,): (i64,) = sqlx::query_as(r#"SELECT COUNT(*) FROM "verification""#)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    n
}

/// Bad input on each route: a clear 4xx with Better Auth's code, nothing written.
#[tokio::test]
async fn bad_input_on_the_account_routes_changes_nothing() {
    let smtp = Smtp::start().await;
    let stack = stack_with_mail(&smtp, |_| {}).await;
    let (_, cookie) = crate::sign_up(&stack, "bad@example.com").await;
    let before = (stack.counts().await, verifications(&stack).await);
    let post = |path: &'static str, body: Value, cookie: Option<String>| {
        let stack = &stack;
        async move {
            let mut r = http().post(stack.url(path)).json(&body);
            if let Some(c) = cookie {
                // A browser names its origin on every cookie-bearing POST.
                r = r
                    .header("cookie", format!("better-auth.session_token={c}"))
                    .header("origin", &stack.base);
            }
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let c = || Some(cookie.clone());
    let cases: Vec<(&str, Value, Option<String>, u16, &str)> = vec![
        (
            "/api/auth/revoke-session",
            json!({"token": "x"}),
            None,
            401,
            "UNAUTHORIZED",
        ),
        (
            "/api/auth/revoke-session",
            json!({}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/revoke-session",
            json!({"token": 5}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/revoke-sessions",
            json!({}),
            Some("garbage".into()),
            401,
            "UNAUTHORIZED",
        ),
        (
            "/api/auth/revoke-other-sessions",
            json!({}),
            None,
            401,
            "UNAUTHORIZED",
        ),
        // As Better Auth's `APIError.fromStatus`: a message, no code.
        ("/api/auth/update-user", json!({}), c(), 400, ""),
        (
            "/api/auth/update-user",
            json!({"name": 1}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/update-user",
            json!({"email": "n@example.com"}),
            c(),
            400,
            "EMAIL_CAN_NOT_BE_UPDATED",
        ),
        (
            "/api/auth/update-user",
            json!({"name": "x".repeat(300)}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD, "newPassword": "short"}),
            c(),
            400,
            "PASSWORD_TOO_SHORT",
        ),
        (
            "/api/auth/change-password",
            json!({"currentPassword": "wrong one!", "newPassword": "long enough 1"}),
            c(),
            400,
            "INVALID_PASSWORD",
        ),
        (
            "/api/auth/change-email",
            json!({"newEmail": "n@example.com"}),
            c(),
            400,
            "CHANGE_EMAIL_DISABLED",
        ),
        (
            "/api/auth/delete-user",
            json!({"password": "wrong one!"}),
            c(),
            400,
            "INVALID_PASSWORD",
        ),
        (
            "/api/auth/delete-user",
            json!({"token": "abc"}),
            c(),
            400,
            "INVALID_TOKEN",
        ),
        (
            "/api/auth/request-password-reset",
            json!({"email": "not-an-email"}),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/request-password-reset",
            json!({"email": "bad@example.com", "redirectTo": "https://evil.example/x"}),
            None,
            403,
            "INVALID_REDIRECT_URL",
        ),
        (
            "/api/auth/request-password-reset",
            json!({"email": "bad@example.com", "redirectTo": "//evil.example/x"}),
            None,
            403,
            "INVALID_REDIRECT_URL",
        ),
        (
            "/api/auth/forget-password",
            json!({}),
            None,
            400,
            "VALIDATION_ERROR",
        ),
        (
            "/api/auth/reset-password",
            json!({"newPassword": "long enough 1"}),
            None,
            400,
            "INVALID_TOKEN",
        ),
        (
            "/api/auth/reset-password",
            json!({"newPassword": "long enough 1", "token": "nope"}),
            None,
            400,
            "INVALID_TOKEN",
        ),
        (
            "/api/auth/send-verification-email",
            json!({"email": "bad@example.com", "callbackURL": "https://evil.example"}),
            c(),
            403,
            "INVALID_CALLBACK_URL",
        ),
        (
            "/api/auth/send-verification-email",
            json!({"email": "other@example.com"}),
            c(),
            400,
            "EMAIL_MISMATCH",
        ),
        (
            "/api/auth/send-verification-email",
            json!({}),
            c(),
            400,
            "VALIDATION_ERROR",
        ),
    ];
    for (path, body, cookie, status, code) in cases {
        let (got, answer) = post(path, body.clone(), cookie).await;
        assert_eq!(
            (got, answer["code"].as_str().unwrap_or_default()),
            (status, code),
            "{path} {body}: {answer}"
        );
        assert!(answer["message"].is_string(), "{path} {body}: {answer}");
    }
    for (path, status, code) in [
        ("/api/auth/list-sessions", 401, "UNAUTHORIZED"),
        ("/api/auth/list-accounts", 401, "UNAUTHORIZED"),
        ("/api/auth/verify-email", 400, "VALIDATION_ERROR"),
        ("/api/auth/verify-email?token=garbage", 401, "INVALID_TOKEN"),
        (
            "/api/auth/verify-email?token=a.b.c&callbackURL=https://evil.example",
            403,
            "INVALID_CALLBACK_URL",
        ),
        (
            "/api/auth/reset-password/abc?callbackURL=https://evil.example",
            403,
            "INVALID_CALLBACK_URL",
        ),
    ] {
        let r = stack.get(path, None).await;
        let got = r.status().as_u16();
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            (got, answer["code"].as_str()),
            (status, Some(code)),
            "{path}: {answer}"
        );
    }
    let r = stack
        .get("/api/auth/reset-password/nope?callbackURL=%2Freset", None)
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/reset?error=INVALID_TOKEN");
    assert_eq!((stack.counts().await, verifications(&stack).await), before);
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());
    // The session is untouched.
    let r = stack.get("/api/auth/get-session", Some(&cookie)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["user"]["email"],
        "bad@example.com"
    );
}

/// Without a mail sender the mail routes answer as Better Auth does without one.
#[tokio::test]
async fn without_mail_the_mail_routes_say_so() {
    let stack = Stack::start().await;
    let r = stack
        .post(
            "/api/auth/request-password-reset",
            json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "RESET_PASSWORD_DISABLED"
    );
    let r = stack
        .post(
            "/api/auth/send-verification-email",
            json!({"email": "a@example.com"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "VERIFICATION_EMAIL_NOT_ENABLED"
    );
    let (_, cookie) = crate::sign_up(&stack, "nodelete@example.com").await;
    let r = http()
        .post(stack.url("/api/auth/delete-user"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .header("origin", &stack.base)
        .json(&json!({"password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "delete-user is off unless enabled");
}

/// The real better-auth and convex-edge on one Postgres: reset and verification links made by
/// either side work on the other, and sessions revoked by either are refused by both.
#[tokio::test]
async fn links_and_revocations_cross_between_better_auth_and_the_gateway() {
    let db = edge_testkit::test_database().await;
    let url = db.url.clone();
    let ba = |command: &str, args: Value| {
        let mut args = args;
        args["databaseUrl"] = json!(url);
        args["secret"] = json!(crate::SECRET);
        let command = command.to_owned();
        async move { edge_testkit::node("better-auth.mjs", &[command, args.to_string()]).await }
    };
    let migrated = ba("migrate", json!({})).await;
    assert_eq!(migrated["migrated"], true, "{migrated}");
    let smtp = Smtp::start().await;
    let stack = {
        let url = smtp.url();
        Stack::start_on(db, move |c| {
            c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
        })
        .await
    };
    let (_, cookie) = crate::sign_up(&stack, "both@example.com").await;

    // A reset link made by Better Auth is accepted by the gateway...
    let made = ba(
        "request-password-reset",
        json!({"email": "both@example.com"}),
    )
    .await;
    let token = made["token"].as_str().unwrap_or_else(|| panic!("{made}"));
    let r = stack
        .get(
            &format!("/api/auth/reset-password/{token}?callbackURL=%2Freset"),
            None,
        )
        .await;
    assert_eq!(r.headers()["location"], format!("/reset?token={token}"));
    let r = stack
        .post(
            "/api/auth/reset-password",
            json!({"token": token, "newPassword": "from better auth 1"}),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = stack
        .post(
            "/api/auth/sign-in/email",
            json!({"email": "both@example.com", "password": "from better auth 1"}),
        )
        .await;
    assert_eq!(r.status(), 200);

    // ...and one mailed by the gateway is accepted by Better Auth (the same row shape).
    let r = stack
        .post(
            "/api/auth/request-password-reset",
            json!({"email": "both@example.com", "redirectTo": "/reset"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let (_, link) = smtp.link(0).await;
    let token = link
        .split("/reset-password/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(token.len(), 24);
    let done = ba(
        "reset-password",
        json!({"token": token, "newPassword": "from the gateway 2"}),
    )
    .await;
    assert_eq!(done["ok"], true, "{done}");
    let signed_in = ba(
        "sign-in",
        json!({"email": "both@example.com", "password": "from the gateway 2"}),
    )
    .await;
    let ba_cookie = signed_in["cookie"]
        .as_str()
        .unwrap_or_else(|| panic!("{signed_in}"))
        .to_owned();

    // Verification: Better Auth's token verifies on the gateway...
    let made = ba("send-verification", json!({"email": "both@example.com"})).await;
    let token = made["token"].as_str().unwrap_or_else(|| panic!("{made}"));
    let r = stack
        .get(&format!("/api/auth/verify-email?token={token}"), None)
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let session = ba("session", json!({"cookie": ba_cookie})).await;
    assert!(session["userId"].is_string(), "{session}");
    let r = stack.get("/api/auth/get-session", Some(&ba_cookie)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["user"]["emailVerified"],
        true
    );

    // ...and the gateway's verifies on Better Auth.
    let (_, other) = crate::sign_up(&stack, "second@example.com").await;
    let r = http()
        .post(stack.url("/api/auth/send-verification-email"))
        .header("cookie", format!("better-auth.session_token={other}"))
        .header("origin", &stack.base)
        .json(&json!({"email": "second@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, link) = smtp.link(1).await;
    let token = link
        .split("token=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let done = ba("verify-email", json!({"token": token})).await;
    assert_eq!(done["ok"], true, "{done}");
    let r = stack.get("/api/auth/get-session", Some(&other)).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["user"]["emailVerified"],
        true
    );

    // A session revoked on the gateway is refused by Better Auth, and the other way round.
    let r = stack.get("/api/auth/convex/token", Some(&ba_cookie)).await;
    assert_eq!(r.status(), 200);
    let r = http()
        .post(stack.url("/api/auth/revoke-other-sessions"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .header("origin", &stack.base)
        .send()
        .await
        .unwrap();
    // (A password reset keeps sessions unless AUTH_REVOKE_SESSIONS_ON_PASSWORD_RESET is set.)
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(
        ba("session", json!({"cookie": ba_cookie})).await,
        Value::Null
    );
    assert_eq!(
        stack
            .get("/api/auth/convex/token", Some(&ba_cookie))
            .await
            .status(),
        401
    );
    let again = ba(
        "sign-in",
        json!({"email": "both@example.com", "password": "from the gateway 2"}),
    )
    .await;
    let ba_cookie = again["cookie"].as_str().unwrap().to_owned();
    assert_eq!(
        stack
            .get("/api/auth/convex/token", Some(&ba_cookie))
            .await
            .status(),
        200
    );
    let revoked = ba("revoke-other-sessions", json!({"cookie": ba_cookie})).await;
    assert_eq!(revoked["ok"], true, "{revoked}");
    assert_eq!(
        stack
            .get("/api/auth/get-session", Some(&cookie))
            .await
            .json::<Value>()
            .await
            .unwrap(),
        Value::Null
    );
    assert_eq!(
        stack
            .get("/api/auth/convex/token", Some(&cookie))
            .await
            .status(),
        401
    );
}

/// Mail over real TLS with credentials from the URL: STARTTLS (required) and implicit TLS,
/// the server's certificate trusted through `SSL_CERT_FILE`; a certificate nobody trusts
/// means no mail and a 500, never a plain-text fallback.
#[tokio::test]
async fn mail_goes_over_starttls_and_smtps_with_credentials() {
    let ca = edge_testkit::TestCa::new();
    let cert = ca.issue("smtp", &["127.0.0.1"]);
    let (cert_file, key_file) = (
        cert.cert_file.to_str().unwrap().to_owned(),
        cert.key_file.to_str().unwrap().to_owned(),
    );
    for (mode, scheme) in [("starttls", "smtp"), ("smtps", "smtps")] {
        let smtp = Smtp::start_with(&[
            mode,
            &cert_file,
            &key_file,
            "mailer@example.com",
            "p@ss:w/rd",
        ])
        .await;
        let url = format!(
            "{scheme}://mailer%40example.com:p%40ss%3Aw%2Frd@127.0.0.1:{}",
            smtp.port
        );
        let ca_file = ca.ca_file.clone();
        let db = edge_testkit::test_database().await;
        let stack = Stack::start_on(db, move |c| {
            c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
            c.ssl_cert_file = Some(ca_file);
        })
        .await;
        crate::sign_up(&stack, "tls@example.com").await;
        let r = stack
            .post(
                "/api/auth/request-password-reset",
                json!({"email": "tls@example.com"}),
            )
            .await;
        assert_eq!(r.status(), 200, "{mode}: {}", r.text().await.unwrap());
        let (mail, link) = smtp.link(0).await;
        assert_eq!(mail["to"], json!(["tls@example.com"]), "{mode}");
        assert!(link.contains("/api/auth/reset-password/"), "{mode}: {link}");

        // Without the CA the certificate is refused: nothing is sent.
        let url = format!(
            "{scheme}://mailer%40example.com:p%40ss%3Aw%2Frd@127.0.0.1:{}",
            smtp.port
        );
        let db = edge_testkit::test_database().await;
        let untrusting = Stack::start_on(db, move |c| {
            c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
        })
        .await;
        crate::sign_up(&untrusting, "tls@example.com").await;
        let r = untrusting
            .post(
                "/api/auth/request-password-reset",
                json!({"email": "tls@example.com"}),
            )
            .await;
        assert_eq!(r.status(), 500, "{mode}");
        assert_eq!(
            smtp.messages().len(),
            1,
            "{mode}: no mail without a trusted certificate"
        );
    }
}

/// Runs a case of `tests/node/account-options.mjs` (the official client) against `stack`.
async fn options_case(stack: &Stack, smtp: &Smtp, case: &str, extra: Value) -> Value {
    let mut args = json!({"baseURL": stack.base, "mailDir": smtp.dir, "publicURL": "http://localhost:8080", "email": "opt@example.com", "password": PASSWORD});
    for (k, v) in extra.as_object().unwrap() {
        args[k] = v.clone();
    }
    edge_testkit::node("account-options.mjs", &[case.into(), args.to_string()]).await
}

/// `AUTH_CHANGE_EMAIL_WITHOUT_VERIFICATION`: an unverified address changes at once (a link to
/// verify the new one is mailed there); a verified one only through the link.
#[tokio::test]
async fn an_unverified_address_changes_without_verification() {
    let smtp = Smtp::start().await;
    let stack = stack_with_mail(&smtp, |c| {
        c.account.change_email_enabled = true;
        c.account.change_email_without_verification = true;
    })
    .await;
    let out = options_case(
        &stack,
        &smtp,
        "change-email-without-verification",
        json!({}),
    )
    .await;
    assert_eq!(out["ok"], true, "{out:#}");
}

/// `AUTH_SEND_VERIFICATION_ON_SIGN_IN`: each sign-in refused for an unverified address mails a
/// link that returns to the sign-in's `callbackURL`.
#[tokio::test]
async fn a_refused_sign_in_mails_a_verification_link() {
    let smtp = Smtp::start().await;
    let stack = stack_with_mail(&smtp, |c| {
        c.account.require_email_verification = true;
        c.account.send_verification_on_sign_up = false;
        c.account.send_verification_on_sign_in = true;
    })
    .await;
    let out = options_case(&stack, &smtp, "send-verification-on-sign-in", json!({})).await;
    assert_eq!(out["ok"], true, "{out:#}");
}

/// `AUTH_REVOKE_SESSIONS_ON_PASSWORD_RESET`: a reset ends the user's sessions when set, and
/// keeps them (Better Auth's default) when not.
#[tokio::test]
async fn a_password_reset_ends_sessions_only_when_asked() {
    for revoke in [true, false] {
        let smtp = Smtp::start().await;
        let stack = stack_with_mail(&smtp, |c| {
            c.account.revoke_sessions_on_password_reset = revoke;
        })
        .await;
        let out = options_case(
            &stack,
            &smtp,
            "password-reset-sessions",
            json!({"revoke": revoke}),
        )
        .await;
        assert_eq!(out["ok"], true, "revoke {revoke}: {out:#}");
    }
}
