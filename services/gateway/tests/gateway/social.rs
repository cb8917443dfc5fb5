//! Social sign-in against a real OpenID provider (panva's `oidc-provider` with its development
//! login and consent forms), driven like a browser with a cookie jar per site; side by side
//! with the real better-auth (genericOAuth) on the same database.

use std::collections::HashMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use crate::{SECRET, Stack, http};

const CLIENT_ID: &str = "convex-edge-test";
const CLIENT_SECRET: &str = "convex-edge-test-client-secret-0123456789";
const PROVIDER: &str = "acme";

/// Cookies per `host:port`, as a browser keeps them (paths are not told apart: every page of
/// a test site may see every cookie, which only makes a test stricter).
#[derive(Debug, Default, Clone)]
pub struct Browser {
    jar: HashMap<String, HashMap<String, String>>,
}

fn host_of(url: &str) -> String {
    let u = reqwest::Url::parse(url).expect("absolute url");
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
}

impl Browser {
    fn cookie_header(&self, url: &str) -> Option<String> {
        let cookies = self.jar.get(&host_of(url))?;
        (!cookies.is_empty()).then(|| {
            cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    fn store(&mut self, url: &str, response: &reqwest::Response) {
        let cookies = self.jar.entry(host_of(url)).or_default();
        for line in response.headers().get_all("set-cookie") {
            let line = line.to_str().unwrap();
            let pair = line.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            let expired = line
                .split(';')
                .any(|a| a.trim().eq_ignore_ascii_case("max-age=0"))
                || value.is_empty();
            if expired {
                cookies.remove(name);
            } else {
                cookies.insert(name.to_owned(), value.to_owned());
            }
        }
    }

    pub fn cookie(&self, site: &str, name: &str) -> Option<String> {
        self.jar.get(&host_of(site))?.get(name).cloned()
    }

    /// One request, cookies sent and kept; no redirect followed.
    pub async fn send(
        &mut self,
        method: reqwest::Method,
        url: &str,
        form: Option<&[(String, String)]>,
        json_body: Option<&Value>,
    ) -> reqwest::Response {
        let post = method == reqwest::Method::POST;
        let mut request = http().request(method, url);
        if post {
            // A browser names the page's origin on a POST; the tests' pages are same-origin.
            let origin = reqwest::Url::parse(url)
                .unwrap()
                .origin()
                .ascii_serialization();
            request = request.header("origin", origin);
        }
        if let Some(c) = self.cookie_header(url) {
            request = request.header("cookie", c);
        }
        if let Some(form) = form {
            request = request
                .header("content-type", "application/x-www-form-urlencoded")
                .body(serde_urlencoded::to_string(form).unwrap());
        }
        if let Some(body) = json_body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        self.store(url, &response);
        response
    }

    /// Follows redirects and fills the provider's login (as `login`) and consent forms until
    /// a redirect leads to `site`; returns that URL, not yet requested.
    pub async fn through_provider(&mut self, start: &str, site: &str, login: &str) -> String {
        let mut url = start.to_owned();
        for _ in 0..20 {
            if host_of(&url) == host_of(site) {
                return url;
            }
            let response = self.send(reqwest::Method::GET, &url, None, None).await;
            if let Some(location) = response.headers().get("location") {
                url = reqwest::Url::parse(&url)
                    .unwrap()
                    .join(location.to_str().unwrap())
                    .unwrap()
                    .to_string();
                continue;
            }
            let status = response.status();
            let page = response.text().await.unwrap();
            assert_eq!(status, 200, "provider page {url}: {page}");
            let action = page
                .split("action=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("no form on {url}: {page}"));
            let prompt = page
                .split("name=\"prompt\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default();
            let form: Vec<(String, String)> = match prompt {
                "login" => vec![
                    ("prompt".into(), "login".into()),
                    ("login".into(), login.into()),
                    ("password".into(), "any password".into()),
                ],
                _ => vec![("prompt".into(), prompt.into())],
            };
            let target = reqwest::Url::parse(&url).unwrap().join(action).unwrap();
            let response = self
                .send(reqwest::Method::POST, target.as_str(), Some(&form), None)
                .await;
            let location = response
                .headers()
                .get("location")
                .unwrap_or_else(|| panic!("form post on {target} did not redirect"));
            url = target.join(location.to_str().unwrap()).unwrap().to_string();
        }
        panic!("provider never sent the browser back to {site}");
    }
}

/// The provider, and the stack whose auth knows it as `acme`; `extra_redirects` are other
/// sites' callbacks the provider accepts (the better-auth peer).
pub struct Social {
    pub stack: Stack,
    pub _provider: edge_testkit::NodeServer,
    pub issuer: String,
}

pub async fn start(
    db: edge_testkit::TestDb,
    extra_redirects: &[String],
    tweak: impl FnOnce(&mut edge_auth::Config),
) -> Social {
    let port = edge_testkit::free_port();
    let site = format!("http://127.0.0.1:{port}");
    let mut redirects = vec![format!("{site}/api/auth/callback/{PROVIDER}")];
    redirects.extend_from_slice(extra_redirects);
    let provider = edge_testkit::node_server(
        "oidc-provider.mjs",
        &json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET, "redirectUris": redirects}),
    )
    .await;
    let issuer = provider.ready["issuer"].as_str().unwrap().to_owned();
    let mut config = edge_auth::social::ProviderConfig::new(PROVIDER, CLIENT_ID, CLIENT_SECRET);
    config.discovery_url = format!("{issuer}/.well-known/openid-configuration");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let stack = Stack::start_at(db, addr, |c| {
        c.account.base_url = site.clone();
        c.social_providers = vec![config];
        tweak(c);
    })
    .await;
    Social {
        stack,
        _provider: provider,
        issuer,
    }
}

/// Starts a sign-in on `site` (the gateway or the better-auth peer) and returns the callback
/// URL the provider sends the browser to.
async fn begin(browser: &mut Browser, site: &str, body: Value, login: &str) -> String {
    let response = browser
        .send(
            reqwest::Method::POST,
            &format!("{site}/api/auth/sign-in/social"),
            None,
            Some(&body),
        )
        .await;
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["redirect"], true, "{answer}");
    let url = answer["url"].as_str().unwrap().to_owned();
    browser.through_provider(&url, site, login).await
}

/// A whole sign-in on `site`: the final redirect's location.
async fn sign_in(browser: &mut Browser, site: &str, body: Value, login: &str) -> String {
    let callback = begin(browser, site, body, login).await;
    let response = browser
        .send(reqwest::Method::GET, &callback, None, None)
        .await;
    assert_eq!(response.status(), 302, "{callback}");
    response.headers()["location"].to_str().unwrap().to_owned()
}

async fn rows(db: &str, sql: &str) -> Vec<Value> {
    use sqlx::{Connection, Row};
    let mut conn = sqlx::PgConnection::connect(db).await.unwrap();
    let sql = format!("SELECT row_to_json(t)::text FROM ({sql}) t");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| serde_json::from_str(&r.get::<String, _>(0)).unwrap())
        .collect()
}

async fn json_get(browser: &mut Browser, url: &str) -> Value {
    let response = browser.send(reqwest::Method::GET, url, None, None).await;
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test]
async fn a_browser_signs_up_and_in_with_an_openid_provider() {
    let social = start(edge_testkit::test_database().await, &[], |_| {}).await;
    let site = social.stack.base.clone();
    let mut browser = Browser::default();
    let body = json!({"provider": PROVIDER, "callbackURL": "/dashboard", "newUserCallbackURL": "/welcome"});

    // The state as Better Auth stores it: a `verification` row and the signed cookie.
    let callback = begin(&mut browser, &site, body.clone(), "ada").await;
    let state_rows = rows(
        &social.stack.db.url,
        r#"SELECT "identifier", "value" FROM "verification""#,
    )
    .await;
    assert_eq!(state_rows.len(), 1);
    let stored: Value = serde_json::from_str(state_rows[0]["value"].as_str().unwrap()).unwrap();
    let state = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    assert_eq!(state_rows[0]["identifier"], format!("auth-state:{state}"));
    assert_eq!(stored["oauthState"], state);
    assert_eq!(stored["callbackURL"], "/dashboard");
    assert_eq!(stored["newUserURL"], "/welcome");
    assert_eq!(stored["codeVerifier"].as_str().unwrap().len(), 128);
    assert!(stored["idTokenNonce"].is_string(), "{stored}");
    assert!(browser.cookie(&site, "better-auth.state").is_some());

    let response = browser
        .send(reqwest::Method::GET, &callback, None, None)
        .await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/welcome");
    assert!(browser.cookie(&site, "better-auth.state").is_none());
    assert!(browser.cookie(&site, "better-auth.session_token").is_some());
    assert!(
        rows(&social.stack.db.url, r#"SELECT 1 FROM "verification""#)
            .await
            .is_empty(),
        "the state is consumed"
    );

    let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(session["user"]["email"], "ada@example.com");
    assert_eq!(session["user"]["emailVerified"], true);
    assert_eq!(session["user"]["name"], "ada");
    let user_id = session["user"]["id"].as_str().unwrap().to_owned();
    let token = json_get(&mut browser, &format!("{site}/api/auth/convex/token")).await;
    assert_eq!(token["token"].as_str().unwrap().split('.').count(), 3);
    let accounts = json_get(&mut browser, &format!("{site}/api/auth/list-accounts")).await;
    assert_eq!(accounts.as_array().unwrap().len(), 1, "{accounts}");
    assert_eq!(accounts[0]["providerId"], PROVIDER);
    assert_eq!(accounts[0]["accountId"], "ada");
    assert_eq!(accounts[0]["userId"], user_id);

    let account = rows(&social.stack.db.url, r#"SELECT * FROM "account""#).await;
    let account = &account[0];
    for column in [
        "accessToken",
        "refreshToken",
        "idToken",
        "accessTokenExpiresAt",
    ] {
        assert!(account[column].is_string(), "{column} in {account}");
    }
    assert!(account["password"].is_null());
    let scope = account["scope"].as_str().unwrap();
    assert!(scope.split(',').any(|s| s == "openid"), "{scope}");
    let id_token = account["idToken"].as_str().unwrap();
    let id_claims = edge_auth::social::provider::decode_claims(id_token).unwrap();
    assert_eq!(id_claims["iss"], social.issuer);
    assert_eq!(id_claims["aud"], CLIENT_ID);

    // A second sign-in (a new browser session at the site) reuses the user and the account.
    let mut second = Browser {
        jar: browser
            .jar
            .iter()
            .filter(|(host, _)| **host != host_of(&site))
            .map(|(h, c)| (h.clone(), c.clone()))
            .collect(),
    };
    let location = sign_in(&mut second, &site, body.clone(), "ada").await;
    assert_eq!(location, "/dashboard");
    let again = json_get(&mut second, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(again["user"]["id"], user_id);
    assert_eq!(social.stack.counts().await, (1, 2, 1));
}

#[tokio::test]
async fn forged_and_replayed_states_write_nothing() {
    let social = start(edge_testkit::test_database().await, &[], |_| {}).await;
    let site = social.stack.base.clone();
    let body =
        json!({"provider": PROVIDER, "callbackURL": "/dashboard", "errorCallbackURL": "/oops"});

    // A callback whose state cookie is missing (another browser's state) is refused and leaves
    // the state for its own browser.
    let mut browser = Browser::default();
    let callback = begin(&mut browser, &site, body.clone(), "eve").await;
    let mut stranger = Browser::default();
    let response = stranger
        .send(reqwest::Method::GET, &callback, None, None)
        .await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/oops?error=state_mismatch");
    assert_eq!(social.stack.counts().await, (0, 0, 0));

    // A state nobody issued.
    let forged = callback.replace("state=", "state=forged");
    let response = browser
        .send(reqwest::Method::GET, &forged, None, None)
        .await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!("{site}/api/auth/error?error=state_mismatch")
    );
    assert_eq!(social.stack.counts().await, (0, 0, 0));

    // No state at all.
    let response = browser
        .send(
            reqwest::Method::GET,
            &format!("{site}/api/auth/callback/{PROVIDER}?code=x"),
            None,
            None,
        )
        .await;
    assert_eq!(
        response.headers()["location"],
        format!("{site}/api/auth/error?error=state_not_found")
    );

    // The real callback works once; replayed (same browser, same cookie), it is refused.
    let state_cookie = browser.cookie(&site, "better-auth.state").unwrap();
    let response = browser
        .send(reqwest::Method::GET, &callback, None, None)
        .await;
    assert_eq!(response.headers()["location"], "/dashboard");
    assert_eq!(social.stack.counts().await, (1, 1, 1));
    let mut replay = Browser::default();
    replay
        .jar
        .entry(host_of(&site))
        .or_default()
        .insert("better-auth.state".into(), state_cookie);
    let response = replay
        .send(reqwest::Method::GET, &callback, None, None)
        .await;
    assert_eq!(
        response.headers()["location"],
        format!("{site}/api/auth/error?error=state_mismatch")
    );
    assert!(browser.cookie(&site, "better-auth.session_token").is_some());
    assert!(replay.cookie(&site, "better-auth.session_token").is_none());
    assert_eq!(social.stack.counts().await, (1, 1, 1));

    // The provider's own refusal goes to errorCallbackURL, and consumes the state.
    let mut browser = Browser::default();
    let callback = begin(&mut browser, &site, body.clone(), "eve").await;
    let state = reqwest::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let response = browser
        .send(
            reqwest::Method::GET,
            &format!("{site}/api/auth/callback/{PROVIDER}?state={state}&error=access_denied&error_description=no%20thanks"),
            None,
            None,
        )
        .await;
    assert_eq!(
        response.headers()["location"],
        "/oops?error=access_denied&error_description=no+thanks"
    );
    // A code that the provider never issued.
    let mut browser = Browser::default();
    let callback = begin(&mut browser, &site, body.clone(), "eve").await;
    let bad_code = reqwest::Url::parse(&callback).unwrap();
    let pairs: Vec<(String, String)> = bad_code
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "code" {
                "not-a-code".into()
            } else {
                v.into_owned()
            };
            (k.into_owned(), v)
        })
        .collect();
    let mut bad_code = bad_code.clone();
    bad_code.query_pairs_mut().clear().extend_pairs(pairs);
    let response = browser
        .send(reqwest::Method::GET, bad_code.as_str(), None, None)
        .await;
    assert_eq!(response.headers()["location"], "/oops?error=invalid_code");
    // An issuer other than the provider's in the redirect (RFC 9207).
    let mut browser = Browser::default();
    let callback = begin(&mut browser, &site, body.clone(), "eve").await;
    let wrong_iss = callback.replace(
        &format!("iss={}", urlencode(&social.issuer)),
        "iss=http%3A%2F%2Fevil.example",
    );
    assert_ne!(
        wrong_iss, callback,
        "the provider names itself in the redirect"
    );
    let response = browser
        .send(reqwest::Method::GET, &wrong_iss, None, None)
        .await;
    assert_eq!(
        response.headers()["location"],
        "/oops?error=issuer_mismatch"
    );
    assert_eq!(social.stack.counts().await, (1, 1, 1));

    // An untrusted callbackURL is refused before anything is stored.
    let r = crate::http()
        .post(social.stack.url("/api/auth/sign-in/social"))
        .json(&json!({"provider": PROVIDER, "callbackURL": "https://evil.example/"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = crate::http()
        .post(social.stack.url("/api/auth/sign-in/social"))
        .json(&json!({"provider": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["code"], "PROVIDER_NOT_FOUND");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn users_made_by_better_auth_and_by_the_gateway_sign_in_through_the_other() {
    let db = edge_testkit::test_database().await;
    let peer_port = edge_testkit::free_port();
    let peer = format!("http://127.0.0.1:{peer_port}");
    let social = start(
        db,
        &[format!("{peer}/api/auth/callback/{PROVIDER}")],
        |_| {},
    )
    .await;
    let site = social.stack.base.clone();
    let _better_auth = edge_testkit::node_server(
        "better-auth-oauth.mjs",
        &json!({
            "databaseUrl": social.stack.db.url, "secret": SECRET, "port": peer_port,
            "providerId": PROVIDER, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
            "discoveryUrl": format!("{}/.well-known/openid-configuration", social.issuer),
        }),
    )
    .await;
    let body = json!({"provider": PROVIDER, "callbackURL": "/home"});

    // Made by better-auth, signed in through the gateway.
    let mut browser = Browser::default();
    let location = sign_in(&mut browser, &peer, body.clone(), "grace").await;
    assert_eq!(location, "/home");
    let made_by_peer = json_get(&mut browser, &format!("{peer}/api/auth/get-session")).await;
    let location = sign_in(&mut browser, &site, body.clone(), "grace").await;
    assert_eq!(location, "/home", "an existing user is not new");
    let here = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(here["user"]["id"], made_by_peer["user"]["id"]);

    // Made by the gateway, signed in through better-auth.
    let mut browser = Browser::default();
    sign_in(&mut browser, &site, body.clone(), "linus").await;
    let made_here = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    sign_in(&mut browser, &peer, body.clone(), "linus").await;
    let there = json_get(&mut browser, &format!("{peer}/api/auth/get-session")).await;
    assert_eq!(there["user"]["id"], made_here["user"]["id"]);
    assert_eq!(social.stack.counts().await.0, 2);
    assert_eq!(social.stack.counts().await.2, 2);

    // Both sides wrote the same row shapes: which columns are set, the same users' fields.
    let shape = r#"SELECT u."email", u."name", u."emailVerified", u."image" IS NULL AS "noImage",
        a."providerId", a."accountId", a."accessToken" IS NOT NULL AS "access",
        a."refreshToken" IS NOT NULL AS "refresh", a."idToken" IS NOT NULL AS "id",
        a."accessTokenExpiresAt" IS NOT NULL AS "expires", a."refreshTokenExpiresAt" IS NULL AS "noRefreshExpiry",
        a."password" IS NULL AS "noPassword", a."scope"
        FROM "account" a JOIN "user" u ON u."id" = a."userId" ORDER BY u."email""#;
    let rows = rows(&social.stack.db.url, shape).await;
    assert_eq!(rows.len(), 2);
    let strip = |mut v: Value| {
        v["email"] = Value::Null;
        v["name"] = Value::Null;
        v["accountId"] = Value::Null;
        v
    };
    assert_eq!(strip(rows[0].clone()), strip(rows[1].clone()), "{rows:?}");
    assert_eq!(rows[0]["accountId"], "grace");
    assert_eq!(rows[1]["accountId"], "linus");
}

/// The value of query parameter `name` in `url`.
fn param(url: &str, name: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn built_in_providers_sign_in_against_stand_in_endpoints() {
    let standin = edge_testkit::node_server(
        "oauth-standin.mjs",
        &json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}),
    )
    .await;
    let s = standin.ready["url"].as_str().unwrap().to_owned();
    let port = edge_testkit::free_port();
    let site_url = format!("http://127.0.0.1:{port}");
    let provider =
        |id: &str, auth: &str, token: &str, userinfo: Option<&str>, jwks: Option<&str>| {
            let mut c = edge_auth::social::ProviderConfig::new(id, CLIENT_ID, CLIENT_SECRET);
            c.endpoints.authorization = Some(format!("{s}{auth}"));
            c.endpoints.token = Some(format!("{s}{token}"));
            c.endpoints.userinfo = userinfo.map(|u| format!("{s}{u}"));
            c.endpoints.jwks = jwks.map(|j| format!("{s}{j}"));
            c
        };
    let providers = vec![
        provider("github", "/gh/authorize", "/token", Some("/user"), None),
        provider("google", "/google/auth", "/token", None, Some("/certs")),
        provider(
            "discord",
            "/discord/authorize",
            "/token",
            Some("/users/@me"),
            None,
        ),
        provider("apple", "/apple/authorize", "/token", None, Some("/certs")),
    ];
    let stack = Stack::start_at(
        edge_testkit::test_database().await,
        format!("127.0.0.1:{port}").parse().unwrap(),
        |c| {
            c.account.base_url = site_url.clone();
            c.social_providers = providers;
        },
    )
    .await;
    let site = stack.base.clone();

    // (provider, login, accountId, name, image)
    let cases = [
        ("github", "gh", "4242", "gh", "https://avatars.example/gh"),
        (
            "google",
            "gg",
            "google-gg",
            "gg (google)",
            "https://example.com/gg.png",
        ),
        (
            "discord",
            "dc",
            "80351110224678912",
            "dc",
            // Better Auth's default avatar for a new-style name: (id >> 22) % 6.
            "https://cdn.discordapp.com/embed/avatars/5.png",
        ),
    ];
    for (id, login, account_id, name, image) in cases {
        let mut browser = Browser::default();
        let r = browser
            .send(
                reqwest::Method::POST,
                &format!("{site}/api/auth/sign-in/social"),
                None,
                Some(&json!({"provider": id, "callbackURL": "/done"})),
            )
            .await;
        assert_eq!(r.status(), 200, "{id}");
        let url = r.json::<Value>().await.unwrap()["url"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(url.starts_with(&s), "{id}: {url}");
        assert_eq!(
            param(&url, "redirect_uri").unwrap(),
            format!("{site_url}/api/auth/callback/{id}")
        );
        match id {
            "github" => {
                assert_eq!(param(&url, "scope").unwrap(), "read:user user:email");
                assert_eq!(param(&url, "code_challenge_method").unwrap(), "S256");
            }
            "google" => {
                assert_eq!(param(&url, "scope").unwrap(), "email profile openid");
                assert_eq!(param(&url, "include_granted_scopes").unwrap(), "true");
                assert!(param(&url, "code_challenge").is_some());
            }
            _ => {
                assert_eq!(param(&url, "scope").unwrap(), "identify email");
                assert_eq!(param(&url, "prompt").unwrap(), "none");
                assert!(
                    param(&url, "code_challenge").is_none(),
                    "discord sends no PKCE"
                );
            }
        }
        let state = param(&url, "state").unwrap();
        let r = browser
            .send(
                reqwest::Method::GET,
                &format!("{site}/api/auth/callback/{id}?code={login}&state={state}"),
                None,
                None,
            )
            .await;
        assert_eq!(r.status(), 302, "{id}");
        assert_eq!(r.headers()["location"], "/done", "{id}");
        let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
        assert_eq!(
            session["user"]["email"],
            format!("{login}@example.com"),
            "{id}"
        );
        assert_eq!(session["user"]["emailVerified"], true, "{id}");
        assert_eq!(session["user"]["name"], name, "{id}");
        assert_eq!(session["user"]["image"], image, "{id}");
        let account = rows(
            &stack.db.url,
            &format!(r#"SELECT * FROM "account" WHERE "providerId" = '{id}'"#),
        )
        .await;
        assert_eq!(account[0]["accountId"], account_id, "{id}");
        assert_eq!(account[0]["accessToken"], format!("at-{login}"));
        assert_eq!(account[0]["refreshToken"], format!("rt-{login}"));
        assert_eq!(account[0]["scope"], "read:user,user:email");
    }
    // Apple posts its answer (`response_mode=form_post`) with the user's name, once: Better
    // Auth turns the post into the GET callback.
    let mut browser = Browser::default();
    let r = browser
        .send(
            reqwest::Method::POST,
            &format!("{site}/api/auth/sign-in/social"),
            None,
            Some(&json!({"provider": "apple", "callbackURL": "/done"})),
        )
        .await;
    let url = r.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(param(&url, "response_mode").unwrap(), "form_post");
    assert_eq!(param(&url, "response_type").unwrap(), "code id_token");
    assert_eq!(param(&url, "scope").unwrap(), "email name");
    let state = param(&url, "state").unwrap();
    let user = r#"{"name":{"firstName":"Ap","lastName":"Ple"},"email":"ap@example.com"}"#;
    let posted =
        serde_urlencoded::to_string([("code", "ap"), ("state", &state), ("user", user)]).unwrap();
    let r = crate::http()
        .post(format!("{site}/api/auth/callback/apple"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(posted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let get = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        get.starts_with(&format!("{site}/api/auth/callback/apple?")),
        "{get}"
    );
    let r = browser.send(reqwest::Method::GET, &get, None, None).await;
    assert_eq!(r.headers()["location"], "/done");
    let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(session["user"]["name"], "Ap Ple");
    assert_eq!(session["user"]["email"], "ap@example.com");

    // What the token endpoint was sent: PKCE verifiers for all but Discord.
    let forms = reqwest::get(format!("{s}/requests"))
        .await
        .unwrap()
        .json::<Vec<Value>>()
        .await
        .unwrap();
    assert_eq!(forms.len(), 4);
    assert_eq!(forms[0]["code_verifier"].as_str().unwrap().len(), 128);
    assert!(forms[2].get("code_verifier").is_none());
    assert_eq!(stack.counts().await, (4, 4, 4));

    // A code GitHub refuses (200 with `error`) writes nothing.
    let mut browser = Browser::default();
    let r = browser
        .send(
            reqwest::Method::POST,
            &format!("{site}/api/auth/sign-in/social"),
            None,
            Some(&json!({"provider": "github", "errorCallbackURL": "/oops"})),
        )
        .await;
    let url = r.json::<Value>().await.unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let state = param(&url, "state").unwrap();
    let r = browser
        .send(
            reqwest::Method::GET,
            &format!("{site}/api/auth/callback/github?code=bad&state={state}"),
            None,
            None,
        )
        .await;
    assert_eq!(r.headers()["location"], "/oops?error=invalid_code");
    assert_eq!(stack.counts().await, (4, 4, 4));

    // Sign-in with a Google ID token an app obtained itself.
    let mint = |claims: Value| {
        let s = s.clone();
        async move {
            crate::http()
                .post(format!("{s}/mint"))
                .json(&json!({"claims": claims}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "https://accounts.google.com", "aud": CLIENT_ID, "sub": "app-user",
        "email": "App.User@example.com", "email_verified": true, "name": "App User",
        "iat": now, "exp": now + 600, "nonce": "n-1"});
    let sign_in = |token: String, nonce: Option<&str>| {
        let site = site.clone();
        let body = match nonce {
            Some(n) => {
                json!({"provider": "google", "idToken": {"token": token, "nonce": n, "accessToken": "app-at"}})
            }
            None => {
                json!({"provider": "google", "idToken": {"token": token, "accessToken": "app-at"}})
            }
        };
        async move {
            crate::http()
                .post(format!("{site}/api/auth/sign-in/social"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let refused = [
        (
            {
                let mut c = claims.clone();
                c["aud"] = json!("someone-else");
                c
            },
            Some("n-1"),
        ),
        (
            {
                let mut c = claims.clone();
                c["iss"] = json!("https://evil.example");
                c
            },
            Some("n-1"),
        ),
        (
            {
                let mut c = claims.clone();
                c["exp"] = json!(now - 120);
                c
            },
            Some("n-1"),
        ),
        (
            {
                let mut c = claims.clone();
                c["iat"] = json!(now - 7200);
                c
            },
            Some("n-1"),
        ),
        // Issued in the future (jose's `maxTokenAge` check, beyond its 30 s tolerance).
        (
            {
                let mut c = claims.clone();
                c["iat"] = json!(now + 300);
                c
            },
            Some("n-1"),
        ),
        (claims.clone(), Some("another-nonce")),
    ];
    for (claims, nonce) in refused {
        let r = sign_in(mint(claims.clone()).await, nonce).await;
        assert_eq!(r.status(), 401, "{claims}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_TOKEN", "{claims}");
    }
    assert_eq!(stack.counts().await, (4, 4, 4));
    let r = sign_in(mint(claims.clone()).await, Some("n-1")).await;
    assert_eq!(r.status(), 200);
    assert!(crate::cookie_of(&r).is_some());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["redirect"], false);
    assert_eq!(body["user"]["email"], "app.user@example.com");
    assert!(body["token"].is_string());
    let account = rows(
        &stack.db.url,
        r#"SELECT * FROM "account" WHERE "accountId" = 'app-user'"#,
    )
    .await;
    assert_eq!(account[0]["accessToken"], "app-at");
    assert!(account[0]["idToken"].is_string());
    assert!(account[0]["refreshToken"].is_null() && account[0]["scope"].is_null());
    // GitHub has no ID tokens.
    let r = crate::http()
        .post(format!("{site}/api/auth/sign-in/social"))
        .json(&json!({"provider": "github", "idToken": {"token": "x.y.z"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "ID_TOKEN_NOT_SUPPORTED"
    );

    // link-social with a Google ID token, for a user who signed up with a password.
    let (_, cookie) = crate::sign_up(&stack, "linker@example.com").await;
    let link = |token: String| {
        let (site, cookie) = (site.clone(), cookie.clone());
        async move {
            crate::http()
                .post(format!("{site}/api/auth/link-social"))
                .header("origin", site.clone())
                .header("cookie", format!("better-auth.session_token={cookie}"))
                .json(&json!({"provider": "google", "idToken": {"token": token}}))
                .send()
                .await
                .unwrap()
        }
    };
    let for_linker = |sub: &str, email: &str| {
        let mut c = claims.clone();
        c["sub"] = json!(sub);
        c["email"] = json!(email);
        c.as_object_mut().unwrap().remove("nonce");
        c
    };
    let r = link(mint(for_linker("linker-g", "someone@example.com")).await).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "LINKING_DIFFERENT_EMAILS_NOT_ALLOWED"
    );
    let r = link(mint(for_linker("app-user", "linker@example.com")).await).await;
    assert_eq!(r.status(), 409, "the account is another user's");
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "SOCIAL_ACCOUNT_ALREADY_LINKED"
    );
    let before = stack.counts().await;
    let r = link(mint(for_linker("linker-g", "linker@example.com")).await).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"url": "", "status": true, "redirect": false})
    );
    assert_eq!(stack.counts().await.2, before.2 + 1);
    let accounts: Value = crate::http()
        .get(format!("{site}/api/auth/list-accounts"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let providers: Vec<&str> = accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["providerId"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["credential", "google"]);
}

#[tokio::test]
async fn a_signed_in_user_links_and_unlinks_a_provider() {
    let social = start(edge_testkit::test_database().await, &[], |_| {}).await;
    let site = social.stack.base.clone();
    let (_, cookie) = crate::sign_up(&social.stack, "lin@example.com").await;
    let mut browser = Browser::default();
    browser
        .jar
        .entry(host_of(&site))
        .or_default()
        .insert("better-auth.session_token".into(), cookie.clone());
    let user_id =
        json_get(&mut browser, &format!("{site}/api/auth/get-session")).await["user"]["id"].clone();

    // Without a session there is nothing to link to.
    let r = crate::http()
        .post(social.stack.url("/api/auth/link-social"))
        .json(&json!({"provider": PROVIDER}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The provider vouches for another address: refused, nothing linked.
    let link = |browser: &mut Browser, login: &'static str| {
        let site = site.clone();
        let mut browser = std::mem::take(browser);
        async move {
            let r = browser
                .send(
                    reqwest::Method::POST,
                    &format!("{site}/api/auth/link-social"),
                    None,
                    Some(&json!({"provider": PROVIDER, "callbackURL": "/settings"})),
                )
                .await;
            assert_eq!(r.status(), 200);
            let url = r.json::<Value>().await.unwrap()["url"]
                .as_str()
                .unwrap()
                .to_owned();
            let callback = browser.through_provider(&url, &site, login).await;
            let r = browser
                .send(reqwest::Method::GET, &callback, None, None)
                .await;
            assert_eq!(r.status(), 302);
            let location = r.headers()["location"].to_str().unwrap().to_owned();
            (browser, location)
        }
    };
    let (mut browser, location) = link(&mut browser, "someone-else").await;
    assert_eq!(
        location,
        format!("{site}/api/auth/error?error=email_does_not_match")
    );
    assert_eq!(social.stack.counts().await, (1, 1, 1));

    // The same address: linked, and the session cookie is left as it was.
    let (mut browser, location) = {
        // A new provider login (the provider remembers the last one).
        browser.jar.retain(|host, _| *host == host_of(&site));
        link(&mut browser, "lin").await
    };
    assert_eq!(location, "/settings");
    assert_eq!(
        browser.cookie(&site, "better-auth.session_token").unwrap(),
        cookie
    );
    let accounts = json_get(&mut browser, &format!("{site}/api/auth/list-accounts")).await;
    let providers: Vec<&str> = accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["providerId"].as_str().unwrap())
        .collect();
    assert_eq!(providers, ["credential", PROVIDER]);
    let linked = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["providerId"] == PROVIDER)
        .unwrap()
        .clone();
    assert_eq!(linked["accountId"], "lin");
    assert_eq!(linked["userId"], user_id);

    // Signing in with the provider now reaches the same user.
    let mut other = Browser::default();
    let location = sign_in(
        &mut other,
        &site,
        json!({"provider": PROVIDER, "callbackURL": "/home", "newUserCallbackURL": "/welcome"}),
        "lin",
    )
    .await;
    assert_eq!(location, "/home");
    let session = json_get(&mut other, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(session["user"]["id"], user_id);
    assert_eq!(social.stack.counts().await.0, 1);

    // Unlink: an unknown account is refused; the password account goes; the last stays.
    let unlink = |browser: &mut Browser, id: Value| {
        let site = site.clone();
        let mut browser = browser.clone();
        async move {
            browser
                .send(
                    reqwest::Method::POST,
                    &format!("{site}/api/auth/unlink-account"),
                    None,
                    Some(&json!({"accountId": id})),
                )
                .await
        }
    };
    let r = unlink(&mut browser, json!("no-such-account")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "ACCOUNT_NOT_FOUND"
    );
    let credential = accounts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["providerId"] == "credential")
        .unwrap()["id"]
        .clone();
    let r = unlink(&mut browser, credential).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": true}));
    let r = unlink(&mut browser, linked["id"].clone()).await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "FAILED_TO_UNLINK_LAST_ACCOUNT");
    assert_eq!(body["message"], "You can't unlink your last account");
    let accounts = json_get(&mut browser, &format!("{site}/api/auth/list-accounts")).await;
    assert_eq!(accounts.as_array().unwrap().len(), 1);
}
