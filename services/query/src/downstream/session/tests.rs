//! The client session's rules on single sequences, one rule a test.

use std::sync::Arc;

use edge_convex::sync::{QuerySetModification, TokenType};
use edge_convex::{ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, Timestamp};
use serde_json::json;

use super::harness::{Harness, PRIVATE, SHARED, mutation_answer, value};
use super::{Effect, End, Route};
use crate::key::QueryKey;
use crate::upstream::{Event, SharedText};

#[test]
fn a_new_query_gets_its_value_from_the_upstream() {
    let mut h = Harness::new();
    let q = h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    assert_eq!(h.model.result(q).unwrap()["who"], "");
}

#[test]
fn two_queries_on_one_key_subscribe_upstream_once() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({"a": 1}));
    h.add(PRIVATE, json!({"a": 1}));
    assert_eq!(h.subscribed[""].values().sum::<usize>(), 1);
    h.upstream_transition("");
    assert_eq!(h.model.results().len(), 2);
}

#[test]
fn removing_one_of_two_queries_on_a_key_keeps_the_subscription() {
    let mut h = Harness::new();
    let first = h.add(PRIVATE, json!({}));
    h.add(PRIVATE, json!({}));
    h.remove(first);
    assert_eq!(h.subscribed[""].len(), 1);
}

#[test]
fn signing_in_moves_private_queries_and_shares_shared_ones() {
    let mut h = Harness::new();
    let private = h.add(PRIVATE, json!({}));
    let shared = h.add(SHARED, json!({"channel": "g"}));
    h.sign_in("ada");
    assert_eq!(h.main, "ada");
    assert!(h.shared);
    h.upstream_transition("ada");
    h.upstream_transition("");
    assert_eq!(h.model.result(private).unwrap()["who"], "ada");
    assert_eq!(h.model.result(shared).unwrap()["who"], "");
    assert!(
        h.subscribed["ada"]
            .keys()
            .all(|k| k.path.as_str() == PRIVATE)
    );
}

#[test]
fn signing_out_reuses_the_shared_upstream_as_main() {
    let mut h = Harness::new();
    h.sign_in("ada");
    let private = h.add(PRIVATE, json!({}));
    h.add(SHARED, json!({}));
    h.sign_in("");
    assert_eq!((h.main.as_str(), h.shared), ("", false));
    h.upstream_transition("");
    assert_eq!(h.model.result(private).unwrap()["who"], "");
    assert!(
        h.subscribed["ada"].is_empty(),
        "the old identity holds nothing"
    );
}

#[test]
fn events_from_an_upstream_the_socket_left_are_ignored() {
    let mut h = Harness::new();
    h.sign_in("ada");
    let q = h.add(PRIVATE, json!({}));
    h.upstream_transition("ada");
    h.sign_in("bob");
    // ada's upstream still sends (a queued event): it must not reach the socket.
    h.subscribed
        .entry("ada".into())
        .or_default()
        .insert(QueryKey::new(PRIVATE, &json!({}), None).unwrap(), 1);
    h.upstream_transition("ada");
    h.upstream_transition("bob");
    assert_eq!(h.model.result(q).unwrap()["who"], "bob");
}

#[test]
fn the_ts_is_the_frontier_of_the_routes_in_use() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(PRIVATE, json!({}));
    h.add(SHARED, json!({}));
    h.upstream_transition("ada");
    let ada_ts = h.newest;
    h.upstream_transition("");
    // Both routes have sent: the frontier is the older of the two, ada's.
    assert_eq!(h.model.held().ts, Timestamp(ada_ts));
    h.upstream_transition("ada");
    assert_eq!(
        h.model.held().ts,
        Timestamp(h.newest - 1),
        "held at the shared route's ts"
    );
}

/// Real Convex sends an idle upstream no transition when another commits: the shared route's
/// upstream is asked to advance, and its transition completes the mutation.
#[test]
fn a_mutation_beyond_an_idle_shared_route_advances_it() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.mutate();
    assert_eq!(
        h.advanced,
        vec![String::new()],
        "the shared route asked to advance"
    );
    assert_eq!(h.model.awaiting().count(), 0);
}

