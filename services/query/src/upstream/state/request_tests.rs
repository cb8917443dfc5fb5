//! Mutations and actions through an upstream: upstream request ids, answers routed back to
//! the listener that asked, failures while or when disconnected.

use edge_convex::sync::RequestKind;
use edge_convex::{ClientMessage, RequestId, ServerMessage, Timestamp};
use serde_json::{Value, json};

use super::tests::{A, B, connected, key, step};
use super::{Audience, Outbox, UpstreamState};
use crate::upstream::Event;

fn request(s: &mut UpstreamState, listener: u64, id: u32, kind: RequestKind) -> Outbox {
    step(s, |s, out| {
        s.request(
            listener,
            RequestId(id),
            kind,
            "tasks:add".into(),
            json!({}),
            out,
        )
    })
}

#[test]
fn requests_get_upstream_ids_and_answers_go_back_to_their_listener() {
    let (mut s, _) = connected();
    let out = request(&mut s, A, 5, RequestKind::Mutation);
    assert!(matches!(
        out.to_convex[..],
        [ClientMessage::Mutation {
            request_id: RequestId(0),
            ..
        }]
    ));
    let out = request(&mut s, B, 5, RequestKind::Action);
    assert!(matches!(
        out.to_convex[..],
        [ClientMessage::Action {
            request_id: RequestId(1),
            ..
        }]
    ));
    let answer = ServerMessage::MutationResponse {
        request_id: RequestId(0),
        success: true,
        result: Value::Null,
        ts: Some(Timestamp(3)),
        log_lines: vec![],
        error_data: None,
    };
    let out = step(&mut s, |s, out| s.on_server_message(answer, out).unwrap());
    match &out.events[..] {
        [
            (
                Audience::One(A),
                Event::Response {
                    request_id,
                    kind,
                    outcome,
                },
            ),
        ] => {
            assert_eq!((*request_id, *kind), (RequestId(5), RequestKind::Mutation));
            assert_eq!(outcome.as_ref().as_ref().unwrap().ts, Some(Timestamp(3)));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_request_goes_after_the_subscriptions_made_before_it() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.request(
            A,
            RequestId(1),
            RequestKind::Mutation,
            "m:m".into(),
            json!({}),
            out,
        );
    });
    assert!(matches!(
        out.to_convex[0],
        ClientMessage::ModifyQuerySet { .. }
    ));
    assert!(matches!(out.to_convex[1], ClientMessage::Mutation { .. }));
}

#[test]
fn requests_fail_at_once_while_disconnected() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.disconnected(out));
    let out = request(&mut s, A, 1, RequestKind::Mutation);
    assert!(out.to_convex.is_empty());
    assert!(matches!(
        &out.events[..],
        [(Audience::One(A), Event::Response { outcome, .. })] if outcome.is_err()
    ));
}

#[test]
fn requests_in_flight_fail_when_the_connection_is_lost() {
    let (mut s, _) = connected();
    request(&mut s, A, 1, RequestKind::Mutation);
    request(&mut s, B, 2, RequestKind::Action);
    let out = step(&mut s, |s, out| s.disconnected(out));
    let failed: Vec<(u64, RequestId)> = out
        .events
        .iter()
        .map(|(audience, e)| match (audience, e) {
            (
                Audience::One(l),
                Event::Response {
                    request_id,
                    outcome,
                    ..
                },
            ) => {
                assert!(outcome.is_err());
                (*l, *request_id)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(failed, vec![(A, RequestId(1)), (B, RequestId(2))]);
}

/// Convex ends a socket that has more than 1,000 mutations (or actions) in flight
/// (`TooManyConcurrentMutations`, `TooManyInflightActionsForSingleClient`). An upstream is
/// shared by every socket of its identity (the anonymous one by every signed-out socket), each
/// allowed 1,000 of its own, so the upstream itself keeps under Convex's limit: a request
/// beyond it fails alone, at once, and never reaches Convex; the others go on, and a slot
/// freed by an answer is usable again.
#[test]
fn an_upstream_never_has_more_requests_in_flight_than_convex_allows() {
    let (mut s, _) = connected();
    for kind in [RequestKind::Mutation, RequestKind::Action] {
        for i in 0..super::MAX_REQUESTS_IN_FLIGHT as u32 {
            // Spread over two listeners (two sockets), each within its own limit.
            let listener = if i % 2 == 0 { A } else { B };
            let out = request(&mut s, listener, i, kind);
            assert_eq!(out.to_convex.len(), 1, "request {i} was not forwarded");
        }
        let out = request(&mut s, A, 5000, kind);
        assert!(out.to_convex.is_empty(), "{:?}", out.to_convex);
        match &out.events[..] {
            [
                (
                    Audience::One(A),
                    Event::Response {
                        request_id,
                        outcome,
                        ..
                    },
                ),
            ] => {
                assert_eq!(*request_id, RequestId(5000));
                let error = outcome.as_ref().as_ref().unwrap_err();
                assert!(error.contains("too many"), "{error}");
            }
            other => panic!("{other:?}"),
        }
    }
    // One answer frees one slot of its kind.
    let first_action = RequestId(super::MAX_REQUESTS_IN_FLIGHT as u32);
    let answer = ServerMessage::ActionResponse {
        request_id: first_action,
        success: true,
        result: Value::Null,
        log_lines: vec![],
        error_data: None,
    };
    step(&mut s, |s, out| s.on_server_message(answer, out).unwrap());
    assert_eq!(
        request(&mut s, B, 6000, RequestKind::Action)
            .to_convex
            .len(),
        1
    );
    assert!(
        request(&mut s, B, 6001, RequestKind::Mutation)
            .to_convex
            .is_empty()
    );
}
