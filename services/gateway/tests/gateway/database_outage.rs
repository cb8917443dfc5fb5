//! A database that stops answering (a partition that swallows traffic, no reset): requests
//! fail fast with 503 instead of hanging, and succeed again once it answers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{PASSWORD, Stack, http};

/// Copies `from` to `to` while `open`; while closed, bytes are read and dropped (swallowed).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    open: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TCP relay to Postgres at 127.0.0.1:5432 that can be made to swallow everything.
async fn relay(open: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let open = open.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect("127.0.0.1:5432").await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::join!(pump(cr, sw, open.clone()), pump(sr, cw, open));
            });
        }
    });
    port
}

#[tokio::test]
async fn a_silent_database_fails_fast_and_heals() {
    let db = edge_testkit::test_database().await;
    let open = Arc::new(AtomicBool::new(true));
    let port = relay(open.clone()).await;
    let relayed = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"));
    assert_ne!(relayed, db.url, "the test database is at 127.0.0.1:5432");
    let stack = Stack::start_on(db, |c| c.database_url = relayed.clone()).await;
    let (_, cookie) = crate::sign_up(&stack, "outage@example.com").await;

    open.store(false, Ordering::SeqCst);
    // Before, these waited 5 s for a connection, or forever on one already open; the client
    // gives up after 10 s, so a hang fails the test.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..3 {
        let r = client
            .post(stack.url("/api/auth/sign-in/email"))
            .json(&json!({"email": "outage@example.com", "password": PASSWORD}))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(r.status(), 503);
        // A retry is worth it soon: the standard header says when.
        assert_eq!(r.headers()["retry-after"], "1");
        let r = client
            .get(stack.url("/api/auth/get-session"))
            .header("cookie", format!("better-auth.session_token={cookie}"))
            .send()
            .await
            .expect("an answer, not a hang");
        assert_eq!(r.status(), 503);
    }

    // The database answers again: so does auth, without a restart.
    open.store(true, Ordering::SeqCst);
    let mut healed = false;
    for _ in 0..100 {
        let r = http()
            .post(stack.url("/api/auth/sign-in/email"))
            .json(&json!({"email": "outage@example.com", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            healed = true;
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "auth never recovered");
}
