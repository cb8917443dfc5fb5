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
            None,
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
                    ..
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
            None,
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
                    ..
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

/// A journaled mutation of `listener` (client request `id`), and the socket of a repeat of it
/// that waits on the journal.
fn journaled(s: &mut UpstreamState, listener: u64, id: u32) -> (Outbox, crate::listener::Mailbox) {
    use crate::journal::{Claim, Journal, JournalKey, Waiter};
    let journal = std::sync::Arc::new(Journal::default());
    let key = JournalKey {
        session_id: "client-session".into(),
        request_id: RequestId(id),
    };
    let (first, _) = crate::listener::Inbox::new(8);
    let Claim::Run(ticket) = journal.claim(
        key.clone(),
        Waiter {
            inbox: first,
            request_id: RequestId(id),
        },
    ) else {
        panic!("a first send runs");
    };
    let (repeat, mailbox) = crate::listener::Inbox::new(8);
    let waiter = Waiter {
        inbox: repeat,
        request_id: RequestId(id),
    };
    assert!(matches!(journal.claim(key, waiter), Claim::Wait));
    let out = step(s, |s, out| {
        s.request(
            listener,
            RequestId(id),
            RequestKind::Mutation,
            "tasks:add".into(),
            json!({}),
            Some(ticket),
            out,
        )
    });
    (out, mailbox)
}

/// Convex answers upstream request 0 with a success at `ts` 9, the journal is settled with it,
/// and the waiting `repeat` gets that answer. The events for listeners.
fn convex_answers_at_9(
    s: &mut UpstreamState,
    repeat: &mut crate::listener::Mailbox,
) -> Vec<(Audience, Event)> {
    let out = step(s, |s, out| {
        s.on_server_message(mutation_answer(0, 9), out).unwrap()
    });
    for (ticket, outcome) in out.settled {
        ticket.settle(&outcome);
    }
    assert_eq!(
        repeat_got(repeat).as_deref(),
        Some("replayed=true ts=Some(9)")
    );
    out.events
}

/// What the waiting repeat got: `replayed <ts>` or `rerun`.
fn repeat_got(mailbox: &mut crate::listener::Mailbox) -> Option<String> {
    match mailbox.try_recv()? {
        Event::Response {
            outcome, replayed, ..
        } => Some(format!(
            "replayed={replayed} ts={:?}",
            outcome.as_ref().as_ref().unwrap().ts.map(|t| t.0)
        )),
        Event::Rerun { .. } => Some("rerun".into()),
        other => Some(format!("{other:?}")),
    }
}

/// Convex may have run a mutation whose socket left before the connection carrying it was
/// lost: it goes again on the next connection under the same upstream request id (Convex
/// answers that with the first run's outcome), and its answer settles the journal for the
/// client's repeat. Until then the upstream owes the journal and does not retire.
#[test]
fn a_journaled_mutation_whose_socket_left_goes_again_and_its_answer_reaches_the_repeat() {
    let (mut s, _) = connected();
    let (out, mut repeat) = journaled(&mut s, A, 4);
    assert_eq!(requests_sent(&out), [(RequestKind::Mutation, RequestId(0))]);
    step(&mut s, |s, _| {
        s.detach(A);
        s.detach(B);
    });
    assert!(s.is_idle() && s.owes_journal());
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.connected("session".into(), out));
    assert_eq!(
        requests_sent(&out),
        [(RequestKind::Mutation, RequestId(0))],
        "sent again under its first upstream id"
    );
    let events = convex_answers_at_9(&mut s, &mut repeat);
    assert!(events.is_empty(), "its socket left: {events:?}");
    assert!(!s.owes_journal());
}

