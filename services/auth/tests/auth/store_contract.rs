//! One contract suite, run against Postgres and SQLite.

use chrono::Duration;
use edge_auth::store::{CredentialAccount, Session, Store, StoreError, User, now_ms};

fn user(email: &str) -> User {
    let now = now_ms();
    User {
        id: edge_keys::generate_id(),
        name: "Ada".into(),
        email: email.into(),
        email_verified: false,
        image: None,
        created_at: now,
        updated_at: now,
    }
}

fn session_for(user_id: &str) -> Session {
    let now = now_ms();
    Session {
        id: edge_keys::generate_id(),
        token: edge_keys::generate_id(),
        user_id: user_id.into(),
        expires_at: now + Duration::days(7),
        created_at: now,
        updated_at: now,
        ip_address: Some("127.0.0.1".into()),
        user_agent: None,
    }
}

async fn contract(store: Store) {
    store.migrate().await.unwrap();
    store.migrate().await.expect("migrate is idempotent");

    let u = user("ada@example.com");
    let account = CredentialAccount {
        id: edge_keys::generate_id(),
        user_id: u.id.clone(),
        password_hash: "salt:hash".into(),
        created_at: u.created_at,
    };
    let s = session_for(&u.id);
    store.create_user(&u, &account, Some(&s)).await.unwrap();

    // Same email again: refused, and nothing of the second attempt is left behind.
    let dup = user("ada@example.com");
    let dup_account = CredentialAccount {
        user_id: dup.id.clone(),
        id: edge_keys::generate_id(),
        ..account.clone()
    };
    let err = store
        .create_user(&dup, &dup_account, Some(&session_for(&dup.id)))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UserExists), "{err:?}");

    let found = store
        .user_by_email("ada@example.com")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, u.id);
    assert_eq!(
        found.created_at, u.created_at,
        "dates keep millisecond precision"
    );
    assert!(
        store
            .user_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.credential_password(&u.id).await.unwrap().as_deref(),
        Some("salt:hash")
    );

    let reads = store
        .reads()
        .session
        .load(std::sync::atomic::Ordering::Relaxed);
    let (got_session, got_user) = store.session_with_user(&s.token).await.unwrap().unwrap();
    assert_eq!(
        store
            .reads()
            .session
            .load(std::sync::atomic::Ordering::Relaxed),
        reads + 1
    );
    assert_eq!(got_session.id, s.id);
    assert_eq!(got_session.expires_at, s.expires_at);
    assert_eq!(got_user.email, "ada@example.com");
    assert!(store.session_with_user("missing").await.unwrap().is_none());

    let later = s.expires_at + Duration::days(1);
    store.extend_session(&s.id, later, now_ms()).await.unwrap();
    assert_eq!(
        store
            .session_with_user(&s.token)
            .await
            .unwrap()
            .unwrap()
            .0
            .expires_at,
        later
    );

    // Ending sessions writes the revocation log in order.
    let second = session_for(&u.id);
    store.create_session(&second).await.unwrap();
    let before = store.latest_revocation().await.unwrap();
    let r1 = store
        .end_session(&s.token, "edge:jwt:one", "sign-out")
        .await
        .unwrap()
        .unwrap();
    let r2 = store
        .end_session(&second.token, "edge:jwt:two", "expired")
        .await
        .unwrap()
        .unwrap();
    assert!(r2.position > r1.position && r1.position > before);
    assert!(
        store
            .end_session(&s.token, "edge:jwt:one", "sign-out")
            .await
            .unwrap()
            .is_none(),
        "ending twice is a no-op"
    );
    assert!(store.session_with_user(&s.token).await.unwrap().is_none());
    let log = store.revocations_after(before, 10).await.unwrap();
    assert_eq!(
        log.iter()
            .map(|r| r.cache_key.as_deref().unwrap_or_default())
            .collect::<Vec<_>>(),
        ["edge:jwt:one", "edge:jwt:two"]
    );
    assert_eq!(
        log.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>(),
        ["sign-out", "expired"]
    );
    assert_eq!(log[0].session_id.as_deref(), Some(s.id.as_str()));
    assert_eq!(log[0].user_id.as_deref(), Some(u.id.as_str()));
    assert_eq!(
        store
            .revocations_after(r1.position, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(store.latest_revocation().await.unwrap(), r2.position);

    // Keys: insert bumps the version; rotation expires the old key.
    let secret = edge_keys::Secret::new(crate::SECRET);
    let v0 = store.jwks_version().await.unwrap();
    let k1 = edge_keys::jwk::generate_row(edge_keys::Alg::ES256, &secret, now_ms()).unwrap();
    store.insert_jwk(&k1, None).await.unwrap();
    assert_eq!(store.jwks_version().await.unwrap(), v0 + 1);
    let k2 = edge_keys::jwk::generate_row(
        edge_keys::Alg::ES256,
        &secret,
        now_ms() + Duration::seconds(1),
    )
    .unwrap();
    store.insert_jwk(&k2, Some(now_ms())).await.unwrap();
    let rows = store.jwks_rows().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].id, k2.id, "newest first");
    assert!(rows[0].expires_at.is_none() && rows[1].expires_at.is_some());
    assert_eq!(rows[1].private_key, k1.private_key);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn postgres_contract() {
    let db = edge_testkit::test_database().await;
    contract(Store::connect(&db.url).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_contract() {
    let (_dir, url) = crate::sqlite_url();
    contract(Store::connect(&url).await.unwrap()).await;
}

/// A Postgres slow to give the first connection (a server still starting, a machine under
/// load): start-up waits for it (`STARTUP_WAIT`) instead of failing after one
/// `ACQUIRE_TIMEOUT`. The first 1.5 s of every connection are swallowed here.
#[tokio::test]
async fn start_up_waits_for_a_database_slow_to_give_a_connection() {
    let db = edge_testkit::test_database().await;
    let rest = db.url.split_once('@').expect("a user in the URL").1;
    let (server, name) = rest.split_once('/').expect("a database in the URL");
    let relay = edge_testkit::Relay::start(server.parse().expect("host:port")).await;
    relay.partition();
    let url = format!("postgres://postgres@{}/{name}", relay.addr());
    let heal = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        relay.heal();
    };
    let (store, ()) = tokio::join!(Store::open(&url), heal);
    let store = store.expect("the store opens once the database answers");
    assert!(
        store
            .user_by_email("nobody@example.com")
            .await
            .unwrap()
            .is_none()
    );
}
