//! Graceful shutdown of auth with gateways attached: SIGTERM ends the gateways' revocation
//! streams with UNAVAILABLE, closes both listeners and exits within the drain deadline, so a
//! replacement can bind the same ports; the gateway resumes on the replacement.

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
            "auth still running {limit:?} after SIGTERM"
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