/// The same when the socket leaves while the connection is down: the mutation went out on the
/// lost one, so it goes again on the next.
#[test]
fn a_journaled_mutation_sent_before_a_disconnect_stays_when_its_socket_leaves_meanwhile() {
    let (mut s, _) = connected();
    let (_, mut repeat) = journaled(&mut s, A, 4);
    step(&mut s, |s, out| s.disconnected(out));
    step(&mut s, |s, _| s.detach(A));
    assert!(s.owes_journal());
    assert_eq!(repeat_got(&mut repeat), None);
    let out = step(&mut s, |s, out| s.connected("session".into(), out));
    assert_eq!(requests_sent(&out), [(RequestKind::Mutation, RequestId(0))]);
    convex_answers_at_9(&mut s, &mut repeat);
}

/// A journaled mutation that never reached Convex (dropped unsent with its listener, or
/// refused by the upstream's cap) tells the journal so: the client's repeat runs it.
#[test]
fn a_journaled_mutation_that_never_reached_convex_lets_the_repeat_run_it() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.disconnected(out));
    let (out, mut repeat) = journaled(&mut s, A, 1);
    assert!(out.to_convex.is_empty());
    assert_eq!(repeat_got(&mut repeat), None);
    step(&mut s, |s, _| s.detach(A));
    assert_eq!(repeat_got(&mut repeat).as_deref(), Some("rerun"));
    assert!(!s.owes_journal());

    let (mut s, _) = connected();
    for id in 0..super::MAX_REQUESTS_IN_FLIGHT as u32 {
        request(&mut s, B, id, RequestKind::Mutation);
    }
    let (out, mut repeat) = journaled(&mut s, A, 5000);
    assert!(out.to_convex.is_empty(), "refused at the cap");
    assert_eq!(repeat_got(&mut repeat).as_deref(), Some("rerun"));
}

/// After Convex refused the token (or auth revoked it), a mutation whose socket left still
/// goes again on the next connection, with no token: Convex answers a repeated
/// `(sessionId, requestId)` with its first outcome whatever the identity, and the client's
/// repeat gets it.
#[test]
fn a_journaled_mutation_goes_again_after_its_token_was_lost() {
    let (mut s, _) = connected();
    step(&mut s, |s, _| s.token("ada-token".into(), i64::MAX, 0));
    let (_, mut repeat) = journaled(&mut s, A, 2);
    step(&mut s, |s, _| s.detach(A));
    let refused = ServerMessage::AuthError {
        error: "bad token".into(),
        base_version: None,
        auth_update_attempted: Some(true),
    };
    step(&mut s, |s, out| s.on_server_message(refused, out).unwrap());
    step(&mut s, |s, out| s.disconnected(out));
    assert_eq!(repeat_got(&mut repeat), None);
    let out = step(&mut s, |s, out| s.connected("session".into(), out));
    assert!(
        !out.to_convex
            .iter()
            .any(|m| matches!(m, ClientMessage::Authenticate { .. })),
        "{out:?}"
    );
    assert_eq!(requests_sent(&out), [(RequestKind::Mutation, RequestId(0))]);
    convex_answers_at_9(&mut s, &mut repeat);
}

/// A journaled mutation's answer goes to its socket first, then to the journal (a failure
/// too, so its repeats run again, as Convex records only successes).
#[test]
fn a_journaled_mutation_answers_its_socket_and_the_journal() {
    let (mut s, _) = connected();
    let (_, mut repeat) = journaled(&mut s, A, 3);
    let failed = ServerMessage::MutationResponse {
        request_id: RequestId(0),
        success: false,
        result: json!("Uncaught Error: no"),
        ts: None,
        log_lines: vec![],
        error_data: None,
    };
    let out = step(&mut s, |s, out| s.on_server_message(failed, out).unwrap());
    assert!(matches!(
        out.events[..],
        [(
            Audience::One(A),
            Event::Response {
                replayed: false,
                ..
            }
        )]
    ));
    assert_eq!(out.settled.len(), 1);
    for (ticket, outcome) in out.settled {
        ticket.settle(&outcome);
    }
    assert_eq!(repeat_got(&mut repeat).as_deref(), Some("rerun"));
}
