//! Graceful shutdown of auth with gateways attached: SIGTERM ends the gateways' revocation
//! streams with UNAVAILABLE, closes both listeners and exits within the drain deadline, so a
//! replacement can bind the same ports; the gateway resumes on the replacement. And the
//! gateway's own SIGTERM: its listener closes, in-flight requests finish, it exits.

use std::time::{Duration, Instant};

use crate::{Proc, SECRET, spawn, wait_ready};

fn sigterm(proc: &Proc) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for the process to exit, at most `limit`; its exit status.
fn wait_exit(proc: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = proc.0.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "process still running {limit:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_gateways_attached_exits_and_frees_its_ports() {
    let db = edge_testkit::test_database().await;
    let port = || edge_testkit::free_port().to_string();
    let (grpc, http, gw) = (port(), port(), port());
    let env: Vec<(String, String)> = vec![
        ("BETTER_AUTH_SECRET".into(), SECRET.into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("AUTH_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL".into(), format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{gw}")),
        ("AUTH_DRAIN_SECONDS".into(), "3".into()),
        // Polls the token route from one address, past Better Auth's default rule.
        ("GATEWAY_READ_RATE_LIMIT_MAX".into(), "0".into()),
    ];
    let mut auth = spawn(&["auth"], &env, None);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    // Two gateways, each holding a revocation stream (ready = the stream's backlog is read).
    let gw2 = port();
    let mut env2 = env.clone();
    env2.retain(|(k, _)| k != "GATEWAY_HTTP_ADDR");
    env2.push(("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{gw2}")));
    let _gateway = spawn(&["gateway"], &env, None);
    let _gateway2 = spawn(&["gateway"], &env2, None);
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await;
    wait_ready(&format!("http://127.0.0.1:{gw2}/readyz")).await;
    let cookie = crate::sign_up(&base, "Term", "term@example.com").await;

    sigterm(&auth);
    // Drain deadline 3 s, plus start-up of nothing: well inside 10 s. Before, it never exited.
    let status = wait_exit(&mut auth, Duration::from_secs(10));
    assert!(status.success(), "auth exited with {status}");
    // Both ports are free again.
    std::net::TcpListener::bind(format!("127.0.0.1:{http}")).expect("HTTP port free");
    std::net::TcpListener::bind(format!("127.0.0.1:{grpc}")).expect("gRPC port free");

    // The replacement on the same ports: the gateways resume their streams there.
    let _replacement = spawn(&["auth"], &env, None);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    wait_ready(&format!("{base}/readyz")).await;
    let r = reqwest::Client::new()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A sign-out on one gateway reaches the other through the replacement's stream.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", &base)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let other = format!("http://127.0.0.1:{gw2}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reqwest::Client::new()
            .get(format!("{other}/api/auth/convex/token"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        if r.status() == 401 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the other gateway still serves the session"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An SSR app that holds every request until released, then answers `slow!`; says when a
/// request has arrived.
async fn held_upstream() -> (
    u16,
    tokio::sync::mpsc::Receiver<()>,
    tokio::sync::watch::Sender<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (arrived, arrivals) = tokio::sync::mpsc::channel(16);
    let (release, released) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let arrived = arrived.clone();
            let mut released = released.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = arrived.send(()).await;
                let _ = released.wait_for(|r| *r).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nslow!",
                    )
                    .await;
            });
        }
    });
    (port, arrivals, release)
}

#[tokio::test(flavor = "multi_thread")]
async fn gateway_sigterm_finishes_in_flight_requests_closes_its_listener_and_exits() {
    let db = edge_testkit::test_database().await;
    let port = || edge_testkit::free_port().to_string();
    let (grpc, http, gw) = (port(), port(), port());
    let (upstream, mut arrivals, release) = held_upstream().await;
    let env: Vec<(String, String)> = vec![
        ("BETTER_AUTH_SECRET".into(), SECRET.into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("AUTH_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL".into(), format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{gw}")),
        (
            "SSR_UPSTREAM_URL".into(),
            format!("http://127.0.0.1:{upstream}"),
        ),
    ];
    let _auth = spawn(&["auth"], &env, None);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    let mut gateway = spawn(&["gateway"], &env, None);
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await;

    // A page request the SSR app holds: in flight when the signal comes.
    let page = tokio::spawn({
        let url = format!("{base}/held");
        async move {
            let r = reqwest::get(url).await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.text().await?))
        }
    });
    tokio::time::timeout(Duration::from_secs(30), arrivals.recv())
        .await
        .expect("the page request reached the SSR app");
    sigterm(&gateway);

    // The listener closes: new connections are refused while the held request goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", gw.parse::<u16>().unwrap())).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the gateway still accepts connections 30 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!page.is_finished(), "the in-flight request was cut");
    release.send(true).unwrap();
    let (status, body) = tokio::time::timeout(Duration::from_secs(30), page)
        .await
        .expect("the in-flight request finished")
        .unwrap()
        .expect("the in-flight request was answered, not dropped");
    assert_eq!((status, body.as_str()), (200, "slow!"));
    // Its drain is 10 s; the limit only tells a hang from a slow machine.
    let status = wait_exit(&mut gateway, Duration::from_secs(60));
    assert!(status.success(), "gateway exited with {status}");
    std::net::TcpListener::bind(format!("127.0.0.1:{gw}")).expect("the gateway's port is free");
}
