//! CORS on `/api/auth/*`: the trusted origins (`GATEWAY_TRUSTED_ORIGINS`) may call the auth
//! routes from the browser with credentials; no other origin is granted anything. Checked with
//! the headers a browser sends and with a real browser (chromium) on two origins.

use serde_json::{Value, json};

use crate::{PASSWORD, Stack, http};

const TRUSTED: &str = "http://app.example";
const FOREIGN: &str = "http://evil.example";

async fn stack_trusting(origins: Vec<String>) -> (Stack, String) {
    let mut stack = Stack::start().await;
    let base = stack
        .gateway_with(move |c| c.trusted_origins = origins)
        .await;
    (stack, base)
}

/// What a browser sends before a JSON POST with credentials from `origin`.
async fn preflight(base: &str, path: &str, origin: &str) -> reqwest::Response {
    http()
        .request(reqwest::Method::OPTIONS, format!("{base}{path}"))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).map(|v| v.to_str().unwrap())
}

fn no_cors_headers(r: &reqwest::Response) {
    let granted: Vec<_> = r
        .headers()
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .collect();
    assert!(
        granted.is_empty(),
        "{granted:?} granted to a foreign origin"
    );
}

#[tokio::test]
async fn a_trusted_origins_preflight_is_granted_with_credentials() {
    let (_stack, base) = stack_trusting(vec![TRUSTED.into()]).await;
    for path in [
        "/api/auth/sign-in/email",
        "/api/auth/sign-up/email",
        "/api/auth/sign-out",
        "/api/auth/update-user",
        "/api/auth/get-session",
    ] {
        let r = preflight(&base, path, TRUSTED).await;
        assert_eq!(r.status(), 204, "{path}");
        assert_eq!(header(&r, "access-control-allow-origin"), Some(TRUSTED));
        assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
        let methods = header(&r, "access-control-allow-methods").unwrap();
        for m in ["GET", "POST"] {
            assert!(methods.contains(m), "{methods}");
        }
        assert_eq!(
            header(&r, "access-control-allow-headers"),
            Some("content-type")
        );
        assert!(header(&r, "vary").unwrap().contains("Origin"));
    }
}

#[tokio::test]
async fn other_origins_are_granted_nothing() {
    let (_stack, base) = stack_trusting(vec![TRUSTED.into()]).await;
    for origin in [
        FOREIGN,
        "null",
        "http://app.example.evil.example",
        "https://app.example",
        "http://app.example:8080",
    ] {
        let r = preflight(&base, "/api/auth/sign-in/email", origin).await;
        no_cors_headers(&r);
        // The actual requests: refused by the origin check, or answered without a grant, so
        // the browser hides the answer from the page.
        let r = http()
            .post(format!("{base}/api/auth/sign-in/email"))
            .header("origin", origin)
            .json(&json!({"email": "a@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{origin}");
        no_cors_headers(&r);
        let r = http()
            .get(format!("{base}/api/auth/get-session"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        no_cors_headers(&r);
    }
    // No trusted origins configured: nobody is granted anything.
    let (_stack, base) = stack_trusting(Vec::new()).await;
    no_cors_headers(&preflight(&base, "/api/auth/sign-in/email", TRUSTED).await);
}

#[tokio::test]
async fn a_trusted_origins_requests_carry_the_grant_errors_included() {
    let (_stack, base) = stack_trusting(vec![TRUSTED.into()]).await;
    let r = http()
        .post(format!("{base}/api/auth/sign-up/email"))
        .header("origin", TRUSTED)
        .json(&json!({"name": "Cors", "email": "cors@example.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(TRUSTED));
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    let cookie = crate::cookie_of(&r).unwrap();
    let r = http()
        .get(format!("{base}/api/auth/get-session"))
        .header("origin", TRUSTED)
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), Some(TRUSTED));
    assert_eq!(
        r.json::<Value>().await.unwrap()["user"]["email"],
        "cors@example.com"
    );
    // An error is readable by the page too.
    let r = http()
        .post(format!("{base}/api/auth/sign-in/email"))
        .header("origin", TRUSTED)
        .json(&json!({"email": "cors@example.com", "password": "wrong password!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(TRUSTED));
    // Routes outside /api/auth are not the auth routes' business.
    let r = http()
        .get(format!("{base}/healthz"))
        .header("origin", TRUSTED)
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), None);
}

#[tokio::test]
async fn a_real_browser_signs_in_from_a_trusted_origin_only() {
    let trusted_port = edge_testkit::free_port();
    let foreign_port = edge_testkit::free_port();
    let trusted = format!("http://127.0.0.1:{trusted_port}");
    let foreign = format!("http://127.0.0.1:{foreign_port}");
    let (_stack, base) = stack_trusting(vec![trusted.clone()]).await;
    let args = json!({
        "gateway": base, "origins": [trusted_port, foreign_port],
        "email": "browser@example.com", "password": PASSWORD,
    });
    let out = edge_testkit::node("cors-browser.mjs", &[args.to_string()]).await;
    let seen = &out[&trusted];
    assert_eq!(seen["signUp"]["status"], 200, "{out}");
    assert_eq!(
        seen["signUp"]["body"]["user"]["email"],
        "0-browser@example.com"
    );
    // The cookie set by the cross-origin answer goes back with the next call.
    assert_eq!(seen["session"]["status"], 200, "{out}");
    assert_eq!(
        seen["session"]["body"]["user"]["email"],
        "0-browser@example.com"
    );
    let refused = &out[&foreign];
    for call in ["signUp", "session"] {
        assert!(
            refused[call]["error"]
                .as_str()
                .is_some_and(|e| e.contains("Failed to fetch")),
            "{call} from a foreign origin reached the page: {out}"
        );
    }
}
