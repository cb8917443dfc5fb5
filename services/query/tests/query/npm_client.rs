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
    let arg = json!({"url": stack.query_url(), "site": format!("http://{}", stack.gateway.addr)})
        .to_string();
    // The client logs to stdout too; phases are the JSON lines with a "phase".
    let mut node = crate::NodeScript::start("convex-proxy.mjs", &arg);
    let first = node.next_phase().await;
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
    node.say("restarted").await;
    let second = node.next_phase().await;
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

/// Runs `convex-paginated.mjs` against `url` (the query service or devconvex itself) for a
/// fresh channel; its result line.
async fn paginated_run(stack: &crate::Stack, url: &str, channel: &str) -> serde_json::Value {
    let dir = edge_testkit::workspace_root().join("tests/node");
    let arg = json!({
        "url": url,
        "site": format!("http://{}", stack.gateway.addr),
        "channel": channel,
    })
    .to_string();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("convex-paginated.mjs")
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

/// What the paginated run must show, whether through the proxy or straight to devconvex: two
/// pages of two, newest first; each page's results carry a journal, which is the page's end
/// (`continueCursor`) and stays put when a new message lands in the first page; after a
/// reconnect the client sends each page's journal back, and the pages keep their bounds.
fn check_paginated(result: &serde_json::Value) {
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(result["firstPage"], "m5,m4", "{result:#}");
    assert_eq!(result["loadMore"], true);
    assert_eq!(result["twoPages"], "m5,m4,m3,m2", "{result:#}");
    // m6 joins the first page, which keeps its end at m4: nothing falls into a gap.
    assert_eq!(result["afterInsert"], "m6,m5,m4,m3,m2", "{result:#}");
    assert_eq!(result["statusAfterInsert"], "CanLoadMore");
    assert_eq!(result["afterReconnect"], "m7,m6,m5,m4,m3,m2", "{result:#}");

    let adds = result["adds"].as_array().unwrap();
    let updates = result["updates"].as_array().unwrap();
    let first_socket: Vec<_> = adds.iter().filter(|a| a["socket"] == 1).collect();
    assert_eq!(first_socket.len(), 2, "two page queries: {result:#}");
    assert_eq!(first_socket[0]["cursor"], serde_json::Value::Null);
    assert!(first_socket.iter().all(|a| a["journal"].is_null()));
    // Every result of a page carries the same journal: the page's end, its continueCursor.
    let page_updates =
        |cursor: &serde_json::Value, socket: Option<u64>| -> Vec<&serde_json::Value> {
            updates
                .iter()
                .filter(|u| &u["cursor"] == cursor && socket.is_none_or(|s| u["socket"] == s))
                .collect()
        };
    let first_page = page_updates(&serde_json::Value::Null, None);
    assert!(
        first_page.len() >= 2,
        "the first page was updated live: {result:#}"
    );
    let journal = &first_page[0]["journal"];
    assert!(journal.is_string(), "results carry a journal: {result:#}");
    for u in &first_page {
        assert_eq!(
            &u["journal"], journal,
            "the first page's end never moved: {result:#}"
        );
        assert_eq!(&u["continueCursor"], journal, "{result:#}");
        assert_eq!(u["isDone"], false);
    }
    // The second page starts where the first ends.
    assert_eq!(&first_socket[1]["cursor"], journal, "{result:#}");
    let second_page = page_updates(journal, None);
    assert!(!second_page.is_empty(), "{result:#}");
    for u in &second_page {
        assert_eq!(u["bodies"], json!(["m3", "m2"]), "{result:#}");
        assert!(u["journal"].is_string());
        assert_eq!(u["journal"], u["continueCursor"]);
    }
    // After the reconnect each page is added again with the journal it was last sent.
    let resent: Vec<_> = adds.iter().filter(|a| a["socket"] != 1).collect();
    assert_eq!(resent.len(), 2, "{result:#}");
    for add in resent {
        let last_seen = page_updates(&add["cursor"], Some(1))
            .last()
            .map(|u| u["journal"].clone())
            .unwrap();
        assert_eq!(add["journal"], last_seen, "{result:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paginated_query_pages_keep_their_bounds_through_the_proxy() {
    let stack = crate::Stack::start().await;
    // devconvex itself first: the behaviour the proxy must carry unchanged.
    let direct = paginated_run(&stack, &stack.devconvex_url(), "pages-direct").await;
    check_paginated(&direct);
    let proxied = paginated_run(&stack, &stack.query_url(), "pages-proxied").await;
    check_paginated(&proxied);
}

/// With 60 s tokens from the gateway's token cache (on, in memory, as `dev` runs it), the
/// official client, taking its tokens from `/api/auth/convex/token` through the Better Auth
/// client as an app does, stays signed in through the query service for 3 minutes: it sends a
/// new token before each one expires, every token is a new string (`jti`), it never gets an
/// `AuthError` and never loses its identity or its socket. Whether or not its `fetchToken`
/// passes `forceRefreshToken` on (two tabs sharing one cookie jar, one of each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npm_client_refreshes_60_second_tokens_for_3_minutes_without_auth_errors() {
    let stack = crate::Stack::start_with(crate::Options {
        token_ttl: std::time::Duration::from_secs(60),
        ..crate::Options::default()
    })
    .await;
    let result = long_run(&stack, "refresh", 180).await;
    assert_eq!(result["ok"], true, "{result:#}");
    // Two tabs of one browser: one whose `fetchToken` sends `Cache-Control: no-cache` for
    // `forceRefreshToken`, one whose `fetchToken` ignores it (the browser's cookies carry it).
    for name in ["flagged", "plain"] {
        let tab = &result["tabs"][name];
        assert_eq!(tab["me"], "long@example.com", "{name}: {result:#}");
        assert_eq!(tab["meAtEnd"], "long@example.com", "{name}: {result:#}");
        assert_eq!(tab["meLost"], 0, "{name}: {result:#}");
        assert_eq!(tab["authErrors"], json!([]), "{name}: {result:#}");
        assert_eq!(tab["sockets"], 1, "{name} never reconnected: {result:#}");
        let sent = tab["authenticates"].as_array().unwrap();
        // One token at the start, then one at least every 60 s for 180 s.
        assert!(sent.len() >= 4, "{name}: {result:#}");
        let jtis: std::collections::BTreeSet<_> =
            sent.iter().map(|a| a["jti"].as_str().unwrap()).collect();
        assert_eq!(
            jtis.len(),
            sent.len(),
            "{name}: every token is new: {result:#}"
        );
        for pair in sent.windows(2) {
            let (held, next) = (&pair[0], &pair[1]);
            assert_eq!(
                held["exp"].as_i64().unwrap() - held["iat"].as_i64().unwrap(),
                60
            );
            assert!(
                next["at"].as_i64().unwrap() < held["exp"].as_i64().unwrap() * 1000,
                "{name}: a new token went out before the held one expired: {result:#}"
            );
        }
        let last = sent.last().unwrap();
        assert!(
            last["exp"].as_i64().unwrap() * 1000 > tab["end"].as_i64().unwrap(),
            "{name}: the token held at the end is still valid: {result:#}"
        );
        assert!(
            tab["fetches"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["forced"] == true),
            "{name}: {result:#}"
        );
    }
}

/// convex-js rebuilds its results from scratch after a reconnect: the query service must
/// reach the re-added query set (and identity) only with their results, as Convex does, or
/// every query reads as loading for a moment. The signed-out client's TCP socket is dropped 3
/// times while a second signed-out client keeps the upstream's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_npm_client_reconnecting_never_sees_a_loaded_query_as_loading() {
    let stack = crate::Stack::start().await;
    let dir = edge_testkit::workspace_root().join("tests/node");
    let arg = json!({
        "url": stack.query_url(),
        "site": format!("http://{}", stack.gateway.addr),
        "drops": 3,
    })
    .to_string();
    let output = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("convex-reconnect.mjs")
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
    assert_eq!(result["reconnects"], 3, "{result}");
    assert!(result["polls"].as_u64().unwrap() > 0, "{result}");
    assert_eq!(
        result["undefinedPolls"], 0,
        "a query with a value read as loading after a reconnect: {result}"
    );
}

/// Convex sends a connection a transition only when its query set, identity or results change,
/// or after its own request (devconvex does the same), and convex-js resolves a mutation only
/// once a transition reaches its `ts`. A route the socket uses that no commit touches (the
/// shared route of a signed-in client, or the upstream of the identity the client moved to
/// while its mutation was in flight) is asked for a fresh `ts`, so each mutation resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_mutations_resolve_when_a_route_of_the_socket_is_idle() {
    let stack = crate::Stack::start_with(crate::Options {
        // Convex's answer to a mutation reaches the proxy after the client's identity changed.
        slow_upstream: Some(std::time::Duration::from_millis(300)),
        ..crate::Options::default()
    })
    .await;
    let arg = json!({"url": stack.query_url(), "site": stack.gateway_url()}).to_string();
    let mut node = crate::NodeScript::start("convex-advance.mjs", &arg);
    let result = node.next_phase().await;
    assert_eq!(result["ok"], true, "{result:#}");
    assert_eq!(
        result["idleShared"], true,
        "beyond the idle shared route: {result}"
    );
    assert_eq!(
        result["switchUser"], true,
        "in flight while the user changed: {result}"
    );
}
