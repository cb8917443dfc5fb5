//! Bad requests map to proper gRPC codes with messages that say what was wrong.

use edge_proto::auth::v1 as pb;
use edge_proto::error::ErrorCode;
use tonic::Code;

fn sign_up(email: &str, password: &str) -> pb::SignUpRequest {
    pb::SignUpRequest {
        callback_url: String::new(),
        name: "N".into(),
        email: email.into(),
        password: password.into(),
        image: None,
        client: None,
        ..Default::default()
    }
}

#[tokio::test]
async fn bad_requests_get_precise_codes() {
    let (_db, running) = crate::postgres().await;
    let mut c = running.client().await;
    let cases = [
        (
            sign_up("", "correct horse"),
            Code::InvalidArgument,
            ErrorCode::VALIDATION_ERROR,
        ),
        (
            sign_up("not-an-email", "correct horse"),
            Code::InvalidArgument,
            ErrorCode::VALIDATION_ERROR,
        ),
        (
            sign_up("a@example.com", "short"),
            Code::InvalidArgument,
            ErrorCode::PASSWORD_TOO_SHORT,
        ),
        (
            sign_up("a@example.com", &"x".repeat(129)),
            Code::InvalidArgument,
            ErrorCode::PASSWORD_TOO_LONG,
        ),
    ];
    for (request, code, domain) in cases {
        let err = c.sign_up(request).await.unwrap_err();
        assert_eq!(err.code(), code, "{}", err.message());
        assert_eq!(ErrorCode::from_status(&err), domain);
        assert!(!err.message().is_empty());
    }
    crate::sign_up(&mut c, "dup@example.com").await;
    let err = c
        .sign_up(sign_up("DUP@example.com", "correct horse battery"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);

    let err = c
        .sign_in(pb::SignInRequest {
            callback_url: String::new(),
            email: "dup@example.com".into(),
            password: "wrong password".into(),
            client: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        ErrorCode::from_status(&err),
        ErrorCode::INVALID_EMAIL_OR_PASSWORD
    );

    for cookie in [
        "",
        "garbage",
        "a.b",
        "x.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D",
    ] {
        let err = c
            .issue_token(pb::IssueTokenRequest {
                cookie_value: cookie.into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{cookie}");
        let err = c
            .sign_out(pb::SignOutRequest {
                cookie_value: cookie.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            ErrorCode::from_status(&err),
            ErrorCode::FAILED_TO_GET_SESSION
        );
    }
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_account() {
    let db = edge_testkit::test_database().await;
    let mut config = crate::config(&db.url);
    config.sign_in_limit.per_account = 3;
    let running = crate::spawn(config).await;
    let mut c = running.client().await;
    crate::sign_up(&mut c, "limited@example.com").await;
    let attempt = |password: &str, ip: &str| pb::SignInRequest {
        callback_url: String::new(),
        email: "limited@example.com".into(),
        password: password.into(),
        client: Some(pb::ClientInfo {
            ip_address: ip.into(),
            user_agent: String::new(),
        }),
        ..Default::default()
    };
    let right = "correct horse battery staple";
    // Right passwords do not count (and their addresses become the account's own).
    for i in 0..4 {
        c.sign_in(attempt(right, &format!("10.0.1.{i}")))
            .await
            .unwrap();
    }
    // Failed ones do, from any address: past three, even the right password is refused from
    // an address the account never signed in from.
    for i in 0..3 {
        let err = c
            .sign_in(attempt("wrong password", &format!("10.0.2.{i}")))
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::ResourceExhausted);
    }
    let err = c.sign_in(attempt(right, "10.0.3.1")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.metadata().get("retry-after").is_some());
    c.sign_in(attempt(right, "10.0.1.0")).await.unwrap();
}