/// A mutation answered by the upstream the socket left (it signed in meanwhile) at a `ts`
/// beyond the new main route's: the main route is asked to advance.
#[test]
fn a_mutation_answered_by_the_previous_upstream_advances_the_main_route() {
    let mut h = Harness::new();
    h.hold_requests = true;
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.mutate();
    h.sign_in("ada");
    h.upstream_transition("ada");
    h.answer(0);
    assert_eq!(h.advanced, vec!["ada".to_owned()]);
    assert_eq!(h.model.awaiting().count(), 0, "the mutation completed");
    h.settle();
}

/// An advanced upstream whose next transition is still below the mutation's `ts` (the answer
/// to a `ModifyQuerySet` Convex handled before the commit, which `UpstreamState::advance`
/// waited for instead of asking) is asked again, or the mutation would never complete.
#[test]
fn a_lagging_route_still_below_the_mutation_after_its_transition_is_asked_again() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.hold_requests = true;
    h.mutate();
    // The shared upstream's transition is computed before the mutation commits.
    let before_commit = h.tick("");
    h.advances_wait = true;
    h.answer(0);
    assert_eq!(h.advanced, vec![String::new()]);
    assert_eq!(h.model.awaiting().count(), 1);
    h.advances_wait = false;
    h.upstream_transition_at("", before_commit);
    assert_eq!(
        h.advanced,
        vec![String::new(), String::new()],
        "asked again"
    );
    assert_eq!(h.model.awaiting().count(), 0, "the mutation completed");
    h.settle();
}

/// A mutation answered by the main route itself needs no asking (Convex's transition after it
/// reaches its `ts`), but when the identity changes before that transition arrives, the new
/// main route, an idle upstream behind the mutation, is asked.
#[test]
fn an_idle_main_route_that_replaces_the_carrier_before_its_transition_is_asked() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(PRIVATE, json!({}));
    h.upstream_transition("ada");
    // Bob's upstream sits idle at an older ts than the mutation's.
    let bob_ts = h.tick("bob");
    h.hold_requests = true;
    h.mutate();
    let (_, request_id) = h.unanswered.remove(0);
    let ts = h.tick("ada");
    let answer = mutation_answer(request_id, Timestamp(ts));
    h.deliver(vec![(None, answer)]);
    assert!(h.advanced.is_empty(), "the carrier's own transition serves");
    h.sign_in("bob");
    h.upstream_transition_at("bob", bob_ts);
    // Ada's transition after the mutation reaches an upstream the socket left.
    h.upstream_transition("ada");
    assert!(!h.advanced.is_empty(), "bob's upstream asked");
    assert!(
        h.advanced.iter().all(|who| who == "bob"),
        "{:?}",
        h.advanced
    );
    assert_eq!(h.model.awaiting().count(), 0, "the mutation completed");
    h.settle();
}

/// No route is asked to advance for a mutation answered by its own route, nor for one whose
/// `ts` the frontier already reached.
#[test]
fn no_route_advances_when_the_frontier_reaches_the_mutation() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.mutate();
    assert!(h.advanced.is_empty(), "the carrier's own transition serves");
    assert_eq!(h.model.awaiting().count(), 0);

    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.upstream_transition("ada");
    h.upstream_transition("");
    h.upstream_transition("ada");
    h.hold_requests = true;
    h.mutate();
    let (_, request_id) = h.unanswered.remove(0);
    let held = h.model.held().ts;
    let answer = mutation_answer(request_id, held);
    h.deliver(vec![(None, answer)]);
    assert!(h.advanced.is_empty(), "asked to advance: {:?}", h.advanced);
    assert_eq!(h.model.awaiting().count(), 0);
}

#[test]
fn a_wrong_query_set_version_is_fatal() {
    let mut h = Harness::new();
    let mut effects = vec![];
    let result = h.session.on_client(
        ClientMessage::ModifyQuerySet {
            base_version: QuerySetVersion(3),
            new_version: QuerySetVersion(4),
            modifications: vec![],
        },
        &mut effects,
    );
    assert!(matches!(result, Err(End::Fatal(m)) if m.contains("query set is at version 0")));
}

