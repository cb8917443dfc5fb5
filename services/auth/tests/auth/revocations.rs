//! The revocation stream: ordered, resumable, live, and shared across replicas.

use std::time::Duration;

use edge_proto::auth::v1 as pb;
use tokio_stream::StreamExt;

/// The next log entry (end-of-backlog marks skipped).
pub async fn next(stream: &mut tonic::Streaming<pb::Revocation>) -> pb::Revocation {
    loop {
        let entry = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a revocation arrives")
            .expect("stream open")
            .expect("no error");
        if !entry.end_of_backlog {
            return entry;
        }
    }
}

#[tokio::test]
async fn stream_is_ordered_resumable_and_live_across_replicas() {
    let db = edge_testkit::test_database().await;
    let a = crate::spawn(crate::config(&db.url)).await;
    // Replica B neither polls the log nor re-reads its streams within this test: what it
    // learns of A's sign-outs after its streams started, it learns through NOTIFY alone.
    let mut no_poll = crate::config(&db.url);
    no_poll.poll_interval = Duration::from_secs(3600);
    let b = crate::spawn(no_poll).await;
    let mut ca = a.client().await;
    let mut cb = b.client().await;
    let c1 = crate::sign_up(&mut ca, "one@example.com").await;
    let c2 = crate::sign_up(&mut ca, "two@example.com").await;
    let r1 = ca
        .sign_out(pb::SignOutRequest {
            cookie_value: c1.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let r2 = ca
        .sign_out(pb::SignOutRequest {
            cookie_value: c2.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r2.sequence > r1.sequence);
    assert_eq!(
        r1.cache_key,
        edge_keys::CacheKey::for_cookie(&c1).unwrap().as_str()
    );

    // From the start, on the other replica: both, in order.
    let mut all = cb
        .watch_revocations(pb::WatchRevocationsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let (e1, e2) = (next(&mut all).await, next(&mut all).await);
    assert_eq!((e1.sequence, e2.sequence), (r1.sequence, r2.sequence));
    assert_eq!(e1.reason, "sign-out");
    assert!(
        !e1.cache_key.contains(&c1) && e1.cache_key.starts_with("edge:jwt:"),
        "never the cookie itself"
    );

    // Resumed after the first: only the second.
    let mut resumed = cb
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: r1.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await.sequence, r2.sequence);

    // Live: a sign-out on replica A reaches a stream on replica B (LISTEN/NOTIFY; B does not
    // poll, so without the notification this waits until `next` gives up).
    let c3 = crate::sign_up(&mut ca, "three@example.com").await;
    let r3 = ca
        .sign_out(pb::SignOutRequest { cookie_value: c3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut all).await.sequence, r3.sequence);
    assert_eq!(next(&mut resumed).await.sequence, r3.sequence);

    // A signed-out cookie no longer gets tokens, on either replica.
    for client in [&mut ca, &mut cb] {
        let err = client
            .issue_token(pb::IssueTokenRequest {
                cookie_value: c1.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}

#[tokio::test]
async fn an_expired_session_is_refused_and_logged_as_expired() {
    use sqlx::Connection;
    let (db, running) = crate::postgres().await;
    let mut client = running.client().await;
    let cookie = crate::sign_up(&mut client, "old@example.com").await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(r#"UPDATE "session" SET "expiresAt" = now() - interval '1 minute'"#)
        .execute(&mut conn)
        .await
        .unwrap();
    let err = client
        .issue_token(pb::IssueTokenRequest {
            cookie_value: cookie.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let mut stream = client
        .watch_revocations(pb::WatchRevocationsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    // The expiry moved into the past is logged by the trigger, whoever moved it.
    let entry = next(&mut stream).await;
    assert_eq!(entry.reason, "expired");
    assert!(!entry.session_id.is_empty() && !entry.user_id.is_empty());
    // Then auth, meeting the expired session, deletes it (naming its cache key).
    let deleted = next(&mut stream).await;
    assert_eq!(deleted.session_id, entry.session_id);
    assert_eq!(
        deleted.cache_key,
        edge_keys::CacheKey::for_cookie(&cookie).unwrap().as_str()
    );
    let (n,): (i64,) = sqlx::query_as(r#"SELECT COUNT(*) FROM "session""#)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 0, "the expired row is gone");
}

#[tokio::test]
async fn sessions_older_than_a_day_are_extended() {
    use sqlx::Connection;
    let (db, running) = crate::postgres().await;
    let mut client = running.client().await;
    let cookie = crate::sign_up(&mut client, "slide@example.com").await;
    let fresh = client
        .get_session(pb::GetSessionRequest {
            cookie_value: cookie.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        fresh.refreshed_cookie_value.is_none(),
        "a new session is not refreshed"
    );
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(r#"UPDATE "session" SET "expiresAt" = now() + interval '5 days'"#)
        .execute(&mut conn)
        .await
        .unwrap();
    let refreshed = client
        .get_session(pb::GetSessionRequest {
            cookie_value: cookie.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        refreshed.refreshed_cookie_value.as_deref(),
        Some(cookie.as_str())
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(&refreshed.session.unwrap().expires_at).unwrap();
    assert!(
        expires > chrono::Utc::now() + chrono::Duration::days(6),
        "extended to 7 days from now"
    );
}
