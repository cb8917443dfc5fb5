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
            let response = self.get(&url).await;
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
    let url = started(browser, &format!("{site}/api/auth/sign-in/social"), &body).await;
    browser.through_provider(&url, site, login).await
}

/// A whole sign-in on `site`: the final redirect's location.
async fn sign_in(browser: &mut Browser, site: &str, body: Value, login: &str) -> String {
    let callback = begin(browser, site, body, login).await;
    let response = browser.get(&callback).await;
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

/// The `providerId`s of a list-accounts answer, in its order.
fn provider_ids(accounts: &Value) -> Vec<&str> {
    accounts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["providerId"].as_str().unwrap())
        .collect()
}

async fn json_get(browser: &mut Browser, url: &str) -> Value {
    let response = browser.get(url).await;
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
    let state = param(&callback, "state").unwrap();
    assert_eq!(state_rows[0]["identifier"], format!("auth-state:{state}"));
    assert_eq!(stored["oauthState"], state);
    assert_eq!(stored["callbackURL"], "/dashboard");
    assert_eq!(stored["newUserURL"], "/welcome");
    assert_eq!(stored["codeVerifier"].as_str().unwrap().len(), 128);
    assert!(stored["idTokenNonce"].is_string(), "{stored}");
    assert!(browser.cookie(&site, "better-auth.state").is_some());

    let response = browser.get(&callback).await;
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
    let response = stranger.get(&callback).await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/oops?error=state_mismatch");
    assert_eq!(social.stack.counts().await, (0, 0, 0));

    // A state nobody issued.
    let forged = callback.replace("state=", "state=forged");
    let response = browser.get(&forged).await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        format!("{site}/api/auth/error?error=state_mismatch")
    );
    assert_eq!(social.stack.counts().await, (0, 0, 0));

    // No state at all.
    let response = browser
        .get(&format!("{site}/api/auth/callback/{PROVIDER}?code=x"))
        .await;
    assert_eq!(
        response.headers()["location"],
        format!("{site}/api/auth/error?error=state_not_found")
    );

    // The real callback works once; replayed (same browser, same cookie), it is refused.
    let state_cookie = browser.cookie(&site, "better-auth.state").unwrap();
    let response = browser.get(&callback).await;
    assert_eq!(response.headers()["location"], "/dashboard");
    assert_eq!(social.stack.counts().await, (1, 1, 1));
    let mut replay = Browser::default().holding(&site, &[("better-auth.state", &state_cookie)]);
    let response = replay.get(&callback).await;
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
    let state = param(&callback, "state").unwrap();
    let response = browser.get(&format!("{site}/api/auth/callback/{PROVIDER}?state={state}&error=access_denied&error_description=no%20thanks")).await;
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
    let response = browser.get(bad_code.as_str()).await;
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
    let response = browser.get(&wrong_iss).await;
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
    let (social, _better_auth, peer) = start_with_peer(|_| {}).await;
    let site = social.stack.base.clone();
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

/// The tenant of the Microsoft Entra ID stand-in (a specific one: its issuer is checked).
const TENANT: &str = "4a1c6e35-0b3f-4d0c-9e2a-6f1b7c8d9e0f";

/// The stand-in for built-in providers' endpoints (oauth-standin.mjs) and a stack whose
/// built-in providers use them, each with the endpoint overrides it needs (Microsoft: the
/// stand-in as its authority).
struct Standin {
    stack: Stack,
    _server: edge_testkit::NodeServer,
    /// The stand-in's base URL.
    url: String,
    /// The site as the providers call it back (`BETTER_AUTH_URL`).
    site_url: String,
}

