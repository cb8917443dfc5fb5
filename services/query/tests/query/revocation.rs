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
