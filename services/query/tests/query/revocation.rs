//! Auth's session log applied to live data: a session ended anywhere loses its sockets, its
//! page watches and every later use of its tokens, while other sessions keep theirs.

use std::time::Duration;

use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use serde_json::json;

use crate::{Client, Stack};

fn call(path: &str, jwt: &str) -> pb::FunctionCall {
    pb::FunctionCall {
        path: path.into(),
        args_json: "{}".into(),
        jwt: jwt.into(),
        format: "json".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_loses_its_sockets_watches_and_tokens_and_no_one_else_does() {
    let stack = Stack::start().await;
    let (cookie, jwt) = stack.session_for("leaving@example.com").await;
    let (_, other_jwt) = stack.session_for("staying@example.com").await;

    let mut leaving = Client::connect(&stack.query_url()).await;
    leaving.authenticate(&jwt);
    leaving.subscribe(0, "tasks:list", json!({}));
    leaving.mutation("tasks:add", json!({"text": "private"}));
    leaving
        .until("the private task", |v| {
            v.values
                .get(&0)
                .and_then(|t| t.as_array())
                .is_some_and(|a| a.len() == 1)
        })
        .await;
    let mut staying = Client::connect(&stack.query_url()).await;
    staying.authenticate(&other_jwt);
    staying.subscribe(0, "tasks:list", json!({}));
    staying
        .until("its own tasks", |v| v.values.contains_key(&0))
        .await;

    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    let request = pb::QueryBatchRequest {
        queries: vec![call("tasks:list", &jwt)],
    };
    let mut batches = grpc.watch(request).await.unwrap().into_inner();
    batches.message().await.unwrap().unwrap();

    stack.auth.sign_out(&cookie).await.unwrap();

    let seen = leaving
        .until("AuthError on the open socket", |v| {
            !v.auth_errors.is_empty()
        })
        .await;
    let values_before = seen.values.clone();
    let end = tokio::time::timeout(Duration::from_secs(20), batches.message())
        .await
        .expect("the watch to end");
    assert_eq!(end.unwrap_err().code(), tonic::Code::Unauthenticated);

    // The token still verifies by signature and `exp`, but nothing accepts it any more.
    let mut again = Client::connect(&stack.query_url()).await;
    again.authenticate(&jwt);
    let refused = again
        .until("the token refused on a new socket", |v| {
            !v.auth_errors.is_empty()
        })
        .await;
    assert!(
        refused.auth_errors[0].contains("session"),
        "{:?}",
        refused.auth_errors
    );
    let read = grpc.query(call("tasks:list", &jwt)).await.unwrap_err();
    assert_eq!(read.code(), tonic::Code::Unauthenticated);

    // The other session is untouched: its socket still gets its own changes.
    staying.mutation("tasks:add", json!({"text": "still here"}));
    staying
        .until("the other session's change", |v| {
            v.values
                .get(&0)
                .and_then(|t| t.as_array())
                .is_some_and(|a| a.len() == 1)
        })
        .await;
    assert!(staying.view().auth_errors.is_empty());
    assert_eq!(
        leaving.view().values,
        values_before,
        "no data after the AuthError"
    );
}

/// Review (issue 13): a user change refuses tokens by `iat` (whole seconds) against the
/// entry's time (milliseconds). A token issued after the change, in the same second, is
/// refused too, and the gateway caches exactly that token for its TTL: the user's sockets
/// get AuthError for a valid, current token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_after_a_user_change_is_accepted() {
    let stack = Stack::start().await;
    let (cookie, _old) = stack.session_for("renamed@example.com").await;
    let old_issued = chrono::Utc::now().timestamp();
    let db = stack._dir.path().join("auth.db");
    // Early in a later second than the old token's `iat` (tokens carry whole seconds), so the
    // old token predates the change and the new one below falls in the change's own second.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = chrono::Utc::now();
        if now.timestamp() > old_issued && now.timestamp_subsec_millis() < 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no early moment of a second"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(".timeout 5000")
        .arg(r#"UPDATE "user" SET "name" = 'New Name' WHERE "email" = 'renamed@example.com'"#)
        .status()
        .unwrap();
    assert!(status.success());
    let changed_at = chrono::Utc::now();
    // A new token right after the change (auth reads the new name).
    let issued = stack.auth.issue_token(&cookie).await.unwrap();
    let new = issued.token.jwt;
    let issued_at = chrono::Utc::now();
    assert_eq!(
        changed_at.timestamp(),
        issued_at.timestamp(),
        "setup: the change and the issue fall in one second"
    );
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    // Once the query service has the entry, the old token (old name) is refused.
    let start = std::time::Instant::now();
    while grpc.query(call("tasks:list", &_old)).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the old token is never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "user change applied by the query service after {:?}",
        changed_at.signed_duration_since(chrono::Utc::now()).abs()
    );
    let read = grpc.query(call("tasks:list", &new)).await;
    assert!(
        read.is_ok(),
        "a token issued after the user change, carrying the new name, is refused: {:?}",
        read.err()
    );
}

/// Review (issue 13): on SQLite, a session ended by another writer of the file (the Better
/// Auth app, an admin's sqlite3) wakes no stream: it is seen at auth's next poll (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_session_end_by_another_writer_within_one_second() {
    let stack = Stack::start().await;
    let (_cookie, jwt) = stack.session_for("sqlite-writer@example.com").await;
    let db = stack._dir.path().join("auth.db");
    let mut grpc = QueryServiceClient::connect(format!("http://{}", stack.query_grpc()))
        .await
        .unwrap();
    grpc.query(call("tasks:list", &jwt)).await.unwrap();
    let status = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(".timeout 5000")
        .arg(r#"DELETE FROM "session""#)
        .status()
        .unwrap();
    assert!(status.success());
    let start = std::time::Instant::now();
    while grpc.query(call("tasks:list", &jwt)).await.is_ok() {
        assert!(
            start.elapsed() < Duration::from_millis(1000),
            "the deleted session's token is still accepted 1 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
