//! The account operations on both stores: the same SQL on SQLite (what `dev` runs) as on
//! Postgres, each change logged by the triggers and returned to the caller.

use edge_auth::account::Revoke;
use edge_auth::mail::MailMode;
use edge_auth::service::{Client, Cookies};

use crate::{config, spawn, sqlite_url};

const PASSWORD: &str = "correct horse battery staple";

async fn run(url: &str) {
    let mut c = config(url);
    // The dev log as the mail sender: the token is read from the `verification` table.
    c.mail.mode = MailMode::Log;
    c.account.delete_user_enabled = true;
    let running = spawn(c).await;
    let core = &running.core;
    let client = Client::default();
    let first = core
        .sign_up("Ada", "ada@example.com", PASSWORD, None, "", &client)
        .await
        .unwrap()
        .session()
        .unwrap();
    let second = core
        .sign_in("ada@example.com", PASSWORD, "", &client)
        .await
        .unwrap();
    assert_eq!(
        core.list_sessions(Cookies::session(&first.cookie_value))
            .await
            .unwrap()
            .len(),
        2
    );

    let changed = core
        .revoke_sessions(Cookies::session(&first.cookie_value), Revoke::Others)
        .await
        .unwrap();
    assert_eq!(changed.revocations.len(), 1, "{changed:?}");
    assert_eq!(
        changed.revocations[0].session_id.as_deref(),
        Some(second.session.id.as_str())
    );
    assert!(core.session(&second.cookie_value).await.is_err());

    let changed = core
        .update_user(
            Cookies::session(&first.cookie_value),
            Some("Ada L".into()),
            Some(None),
        )
        .await
        .unwrap();
    assert_eq!(changed.user.unwrap().name, "Ada L");
    assert_eq!(changed.revocations.len(), 1);
    assert_eq!(changed.revocations[0].reason, "user-changed");

    let changed = core
        .change_password(
            Cookies::session(&first.cookie_value),
            PASSWORD,
            "a new password 1",
            true,
            &client,
        )
        .await
        .unwrap();
    let fresh = changed.new_session.unwrap();
    assert!(core.session(&first.cookie_value).await.is_err());
    assert!(core.session(&fresh.cookie_value).await.is_ok());

    core.request_password_reset("ada@example.com", "/reset")
        .await
        .unwrap();
    let token = {
        let rows = core.store().find_verification_like("reset-password:").await;
        rows.expect("a reset row")
    };
    let identifier_token = token.strip_prefix("reset-password:").unwrap().to_owned();
    assert_eq!(identifier_token.len(), 24);
    assert!(core.check_reset_token(&identifier_token).await.unwrap());
    core.reset_password(&identifier_token, "reset password 2")
        .await
        .unwrap();
    assert!(!core.check_reset_token(&identifier_token).await.unwrap());
    assert!(
        core.reset_password(&identifier_token, "reset password 3")
            .await
            .is_err()
    );
    core.sign_in("ada@example.com", "reset password 2", "", &client)
        .await
        .unwrap();

    let changed = core
        .delete_user(Cookies::session(&fresh.cookie_value), None)
        .await
        .unwrap();
    assert!(
        changed
            .revocations
            .iter()
            .any(|r| r.reason == "user-deleted"),
        "{changed:?}"
    );
    assert!(
        core.sign_in("ada@example.com", "reset password 2", "", &client)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn account_operations_on_sqlite() {
    let (_dir, url) = sqlite_url();
    run(&url).await;
}

#[tokio::test]
async fn account_operations_on_postgres() {
    let db = edge_testkit::test_database().await;
    run(&db.url).await;
}
