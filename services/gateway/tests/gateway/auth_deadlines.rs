//! Every gateway→auth gRPC call has a deadline: an auth that stops answering — a relay that
//! swallows the traffic, or a peer that keeps its HTTP/2 connection alive (it answers pings)
//! but never answers a call — gives the browser 503, never a hang, and the revocation stream
//! is dialled again instead of waiting forever for auth to accept it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::net::TcpListener;

use crate::{PASSWORD, Stack, stopper};

/// An HTTP/2 server that accepts every gRPC call and never answers it (the connection stays
/// healthy: h2 acknowledges the gateway's keepalive pings). Records each call's path.
async fn silent_auth() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(socket).await else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok((request, respond))) = connection.accept().await {
                    seen.lock().unwrap().push(request.uri().path().to_owned());
                    held.push((request, respond));
                }
            });
        }
    });
    (addr, calls)
}

/// A gateway (token cache on) whose auth is at `auth`; its base URL and stop handle.
async fn gateway_on(auth: SocketAddr) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = edge_gateway::Config::local();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.auth_grpc_url = format!("http://{auth}");
    config.workers = 1;
    let gateway = edge_gateway::Application::build(config).await.unwrap();
    let base = format!("http://{}", gateway.addr());
    let (stop, stopped) = stopper();
    tokio::spawn(gateway.run_until(stopped));
    (base, stop)
}

/// A client that gives up long after the gateway's deadline: a hang fails the test, a slow
/// machine does not.
fn patient() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Sign-in, get-session, the token and the JWKS each answer 503.
async fn every_route_answers_503(base: &str, cookie: &str) {
    let client = patient();
    let cookie = format!("better-auth.session_token={cookie}");
    let answers = [
        client
            .post(format!("{base}/api/auth/sign-in/email"))
            .json(&json!({"email": "deadline@example.com", "password": PASSWORD}))
            .send()
            .await,
        client
            .get(format!("{base}/api/auth/get-session"))
            .header("cookie", &cookie)
            .send()
            .await,
        client
            .get(format!("{base}/api/auth/convex/token"))
            .header("cookie", &cookie)
            .send()
            .await,
        client.get(format!("{base}/api/auth/jwks")).send().await,
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|e| panic!("request {i}: no answer, a hang: {e}"));
        assert_eq!(answer.status(), 503, "request {i}");
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["code"], "SERVICE_UNAVAILABLE", "request {i}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_auth_that_never_answers_gives_503() {
    let (auth, calls) = silent_auth().await;
    let (base, _stop) = gateway_on(auth).await;
    every_route_answers_503(&base, "garbage.value").await;
    let calls = calls.lock().unwrap().clone();
    for method in ["SignIn", "GetSession", "IssueToken", "GetJwks"] {
        let path = format!("/edge.auth.v1.AuthService/{method}");
        assert!(
            calls.contains(&path),
            "{method} never reached auth: {calls:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_auth_gives_503() {
    let mut stack = Stack::start().await;
    let relay = edge_testkit::Relay::start(stack.auth_grpc).await;
    let via = format!("http://{}", relay.addr());
    let base = stack.gateway_with(|c| c.auth_grpc_url = via.clone()).await;
    let (_, cookie) = crate::sign_up(&stack, "deadline@example.com").await;
    let token = patient()
        .get(format!("{base}/api/auth/get-session"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(token.status(), 200);

    relay.partition();
    every_route_answers_503(&base, &cookie).await;

    // And back once auth answers again.
    relay.heal();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = patient()
            .get(format!("{base}/api/auth/get-session"))
            .header("cookie", format!("better-auth.session_token={cookie}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "get-session still {} 60 s after the relay healed",
            r.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_revocation_stream_is_redialled_when_auth_does_not_accept_it() {
    let (auth, calls) = silent_auth().await;
    let (_base, _stop) = gateway_on(auth).await;
    let watch = "/edge.auth.v1.AuthService/WatchRevocations";
    let count = || calls.lock().unwrap().iter().filter(|p| *p == watch).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the gateway dialled the revocation stream {} time(s) in 60 s and waits on it still",
            count()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
