//! Mutations and actions through an upstream: upstream request ids, answers routed back to
//! the listener that asked, requests across a reconnect as convex-js carries them.

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

/// The requests and their upstream ids among the messages for Convex, in order.
fn requests_sent(out: &Outbox) -> Vec<(RequestKind, RequestId)> {
    out.to_convex
        .iter()
        .filter_map(|m| match m {
            ClientMessage::Mutation { request_id, .. } => {
                Some((RequestKind::Mutation, *request_id))
            }
            ClientMessage::Action { request_id, .. } => Some((RequestKind::Action, *request_id)),
            _ => None,
        })
        .collect()
}

fn mutation_answer(upstream_id: u32, ts: u64) -> ServerMessage {
    ServerMessage::MutationResponse {
        request_id: RequestId(upstream_id),
        success: true,
        result: Value::Null,
        ts: Some(Timestamp(ts)),
        log_lines: vec![],
        error_data: None,
    }
}

/// convex-js holds a request made while its socket is down and sends it once connected
/// (`RequestManager.request(message, sent = false)`, then `restart`): so does the upstream,
/// after `Connect`, the token and the query set, in the order the requests were made.
#[test]
fn requests_made_while_disconnected_go_on_the_next_connection() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.disconnected(out));
    let out = request(&mut s, A, 1, RequestKind::Mutation);
    assert!(out.to_convex.is_empty() && out.events.is_empty(), "{out:?}");
    let out = request(&mut s, B, 2, RequestKind::Action);
    assert!(out.to_convex.is_empty() && out.events.is_empty(), "{out:?}");
    let out = step(&mut s, |s, out| s.connected("test".into(), out));
    assert!(matches!(out.to_convex[0], ClientMessage::Connect { .. }));
    assert_eq!(
        requests_sent(&out),
        [
            (RequestKind::Mutation, RequestId(0)),
            (RequestKind::Action, RequestId(1))
        ]
    );
    let out = step(&mut s, |s, out| {
        s.on_server_message(mutation_answer(0, 4), out).unwrap()
    });
    assert!(matches!(
        &out.events[..],
        [(Audience::One(A), Event::Response { request_id: RequestId(1), outcome, .. })]
            if outcome.as_ref().as_ref().is_ok_and(|o| o.ts == Some(Timestamp(4)))
    ));
}

/// convex-js's `RequestManager.restart`: a mutation the lost connection carried is sent again
/// (Convex runs a `(sessionId, requestId)` once), an action fails with its words, since
/// running it twice may not be safe.
#[test]
fn a_reconnect_sends_unanswered_mutations_again_and_fails_actions() {
    let (mut s, _) = connected();
    request(&mut s, A, 1, RequestKind::Mutation);
    request(&mut s, B, 2, RequestKind::Action);
    let out = step(&mut s, |s, out| s.disconnected(out));
    match &out.events[..] {
        [
            (
                Audience::One(B),
                Event::Response {
                    request_id: RequestId(2),
                    kind: RequestKind::Action,
                    outcome,
                },
            ),
        ] => assert_eq!(outcome.as_ref().as_ref().unwrap_err(), super::ACTION_LOST),
        other => panic!("{other:?}"),
    }
    let out = step(&mut s, |s, out| s.connected("test".into(), out));
    assert_eq!(requests_sent(&out), [(RequestKind::Mutation, RequestId(0))]);
    // Answered under the same upstream id, back to the listener that asked.
    let out = step(&mut s, |s, out| {
        s.on_server_message(mutation_answer(0, 9), out).unwrap()
    });
    assert!(matches!(
        &out.events[..],
        [(
            Audience::One(A),
            Event::Response {
                request_id: RequestId(1),
                ..
            }
        )]
    ));
    // Answered once: a second reconnect sends nothing.
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.connected("test".into(), out));
    assert!(requests_sent(&out).is_empty());
}

/// A listener that leaves takes its waiting requests with it; one Convex already has stays
/// counted until answered, and is not sent again after a reconnect.
#[test]
fn a_listener_leaving_drops_its_requests_not_answered() {
    let (mut s, _) = connected();
    request(&mut s, A, 1, RequestKind::Mutation);
    step(&mut s, |s, out| s.disconnected(out));
    request(&mut s, A, 2, RequestKind::Mutation);
    request(&mut s, B, 3, RequestKind::Mutation);
    step(&mut s, |s, _| s.detach(A));
    let out = step(&mut s, |s, out| s.connected("test".into(), out));
    assert_eq!(requests_sent(&out), [(RequestKind::Mutation, RequestId(2))]);
    // Sent, then its listener leaves: not sent again.
    step(&mut s, |s, _| s.detach(B));
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.connected("test".into(), out));
    assert!(requests_sent(&out).is_empty());
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
    // The mutations wait across a reconnect, still counted: the cap holds while disconnected.
    step(&mut s, |s, out| s.disconnected(out));
    let out = request(&mut s, A, 7000, RequestKind::Mutation);
    assert!(matches!(
        &out.events[..],
        [(Audience::One(A), Event::Response { outcome, .. })]
            if outcome.as_ref().as_ref().is_err_and(|e| e.contains("too many"))
    ));
}
