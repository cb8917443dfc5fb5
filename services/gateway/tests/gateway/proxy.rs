//! Proxy mode: page requests reach an existing SSR app (a small server the test starts) with
//! the user's Convex JWT attached; a header the client sends under that name never does, and
//! responses stream through.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use edge_gateway::{ProxyConfig, Ssr};
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::{Stack, sign_up};

/// The SSR app: `/stream` sends one chunk, then a second once `release` is notified; any other
/// path echoes what it received as JSON.
async fn upstream(release: Arc<Notify>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = HttpServer::new(move || {
        let release = release.clone();
        App::new()
            .route(
                "/stream",
                web::get().to(move || {
                    let release = release.clone();
                    async move {
                        let body = futures_util::stream::unfold(0u8, move |n| {
                            let release = release.clone();
                            async move {
                                match n {
                                    0 => Some((
                                        Ok::<_, std::io::Error>(web::Bytes::from("first;")),
                                        1,
                                    )),
                                    1 => {
                                        release.notified().await;
                                        Some((Ok(web::Bytes::from("second")), 2))
                                    }
                                    _ => None,
                                }
                            }
                        });
                        HttpResponse::Ok().content_type("text/html").streaming(body)
                    }
                }),
            )
            .default_service(web::to(|req: HttpRequest, body: web::Bytes| async move {
                let headers: serde_json::Map<String, Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or_default())))
                    .collect();
                HttpResponse::Ok()
                    .insert_header(("set-cookie", "app=1; Path=/"))
                    .json(json!({
                        "method": req.method().as_str(),
                        "uri": req.uri().to_string(),
                        "headers": headers,
                        "body": String::from_utf8_lossy(&body),
                    }))
            }))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://{addr}")
}

async fn echo(base: &str, path: &str, cookie: Option<&str>, spoof: Option<(&str, &str)>) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .body("form=1");
    if let Some(c) = cookie {
        request = request.header("cookie", format!("better-auth.session_token={c}"));
    }
    if let Some((name, value)) = spoof {
        request = request.header(name, value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["set-cookie"], "app=1; Path=/");
    r.json().await.unwrap()
}

fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_ssr_app_gets_the_users_jwt_and_never_a_spoofed_one() {
    let mut stack = Stack::start().await;
    let release = Arc::new(Notify::new());
    let app = upstream(release.clone()).await;
    let proxy = |header: &str| {
        let (app, header) = (app.clone(), header.to_owned());
        move |c: &mut edge_gateway::Config| {
            c.ssr = Ssr::Proxy(ProxyConfig {
                upstream: app,
                token_header: header,
            })
        }
    };
    let gateway = stack.gateway_with(proxy("authorization")).await;
    let (body, cookie) = sign_up(&stack, "proxied@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();

    // Signed in: the JWT arrives as a bearer token; the client's own Authorization does not.
    let seen = echo(
        &gateway,
        "/dashboard?tab=1",
        Some(&cookie),
        Some(("authorization", "Bearer forged.token.value")),
    )
    .await;
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["uri"], "/dashboard?tab=1");
    assert_eq!(seen["body"], "form=1");
    let auth = seen["headers"]["authorization"].as_str().unwrap();
    let jwt = auth.strip_prefix("Bearer ").expect("a bearer token");
    assert_ne!(jwt, "forged.token.value");
    assert_eq!(claims(jwt)["sub"], user_id.as_str());
    assert_eq!(claims(jwt)["aud"], "convex");
    assert!(seen["headers"]["x-forwarded-for"].is_string());

    // Anonymous: no token, and still no spoofed one.
    let seen = echo(
        &gateway,
        "/",
        None,
        Some(("authorization", "Bearer forged.token.value")),
    )
    .await;
    assert!(seen["headers"].get("authorization").is_none());

    // A configured header name carries the bare token, and only ours.
    let named = stack.gateway_with(proxy("x-convex-token")).await;
    let seen = echo(
        &named,
        "/",
        Some(&cookie),
        Some(("x-convex-token", "forged")),
    )
    .await;
    let jwt = seen["headers"]["x-convex-token"].as_str().unwrap();
    assert_eq!(claims(jwt)["sub"], user_id.as_str());

    // The gateway's own routes are not forwarded.
    let r = reqwest::get(format!("{gateway}/api/auth/jwks"))
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("\"keys\""));

    // Responses stream: the first chunk arrives while the app still holds the second.
    let mut r = reqwest::get(format!("{gateway}/stream")).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("the first chunk arrives before the app finishes")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"first;");
    release.notify_one();
    let second = r.chunk().await.unwrap().unwrap();
    assert_eq!(&second[..], b"second");

    // The app unreachable: a clear 502.
    let dead = stack
        .gateway_with(|c| {
            c.ssr = Ssr::Proxy(ProxyConfig {
                upstream: format!("http://127.0.0.1:{}", edge_testkit::free_port()),
                token_header: "authorization".into(),
            })
        })
        .await;
    let r = reqwest::get(format!("{dead}/")).await.unwrap();
    assert_eq!(r.status(), 502);
}

