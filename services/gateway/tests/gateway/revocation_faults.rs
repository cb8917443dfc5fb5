//! Session ends that row triggers alone would miss (TRUNCATE, a session reaching its
//! expiry), and a gateway whose log stream goes silent behind a partition.

use std::time::{Duration, Instant};

use crate::revocation::{sign_out, token_on, wait_ready};
use crate::{Stack, sign_up};

async fn token_status(base: &str, cookie: &str) -> u16 {
    token_on(base, cookie).await.0
}

/// Polls for up to `within`; panics if `base` still serves a token after it.
async fn refused_within(base: &str, cookie: &str, within: Duration, what: &str) {
    let deadline = Instant::now() + within;
    loop {
        let status = token_status(base, cookie).await;
        if status == 401 {
            return;
        }
        assert_eq!(status, 200, "{what}");
        assert!(
            Instant::now() < deadline,
            "{what}: {base} still serves a token {within:?} after the session ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec(db_url: &str, statement: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// An admin logs everyone out with TRUNCATE: no row trigger fires, nothing reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_of_sessions_ends_them_for_the_cache_too() {
    let stack = Stack::start().await;
    wait_ready(&stack.base).await;
    let (_, cookie) = sign_up(&stack, "truncate@example.com").await;
    assert_eq!(token_status(&stack.base, &cookie).await, 200);
    assert_eq!(token_status(&stack.base, &cookie).await, 200);
    exec(&stack.db.url, r#"TRUNCATE "session""#).await;
    refused_within(
        &stack.base,
        &cookie,
        Duration::from_secs(3),
        "TRUNCATE session",
    )
    .await;
}

/// An expiry moved to just ahead of now (not into the past: no log entry), then reached.
/// Nobody calls get-session, so auth never ends it lazily; the cache serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_reaches_its_expiry_gets_no_token() {
    let stack = Stack::start().await;
    wait_ready(&stack.base).await;
    let (body, cookie) = sign_up(&stack, "expiring@example.com").await;
    let session_id = body["user"]["id"].as_str().unwrap().to_owned();
    assert_eq!(token_status(&stack.base, &cookie).await, 200);
    exec(
        &stack.db.url,
        &format!(
            r#"UPDATE "session" SET "expiresAt" = now() + interval '1 second' WHERE "userId" = '{session_id}'"#
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Ended by the database's own account.
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
        let (live,): (i64,) =
            sqlx::query_as(r#"SELECT COUNT(*) FROM "session" WHERE "expiresAt" > now()"#)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        assert_eq!(live, 0, "the session has expired");
    }
    refused_within(
        &stack.base,
        &cookie,
        Duration::from_secs(2),
        "session expired",
    )
    .await;
}

/// One gateway's link to auth goes silent (a partition, a half-open connection: bytes are
/// swallowed, nothing is closed). Its WatchRevocations stream never errors, so it goes on
/// trusting L1 and serves a session signed out on another gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_auth_link_does_not_keep_serving_revoked_tokens() {
    let mut stack = Stack::start().await;
    let relay = edge_testkit::Relay::start(stack.auth_grpc).await;
    let via = format!("http://{}", relay.addr());
    let cut = stack.gateway_with(|c| c.auth_grpc_url = via.clone()).await;
    wait_ready(&stack.base).await;
    wait_ready(&cut).await;
    let (_, cookie) = sign_up(&stack, "silent@example.com").await;
    assert_eq!(token_status(&cut, &cookie).await, 200);
    assert_eq!(token_status(&cut, &cookie).await, 200);

    relay.partition();
    assert_eq!(sign_out(&stack.base, &cookie).await, 200);
    assert_eq!(token_status(&stack.base, &cookie).await, 401);
    // "A gateway whose stream is broken stops trusting L1 beyond a few seconds" (DESIGN 5).
    let started = Instant::now();
    let mut last = 0;
    while started.elapsed() < Duration::from_secs(8) {
        last = tokio::time::timeout(Duration::from_secs(2), token_status(&cut, &cookie))
            .await
            .unwrap_or(504);
        if last != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        last, 200,
        "the partitioned gateway still serves the signed-out session's token 8 s later"
    );
}