#[test]
fn a_wrong_identity_version_is_fatal_before_the_token_is_looked_at() {
    let mut h = Harness::new();
    let mut effects = vec![];
    let result = h.session.on_client(
        ClientMessage::Authenticate {
            base_version: IdentityVersion(2),
            token_type: TokenType::User,
            value: Some("never verified".into()),
        },
        &mut effects,
    );
    assert!(matches!(result, Err(End::Fatal(_))));
    assert!(effects.is_empty());
}

#[test]
fn admin_keys_are_refused_with_an_auth_error() {
    let mut h = Harness::new();
    let mut effects = vec![];
    let result = h.session.on_client(
        ClientMessage::Authenticate {
            base_version: IdentityVersion(0),
            token_type: TokenType::Admin,
            value: Some("key".into()),
        },
        &mut effects,
    );
    assert!(matches!(
        result,
        Err(End::Auth {
            base_version: IdentityVersion(0),
            ..
        })
    ));
}

#[test]
fn a_duplicate_query_id_is_fatal() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({}));
    h.next_query_id = 0;
    h.session.validate().unwrap();
    let mut effects = vec![];
    let result = h.session.on_client(
        ClientMessage::ModifyQuerySet {
            base_version: QuerySetVersion(1),
            new_version: QuerySetVersion(2),
            modifications: vec![QuerySetModification::Add {
                query_id: QueryId(0),
                udf_path: PRIVATE.into(),
                args: vec![json!({})],
                journal: None,
                component_path: None,
            }],
        },
        &mut effects,
    );
    assert!(matches!(result, Err(End::Fatal(m)) if m.contains("already in the query set")));
}

#[test]
fn removing_an_unknown_query_is_fatal() {
    let mut h = Harness::new();
    let mut effects = vec![];
    let result = h.session.on_client(
        ClientMessage::ModifyQuerySet {
            base_version: QuerySetVersion(0),
            new_version: QuerySetVersion(1),
            modifications: vec![QuerySetModification::Remove {
                query_id: QueryId(9),
            }],
        },
        &mut effects,
    );
    assert!(matches!(result, Err(End::Fatal(m)) if m.contains("not in the query set")));
}

#[test]
fn an_invalid_path_fails_locally_and_subscribes_nothing() {
    let mut h = Harness::new();
    let q = h.add("not a path", json!({}));
    assert!(h.model.result(q).unwrap()["error"].is_string());
    assert!(h.subscribed.is_empty());
}

#[test]
fn too_many_requests_in_flight_is_fatal() {
    let mut h = Harness::new();
    let mut effects = vec![];
    for id in 0..4 {
        let m = ClientMessage::Action {
            request_id: RequestId(id),
            udf_path: "demo:echo".into(),
            args: vec![json!({})],
            component_path: None,
        };
        h.session.on_client(m, &mut effects).unwrap();
    }
    let m = ClientMessage::Action {
        request_id: RequestId(9),
        udf_path: "demo:echo".into(),
        args: vec![json!({})],
        component_path: None,
    };
    assert!(matches!(
        h.session.on_client(m, &mut effects),
        Err(End::Fatal(_))
    ));
}

#[test]
fn an_upstream_auth_failure_ends_the_socket_with_auth_error() {
    let mut h = Harness::new();
    h.sign_in("ada");
    let failed = Event::AuthFailed {
        upstream: 0,
        error: "refused".into(),
        expired: false,
    };
    h.deliver(vec![(Some(Route::Main), failed)]);
    assert!(matches!(
        &h.ended,
        Some(End::Auth { base_version: IdentityVersion(0), error }) if error == "refused"
    ));
}

#[test]
fn a_token_expiring_on_the_upstream_first_ends_the_socket_as_expired() {
    let mut h = Harness::new();
    h.sign_in("ada");
    let expired = Event::AuthFailed {
        upstream: 0,
        error: "TokenExpired: Convex token identity expired".into(),
        expired: true,
    };
    h.deliver(vec![(Some(Route::Main), expired)]);
    assert_eq!(
        h.ended,
        Some(End::Expired {
            base_version: IdentityVersion(1)
        }),
        "the held identity, as the socket's own expiry timer ends it"
    );
}

