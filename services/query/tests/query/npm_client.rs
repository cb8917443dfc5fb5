//! The official `convex` npm client through the proxy to devconvex.

use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_npm_client_through_the_proxy() {
    let mut stack = crate::Stack::start_with(crate::Options {
        // Short tokens make the client refresh during the test.
        token_ttl: std::time::Duration::from_secs(13),
        ..crate::Options::default()
    })
    .await;
    let dir = edge_testkit::workspace_root().join("tests/node");
    assert!(
        dir.join("node_modules/convex").is_dir(),
        "npm packages missing: run `npm ci --prefix tests/node`"
    );
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let mut child = tokio::process::Command::new("node")
        .current_dir(&dir)
        .arg("convex-proxy.mjs")
        .arg(arg)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stdin = child.stdin.take().unwrap();
    // The client logs to stdout too; phases are the JSON lines with a "phase".
    // Each phase within 120 s, however much the client logs meanwhile.
    let mut next_phase = async || -> serde_json::Value {
        let phase = async {
            loop {
                let line = lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("node is still running");
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v.get("phase").is_some()
                {
                    return v;
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(120), phase)
            .await
            .expect("node answers in time")
    };
    let first = next_phase().await;
    assert_eq!(first["phase"], "before-restart", "{first:#}");
    assert_eq!(first["ok"], true, "{first:#}");
    assert_eq!(first["me"], "npm@example.com");
    assert_eq!(
        first["ownListAtResolve"], true,
        "await mutation() resolved only once the list showed it"
    );
    assert_eq!(first["seenByOther"], true);
    assert_eq!(first["echoInt64"], true);
    assert!(
        first["tokenFetches"].as_u64().unwrap() >= 2,
        "the client refreshed its token: {first}"
    );
    assert_eq!(first["meAfterRefresh"], "npm@example.com");

    stack.restart_query().await;
    stdin.write_all(b"restarted\n").await.unwrap();
    let second = next_phase().await;
    assert_eq!(second["phase"], "after-restart", "{second:#}");
    assert_eq!(second["ok"], true, "{second:#}");
    assert_eq!(second["seenAfterRestart"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_npm_client_sees_its_identity_end_when_the_session_signs_out() {
    let stack = crate::Stack::start().await;
    let dir = edge_testkit::workspace_root().join("tests/node");
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("convex-signout.mjs")
            .arg(arg)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node finishes in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result line: {stdout}"));
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["signedIn"], true);
    assert_eq!(result["signOutStatus"], 200);
    assert_eq!(result["meAfter"], serde_json::Value::Null);
    assert_eq!(
        result["tasksAfter"],
        json!([]),
        "no private data after the sign-out"
    );
    assert!(result["refusedFetches"].as_u64().unwrap() >= 1, "{result}");
    println!(
        "identity ended {} ms after the sign-out",
        result["identityEndedMs"]
    );
}

/// Runs `convex-long.mjs` in `mode` for `seconds` against the stack; its result line.
async fn long_run(stack: &crate::Stack, mode: &str, seconds: u64) -> serde_json::Value {
    let dir = edge_testkit::workspace_root().join("tests/node");
    let arg = json!({
        "url": stack.query_url(),
        "site": format!("http://{}", stack.gateway.addr),
        "mode": mode,
        "seconds": seconds,
    })
    .to_string();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(seconds + 60),
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("convex-long.mjs")
            .arg(arg)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node finishes in time")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no result line: {stdout}"))
}

/// The official client's server-inactivity timer reconnects after 60 s without a message; the
/// service's Pings keep an idle client on its one socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_npm_client_keeps_one_connection_for_90_seconds() {
    let stack = crate::Stack::start().await;
    let result = long_run(&stack, "idle", 90).await;
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["sockets"], 1, "one socket opened: {result}");
    assert_eq!(result["closes"], 0, "and never closed: {result}");
    // The heartbeat is what kept it: Pings arrived while nothing else did.
    assert!(result["pings"].as_u64().unwrap() >= 2, "{result}");
    assert_eq!(result["transitionsWithoutClocks"], 0, "{result}");
}
