//! The Rust `convex` crate's client against devconvex: subscribe, mutate, authenticate, action.

use std::collections::BTreeMap;
use std::time::Duration;

use convex::{ConvexClient, FunctionResult, Value};
use futures_util::StreamExt;

fn args(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn bodies(result: &FunctionResult) -> Vec<String> {
    let FunctionResult::Value(Value::Array(messages)) = result else {
        panic!("{result:?}")
    };
    messages
        .iter()
        .map(|m| match m {
            Value::Object(o) => match &o["body"] {
                Value::String(s) => s.clone(),
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_subscribes_mutates_and_round_trips_values() {
    let auth = crate::Auth::start().await;
    let devconvex = crate::spawn(Some(auth.convex_auth_config())).await;
    let token = auth.token_for("rust@example.com").await;
    let channel = args(&[("channel", Value::String("rust".into()))]);

    let mut watcher = ConvexClient::new(&devconvex.url()).await.unwrap();
    let mut subscription = watcher
        .subscribe("messages:list", channel.clone())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert!(bodies(&first).is_empty());

    let mut writer = ConvexClient::new(&devconvex.url()).await.unwrap();
    let anonymous = writer
        .mutation(
            "messages:send",
            args(&[
                ("channel", Value::String("rust".into())),
                ("body", Value::String("x".into())),
            ]),
        )
        .await
        .unwrap();
    assert!(
        matches!(anonymous, FunctionResult::ErrorMessage(ref m) if m.contains("Not signed in")),
        "{anonymous:?}"
    );

    writer.set_auth(Some(token)).await;
    let me = writer.query("users:me", BTreeMap::new()).await.unwrap();
    let FunctionResult::Value(Value::Object(me)) = me else {
        panic!("{me:?}")
    };
    assert_eq!(me["email"], Value::String("rust@example.com".into()));
    let sent = writer
        .mutation(
            "messages:send",
            args(&[
                ("channel", Value::String("rust".into())),
                ("body", Value::String("from rust".into())),
            ]),
        )
        .await
        .unwrap();
    assert!(
        matches!(sent, FunctionResult::Value(Value::String(_))),
        "{sent:?}"
    );

    let update = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(bodies(&update), ["from rust"]);

    let payload = args(&[
        ("n", Value::Int64(1 << 60)),
        ("b", Value::Bytes(vec![0, 1, 255])),
        ("f", Value::Float64(f64::INFINITY)),
    ]);
    let echoed = writer.action("demo:echo", payload.clone()).await.unwrap();
    assert_eq!(echoed, FunctionResult::Value(Value::Object(payload)));
}
