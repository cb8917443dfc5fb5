//! auth's memory under a burst of password checks: every sign-in (unknown emails too) runs
//! scrypt with 32 MiB, and the hashing budget (`AUTH_PASSWORD_HASH_MEMORY_MB`) is what bounds
//! how many run at once. Measured as the auth process's peak resident set (`VmHWM`).

use serde_json::json;

use crate::{Proc, SECRET, spawn, wait_ready};

/// The shipped Kubernetes memory limit of auth (`deploy/k8s/base/auth.yaml`).
const K8S_LIMIT_MIB: u64 = 256;

/// `VmHWM` (peak resident set) of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

struct Started {
    base: String,
    auth: Proc,
    _gateway: Proc,
    _db: edge_testkit::TestDb,
}

async fn start(extra: &[(&str, &str)]) -> Started {
    let db = edge_testkit::test_database().await;
    let port = || edge_testkit::free_port().to_string();
    let (grpc, http, gw) = (port(), port(), port());
    let mut env: Vec<(String, String)> = vec![
        ("BETTER_AUTH_SECRET".into(), SECRET.into()),
        ("DATABASE_URL".into(), db.url.clone()),
        ("AUTH_GRPC_ADDR".into(), format!("127.0.0.1:{grpc}")),
        ("AUTH_HTTP_ADDR".into(), format!("127.0.0.1:{http}")),
        ("AUTH_GRPC_URL".into(), format!("http://127.0.0.1:{grpc}")),
        ("GATEWAY_HTTP_ADDR".into(), format!("127.0.0.1:{gw}")),
        // Every request comes from 127.0.0.1: the burst is about memory, not rate limits.
        ("AUTH_SIGN_IN_LIMIT_PER_ADDRESS".into(), "100000".into()),
        ("AUTH_SIGN_IN_LIMIT_PER_ACCOUNT".into(), "100000".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let auth = spawn(&["auth"], &env, None);
    wait_ready(&format!("http://127.0.0.1:{http}/readyz")).await;
    let gateway = spawn(&["gateway"], &env, None);
    let base = format!("http://127.0.0.1:{gw}");
    wait_ready(&format!("{base}/readyz")).await;
    Started {
        base,
        auth,
        _gateway: gateway,
        _db: db,
    }
}

/// `n` sign-ins at once, half for an existing account, half for unknown emails; each
/// answer's status and `Retry-After`.
async fn burst(base: &str, n: usize) -> Vec<(u16, Option<String>)> {
    let client = reqwest::Client::new();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..n {
        let email = if i % 2 == 0 {
            "burst@example.com".to_owned()
        } else {
            format!("nobody{i}@example.com")
        };
        let client = client.clone();
        let base = base.to_owned();
        requests.spawn(async move {
            let r = client
                .post(format!("{base}/api/auth/sign-in/email"))
                .json(&json!({"email": email, "password": "correct horse battery staple"}))
                .send()
                .await
                .unwrap();
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            (r.status().as_u16(), retry)
        });
    }
    requests.join_all().await
}

/// One sign-in for the account [`burst`] uses; its status.
async fn sign_in_once(base: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/api/auth/sign-in/email"))
        .json(&json!({"email": "burst@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// 64 concurrent sign-ins stay inside the default budget (128 MiB of scrypt at once) and
/// auth's peak RSS stays under the shipped limit; before the budget they took it past 2 GiB.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_sign_ins_stay_within_the_memory_limit() {
    let started = start(&[]).await;
    crate::sign_up(&started.base, "B", "burst@example.com").await;
    let answers = burst(&started.base, 64).await;
    let peak_mib = peak_rss_kib(started.auth.0.id()) / 1024;
    eprintln!("auth peak RSS after 64 concurrent sign-ins: {peak_mib} MiB; answers {answers:?}");
    for (status, retry) in &answers {
        match status {
            200 | 401 => {}
            503 => assert_eq!(retry.as_deref(), Some("1"), "503 carries Retry-After"),
            other => panic!("unexpected status {other}"),
        }
    }
    // Which requests win the budget depends on the machine's load (on a busy CI every request
    // for the real account may be among those told to retry); once the burst is over the
    // budget is free again and the account signs in.
    let after = sign_in_once(&started.base).await;
    assert_eq!(after, 200, "a sign-in after the burst: {answers:?}");
    assert!(
        peak_mib < K8S_LIMIT_MIB,
        "auth peaked at {peak_mib} MiB, over the {K8S_LIMIT_MIB} MiB limit"
    );
}

/// A budget of one run with no wait: a burst is refused with 503 and `Retry-After`, never
/// queued without bound, and the refused ones change nothing (a later sign-in succeeds).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_budget_answers_503_with_retry_after() {
    let started = start(&[
        ("AUTH_PASSWORD_HASH_MEMORY_MB", "32"),
        ("AUTH_PASSWORD_HASH_WAIT_MS", "0"),
    ])
    .await;
    crate::sign_up(&started.base, "B", "burst@example.com").await;
    let answers = burst(&started.base, 16).await;
    assert!(
        answers
            .iter()
            .any(|(s, r)| *s == 503 && r.as_deref() == Some("1")),
        "{answers:?}"
    );
    let peak_mib = peak_rss_kib(started.auth.0.id()) / 1024;
    eprintln!("auth peak RSS with a one-run budget: {peak_mib} MiB");
    let r = reqwest::Client::new()
        .post(format!("{}/api/auth/sign-in/email", started.base))
        .json(&json!({"email": "burst@example.com", "password": "correct horse battery staple"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
