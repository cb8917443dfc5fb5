//! Every Better Auth route that ends sessions goes through the revocation path: for exactly
//! the sessions it ends, the token cached on another gateway (shared through Redis) is refused
//! and a live sync socket through the query service gets `AuthError`; every other session
//! keeps its token and its socket.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{Client, Options, Stack};

const PASSWORD: &str = "correct horse battery staple";
/// The longest any check waits for a gateway or socket to apply what it must.
const DEADLINE: Duration = Duration::from_secs(20);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn cookie_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("better-auth.session_token="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
        .filter(|v| !v.is_empty())
}

/// A POST as a browser on `base` sends it (its origin; the session cookie when given).
async fn post(base: &str, path: &str, cookie: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = http()
        .post(format!("{base}{path}"))
        .header("origin", base)
        .json(&body);
    if let Some(c) = cookie {
        request = request.header("cookie", format!("better-auth.session_token={c}"));
    }
    request.send().await.unwrap()
}

/// The status of a token request on `base`, and the JWT when there is one.
async fn token_on(base: &str, cookie: &str) -> (u16, Option<String>) {
    let r = http()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let body: Value = r.json().await.unwrap();
    (status, body["token"].as_str().map(str::to_owned))
}

async fn wait_ready(base: &str) {
    let deadline = Instant::now() + DEADLINE;
    while http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One browser's session: its cookie, its raw token, and a sync socket authenticated with the
/// JWT the other gateway cached for it, subscribed to the user's own tasks.
struct Browser {
    name: String,
    cookie: String,
    token: String,
    socket: Client,
    /// What the socket held when its `AuthError` came (ended sessions only).
    frozen: Option<Option<Value>>,
}

impl Browser {
    /// Opens the session's socket with the token cached on `other` (asked for twice: the
    /// second answer comes from the cache).
    async fn open(stack: &Stack, other: &str, name: &str, cookie: String, token: String) -> Self {
        let (status, jwt) = token_on(other, &cookie).await;
        assert_eq!(status, 200, "{name}: first token");
        let (status, cached) = token_on(other, &cookie).await;
        assert_eq!(status, 200, "{name}: cached token");
        assert_eq!(jwt, cached, "{name}: the second token is the cached one");
        let mut socket = Client::connect(&stack.query_url()).await;
        socket.authenticate(&cached.unwrap());
        socket.subscribe(0, "tasks:list", json!({}));
        socket
            .until(&format!("{name}: its tasks"), |v| v.values.contains_key(&0))
            .await;
        Browser {
            name: name.to_owned(),
            cookie,
            token,
            socket,
            frozen: None,
        }
    }

    /// The session is over: both gateways refuse it a token (the one that ran the route at
    /// once) and its socket got `AuthError`, after which it was shown no data.
    async fn assert_ended(&mut self, route: &str, routes: &str, other: &str) {
        let what = format!("{route}: {}", self.name);
        assert_eq!(
            token_on(routes, &self.cookie).await.0,
            401,
            "{what}: the gateway that ran the route still serves a token"
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            match token_on(other, &self.cookie).await.0 {
                401 => break,
                200 => {}
                status => panic!("{what}: unexpected status {status}"),
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the other gateway still serves its cached token"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = self
            .socket
            .until(&format!("{what}: AuthError on its socket"), |v| {
                !v.auth_errors.is_empty()
            })
            .await;
        assert!(
            seen.auth_errors[0].contains("revoked"),
            "{what}: {:?}",
            seen.auth_errors
        );
        self.frozen = Some(seen.values.get(&0).cloned());
    }

    /// An ended session's socket was shown nothing after its `AuthError` (its user's other
    /// sessions have changed the tasks since).
    fn assert_shown_nothing_more(&self, route: &str) {
        if let Some(frozen) = &self.frozen {
            assert_eq!(
                &self.socket.view().values.get(&0).cloned(),
                frozen,
                "{route}: {}: data after the AuthError",
                self.name
            );
        }
    }

    /// The session goes on: a token on both gateways and a working, unrefused socket.
    async fn assert_kept(&mut self, route: &str, routes: &str, other: &str) {
        let what = format!("{route}: {}", self.name);
        assert_eq!(token_on(routes, &self.cookie).await.0, 200, "{what}");
        assert_eq!(token_on(other, &self.cookie).await.0, 200, "{what}");
        let text = format!("{} after {route}", self.name);
        self.socket.mutation("tasks:add", json!({"text": text}));
        let seen = self
            .socket
            .until(&format!("{what}: its own change"), |v| {
                v.values
                    .get(&0)
                    .and_then(|t| t.as_array())
                    .is_some_and(|a| a.iter().any(|t| t["text"] == text))
            })
            .await;
        assert!(
            seen.auth_errors.is_empty(),
            "{what}: {:?}",
            seen.auth_errors
        );
    }
}

/// A user with three browsers (sign-up, then two sign-ins) on `routes`.
async fn three_browsers(stack: &Stack, routes: &str, other: &str, email: &str) -> Vec<Browser> {
    let r = post(
        routes,
        "/api/auth/sign-up/email",
        None,
        json!({"name": "Route Test", "email": email, "password": PASSWORD}),
    )
    .await;
    assert_eq!(r.status(), 200, "sign-up {email}");
    let cookie = cookie_of(&r).expect("sign-up sets the session cookie");
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut browsers = vec![Browser::open(stack, other, "browser 0", cookie, token).await];
    for i in 1..3 {
        let r = post(
            routes,
            "/api/auth/sign-in/email",
            None,
            json!({"email": email, "password": PASSWORD}),
        )
        .await;
        assert_eq!(r.status(), 200, "sign-in {email}");
        let cookie = cookie_of(&r).expect("sign-in sets the session cookie");
        let token = r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned();
        browsers.push(Browser::open(stack, other, &format!("browser {i}"), cookie, token).await);
    }
    browsers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_that_ends_sessions_ends_exactly_their_tokens_and_sockets() {
    let smtp = edge_testkit::SmtpSink::start().await;
    let smtp_url = smtp.url();
    let mut stack = Stack::start_with(Options {
        auth: Some(Box::new(move |c: &mut edge_auth::Config| {
            c.mail.mode = edge_auth::mail::MailMode::Smtp(smtp_url.parse().unwrap());
            c.account.delete_user_enabled = true;
            c.account.revoke_sessions_on_password_reset = true;
        })),
        ..Options::default()
    })
    .await;
    let redis = edge_testkit::redis_url();
    // The routes run on one gateway; the other holds the tokens in Redis for everyone.
    let routes = stack.gateway_with_redis(&redis).await;
    let other = stack.gateway_with_redis(&redis).await;
    wait_ready(&routes).await;
    wait_ready(&other).await;

    // Someone else, signed in throughout: no route below touches them.
    let mut bystander = three_browsers(&stack, &routes, &other, "bystander@example.com")
        .await
        .remove(0);
    bystander.name = "bystander".into();

    // (route, which of browsers 0..3 end); browser 0 makes the call.
    let cases: [(&str, [bool; 3]); 6] = [
        ("revoke-session", [false, true, false]),
        ("revoke-sessions", [true, true, true]),
        ("revoke-other-sessions", [false, true, true]),
        ("change-password", [true, true, true]),
        ("delete-user", [true, true, true]),
        ("reset-password", [true, true, true]),
    ];
    let mut mails = 0;
    for (route, ends) in cases {
        let email = format!("{route}@example.com");
        let mut browsers = three_browsers(&stack, &routes, &other, &email).await;
        let caller = browsers[0].cookie.clone();
        let path = format!("/api/auth/{route}");
        let mut new_cookie = None;
        let r = match route {
            "revoke-session" => {
                // Another user's session token ends nothing; Better Auth answers as for any.
                let theirs = bystander.token.clone();
                let r = post(&routes, &path, Some(&caller), json!({"token": theirs})).await;
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                let token = browsers[1].token.clone();
                post(&routes, &path, Some(&caller), json!({"token": token})).await
            }
            "revoke-sessions" | "revoke-other-sessions" => {
                post(&routes, &path, Some(&caller), json!({})).await
            }
            "change-password" => {
                let r = post(
                    &routes,
                    &path,
                    Some(&caller),
                    json!({"currentPassword": PASSWORD, "newPassword": "a new password 1", "revokeOtherSessions": true}),
                )
                .await;
                new_cookie = cookie_of(&r);
                r
            }
            "delete-user" => {
                post(&routes, &path, Some(&caller), json!({"password": PASSWORD})).await
            }
            "reset-password" => {
                let r = post(
                    &routes,
                    "/api/auth/request-password-reset",
                    None,
                    json!({"email": email, "redirectTo": "/reset"}),
                )
                .await;
                assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
                let (mail, link) = smtp.link(mails).await;
                mails += 1;
                assert_eq!(mail["to"], json!([email]));
                let token = link
                    .split("/reset-password/")
                    .nth(1)
                    .and_then(|t| t.split('?').next())
                    .unwrap_or_else(|| panic!("a reset link: {link}"))
                    .to_owned();
                post(
                    &routes,
                    &path,
                    None,
                    json!({"token": token, "newPassword": "a reset password 1"}),
                )
                .await
            }
            _ => unreachable!(),
        };
        assert_eq!(r.status(), 200, "{route}: {}", r.text().await.unwrap());
        for (browser, ended) in browsers.iter_mut().zip(ends) {
            if ended {
                browser.assert_ended(route, &routes, &other).await;
            }
        }
        for (browser, ended) in browsers.iter_mut().zip(ends) {
            if !ended {
                browser.assert_kept(route, &routes, &other).await;
            }
        }
        bystander.assert_kept(route, &routes, &other).await;
        for browser in &browsers {
            browser.assert_shown_nothing_more(route);
        }
        // change-password opens a new session for the browser that asked: it works everywhere.
        if route == "change-password" {
            let cookie = new_cookie.expect("change-password sets the new session's cookie");
            let mut renewed = Browser::open(&stack, &other, "renewed", cookie, String::new()).await;
            renewed.assert_kept(route, &routes, &other).await;
        }
    }
}