impl Standin {
    async fn start(ids: &[&str]) -> Standin {
        let server = edge_testkit::node_server(
            "oauth-standin.mjs",
            &json!({"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET}),
        )
        .await;
        let s = server.ready["url"].as_str().unwrap().to_owned();
        let at = |path: &str| Some(format!("{s}{path}"));
        let providers = ids
            .iter()
            .map(|id| {
                let mut c = edge_auth::social::ProviderConfig::new(id, CLIENT_ID, CLIENT_SECRET);
                if *id == "microsoft" {
                    (c.authority, c.tenant) = (s.clone(), TENANT.to_owned());
                    return c;
                }
                // (authorization, userinfo, jwks); every token endpoint is `/token`.
                let (authorization, userinfo, jwks) = match *id {
                    "github" => ("/gh/authorize", Some("/user"), None),
                    "google" => ("/google/auth", None, Some("/certs")),
                    "discord" => ("/discord/authorize", Some("/users/@me"), None),
                    "apple" => ("/apple/authorize", None, Some("/certs")),
                    other => panic!("no stand-in for {other}"),
                };
                c.endpoints.authorization = at(authorization);
                c.endpoints.token = at("/token");
                c.endpoints.userinfo = userinfo.and_then(at);
                c.endpoints.jwks = jwks.and_then(at);
                c
            })
            .collect();
        let port = edge_testkit::free_port();
        let site_url = format!("http://127.0.0.1:{port}");
        let stack = Stack::start_at(
            edge_testkit::test_database().await,
            format!("127.0.0.1:{port}").parse().unwrap(),
            |c| {
                c.account.base_url = site_url.clone();
                c.social_providers = providers;
            },
        )
        .await;
        Standin {
            stack,
            _server: server,
            url: s,
            site_url,
        }
    }

    /// Starts a sign-in with `id` (to `/done`): the authorization URL, on the stand-in.
    async fn begin(&self, browser: &mut Browser, id: &str) -> String {
        let site = &self.stack.base;
        let url = started(
            browser,
            &format!("{site}/api/auth/sign-in/social"),
            &json!({"provider": id, "callbackURL": "/done"}),
        )
        .await;
        assert!(url.starts_with(&self.url), "{id}: {url}");
        assert_eq!(
            param(&url, "redirect_uri").unwrap(),
            format!("{}/api/auth/callback/{id}", self.site_url)
        );
        url
    }

    /// A whole sign-in with `id` as `login` (the stand-in's code is the login): the callback's
    /// redirect location.
    async fn sign_in(&self, browser: &mut Browser, id: &str, login: &str) -> String {
        let url = self.begin(browser, id).await;
        self.come_back(browser, id, &url, login).await
    }

    /// The provider's redirect back for the authorization `url`, with code `login`.
    async fn come_back(&self, browser: &mut Browser, id: &str, url: &str, login: &str) -> String {
        let state = param(url, "state").unwrap();
        let site = &self.stack.base;
        let r = browser
            .get(&format!(
                "{site}/api/auth/callback/{id}?code={login}&state={state}"
            ))
            .await;
        assert_eq!(r.status(), 302, "{id}");
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    /// An ID token with `claims`, signed with the stand-in's JWKS key.
    async fn mint(&self, claims: &Value) -> String {
        let r = crate::http()
            .post(format!("{}/mint", self.url))
            .json(&json!({"claims": claims}))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The stand-in's answer at `path` for the login's access token (a provider's profile).
    async fn profile(&self, path: &str, login: &str) -> Value {
        crate::http()
            .get(format!("{}{path}", self.url))
            .header("user-agent", "better-auth")
            .bearer_auth(format!("at-{login}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Every form the token endpoints were sent, in order.
    async fn token_requests(&self) -> Vec<Value> {
        reqwest::get(format!("{}/requests", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `sign-in/social` with an ID token.
    async fn id_token_sign_in(&self, id: &str, id_token: Value) -> reqwest::Response {
        crate::http()
            .post(self.stack.url("/api/auth/sign-in/social"))
            .json(&json!({"provider": id, "idToken": id_token}))
            .send()
            .await
            .unwrap()
    }
}

/// `claims` with `key` set to `value`.
fn with(claims: &Value, key: &str, value: Value) -> Value {
    let mut c = claims.clone();
    c[key] = value;
    c
}

#[tokio::test]
async fn built_in_providers_sign_in_against_stand_in_endpoints() {
    let standin = Standin::start(&["github", "google", "discord", "apple"]).await;
    let stack = &standin.stack;
    let site = stack.base.clone();
    let github_id = standin.profile("/user", "gh").await["id"].to_string();
    let discord = standin.profile("/users/@me", "dc").await;
    let discord_id = discord["id"].as_str().unwrap().to_owned();
    // Better Auth's default avatar for a new-style name: (id >> 22) % 6.
    let avatar = format!(
        "https://cdn.discordapp.com/embed/avatars/{}.png",
        (discord_id.parse::<u64>().unwrap() >> 22) % 6
    );

    // (provider, login, accountId, name, image)
    let cases = [
        (
            "github",
            "gh",
            github_id.as_str(),
            "gh",
            "https://avatars.example/gh",
        ),
        (
            "google",
            "gg",
            "google-gg",
            "gg (google)",
            "https://example.com/gg.png",
        ),
        ("discord", "dc", discord_id.as_str(), "dc", avatar.as_str()),
    ];
    for (id, login, account_id, name, image) in cases {
        let mut browser = Browser::default();
        let url = standin.begin(&mut browser, id).await;
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
        assert_eq!(
            standin.come_back(&mut browser, id, &url, login).await,
            "/done",
            "{id}"
        );
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
    let url = standin.begin(&mut browser, "apple").await;
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
    let r = browser.get(&get).await;
    assert_eq!(r.headers()["location"], "/done");
    let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(session["user"]["name"], "Ap Ple");
    assert_eq!(session["user"]["email"], "ap@example.com");

    // What the token endpoint was sent: PKCE verifiers for all but Discord.
    let forms = standin.token_requests().await;
    assert_eq!(forms.len(), 4);
    assert_eq!(forms[0]["code_verifier"].as_str().unwrap().len(), 128);
    assert!(forms[2].get("code_verifier").is_none());
    assert_eq!(stack.counts().await, (4, 4, 4));

    // A code GitHub refuses (200 with `error`) writes nothing.
    let mut browser = Browser::default();
    let url = started(
        &mut browser,
        &format!("{site}/api/auth/sign-in/social"),
        &json!({"provider": "github", "errorCallbackURL": "/oops"}),
    )
    .await;
    assert_eq!(
        standin.come_back(&mut browser, "github", &url, "bad").await,
        "/oops?error=invalid_code"
    );
    assert_eq!(stack.counts().await, (4, 4, 4));

    // Sign-in with a Google ID token an app obtained itself.
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": "https://accounts.google.com", "aud": CLIENT_ID, "sub": "app-user",
        "email": "App.User@example.com", "email_verified": true, "name": "App User",
        "iat": now, "exp": now + 600, "nonce": "n-1"});
    let google = |token: String, nonce: &str| {
        standin.id_token_sign_in(
            "google",
            json!({"token": token, "nonce": nonce, "accessToken": "app-at"}),
        )
    };
    let refused = [
        (with(&claims, "aud", json!("someone-else")), "n-1"),
        (with(&claims, "iss", json!("https://evil.example")), "n-1"),
        (with(&claims, "exp", json!(now - 120)), "n-1"),
        (with(&claims, "iat", json!(now - 7200)), "n-1"),
        // Issued in the future (jose's `maxTokenAge` check, beyond its 30 s tolerance).
        (with(&claims, "iat", json!(now + 300)), "n-1"),
        (claims.clone(), "another-nonce"),
    ];
    for (claims, nonce) in refused {
        let r = google(standin.mint(&claims).await, nonce).await;
        assert_eq!(r.status(), 401, "{claims}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_TOKEN", "{claims}");
    }
    assert_eq!(stack.counts().await, (4, 4, 4));
    let r = google(standin.mint(&claims).await, "n-1").await;
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
    let r = standin
        .id_token_sign_in("github", json!({"token": "x.y.z"}))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "ID_TOKEN_NOT_SUPPORTED"
    );

    // link-social with a Google ID token, for a user who signed up with a password.
    let (_, cookie) = crate::sign_up(stack, "linker@example.com").await;
    let mut linker = Browser::default().holding(&site, &[("better-auth.session_token", &cookie)]);
    let for_linker = |sub: &str, email: &str| {
        let mut c = with(&with(&claims, "sub", json!(sub)), "email", json!(email));
        c.as_object_mut().unwrap().remove("nonce");
        c
    };
    let link_url = format!("{site}/api/auth/link-social");
    let link = |token: String| json!({"provider": "google", "idToken": {"token": token}});
    let token = standin
        .mint(&for_linker("linker-g", "someone@example.com"))
        .await;
    let r = linker.post(&link_url, &link(token)).await;
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "LINKING_DIFFERENT_EMAILS_NOT_ALLOWED"
    );
    let token = standin
        .mint(&for_linker("app-user", "linker@example.com"))
        .await;
    let r = linker.post(&link_url, &link(token)).await;
    assert_eq!(r.status(), 409, "the account is another user's");
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "SOCIAL_ACCOUNT_ALREADY_LINKED"
    );
    let before = stack.counts().await;
    let token = standin
        .mint(&for_linker("linker-g", "linker@example.com"))
        .await;
    let r = linker.post(&link_url, &link(token)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"url": "", "status": true, "redirect": false})
    );
    assert_eq!(stack.counts().await.2, before.2 + 1);
    let accounts = json_get(&mut linker, &format!("{site}/api/auth/list-accounts")).await;
    let providers = provider_ids(&accounts);
    assert_eq!(providers, ["credential", "google"]);
}

#[tokio::test]
async fn a_signed_in_user_links_and_unlinks_a_provider() {
    let social = start(edge_testkit::test_database().await, &[], |_| {}).await;
    let site = social.stack.base.clone();
    let (_, cookie) = crate::sign_up(&social.stack, "lin@example.com").await;
    let mut browser = Browser::default().holding(&site, &[("better-auth.session_token", &cookie)]);
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
    assert_eq!(
        link_through(&mut browser, &site, "someone-else").await,
        format!("{site}/api/auth/error?error=email_does_not_match")
    );
    assert_eq!(social.stack.counts().await, (1, 1, 1));

    // The same address (a new provider login: it remembers the last one): linked, and the
    // session cookie is left as it was.
    let mut browser = browser.only(&site);
    assert_eq!(link_through(&mut browser, &site, "lin").await, "/settings");
    assert_eq!(
        browser.cookie(&site, "better-auth.session_token").unwrap(),
        cookie
    );
    let accounts = json_get(&mut browser, &format!("{site}/api/auth/list-accounts")).await;
    let providers = provider_ids(&accounts);
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
    let unlink = format!("{site}/api/auth/unlink-account");
    let r = browser
        .post(&unlink, &json!({"accountId": "no-such-account"}))
        .await;
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
    let r = browser
        .post(&unlink, &json!({"accountId": credential}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": true}));
    let r = browser
        .post(&unlink, &json!({"accountId": linked["id"]}))
        .await;
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "FAILED_TO_UNLINK_LAST_ACCOUNT");
    assert_eq!(body["message"], "You can't unlink your last account");
    let accounts = json_get(&mut browser, &format!("{site}/api/auth/list-accounts")).await;
    assert_eq!(accounts.as_array().unwrap().len(), 1);
}

impl Browser {
    /// A POST of a JSON body.
    pub async fn post(&mut self, url: &str, body: &Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, url, None, Some(body))
            .await
    }

    pub async fn get(&mut self, url: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, url, None, None).await
    }

    /// This browser with `cookies` for `site` (another browser's session there).
    fn holding(mut self, site: &str, cookies: &[(&str, &str)]) -> Browser {
        let jar = self.jar.entry(host_of(site)).or_default();
        for (name, value) in cookies {
            jar.insert((*name).to_owned(), (*value).to_owned());
        }
        self
    }

    /// Forgets every site's cookies but `site`'s (a new login at the provider).
    fn only(mut self, site: &str) -> Browser {
        self.jar.retain(|host, _| *host == host_of(site));
        self
    }
}

/// A start route's `{url, redirect: true}` answer: the provider's authorization URL.
async fn started(browser: &mut Browser, url: &str, body: &Value) -> String {
    let r = browser.post(url, body).await;
    assert_eq!(r.status(), 200, "{url} {body}");
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["redirect"], true, "{answer}");
    answer["url"].as_str().unwrap().to_owned()
}

/// link-social on `site` through the provider as `login`: the callback's redirect location.
async fn link_through(browser: &mut Browser, site: &str, login: &str) -> String {
    let body = json!({"provider": PROVIDER, "callbackURL": "/settings"});
    let url = started(browser, &format!("{site}/api/auth/link-social"), &body).await;
    let callback = browser.through_provider(&url, site, login).await;
    let r = browser.get(&callback).await;
    assert_eq!(r.status(), 302, "{callback}");
    r.headers()["location"].to_str().unwrap().to_owned()
}

/// The provider, the stack (with `tweak`) and beside it the real better-auth with genericOAuth
/// for the same provider on the same database; and better-auth's base URL.
async fn start_with_peer(
    tweak: impl FnOnce(&mut edge_auth::Config),
) -> (Social, edge_testkit::NodeServer, String) {
    let port = edge_testkit::free_port();
    let peer = format!("http://127.0.0.1:{port}");
    let social = start(
        edge_testkit::test_database().await,
        &[format!("{peer}/api/auth/callback/{PROVIDER}")],
        tweak,
    )
    .await;
    let server = edge_testkit::node_server(
        "better-auth-oauth.mjs",
        &json!({
            "databaseUrl": social.stack.db.url, "secret": SECRET, "port": port,
            "providerId": PROVIDER, "clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET,
            "discoveryUrl": format!("{}/.well-known/openid-configuration", social.issuer),
        }),
    )
    .await;
    (social, server, peer)
}

/// Which providers each start route serves, and its answer for the others, as Better Auth
/// gives them. 1.7's `sign-in/social` serves genericOAuth's providers beside the built-in ones
/// and answers 404 `PROVIDER_NOT_FOUND` for the rest (the real better-auth answers beside the
/// gateway); 1.6's genericOAuth `sign-in/oauth2` and `oauth2/callback/:providerId` serve only
/// genericOAuth's own: 400 `{"message": "PROVIDER_CONFIG_NOT_FOUND <id>"}` (1.6.34's
/// `APIError.fromStatus` with its error code object in the message), nothing stored or taken.
#[tokio::test]
async fn each_start_route_serves_only_the_providers_better_auth_serves_there() {
    let (social, _peer, peer) = start_with_peer(|c| {
        let github = edge_auth::social::ProviderConfig::new("github", CLIENT_ID, CLIENT_SECRET);
        c.social_providers.push(github);
    })
    .await;
    let site = social.stack.base.clone();
    let mut browser = Browser::default();

    // sign-in/social: generic and built-in alike; an unknown id as better-auth answers it.
    for provider in [PROVIDER, "github"] {
        let url = started(
            &mut browser,
            &format!("{site}/api/auth/sign-in/social"),
            &json!({"provider": provider}),
        )
        .await;
        let redirect = param(&url, "redirect_uri").unwrap();
        assert!(redirect.ends_with(&format!("/api/auth/callback/{provider}")));
    }
    for unknown in ["nope", "google"] {
        let body = json!({"provider": unknown, "callbackURL": "/"});
        let mut answers = Vec::new();
        for host in [&site, &peer] {
            let r = browser
                .post(&format!("{host}/api/auth/sign-in/social"), &body)
                .await;
            answers.push((r.status(), r.json::<Value>().await.unwrap()));
        }
        assert_eq!(answers[0], answers[1], "{unknown}");
        assert_eq!(answers[0].0, 404);
        assert_eq!(answers[0].1["code"], "PROVIDER_NOT_FOUND");
    }

    // sign-in/oauth2: the generic provider, with its own callback path.
    let url = started(
        &mut browser,
        &format!("{site}/api/auth/sign-in/oauth2"),
        &json!({"providerId": PROVIDER}),
    )
    .await;
    assert!(
        param(&url, "redirect_uri")
            .unwrap()
            .ends_with("/api/auth/oauth2/callback/acme")
    );
    let before = rows(
        &social.stack.db.url,
        r#"SELECT "identifier" FROM "verification""#,
    )
    .await;
    // Built-in and unknown ids are refused; `idToken` is no member of that route.
    for body in [
        json!({"providerId": "github"}),
        json!({"providerId": "nope"}),
        json!({"providerId": "github", "idToken": {"token": "x.y.z"}}),
    ] {
        let r = browser
            .post(&format!("{site}/api/auth/sign-in/oauth2"), &body)
            .await;
        assert_eq!(r.status(), 400, "{body}");
        let id = body["providerId"].as_str().unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"message": format!("PROVIDER_CONFIG_NOT_FOUND {id}")})
        );
    }
    // A GitHub state brought to the genericOAuth callback is refused and left in place.
    let github = started(
        &mut browser,
        &format!("{site}/api/auth/sign-in/social"),
        &json!({"provider": "github"}),
    )
    .await;
    let state = param(&github, "state").unwrap();
    let stored = rows(&social.stack.db.url, r#"SELECT 1 FROM "verification""#).await;
    let r = browser
        .get(&format!(
            "{site}/api/auth/oauth2/callback/github?code=x&state={state}"
        ))
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"message": "PROVIDER_CONFIG_NOT_FOUND github"})
    );
    let after = rows(&social.stack.db.url, r#"SELECT 1 FROM "verification""#).await;
    assert_eq!(after.len(), stored.len());
    assert_eq!(stored.len(), before.len() + 1);
    assert_eq!(social.stack.counts().await, (0, 0, 0));
}