#[test]
fn unchanged_results_are_not_sent_again() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({}));
    let key = QueryKey::new(PRIVATE, &json!({}), None).unwrap();
    let result = value("", &key, 1);
    h.newest = 2;
    h.ts.insert(String::new(), 2);
    let event = |ts| Event::Transition {
        upstream: 0,
        ts: Timestamp(ts),
        updates: Arc::new(vec![(key.clone(), result.clone())]),
        text: Arc::new(SharedText::default()),
    };
    let mut effects = vec![];
    h.session
        .on_events(vec![(Some(Route::Main), event(1))], &mut effects)
        .unwrap();
    h.effects(effects);
    let mut effects = vec![];
    h.session
        .on_events(vec![(Some(Route::Main), event(2))], &mut effects)
        .unwrap();
    let frame = match &effects[..] {
        [Effect::Send(text) | Effect::Transition(text)] => text.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(frame.contains("\"modifications\":[]"), "{frame}");
}

#[test]
fn an_auth_failure_from_an_upstream_the_socket_left_is_ignored() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.sign_in("bob");
    let failed = Event::AuthFailed {
        upstream: 0,
        error: "ada's token expired".into(),
        expired: true,
    };
    h.deliver(vec![(None, failed)]);
    assert!(h.is_open(), "bob's socket ended: {:?}", h.ended);
}

fn small_limits() -> super::QueryLimits {
    super::QueryLimits {
        max_queries: 3,
        max_query_bytes: 200,
        max_socket_bytes: 400,
    }
}

#[test]
fn a_query_over_the_size_limit_fails_alone_and_never_reaches_an_upstream() {
    let mut h = Harness::with_limits(small_limits());
    let big = h.add(PRIVATE, json!({ "pad": "x".repeat(300) }));
    let small = h.add(PRIVATE, json!({}));
    assert!(h.is_open());
    let error = h.model.result(big).unwrap()["error"].as_str().unwrap();
    assert!(
        error.contains("too large") && error.contains("200"),
        "{error}"
    );
    assert_eq!(
        h.subscribed[""].len(),
        1,
        "only the small query went upstream"
    );
    h.upstream_transition("");
    assert!(h.model.result(small).is_some());
}

