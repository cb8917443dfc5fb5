//! Server-rendered pages from `convex-edge dev`: the HTML holds each page's query data before
//! any script runs, `server: false` queries are absent from it, and in a real browser the demo
//! signs up, chats live between two users and keeps private tasks.

use std::path::Path;

use serde_json::{Value, json};

use crate::{Proc, read_lines_until, scrape, sign_up, spawn};

struct Dev {
    site: String,
    query: String,
    _proc: Proc,
    _dir: edge_testkit::TempDir,
}

/// `convex-edge dev` on free ports with `extra` environment.
fn dev(extra: &[(&str, String)]) -> Dev {
    let dir = edge_testkit::TempDir::default();
    let mut env: Vec<(String, String)> = [
        "GATEWAY_HTTP_ADDR",
        "AUTH_GRPC_ADDR",
        "AUTH_HTTP_ADDR",
        "DEVCONVEX_ADDR",
        "QUERY_HTTP_ADDR",
        "QUERY_GRPC_ADDR",
    ]
    .iter()
    .map(|k| (k.to_string(), "127.0.0.1:0".to_string()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let mut proc = spawn(&["dev"], &env, Some(dir.path()));
    let lines = read_lines_until(&mut proc, "data:");
    let url_after = |label: &str| {
        let line = lines.iter().find(|l| l.contains(label)).unwrap();
        line.rsplit(' ').next().unwrap().to_owned()
    };
    Dev {
        site: url_after("site (gateway):"),
        query: url_after("Convex clients (query proxy)"),
        _proc: proc,
        _dir: dir,
    }
}

async fn jwt(site: &str, cookie: &str) -> String {
    let body: Value = reqwest::Client::new()
        .get(format!("{site}/api/auth/convex/token"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// Sends a chat message through the query service's HTTP API.
async fn send(query: &str, jwt: &str, channel: &str, body: &str) {
    let r: Value = reqwest::Client::new()
        .post(format!("{query}/api/mutation"))
        .bearer_auth(jwt)
        .json(&json!({"path": "messages:send", "args": {"channel": channel, "body": body}, "format": "json"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["status"], "success", "{r}");
}

async fn html(
    site: &str,
    path: &str,
    cookie: Option<&str>,
) -> (reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new().get(format!("{site}{path}"));
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    (r.headers().clone(), r.text().await.unwrap())
}

/// The hydration state a page embeds.
fn embedded_state(html: &str) -> Value {
    let start = html
        .find(r#"<script id="convex-edge-state" type="application/json">"#)
        .expect("hydration state embedded");
    let rest = &html[start..];
    let json = &rest[rest.find('>').unwrap() + 1..rest.find("</script>").unwrap()];
    serde_json::from_str(json).unwrap()
}

fn write_pages(dir: &Path) {
    std::fs::write(
        dir.join("pages.json"),
        r#"{"pages": [{"route": "/room/{channel}", "template": "room.html", "queries": {
            "live": {"path": "messages:list", "args": {"channel": "{channel}"}},
            "again": {"path": "messages:list", "args": {"channel": "{channel}"}},
            "once": {"path": "config:get", "subscribe": false},
            "later": {"path": "messages:list", "args": {"channel": "elsewhere"}, "server": false},
            "me": {"path": "users:me"}}}]}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("room.html"),
        r#"<!doctype html><html><head>{{ convex_edge }}</head><body>
<h1>{{ queries.once.siteName }}</h1>
<p id="who">{{ user.name if user else "anonymous" }} / {{ queries.me.email if queries.me else "nobody" }}</p>
<ul>{% for m in queries.live %}<li>{{ m.author }}: {{ m.body }}</li>{% endfor %}</ul>
<p id="again">{{ queries.again | length }}</p>
<p id="later">{{ "later rendered" if queries.later else "later absent" }}</p>
</body></html>"#,
    )
    .unwrap();
}

#[tokio::test]
async fn pages_hold_their_server_queries_before_any_script_runs() {
    let pages = edge_testkit::TempDir::default();
    write_pages(pages.path());
    let dev = dev_with_pages(pages.path(), &[]);
    let cookie = sign_up(&dev.site, "Ada", "ada@example.com").await;
    let token = jwt(&dev.site, &cookie).await;
    send(&dev.query, &token, "lobby", "first <b>post</b>").await;
    send(&dev.query, &token, "elsewhere", "only-in-the-browser").await;

    let (headers, page) = html(&dev.site, "/room/lobby", Some(&cookie)).await;
    assert_eq!(headers["cache-control"], "private, no-store");
    // Rendered data, escaped as HTML; the signed-in user's own query ran with their token.
    assert!(page.contains("Ada: first &lt;b&gt;post&lt;"), "{page}");
    assert!(page.contains("<h1>convex-edge demo</h1>"));
    assert!(page.contains(r#"<p id="who">Ada / ada@example.com</p>"#));
    assert!(page.contains(r#"<p id="again">1</p>"#));
    // `server: false`: not in the HTML at all, left to the browser.
    assert!(page.contains("later absent"));
    assert!(!page.contains("only-in-the-browser"));
    assert!(
        !page.contains("<b>post</b>"),
        "no raw markup from data, even in the embedded JSON"
    );

    let state = embedded_state(&page);
    assert!(state["signedIn"].as_bool().unwrap());
    assert_eq!(state["convexUrl"], dev.query.as_str());
    let q = &state["queries"];
    assert_eq!(q["live"]["subscribe"], true);
    assert_eq!(q["live"]["args"], json!({"channel": "lobby"}));
    assert_eq!(q["live"]["value"][0]["body"], "first <b>post</b>");
    assert_eq!(q["once"]["subscribe"], false);
    assert_eq!(q["once"]["value"]["siteName"], "convex-edge demo");
    assert_eq!(q["later"]["server"], false);
    assert!(q["later"].get("value").is_none());

    // Anonymous: the same page without the user's data; a dead session's cookie is cleared.
    let (_, page) = html(&dev.site, "/room/lobby", None).await;
    assert!(page.contains(r#"<p id="who">anonymous / nobody</p>"#));
    assert!(page.contains("Ada: first"));
    let (headers, page) = html(
        &dev.site,
        "/room/lobby",
        Some("better-auth.session_token=garbage.value"),
    )
    .await;
    assert!(page.contains("anonymous / nobody"));
    assert!(
        headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(!embedded_state(&page)["signedIn"].as_bool().unwrap());

    // The page client is served; unknown paths are still 404.
    let js = reqwest::get(format!("{}/_edge/client.js", dev.site))
        .await
        .unwrap();
    assert!(
        js.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let missing = reqwest::get(format!("{}/nowhere", dev.site)).await.unwrap();
    assert_eq!(missing.status(), 404);
}

/// The gateway's page-query counters: (from a live watch, fetched), and the watches open.
async fn page_sources(site: &str) -> (f64, f64, f64) {
    let url = format!("{site}/metrics");
    (
        scrape(&url, r#"edge_gateway_page_queries_total{source="watch"}"#).await,
        scrape(&url, r#"edge_gateway_page_queries_total{source="fetch"}"#).await,
        scrape(&url, "edge_gateway_page_watches").await,
    )
}

#[tokio::test]
async fn pages_follow_changes_through_a_live_watch_and_fetch_what_is_not_subscribed() {
    let pages = edge_testkit::TempDir::default();
    write_pages(pages.path());
    let dev = dev_with_pages(pages.path(), &[]);
    let cookie = sign_up(&dev.site, "Grace", "grace@example.com").await;
    let token = jwt(&dev.site, &cookie).await;
    send(&dev.query, &token, "lobby", "before").await;

    let (_, page) = html(&dev.site, "/room/lobby", Some(&cookie)).await;
    assert!(page.contains("Grace: before"), "{page}");
    assert!(page.contains(r#"<p id="who">Grace / grace@example.com</p>"#));
    // `live` and `again` are one call; with `me`, two watched queries. `once` (subscribe:
    // false) is fetched; `later` (server: false) is not run.
    assert_eq!(page_sources(&dev.site).await, (2.0, 1.0, 1.0));

    // A change reaches the next renders through the watch, with no new watch.
    send(&dev.query, &token, "lobby", "after").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut renders = 1.0;
    loop {
        let (_, page) = html(&dev.site, "/room/lobby", Some(&cookie)).await;
        renders += 1.0;
        if page.contains("Grace: after") {
            assert!(page.contains("Grace: before"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change never reached the page: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(page_sources(&dev.site).await, (2.0 * renders, renders, 1.0));
    // The query service holds the watch.
    let query_metrics = format!("{}/metrics", dev.query);
    assert_eq!(scrape(&query_metrics, "edge_query_watches").await, 1.0);

    // Another identity (anonymous) has a watch of its own and sees public data only.
    let (_, page) = html(&dev.site, "/room/lobby", None).await;
    assert!(page.contains("Grace: after") && page.contains("anonymous / nobody"));
    assert_eq!(page_sources(&dev.site).await.2, 2.0);

    // Watches off: every render fetches every server query.
    let off = dev_with_pages(pages.path(), &[("GATEWAY_PAGE_WATCH_SECONDS", "0")]);
    let cookie = sign_up(&off.site, "Hopper", "hopper@example.com").await;
    for _ in 0..2 {
        let (_, page) = html(&off.site, "/room/lobby", Some(&cookie)).await;
        assert!(page.contains(r#"<p id="who">Hopper / hopper@example.com</p>"#));
    }
    assert_eq!(page_sources(&off.site).await, (0.0, 6.0, 0.0));
}

/// Page parameters become query arguments, held on the query service (and by Convex) while
/// the page is watched: a request whose route parameters are longer than
/// `GATEWAY_MAX_PAGE_PARAM_BYTES` gets 414 naming the limit, signed in or not, and nothing is
/// asked of the query service (no query, no watch); one at the limit is served.
#[tokio::test]
async fn page_parameters_over_the_limit_are_refused_and_subscribe_nothing() {
    let pages = edge_testkit::TempDir::default();
    write_pages(pages.path());
    let dev = dev_with_pages(pages.path(), &[("GATEWAY_MAX_PAGE_PARAM_BYTES", "1000")]);
    let cookie = sign_up(&dev.site, "Ada", "ada@example.com").await;
    let http = reqwest::Client::new();
    for cookie in [None, Some(&cookie)] {
        let mut request = http.get(format!("{}/room/{}", dev.site, "x".repeat(1001)));
        if let Some(c) = cookie {
            request = request.header("cookie", c);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 414);
        let body = r.text().await.unwrap();
        assert!(body.contains("1001 bytes, the limit is 1000"), "{body}");
    }
    let query_metrics = format!("{}/metrics", dev.query);
    assert_eq!(page_sources(&dev.site).await, (0.0, 0.0, 0.0));
    assert_eq!(scrape(&query_metrics, "edge_query_watches").await, 0.0);
    assert_eq!(
        scrape(&query_metrics, "edge_query_upstream_subscriptions").await,
        0.0
    );
    // At the limit: rendered, with its watch.
    let (_, page) = html(&dev.site, &format!("/room/{}", "y".repeat(1000)), None).await;
    assert!(page.contains("anonymous / nobody"), "{page}");
    assert_eq!(page_sources(&dev.site).await.2, 1.0);
    assert_eq!(scrape(&query_metrics, "edge_query_watches").await, 1.0);
}

fn dev_with_pages(pages: &Path, extra: &[(&str, &str)]) -> Dev {
    let mut env = vec![("PAGES_DIR", pages.display().to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    dev(&env)
}

#[tokio::test]
async fn a_bad_pages_dir_stops_the_gateway_with_the_reason() {
    let pages = edge_testkit::TempDir::default();
    std::fs::write(
        pages.path().join("pages.json"),
        r#"{"pages": [{"route": "/", "template": "missing.html"}]}"#,
    )
    .unwrap();
    let out = crate::run(
        &["gateway"],
        &[
            ("PAGES_DIR", &pages.path().display().to_string()),
            ("GATEWAY_HTTP_ADDR", "127.0.0.1:0"),
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PAGES_DIR") && stderr.contains("missing.html"),
        "{stderr}"
    );
    // Template and proxy mode together is a configuration error.
    let out = crate::run(
        &["gateway"],
        &[
            ("PAGES_DIR", "/tmp"),
            ("SSR_UPSTREAM_URL", "http://127.0.0.1:1"),
        ],
    );
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn the_demo_in_a_real_browser_chats_live_between_two_users() {
    let dev = dev(&[]);
    let artifacts = edge_testkit::workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("browser-chat.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = edge_testkit::node(
        "browser.mjs",
        &[
            dev.site.clone(),
            dev.query.clone(),
            screenshot.display().to_string(),
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["aliceName"], "Alice");
    assert_eq!(out["aliceSeesOwn"], true);
    assert_eq!(out["ssrHasAlice"], true, "the first HTML holds the data");
    // `messages` is live, `config` (subscribe: false) opens no subscription.
    assert_eq!(out["subscriptionsOnePage"], 1, "{out}");
    assert_eq!(out["subscriptionsTwoPages"], 2, "{out}");
    assert!(
        out["aliceMe"]
            .as_str()
            .unwrap()
            .contains("alice@example.com")
    );
    assert!(
        !out["bobTasks"]
            .as_str()
            .unwrap()
            .contains("water the plants"),
        "tasks are private"
    );
    assert_eq!(out["aliceSignedOut"], true);
    eprintln!(
        "message live in the other browser after {} ms",
        out["liveMs"]
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
}

#[tokio::test]
async fn the_demo_signs_in_with_an_openid_provider_in_a_real_browser() {
    let port = edge_testkit::free_port();
    let site = format!("http://127.0.0.1:{port}");
    let (client_id, client_secret) = ("demo-site", "demo-site-client-secret-0123456789");
    let provider = edge_testkit::node_server(
        "oidc-provider.mjs",
        &json!({"clientId": client_id, "clientSecret": client_secret,
            "redirectUris": [format!("{site}/api/auth/callback/acme")]}),
    )
    .await;
    let issuer = provider.ready["issuer"].as_str().unwrap().to_owned();
    let dev = dev(&[
        ("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("BETTER_AUTH_URL", site.clone()),
        ("AUTH_SOCIAL_PROVIDERS", "acme".into()),
        ("AUTH_ACME_CLIENT_ID", client_id.into()),
        ("AUTH_ACME_CLIENT_SECRET", client_secret.into()),
        (
            "AUTH_ACME_DISCOVERY_URL",
            format!("{issuer}/.well-known/openid-configuration"),
        ),
    ]);
    assert_eq!(dev.site, site);
    let artifacts = edge_testkit::workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("browser-social.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = edge_testkit::node(
        "social-browser.mjs",
        &[
            site.clone(),
            "acme".into(),
            "ada".into(),
            screenshot.display().to_string(),
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["button"].as_str().unwrap().trim(), "Sign in with acme");
    assert_eq!(
        out["providerOrigin"], issuer,
        "the login form is the provider's"
    );
    assert_eq!(out["name"], "ada", "the page shows the signed-in user");
    assert_eq!(out["session"]["user"]["email"], "ada@example.com");
    assert_eq!(out["accounts"][0]["providerId"], "acme");
    assert_eq!(out["accounts"][0]["accountId"], "ada");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
}

/// A social sign-in the user cancels at the provider (`access_denied`) ends on the demo's
/// sign-in page (its `errorCallbackURL`) showing the error, signed out; it was a JSON 404 at
/// `/api/auth/error`.
#[tokio::test]
async fn the_demo_shows_a_cancelled_social_sign_in_in_a_real_browser() {
    let port = edge_testkit::free_port();
    let site = format!("http://127.0.0.1:{port}");
    let (client_id, client_secret) = ("demo-site", "demo-site-client-secret-0123456789");
    let provider = edge_testkit::node_server(
        "oidc-provider.mjs",
        &json!({"clientId": client_id, "clientSecret": client_secret,
            "redirectUris": [format!("{site}/api/auth/callback/acme")]}),
    )
    .await;
    let issuer = provider.ready["issuer"].as_str().unwrap().to_owned();
    let dev = dev(&[
        ("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("BETTER_AUTH_URL", site.clone()),
        ("AUTH_SOCIAL_PROVIDERS", "acme".into()),
        ("AUTH_ACME_CLIENT_ID", client_id.into()),
        ("AUTH_ACME_CLIENT_SECRET", client_secret.into()),
        (
            "AUTH_ACME_DISCOVERY_URL",
            format!("{issuer}/.well-known/openid-configuration"),
        ),
    ]);
    assert_eq!(dev.site, site);
    let artifacts = edge_testkit::workspace_root().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("browser-social-cancelled.png");
    let _ = std::fs::remove_file(&screenshot);
    let out = edge_testkit::node(
        "social-browser.mjs",
        &[
            site.clone(),
            "acme".into(),
            "ada".into(),
            screenshot.display().to_string(),
            "cancel".into(),
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(
        out["url"],
        format!(
            "{site}/sign-in?error=access_denied&error_description=End-User+aborted+interaction"
        )
    );
    assert_eq!(
        out["shown"],
        "Sign-in failed: access_denied (End-User aborted interaction)"
    );
    assert_eq!(out["session"], Value::Null, "nobody is signed in");
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
}