/// The token header's underscore spelling (`x_convex_token`, which CGI-style frameworks read
/// as `x-convex-token`) never reaches the app, and forwarding headers from an untrusted client
/// are replaced by the gateway's own view; from a trusted proxy the chain is kept.
#[tokio::test]
async fn spoofed_token_spellings_and_forwarding_headers_stop_at_the_gateway() {
    let mut stack = Stack::start().await;
    let app = upstream(Arc::new(Notify::new())).await;
    let proxy = move |trusted: &str| {
        let (app, trusted) = (app.clone(), trusted.to_owned());
        move |c: &mut edge_gateway::Config| {
            c.ssr = Ssr::Proxy(ProxyConfig {
                upstream: app,
                token_header: "x-convex-token".into(),
            });
            c.trusted_proxies = trusted.parse().unwrap();
        }
    };
    let untrusted = stack.gateway_with(proxy("")).await;
    let send = |base: String| async move {
        let r = reqwest::Client::new()
            .get(format!("{base}/"))
            .header("x_convex_token", "forged")
            .header("X_Convex_Token", "forged2")
            .header("x-forwarded-for", "6.6.6.6")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("forwarded", "for=6.6.6.6;proto=https")
            .header("x.convex.token", "forged3")
            .header("x-real-ip", "6.6.6.6")
            .header("X_Real_IP", "6.6.6.6")
            .header("true-client-ip", "6.6.6.6")
            .header("cf-connecting-ip", "6.6.6.6")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()
    };
    let seen = send(untrusted.clone()).await;
    let headers = seen["headers"].as_object().unwrap();
    for name in headers.keys() {
        let folded = name.replace(['_', '.'], "-");
        assert_ne!(folded, "x-convex-token", "{headers:?}");
        // Addresses the client named for itself stop here too: only the gateway's own
        // `x-real-ip` arrives.
        let names_client = ["x-real-ip", "true-client-ip", "cf-connecting-ip"];
        assert!(
            !names_client.contains(&folded.as_str()) || name == "x-real-ip",
            "{headers:?}"
        );
    }
    assert_eq!(seen["headers"]["x-real-ip"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "http");
    assert_eq!(
        seen["headers"]["x-forwarded-host"],
        untrusted.trim_start_matches("http://")
    );
    assert!(seen["headers"].get("forwarded").is_none());

    // Behind a trusted proxy its chain and scheme pass on.
    let trusted = stack.gateway_with(proxy("127.0.0.0/8")).await;
    let seen = send(trusted).await;
    assert_eq!(seen["headers"]["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(seen["headers"]["x-forwarded-proto"], "https");
    // The client address the gateway found, from the trusted chain.
    assert_eq!(seen["headers"]["x-real-ip"], "6.6.6.6");
}
