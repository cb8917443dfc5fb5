//! No secret in any log at any level: auth and gateway at `RUST_LOG=trace` through a sign-up,
//! a token, a session read and a sign-out; neither output holds the password, the session
//! token, the signed cookie, the JWT or `BETTER_AUTH_SECRET`.

use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::{BIN, SECRET, wait_ready};

/// A process whose output goes to a file; killed on drop.
struct Logged {
    child: std::process::Child,
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_logged(
    dir: &std::path::Path,
    name: &str,
    args: &[&str],
    env: &[(&str, String)],
) -> Logged {
    let path = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Logged {
        child: cmd.spawn().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn trace_logs_hold_no_secret() {
    let db = edge_testkit::test_database().await;
    let dir = edge_testkit::TempDir::default();
    let port = || edge_testkit::free_port().to_string();
    let (grpc, http, gw) = (port(), port(), port());
    let env = [
        ("BETTER_AUTH_SECRET", SECRET.to_owned()),
        ("DATABASE_URL", db.url.clone()),
        ("AUTH_GRPC_ADDR", format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR", format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL", format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR", format!("127.0.0.1:{gw}")),
    ];
    let auth = spawn_logged(dir.path(), "auth", &["auth"], &env);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    let gateway = spawn_logged(dir.path(), "gateway", &["gateway"], &env);
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await;

    let password = "a very secret password 7d1f";
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/auth/sign-up/email"))
        .json(&json!({"name": "Log", "email": "log@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = crate::cookie_from(&r);
    let body: Value = r.json().await.unwrap();
    let session_token = body["token"].as_str().unwrap().to_owned();
    let r = client
        .post(format!("{base}/api/auth/sign-in/email"))
        .json(&json!({"email": "log@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second_cookie = crate::cookie_from(&r);
    let token: Value = client
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = token["token"].as_str().unwrap().to_owned();
    let r = client
        .get(format!("{base}/api/auth/get-session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", &base)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(gateway);
    drop(auth);

    let cookie_value = cookie.split_once('=').unwrap().1.to_owned();
    let second_value = second_cookie.split_once('=').unwrap().1.to_owned();
    // The cookie as it travels (URL-encoded) and decoded; the JWT's signature alone too.
    let decoded = cookie_value
        .replace("%3D", "=")
        .replace("%2F", "/")
        .replace("%2B", "+");
    let signature = jwt.rsplit('.').next().unwrap().to_owned();
    let secrets = [
        ("password", password.to_owned()),
        ("session token", session_token),
        ("cookie", cookie_value),
        ("decoded cookie", decoded),
        ("second cookie", second_value),
        ("jwt", jwt),
        ("jwt signature", signature),
        ("secret", SECRET.to_owned()),
    ];
    for name in ["auth", "gateway"] {
        let text = std::fs::read_to_string(dir.path().join(format!("{name}.log"))).unwrap();
        assert!(text.lines().count() > 10, "{name} logged at trace: {text}");
        for (what, secret) in &secrets {
            if let Some(at) = text.find(secret.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or_default();
                panic!("{name}'s trace log holds the {what}: {line}…");
            }
        }
    }
}