#[test]
fn more_queries_than_the_socket_may_hold_end_it_with_a_fatal_error() {
    let mut h = Harness::with_limits(small_limits());
    for i in 0..3 {
        h.add(PRIVATE, json!({ "i": i }));
    }
    assert!(h.is_open());
    h.add(PRIVATE, json!({ "i": 3 }));
    match &h.ended {
        Some(End::Fatal(message)) => assert!(message.contains("too many queries"), "{message}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

#[test]
fn queries_larger_together_than_the_socket_may_hold_end_it_and_removals_free_room() {
    let mut h = Harness::with_limits(small_limits());
    let first = h.add(PRIVATE, json!({ "pad": "a".repeat(150) }));
    h.add(PRIVATE, json!({ "pad": "b".repeat(150) }));
    h.remove(first);
    h.add(PRIVATE, json!({ "pad": "c".repeat(150) }));
    assert!(h.is_open(), "a removal gives its bytes back");
    h.add(PRIVATE, json!({ "pad": "d".repeat(150) }));
    match &h.ended {
        Some(End::Fatal(message)) => assert!(message.contains("too large"), "{message}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }
}

/// Every signed-out client shares the anonymous upstream's slots for mutations and actions:
/// the sockets of one client address may hold `max_address_requests` of them together; the
/// request beyond fails alone with a `try again` answer, the socket goes on, and an answer
/// frees a slot.
#[test]
fn a_signed_out_address_past_its_requests_in_flight_gets_a_failed_answer_and_keeps_its_socket() {
    use crate::owners::{OwnerLimits, Owners};
    use crate::upstream::RequestOutcome;
    use edge_convex::sync::RequestKind;

    let owners = Owners::new(OwnerLimits {
        max_address_requests: 2,
        ..OwnerLimits::default()
    });
    let address = std::net::Ipv4Addr::new(192, 0, 2, 7).into();
    let session = || {
        super::ClientSession::new(
            Arc::new(Default::default()),
            1000,
            super::QueryLimits::default(),
            owners.budget(address),
            Arc::new(crate::metrics::Stats::default()),
        )
    };
    let (mut one, mut two) = (session(), session());
    let action = |id: u32| ClientMessage::Action {
        request_id: RequestId(id),
        udf_path: "demo:echo".into(),
        args: vec![json!({})],
        component_path: None,
    };
    let forwarded = |effects: &[Effect]| {
        effects
            .iter()
            .filter(|e| matches!(e, Effect::Request { .. }))
            .count()
    };
    let mut effects = vec![];
    one.on_client(action(0), &mut effects).unwrap();
    two.on_client(action(0), &mut effects).unwrap();
    assert_eq!(forwarded(&effects), 2);
    // The driver charges each request it runs upstream.
    one.charge(RequestId(0)).unwrap();
    two.charge(RequestId(0)).unwrap();

    let mut effects = vec![];
    two.on_client(action(1), &mut effects).unwrap();
    let error = two.charge(RequestId(1)).unwrap_err();
    // Not run: the driver answers it with the error.
    let failed = Event::Response {
        request_id: RequestId(1),
        kind: RequestKind::Action,
        outcome: Box::new(Err(error)),
        replayed: false,
    };
    let mut refused = vec![];
    two.on_events(vec![(None, failed)], &mut refused).unwrap();
    let [Effect::Send(text)] = refused.as_slice() else {
        panic!("one answer: {refused:?}")
    };
    let answer: serde_json::Value = serde_json::from_str(text).unwrap();
    assert_eq!(answer["type"], "ActionResponse");
    assert_eq!(answer["requestId"], 1);
    assert_eq!(answer["success"], false);
    assert!(
        answer["result"]
            .as_str()
            .unwrap()
            .contains("in flight from this client address"),
        "{answer}"
    );

    let done = Event::Response {
        request_id: RequestId(0),
        kind: RequestKind::Action,
        outcome: Box::new(Ok(RequestOutcome {
            success: true,
            result: json!(null),
            ts: None,
            log_lines: vec![],
            error_data: None,
        })),
        replayed: false,
    };
    one.on_events(vec![(Some(Route::Main), done)], &mut vec![])
        .unwrap();
    let mut effects = vec![];
    two.on_client(action(2), &mut effects).unwrap();
    assert_eq!(forwarded(&effects), 1);
    two.charge(RequestId(2))
        .expect("room again once one was answered");
}

fn current(key: &QueryKey, who: &str, ts: u64) -> Event {
    Event::Current {
        upstream: 0,
        ts: Timestamp(ts),
        key: key.clone(),
        result: value(who, key, ts),
    }
}

#[test]
fn a_query_set_version_is_reached_only_with_the_results_it_added() {
    let mut h = Harness::new();
    h.upstream_transition("");
    let q = h.add(PRIVATE, json!({}));
    // No transition to version 1 without the query's result (convex-js shows it loading).
    assert_eq!(h.model.held().query_set, QuerySetVersion(0));
    let key = QueryKey::new(PRIVATE, &json!({}), None).unwrap();
    let ts = h.tick("");
    h.deliver(vec![(Some(Route::Main), current(&key, "", ts))]);
    assert_eq!(h.model.held().query_set, QuerySetVersion(1));
    assert_eq!(h.model.result(q).unwrap()["who"], "");
}

#[test]
fn a_query_on_a_key_the_socket_already_has_gets_its_value_at_once() {
    let mut h = Harness::new();
    let first = h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    let second = h.add(PRIVATE, json!({}));
    assert_eq!(h.model.held().query_set, QuerySetVersion(2));
    assert_eq!(h.model.result(second), h.model.result(first));
}

#[test]
fn results_of_a_later_version_wait_for_it() {
    let mut h = Harness::new();
    let waiting = h.add(PRIVATE, json!({"n": 1}));
    h.upstream_transition("");
    let other = h.add(PRIVATE, json!({"n": 2}));
    h.subscribed
        .get_mut("")
        .unwrap()
        .remove(&QueryKey::new(PRIVATE, &json!({"n": 2}), None).unwrap());
    // Only the first key moves: version 2 waits, and so does nothing of version 1.
    h.upstream_transition("");
    assert_eq!(h.model.held().query_set, QuerySetVersion(1));
    assert!(h.model.result(waiting).is_some());
    assert!(h.model.result(other).is_none());
    let key = QueryKey::new(PRIVATE, &json!({"n": 2}), None).unwrap();
    let ts = h.tick("");
    h.deliver(vec![(Some(Route::Main), current(&key, "", ts))]);
    assert_eq!(h.model.held().query_set, QuerySetVersion(2));
    assert!(h.model.result(other).is_some());
}

#[test]
fn removing_a_query_before_its_result_moves_past_its_version() {
    let mut h = Harness::new();
    h.upstream_transition("");
    let q = h.add(PRIVATE, json!({}));
    h.remove(q);
    assert_eq!(h.model.held().query_set, QuerySetVersion(2));
    assert!(h.model.results().is_empty());
}

#[test]
fn the_identity_version_moves_with_the_new_identitys_results() {
    let mut h = Harness::new();
    let q = h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.sign_in("ada");
    // Until ada's result is known the client keeps the identity it holds, and its result.
    assert_eq!(h.model.held().identity, IdentityVersion(0));
    assert_eq!(h.model.result(q).unwrap()["who"], "");
    h.upstream_transition("ada");
    assert_eq!(h.model.held().identity, IdentityVersion(1));
    assert_eq!(h.model.result(q).unwrap()["who"], "ada");
}

#[test]
fn a_socket_without_private_queries_is_confirmed_at_once() {
    let mut h = Harness::new();
    h.upstream_transition("");
    h.sign_in("ada");
    assert_eq!(h.model.held().identity, IdentityVersion(1));
}

#[test]
fn a_query_removed_before_signing_in_never_shows_the_old_identitys_result() {
    let mut h = Harness::new();
    let removed = h.add(PRIVATE, json!({"n": 0}));
    h.add(PRIVATE, json!({"n": 0}));
    h.mutate();
    h.add(SHARED, json!({"n": 0}));
    h.remove(removed);
    h.sign_in("ada");
    // The harness checks every transition: no version is reached with a stale result.
    h.settle();
    assert_eq!(h.model.held().identity, IdentityVersion(1));
}

#[test]
fn an_answer_waits_for_the_transition_that_reaches_the_asked_versions() {
    let mut h = Harness::new();
    h.upstream_transition("");
    h.add(PRIVATE, json!({}));
    // The answer comes from the upstream before the new query's result: held for it.
    h.subscribed.get_mut("").unwrap().clear();
    h.mutate();
    assert_eq!(
        h.model.in_flight(),
        1,
        "answered before the query set was reached"
    );
    let key = QueryKey::new(PRIVATE, &json!({}), None).unwrap();
    let ts = h.tick("");
    h.deliver(vec![(Some(Route::Main), current(&key, "", ts))]);
    assert_eq!(h.model.held().query_set, QuerySetVersion(1));
    assert_eq!(h.model.in_flight(), 0);
}

/// A mutation its upstream sent again after a reconnect is answered with its first commit's
/// `ts`, which the client may already hold: the answer is followed by a transition that moves
/// nothing, on which convex-js resolves it (as Convex sends a transition after every answer).
#[test]
fn a_mutation_answered_with_a_ts_the_client_holds_still_completes() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.upstream_transition("");
    let held = h.model.held().ts;
    let request_id = RequestId(70);
    let mutation = ClientMessage::Mutation {
        request_id,
        udf_path: "tasks:add".into(),
        args: vec![json!({})],
        component_path: None,
    };
    h.model.send(&mutation).unwrap();
    let mut effects = vec![];
    h.session.on_client(mutation, &mut effects).unwrap();
    assert!(
        matches!(effects[..], [Effect::Request { .. }]),
        "{effects:?}"
    );
    let answer = mutation_answer(request_id, Timestamp(held.0 - 1));
    h.deliver(vec![(None, answer)]);
    assert_eq!(h.model.in_flight(), 0);
    assert_eq!(h.model.awaiting().count(), 0, "the mutation never resolved");
    assert_eq!(h.model.held().ts, held, "ts moved");
}

/// Convex runs and answers on the socket the requests sent before an `Authenticate`: the
/// upstream they went on stays attached (its queries released) until it answered them, then
/// is released.
#[test]
fn a_request_made_before_signing_in_is_answered_by_the_upstream_it_went_on() {
    let mut h = Harness::new();
    h.hold_requests = true;
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.mutate();
    h.sign_in("ada");
    assert!(h.owing.contains(""), "the anonymous upstream was detached");
    assert!(h.subscribed[""].is_empty(), "its queries were not released");
    h.upstream_transition("ada");
    h.answer(0);
    assert!(h.owing.is_empty(), "kept after its last answer");
    assert_eq!(h.model.in_flight(), 0);
    h.settle();
}

/// Signing out onto the anonymous upstream the shared route already uses: the user's upstream
/// still answers.
#[test]
fn a_request_made_before_signing_out_is_answered() {
    let mut h = Harness::new();
    h.hold_requests = true;
    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.upstream_transition("ada");
    h.mutate();
    h.sign_in("");
    assert_eq!(h.main, "");
    assert!(h.owing.contains("ada"));
    h.answer(0);
    assert!(h.owing.is_empty());
    h.settle();
}

/// Back to an identity whose upstream still owes answers: that attachment is the main route
/// again, and one left with answers owed is kept as well.
#[test]
fn switching_back_to_an_upstream_that_owes_answers_reuses_it() {
    let mut h = Harness::new();
    h.hold_requests = true;
    h.sign_in("ada");
    h.mutate();
    h.sign_in("bob");
    h.mutate();
    h.sign_in("ada");
    assert_eq!(h.owing, ["bob".to_owned()].into());
    h.mutate();
    h.sign_in("");
    assert_eq!(h.owing, ["ada".to_owned(), "bob".to_owned()].into());
    h.settle();
}

/// Many identity changes with requests in flight leave nothing charged: the socket can still
/// make as many requests as at first.
#[test]
fn identity_changes_with_requests_in_flight_leak_nothing() {
    let mut h = Harness::new();
    h.hold_requests = true;
    for round in 0..20 {
        h.mutate();
        h.mutate();
        h.sign_in(if round % 2 == 0 { "ada" } else { "" });
        h.answer(round);
        h.answer(round);
        assert!(h.is_open(), "{:?}", h.ended);
    }
    h.settle();
    // The harness's session allows 4 in flight.
    for _ in 0..4 {
        h.mutate();
    }
    assert!(h.is_open(), "{:?}", h.ended);
    assert_eq!(h.unanswered.len(), 4);
    h.settle();
}

/// An answer to no request of this socket (a repeat) gives nothing back twice.
#[test]
fn a_repeated_answer_changes_nothing() {
    use crate::upstream::RequestOutcome;
    use edge_convex::sync::RequestKind;

    let mut h = Harness::new();
    h.hold_requests = true;
    h.upstream_transition("");
    h.mutate();
    let (_, request_id) = h.unanswered[0].clone();
    h.answer(0);
    let again = Event::Response {
        request_id,
        kind: RequestKind::Mutation,
        outcome: Box::new(Ok(RequestOutcome {
            success: true,
            result: json!(null),
            ts: Some(Timestamp(h.newest)),
            log_lines: vec![],
            error_data: None,
        })),
        replayed: false,
    };
    let mut effects = vec![];
    h.session
        .on_events(vec![(None, again)], &mut effects)
        .unwrap();
    assert!(effects.is_empty(), "{effects:?}");
    for _ in 0..4 {
        h.mutate();
    }
    let mut effects = vec![];
    let fifth = ClientMessage::Mutation {
        request_id: RequestId(99),
        udf_path: "tasks:add".into(),
        args: vec![json!({})],
        component_path: None,
    };
    assert!(
        matches!(h.session.on_client(fifth, &mut effects), Err(End::Fatal(_))),
        "a repeated answer freed a slot"
    );
}

/// A request id already in flight on the socket is a protocol error.
#[test]
fn a_request_id_already_in_flight_is_fatal() {
    let mut h = Harness::new();
    h.hold_requests = true;
    h.mutate();
    let (_, request_id) = h.unanswered[0].clone();
    let again = ClientMessage::Mutation {
        request_id,
        udf_path: "tasks:add".into(),
        args: vec![json!({})],
        component_path: None,
    };
    let mut effects = vec![];
    assert!(matches!(
        h.session.on_client(again, &mut effects),
        Err(End::Fatal(_))
    ));
    assert!(effects.is_empty());
}

/// A mutation the client sent again on a new socket, answered from the journal: no upstream
/// follows that answer with a transition, so every route in use below its `ts` is asked to
/// advance, the main route too although it carries the request.
#[test]
fn an_answer_from_the_journal_asks_every_route_below_it_to_advance() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.upstream_transition("ada");
    h.hold_requests = true;
    h.mutate();
    // Committed by the first send, on an earlier socket.
    h.replay(0, "ada");
    let mut asked = h.advanced.clone();
    asked.sort();
    assert_eq!(asked, ["", "ada"]);
    assert_eq!(h.model.awaiting().count(), 0, "the mutation completed");
    h.settle();
}

/// On shutdown a socket is closed once settled: every request answered, and the client holding
/// a transition past every mutation answered (convex-js sends any other one again on its next
/// socket, which a restarted service would run a second time).
#[test]
fn a_socket_is_settled_once_its_mutations_are_answered_and_reached() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(PRIVATE, json!({}));
    h.upstream_transition("ada");
    assert!(h.session.settled());
    h.hold_requests = true;
    h.mutate();
    assert!(!h.session.settled(), "unanswered");
    let (who, request_id) = h.unanswered.remove(0);
    let ts = h.tick(&who);
    h.deliver(vec![(None, mutation_answer(request_id, Timestamp(ts)))]);
    assert!(
        !h.session.settled(),
        "answered, but no transition reaches it"
    );
    h.upstream_transition_at(&who, ts);
    assert!(h.session.settled());
    h.settle();
}

/// Convex ends the socket of a client that calls a function of a non-root component (only
/// admins may); the proxy, which calls every function as the root's, does the same rather
/// than run the root's function of that name. The root named as `""` is the root.
#[test]
fn a_function_of_a_non_root_component_ends_the_socket() {
    let refused = Some(End::Fatal(
        "Only admin or system users can call functions on non-root components directly".into(),
    ));
    let mutation = |component: &str| ClientMessage::Mutation {
        request_id: RequestId(0),
        udf_path: "tasks:add".into(),
        args: vec![json!({})],
        component_path: Some(component.into()),
    };
    let mut h = Harness::new();
    h.client(mutation(""));
    assert!(h.is_open(), "{:?}", h.ended);
    let mut h = Harness::new();
    h.client(mutation("someComponent"));
    assert_eq!(h.ended, refused);
    let mut h = Harness::new();
    h.client(ClientMessage::Action {
        request_id: RequestId(0),
        udf_path: "demo:echo".into(),
        args: vec![json!({})],
        component_path: Some("someComponent".into()),
    });
    assert_eq!(h.ended, refused);
    let mut h = Harness::new();
    h.client(ClientMessage::ModifyQuerySet {
        base_version: QuerySetVersion(0),
        new_version: QuerySetVersion(1),
        modifications: vec![QuerySetModification::Add {
            query_id: QueryId(0),
            udf_path: PRIVATE.into(),
            args: vec![json!({})],
            journal: None,
            component_path: Some("someComponent".into()),
        }],
    });
    assert_eq!(h.ended, refused);
}
