//! The session log: written by triggers for every writer, in commit order, read from the
//! retention window, pruned.

use std::time::Duration;

use edge_auth::store::{CredentialAccount, Session, Store, User, now_ms};
use edge_proto::auth::v1 as pb;
use sqlx::Connection;

use crate::revocations::next;

async fn session_id_of(conn: &mut sqlx::PgConnection, email: &str) -> String {
    let (id,): (String,) = sqlx::query_as(
        r#"SELECT s."id" FROM "session" s JOIN "user" u ON u."id" = s."userId" WHERE u."email" = $1"#,
    )
    .bind(email)
    .fetch_one(conn)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn a_reader_never_skips_an_entry_that_commits_later() {
    let (db, running) = crate::postgres().await;
    let mut client = running.client().await;
    crate::sign_up(&mut client, "first@example.com").await;
    crate::sign_up(&mut client, "second@example.com").await;
    let mut t1 = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut t2 = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let first = session_id_of(&mut t1, "first@example.com").await;
    let second = session_id_of(&mut t2, "second@example.com").await;

    // T1 ends the first session and stays open; T2 ends the second and commits.
    sqlx::query("BEGIN").execute(&mut t1).await.unwrap();
    sqlx::query(r#"DELETE FROM "session" WHERE "id" = $1"#)
        .bind(&first)
        .execute(&mut t1)
        .await
        .unwrap();
    sqlx::query(r#"DELETE FROM "session" WHERE "id" = $1"#)
        .bind(&second)
        .execute(&mut t2)
        .await
        .unwrap();

    // A reader sees the committed one, then the one that commits later, after it.
    let mut stream = client
        .watch_revocations(pb::WatchRevocationsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let seen = next(&mut stream).await;
    assert_eq!(seen.session_id, second);
    sqlx::query("COMMIT").execute(&mut t1).await.unwrap();
    let later = next(&mut stream).await;
    assert_eq!(later.session_id, first);
    assert!(
        later.sequence > seen.sequence,
        "a later commit has a later position"
    );
    // Resuming after what it had seen, a reader still gets it.
    let mut resumed = client
        .watch_revocations(pb::WatchRevocationsRequest {
            after_sequence: seen.sequence,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await.session_id, first);
}

#[tokio::test]
async fn a_starting_reader_reads_only_the_window_and_old_entries_are_pruned() {
    let db = edge_testkit::test_database().await;
    Store::open(&db.url).await.unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    // 100,000 entries from two hours ago, then five recent ones.
    sqlx::query(r#"INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") SELECT 'old-' || g, 'someone', 'deleted' FROM generate_series(1, 100000) g"#)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(r#"UPDATE "edge_session_log" SET "committedAt" = now() - interval '2 hours'"#)
        .execute(&mut conn)
        .await
        .unwrap();
    for i in 0..5 {
        sqlx::query(r#"INSERT INTO "edge_session_log" ("sessionId", "userId", "reason") VALUES ($1, 'someone', 'deleted')"#)
            .bind(format!("new-{i}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }

    let running = crate::spawn(crate::config(&db.url)).await;
    let mut client = running.client().await;
    let mut stream = client
        .watch_revocations(pb::WatchRevocationsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut backlog = Vec::new();
    let mark = loop {
        let entry = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the backlog arrives")
            .unwrap()
            .expect("stream open");
        if entry.end_of_backlog {
            break entry;
        }
        backlog.push(entry.session_id);
    };
    assert_eq!(backlog, ["new-0", "new-1", "new-2", "new-3", "new-4"]);
    assert_eq!(mark.retention_seconds, 900 + 300);
    assert!(mark.session_id.is_empty() && mark.user_id.is_empty());

    // Entries older than the retention window leave the table.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (old,): (i64,) = sqlx::query_as(
            r#"SELECT COUNT(*) FROM "edge_session_log" WHERE "sessionId" LIKE 'old-%'"#,
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if old == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "old entries never pruned"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (recent,): (i64,) = sqlx::query_as(r#"SELECT COUNT(*) FROM "edge_session_log""#)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(recent, 5, "recent entries stay");
}

#[tokio::test]
async fn sqlite_triggers_log_every_writer() {
    let (_dir, url) = crate::sqlite_url();
    let store = Store::open(&url).await.unwrap();
    let now = now_ms();
    let user = User {
        id: edge_keys::generate_id(),
        name: "Ada".into(),
        email: "ada@example.com".into(),
        email_verified: false,
        image: None,
        created_at: now,
        updated_at: now,
    };
    let session = |n: &str| Session {
        id: format!("session-{n}"),
        token: edge_keys::generate_id(),
        user_id: user.id.clone(),
        expires_at: now + chrono::Duration::days(7),
        created_at: now,
        updated_at: now,
        ip_address: None,
        user_agent: None,
    };
    let account = CredentialAccount {
        id: edge_keys::generate_id(),
        user_id: user.id.clone(),
        password_hash: "salt:hash".into(),
        created_at: now,
    };
    store
        .create_user(&user, &account, Some(&session("deleted")))
        .await
        .unwrap();
    store.create_session(&session("expired")).await.unwrap();
    store.create_session(&session("extended")).await.unwrap();
    store
        .extend_session("session-extended", now + chrono::Duration::days(8), now)
        .await
        .unwrap();

    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for statement in [
        r#"DELETE FROM "session" WHERE "id" = 'session-deleted'"#,
        r#"UPDATE "session" SET "expiresAt" = '2000-01-01T00:00:00.000Z' WHERE "id" = 'session-expired'"#,
        r#"UPDATE "user" SET "updatedAt" = '2030-01-01T00:00:00.000Z'"#,
        r#"UPDATE "user" SET "name" = 'Ada Lovelace'"#,
        r#"PRAGMA foreign_keys = ON"#,
        r#"DELETE FROM "user""#,
    ] {
        sqlx::query(statement).execute(&mut conn).await.unwrap();
    }
    let log = store.revocations_after(0, 100).await.unwrap();
    let mut entries: Vec<(Option<&str>, &str)> = log
        .iter()
        .map(|r| (r.session_id.as_deref(), r.reason.as_str()))
        .collect();
    // The user's deletion and its cascade, in whatever order SQLite runs them.
    entries[3..].sort();
    assert_eq!(
        entries,
        [
            (Some("session-deleted"), "deleted"),
            (Some("session-expired"), "expired"),
            (None, "user-changed"),
            (None, "user-deleted"),
            (Some("session-expired"), "deleted"),
            (Some("session-extended"), "deleted"),
        ]
    );
    assert!(log.windows(2).all(|w| w[0].position < w[1].position));
    assert!(log.iter().all(|r| r.user_id.as_deref() == Some(&*user.id)));
}