/// A `rememberMe: false` session and Better Auth's signed `dont_remember` cookie: link-social
/// (redirect and ID token) and unlink-account read the session as `sessionMiddleware` does,
/// so a session due for a refresh from its first minute keeps its one-day expiry.
#[tokio::test]
async fn linking_routes_leave_a_browser_session_unextended() {
    let social = start(edge_testkit::test_database().await, &[], |_| {}).await;
    let site = social.stack.base.clone();
    let mut browser = Browser::default();
    let r = browser
        .post(
            &format!("{site}/api/auth/sign-up/email"),
            &json!({"name": "B", "email": "b@example.com", "password": crate::PASSWORD, "rememberMe": false}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert!(browser.cookie(&site, "better-auth.dont_remember").is_some());
    let expiry = || rows(&social.stack.db.url, r#"SELECT "expiresAt" FROM "session""#);
    let before = expiry().await;

    let url = started(
        &mut browser,
        &format!("{site}/api/auth/link-social"),
        &json!({"provider": PROVIDER}),
    )
    .await;
    assert!(param(&url, "state").is_some());
    let r = browser
        .post(
            &format!("{site}/api/auth/link-social"),
            &json!({"provider": PROVIDER, "idToken": {"token": "x.y.z"}}),
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = browser
        .post(
            &format!("{site}/api/auth/unlink-account"),
            &json!({"accountId": "no-such-account"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    assert_eq!(expiry().await, before);
}

/// Better Auth's `isLinkSessionLive`: a link whose session ended (signed out, or revoked from
/// another device) before the provider sent the browser back links nothing, on either side.
#[tokio::test]
async fn a_link_whose_session_ended_links_nothing_on_either_side() {
    let (social, _peer, peer) = start_with_peer(|_| {}).await;
    let site = social.stack.base.clone();
    let (_, cookie) = crate::sign_up(&social.stack, "lin@example.com").await;
    let session = [("better-auth.session_token", cookie.as_str())];

    for (host, end) in [
        (&site, "sign-out"),
        (&peer, "sign-out"),
        (&site, "revoke"),
        (&peer, "revoke"),
    ] {
        // A second session of the user, which the link starts from.
        let r = crate::http()
            .post(social.stack.url("/api/auth/sign-in/email"))
            .json(&json!({"email": "lin@example.com", "password": crate::PASSWORD}))
            .send()
            .await
            .unwrap();
        let linking = crate::cookie_of(&r).unwrap();
        let mut browser =
            Browser::default().holding(host, &[("better-auth.session_token", &linking)]);
        let body = json!({"provider": PROVIDER, "callbackURL": "/settings"});
        let url = started(&mut browser, &format!("{host}/api/auth/link-social"), &body).await;
        let callback = browser.through_provider(&url, host, "lin").await;
        if end == "sign-out" {
            let r = browser
                .post(&format!("{host}/api/auth/sign-out"), &json!({}))
                .await;
            assert_eq!(r.status(), 200);
        } else {
            // From the first session, on the gateway: revoke-other-sessions.
            let mut other = Browser::default().holding(&site, &session);
            let r = other
                .post(
                    &format!("{site}/api/auth/revoke-other-sessions"),
                    &json!({}),
                )
                .await;
            assert_eq!(r.status(), 200);
        }
        let r = browser.get(&callback).await;
        assert_eq!(r.status(), 302, "{host} {end}");
        assert_eq!(
            r.headers()["location"],
            format!("{host}/api/auth/error?error=unable_to_link_account"),
            "{host} {end}"
        );
        assert_eq!(social.stack.counts().await, (1, 1, 1), "{host} {end}");
    }
    // A live session links, through either side.
    assert_eq!(
        link_through(
            &mut Browser::default().holding(&site, &session),
            &site,
            "lin"
        )
        .await,
        "/settings"
    );
    assert_eq!(social.stack.counts().await.2, 2);
}

/// A link made through one side is the other's: the user who linked the provider through
/// better-auth signs in with it through the gateway and sees it in list-accounts, and the
/// reverse.
#[tokio::test]
async fn links_made_by_better_auth_and_by_the_gateway_serve_the_other() {
    let (social, _peer, peer) = start_with_peer(|_| {}).await;
    let site = social.stack.base.clone();
    let body =
        json!({"provider": PROVIDER, "callbackURL": "/home", "newUserCallbackURL": "/welcome"});

    for (linker, user_site, login) in [(&peer, &site, "grace"), (&site, &peer, "linus")] {
        let (user, cookie) = crate::sign_up(&social.stack, &format!("{login}@example.com")).await;
        let mut browser =
            Browser::default().holding(linker, &[("better-auth.session_token", &cookie)]);
        assert_eq!(link_through(&mut browser, linker, login).await, "/settings");
        // Signed in with the provider on the other side: the same user, not a new one.
        let mut other = Browser::default();
        assert_eq!(
            sign_in(&mut other, user_site, body.clone(), login).await,
            "/home"
        );
        let session = json_get(&mut other, &format!("{user_site}/api/auth/get-session")).await;
        assert_eq!(session["user"]["id"], user["user"]["id"], "{login}");
        let accounts = json_get(&mut other, &format!("{user_site}/api/auth/list-accounts")).await;
        let mut providers = provider_ids(&accounts);
        providers.sort_unstable();
        assert_eq!(providers, [PROVIDER, "credential"], "{login}");
    }
    assert_eq!(social.stack.counts().await.0, 2);
    assert_eq!(social.stack.counts().await.2, 4);
}

/// Each GitHub login is its own user (the stand-in gives each its own id): two logins are two
/// users with an account each; the first again is the same user and account.
#[tokio::test]
async fn two_github_users_are_two_users() {
    let standin = Standin::start(&["github"]).await;
    let site = standin.stack.base.clone();
    let mut users = Vec::new();
    for (login, counts) in [
        ("octo", (1, 1, 1)),
        ("hubot", (2, 2, 2)),
        ("octo", (2, 3, 2)),
    ] {
        let mut browser = Browser::default();
        assert_eq!(
            standin.sign_in(&mut browser, "github", login).await,
            "/done"
        );
        assert_eq!(standin.stack.counts().await, counts, "{login}");
        let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
        assert_eq!(session["user"]["email"], format!("{login}@example.com"));
        users.push(session["user"]["id"].clone());
    }
    assert_ne!(users[0], users[1]);
    assert_eq!(users[0], users[2]);
    let accounts = rows(
        &standin.stack.db.url,
        r#"SELECT "accountId", "userId" FROM "account" ORDER BY "createdAt""#,
    )
    .await;
    let mut expected = Vec::new();
    for (login, user) in [("octo", &users[0]), ("hubot", &users[1])] {
        let id = standin.profile("/user", login).await["id"].to_string();
        expected.push(json!({"accountId": id, "userId": user}));
    }
    assert_ne!(expected[0]["accountId"], expected[1]["accountId"]);
    assert_eq!(accounts, expected);
}

/// Microsoft Entra ID against its stand-in as the authority: its endpoints under the tenant,
/// its scopes and PKCE, the user mapped as Better Auth's `microsoft-entra-id` provider maps it
/// (`oid` as the account id, `verified_primary_email`/`verified_secondary_email` vouching
/// when `email_verified` is absent), and ID tokens held to its rules: the tenant's issuer,
/// `iss` naming the token's own `tid`, this client as `aud`, at most an hour old.
#[tokio::test]
async fn microsoft_signs_in_against_stand_in_endpoints() {
    let standin = Standin::start(&["microsoft"]).await;
    let (stack, s) = (&standin.stack, &standin.url);
    let site = stack.base.clone();

    let mut browser = Browser::default();
    let url = standin.begin(&mut browser, "microsoft").await;
    assert!(
        url.starts_with(&format!("{s}/{TENANT}/oauth2/v2.0/authorize?")),
        "{url}"
    );
    assert_eq!(
        param(&url, "scope").unwrap(),
        "openid profile email User.Read offline_access"
    );
    assert_eq!(param(&url, "code_challenge_method").unwrap(), "S256");
    assert_eq!(
        standin
            .come_back(&mut browser, "microsoft", &url, "mia")
            .await,
        "/done"
    );
    let session = json_get(&mut browser, &format!("{site}/api/auth/get-session")).await;
    assert_eq!(session["user"]["email"], "mia@example.com");
    assert_eq!(session["user"]["emailVerified"], true);
    assert_eq!(session["user"]["name"], "mia (microsoft)");
    assert!(session["user"]["image"].is_null());
    let account = rows(&stack.db.url, r#"SELECT * FROM "account""#).await;
    assert_eq!(account[0]["providerId"], "microsoft");
    assert_eq!(account[0]["accountId"], "oid-mia");
    assert_eq!(account[0]["accessToken"], "at-mia");
    assert_eq!(account[0]["refreshToken"], "rt-mia");
    assert_eq!(account[0]["scope"], "openid,profile,email,User.Read");
    let id_claims =
        edge_auth::social::provider::decode_claims(account[0]["idToken"].as_str().unwrap())
            .unwrap();
    assert_eq!(id_claims["iss"], format!("{s}/{TENANT}/v2.0"));
    let forms = standin.token_requests().await;
    assert_eq!(forms.len(), 1);
    assert_eq!(forms[0]["code_verifier"].as_str().unwrap().len(), 128);
    assert_eq!(
        forms[0]["redirect_uri"],
        format!("{}/api/auth/callback/microsoft", standin.site_url)
    );
    assert_eq!(stack.counts().await, (1, 1, 1));

    // An ID token an app obtained itself.
    let now = chrono::Utc::now().timestamp();
    let other = "9188040d-6c67-4c5b-b112-36a304b66dad";
    let claims = json!({"iss": format!("{s}/{TENANT}/v2.0"), "aud": CLIENT_ID, "tid": TENANT,
        "oid": "oid-app", "sub": "pairwise-app", "email": "app@example.com",
        "verified_secondary_email": ["app@example.com"], "name": "App",
        "iat": now, "exp": now + 600});
    let refused = [
        // Another tenant's token, named by its own issuer.
        with(
            &with(&claims, "tid", json!(other)),
            "iss",
            json!(format!("{s}/{other}/v2.0")),
        ),
        // The issuer of this tenant, the `tid` of another.
        with(&claims, "tid", json!(other)),
        with(&claims, "aud", json!("someone-else")),
        with(&claims, "iat", json!(now - 7200)),
    ];
    for claims in refused {
        let token = standin.mint(&claims).await;
        let r = standin
            .id_token_sign_in("microsoft", json!({"token": token}))
            .await;
        assert_eq!(r.status(), 401, "{claims}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "INVALID_TOKEN");
    }
    assert_eq!(stack.counts().await, (1, 1, 1));
    let token = standin.mint(&claims).await;
    let r = standin
        .id_token_sign_in("microsoft", json!({"token": token}))
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"]["email"], "app@example.com");
    assert_eq!(body["user"]["emailVerified"], true);
    assert_eq!(body["user"]["name"], "App");
    let account = rows(
        &stack.db.url,
        r#"SELECT "accountId" FROM "account" WHERE "userId" = (SELECT "id" FROM "user" WHERE "email" = 'app@example.com')"#,
    )
    .await;
    assert_eq!(account, [json!({"accountId": "oid-app"})]);
}

/// The first word of a page's text after `marker`, tags skipped (what a reader sees there).
fn shown_after(page: &str, marker: &str) -> String {
    let rest = &page[page.find(marker).unwrap_or_else(|| panic!("no {marker}")) + marker.len()..];
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
        if !in_tag && c.is_whitespace() && !text.trim().is_empty() {
            break;
        }
    }
    text.trim().to_owned()
}

/// `GET /api/auth/error`, the default `errorCallbackURL`, beside the real better-auth's: 200
/// `text/html`, the `?error=` code shown only in Better Auth's shape (else `UNKNOWN`), and a
/// hostile `error_description` escaped the same way on both (no markup of the query's).
#[tokio::test]
async fn the_error_page_is_better_auths_and_escapes_the_query() {
    let (social, _peer, peer) = start_with_peer(|_| {}).await;
    let site = social.stack.base.clone();
    let hostile = "<img src=x onerror=alert(1)> & \"quoted\" 'single' &amp; &#x41; &#65;";
    let escaped = "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;quoted&quot; &#39;single&#39; \
                   &amp; &#x41; &#65;";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("error", "access_denied")], "access_denied"),
        (&[("error", "account_not_linked")], "account_not_linked"),
        (
            &[
                ("error", "<script>alert(1)</script>"),
                ("error_description", hostile),
            ],
            "UNKNOWN",
        ),
        (&[("error", "a\"b")], "UNKNOWN"),
        (&[], "UNKNOWN"),
    ];
    for (query, code) in cases {
        let query = serde_urlencoded::to_string(query).unwrap();
        for base in [&site, &peer] {
            let url = format!("{base}/api/auth/error?{query}");
            let r = http().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(r.headers()["content-type"], "text/html", "{url}");
            let page = r.text().await.unwrap();
            assert_eq!(shown_after(&page, "CODE:"), code, "{url}");
            for raw in ["<script", "<img", "\"quoted\"", "a\"b"] {
                assert!(!page.contains(raw), "{url} shows {raw} unescaped");
            }
            if query.contains("error_description") {
                assert!(page.contains(escaped), "{url}: {page}");
            } else {
                // Without a description: a link to Better Auth's page about the code.
                assert!(
                    page.contains(&format!("better-auth.com/docs/reference/errors/{code}")),
                    "{url}"
                );
            }
        }
    }
}

/// A provider's refusal without an `errorCallbackURL` ends on the gateway's error page naming
/// it (it was a JSON 404), and with the demo sign-in page's `errorCallbackURL` (the page
/// itself) back on that page with the code.
#[tokio::test]
async fn a_refused_sign_in_ends_on_a_page_showing_the_error() {
    let standin = Standin::start(&["github"]).await;
    let site = standin.stack.base.clone();
    let mut browser = Browser::default();
    let url = standin.begin(&mut browser, "github").await;
    let state = param(&url, "state").unwrap();
    let r = browser
        .get(&format!(
            "{site}/api/auth/callback/github?error=access_denied&error_description=The+user+said+no&state={state}"
        ))
        .await;
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        location,
        format!("{site}/api/auth/error?error=access_denied&error_description=The+user+said+no")
    );
    let r = browser.get(&location).await;
    assert_eq!(r.status(), 200, "{location}");
    assert_eq!(r.headers()["content-type"], "text/html");
    let page = r.text().await.unwrap();
    assert_eq!(shown_after(&page, "CODE:"), "access_denied");
    assert!(page.contains("The user said no"), "{page}");

    // The demo's sign-in page posts itself as `errorCallbackURL`.
    let demo = browser.get(&format!("{site}/sign-in")).await;
    assert_eq!(demo.status(), 200);
    assert!(
        demo.text()
            .await
            .unwrap()
            .contains("errorCallbackURL: window.location.pathname")
    );
    let body = json!({"provider": "github", "callbackURL": "/", "errorCallbackURL": "/sign-in"});
    let url = started(
        &mut browser,
        &format!("{site}/api/auth/sign-in/social"),
        &body,
    )
    .await;
    let state = param(&url, "state").unwrap();
    let r = browser
        .get(&format!(
            "{site}/api/auth/callback/github?error=access_denied&state={state}"
        ))
        .await;
    assert_eq!(r.headers()["location"], "/sign-in?error=access_denied");
    let page = browser
        .get(&format!("{site}/sign-in?error=access_denied"))
        .await;
    assert_eq!(page.status(), 200);
}

/// A provider slower than the gateway's own deadline (5 s) but within auth's provider budget
/// (10 s) signs the user in; one that never answers ends, after auth's budget, in Better
/// Auth's error redirect with the state cookie cleared and nothing written (was: 503 with no
/// `Location`, the state cookie left and the state consumed).
#[tokio::test]
async fn a_slow_or_stalled_provider_ends_in_a_redirect() {
    let standin = Standin::start(&["github"]).await;
    let site = standin.stack.base.clone();
    let mut browser = Browser::default();
    let location = standin.sign_in(&mut browser, "github", "slow-ada").await;
    assert_eq!(location, "/done");
    assert!(browser.cookie(&site, "better-auth.session_token").is_some());

    let mut stalled = Browser::default();
    let url = standin.begin(&mut stalled, "github").await;
    let state = param(&url, "state").unwrap();
    let r = stalled
        .get(&format!(
            "{site}/api/auth/callback/github?code=stall&state={state}"
        ))
        .await;
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        format!("{site}/api/auth/error?error=invalid_code").as_str()
    );
    let cleared = r.headers().get_all("set-cookie").iter().any(|c| {
        c.to_str()
            .unwrap()
            .starts_with("better-auth.state=; Max-Age=0")
    });
    assert!(cleared, "the state cookie is cleared");
    assert!(stalled.cookie(&site, "better-auth.session_token").is_none());
    let users = rows(&standin.stack.db.url, "SELECT email FROM \"user\"").await;
    assert_eq!(users, [json!({"email": "slow-ada@example.com"})]);
}
