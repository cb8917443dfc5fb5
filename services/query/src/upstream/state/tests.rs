//! The upstream state's rules, one test each; every step is followed by `validate`.

use std::sync::Arc;

use edge_convex::sync::{QuerySetModification, StateModification};
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, ServerMessage, StateVersion,
    Timestamp,
};
use serde_json::{Value, json};

use super::{Audience, Outbox, UpstreamState};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::{Event, Values};

pub(super) const A: u64 = 1;
pub(super) const B: u64 = 2;

pub(super) fn key(channel: &str) -> QueryKey {
    QueryKey::new("messages:list", &json!({ "channel": channel }), None).unwrap()
}

/// A connected state with listeners `A` and `B` attached.
pub(super) fn connected() -> (UpstreamState, Outbox) {
    let mut s = UpstreamState::new(7, Arc::new(Stats::default()), Values::default());
    s.attach(A);
    s.attach(B);
    let mut out = Outbox::default();
    s.connected("test".into(), &mut out);
    s.validate().unwrap();
    (s, out)
}

pub(super) fn step(
    s: &mut UpstreamState,
    f: impl FnOnce(&mut UpstreamState, &mut Outbox),
) -> Outbox {
    let mut out = Outbox::default();
    f(s, &mut out);
    s.flush(&mut out);
    s.validate().unwrap();
    out
}

/// The `Add`s and `Remove`s of the `ModifyQuerySet`s in `out`, as (added ids, removed ids).
pub(super) fn query_set_changes(out: &Outbox) -> (Vec<QueryId>, Vec<QueryId>) {
    let (mut added, mut removed) = (vec![], vec![]);
    for m in &out.to_convex {
        if let ClientMessage::ModifyQuerySet { modifications, .. } = m {
            for m in modifications {
                match m {
                    QuerySetModification::Add { query_id, .. } => added.push(*query_id),
                    QuerySetModification::Remove { query_id } => removed.push(*query_id),
                }
            }
        }
    }
    (added, removed)
}

pub(super) fn version(qs: u32, identity: u32, ts: u64) -> StateVersion {
    StateVersion {
        query_set: QuerySetVersion(qs),
        identity: IdentityVersion(identity),
        ts: Timestamp(ts),
    }
}

pub(super) fn transition(
    start: StateVersion,
    end: StateVersion,
    values: &[(u32, Value)],
) -> ServerMessage {
    ServerMessage::Transition {
        start_version: start,
        end_version: end,
        modifications: values
            .iter()
            .map(|(id, v)| StateModification::QueryUpdated {
                query_id: QueryId(*id),
                value: v.clone(),
                log_lines: vec![],
                journal: None,
            })
            .collect(),
        client_clock_skew: None,
        server_ts: None,
    }
}

pub(super) fn updates(out: &Outbox) -> Vec<Vec<String>> {
    out.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Transition { updates, .. } => Some(
                updates
                    .iter()
                    .map(|(k, r)| match r.as_ref() {
                        crate::upstream::QueryResult::Value { value, .. } => {
                            format!("{}={}", k.args, value.get())
                        }
                        crate::upstream::QueryResult::Failed { message, .. } => {
                            format!("{}!{message}", k.args)
                        }
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

#[test]
fn connecting_sends_connect_first() {
    let (_, out) = connected();
    assert!(matches!(out.to_convex[0], ClientMessage::Connect { .. }));
    assert_eq!(out.to_convex.len(), 1, "nothing else to send yet");
}

#[test]
fn a_reconnect_names_the_newest_ts_convex_sent_as_max_observed() {
    let (mut s, out) = connected();
    let ClientMessage::Connect {
        max_observed_timestamp,
        client_ts,
        ..
    } = &out.to_convex[0]
    else {
        panic!("not a Connect: {:?}", out.to_convex[0]);
    };
    assert_eq!(*max_observed_timestamp, None, "nothing observed yet");
    assert!(client_ts.is_some(), "Connect carries clientTs");
    step(&mut s, |s, out| {
        s.on_server_message(transition(version(0, 0, 0), version(0, 0, 42), &[]), out)
            .unwrap()
    });
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.connected("again".into(), out));
    let ClientMessage::Connect {
        max_observed_timestamp,
        ..
    } = &out.to_convex[0]
    else {
        panic!("not a Connect: {:?}", out.to_convex[0]);
    };
    assert_eq!(*max_observed_timestamp, Some(Timestamp(42)));
}

#[test]
fn a_key_is_subscribed_once_for_many_listeners() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.subscribe(B, key("x"), out);
        s.subscribe(A, key("x"), out);
    });
    assert_eq!(query_set_changes(&out), (vec![QueryId(0)], vec![]));
    assert_eq!(s.subscriptions(), 1);
}

#[test]
fn a_key_is_removed_when_its_last_holder_lets_go() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.subscribe(B, key("x"), out);
    });
    let out = step(&mut s, |s, _| s.unsubscribe(A, &key("x")));
    assert_eq!(query_set_changes(&out), (vec![], vec![]));
    let out = step(&mut s, |s, _| s.unsubscribe(B, &key("x")));
    assert_eq!(query_set_changes(&out), (vec![], vec![QueryId(0)]));
    assert_eq!(s.subscriptions(), 0);
}

#[test]
fn a_key_dropped_before_it_was_sent_is_never_sent() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.unsubscribe(A, &key("x"));
    });
    assert!(out.to_convex.is_empty(), "{:?}", out.to_convex);
}

#[test]
fn detaching_releases_every_key_of_the_listener() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.subscribe(A, key("x"), out);
        s.subscribe(A, key("y"), out);
        s.subscribe(B, key("y"), out);
    });
    let out = step(&mut s, |s, _| s.detach(A));
    assert_eq!(query_set_changes(&out), (vec![], vec![QueryId(0)]));
    assert_eq!(s.subscriptions(), 1);
}

#[test]
fn unsubscribing_more_than_subscribed_changes_nothing() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    step(&mut s, |s, _| s.unsubscribe(B, &key("x")));
    step(&mut s, |s, _| s.unsubscribe(A, &key("y")));
    assert_eq!(s.subscriptions(), 1);
}

#[test]
fn unknown_listeners_cannot_subscribe() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| s.subscribe(99, key("x"), out));
    assert!(out.to_convex.is_empty());
    assert_eq!(s.subscriptions(), 0);
}

#[test]
fn query_set_versions_move_by_one_per_message() {
    let (mut s, _) = connected();
    let first = step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    let second = step(&mut s, |s, out| s.subscribe(A, key("y"), out));
    let versions = |out: &Outbox| match &out.to_convex[..] {
        [
            ClientMessage::ModifyQuerySet {
                base_version,
                new_version,
                ..
            },
        ] => (base_version.0, new_version.0),
        other => panic!("{other:?}"),
    };
    assert_eq!(versions(&first), (0, 1));
    assert_eq!(versions(&second), (1, 2));
}

#[test]
fn the_token_goes_before_the_query_set_change_that_follows_it() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| {
        s.token("t1".into(), 100, 0);
        s.subscribe(A, key("x"), out);
    });
    assert!(matches!(
        out.to_convex[0],
        ClientMessage::Authenticate {
            base_version: IdentityVersion(0),
            ..
        }
    ));
    assert!(matches!(
        out.to_convex[1],
        ClientMessage::ModifyQuerySet { .. }
    ));
}

#[test]
fn only_a_token_that_expires_later_replaces_the_current_one() {
    let (mut s, _) = connected();
    step(&mut s, |s, _| s.token("late".into(), 200, 0));
    let out = step(&mut s, |s, _| s.token("early".into(), 100, 0));
    assert!(out.to_convex.is_empty(), "an older token is not sent");
    let out = step(&mut s, |s, _| s.token("later".into(), 300, 0));
    assert!(matches!(
        &out.to_convex[..],
        [ClientMessage::Authenticate { base_version: IdentityVersion(1), value: Some(v), .. }] if v == "later"
    ));
}

#[test]
fn transitions_pass_on_only_changed_results() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| {
        s.subscribe(A, key("x"), out);
        s.subscribe(A, key("y"), out);
    });
    let t1 = transition(
        version(0, 0, 0),
        version(1, 0, 5),
        &[(0, json!([1])), (1, json!([2]))],
    );
    let out = step(&mut s, |s, out| s.on_server_message(t1, out).unwrap());
    assert_eq!(updates(&out)[0].len(), 2);
    let t2 = transition(
        version(1, 0, 5),
        version(1, 0, 6),
        &[(0, json!([1])), (1, json!([3]))],
    );
    let out = step(&mut s, |s, out| s.on_server_message(t2, out).unwrap());
    assert_eq!(
        updates(&out),
        vec![vec![r#"{"channel":"y"}=[3]"#.to_owned()]]
    );
    assert!(matches!(out.events[0].0, Audience::All));
}

#[test]
fn a_transition_from_the_wrong_version_breaks_the_connection() {
    let (mut s, _) = connected();
    let t = transition(version(0, 0, 3), version(0, 0, 5), &[]);
    let mut out = Outbox::default();
    let error = s.on_server_message(t, &mut out).unwrap_err();
    assert!(error.contains("expected"), "{error}");
}

#[test]
fn a_late_subscriber_gets_the_current_value_at_once() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    let t = transition(version(0, 0, 0), version(1, 0, 9), &[(0, json!("v"))]);
    step(&mut s, |s, out| s.on_server_message(t, out).unwrap());
    let out = step(&mut s, |s, out| s.subscribe(B, key("x"), out));
    match &out.events[..] {
        [(Audience::One(B), Event::Current { ts, key: k, .. })] => {
            assert_eq!((*ts, k), (Timestamp(9), &key("x")));
        }
        other => panic!("{other:?}"),
    }
    assert!(out.to_convex.is_empty(), "no second subscription upstream");
}

#[test]
fn results_are_published_for_lookups_and_withdrawn_with_the_key() {
    let values = Values::default();
    let mut s = UpstreamState::new(1, Arc::new(Stats::default()), values.clone());
    s.attach(A);
    s.connected("t".into(), &mut Outbox::default());
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    let t = transition(version(0, 0, 0), version(1, 0, 1), &[(0, json!(1))]);
    step(&mut s, |s, out| s.on_server_message(t, out).unwrap());
    assert!(crate::upstream::lock(&values).contains_key(&key("x")));
    step(&mut s, |s, _| s.detach(A));
    assert!(crate::upstream::lock(&values).is_empty());
}

#[test]
fn results_for_unknown_query_ids_are_ignored() {
    let (mut s, _) = connected();
    let t = transition(version(0, 0, 0), version(0, 0, 1), &[(42, json!(1))]);
    let out = step(&mut s, |s, out| s.on_server_message(t, out).unwrap());
    assert_eq!(updates(&out), vec![Vec::<String>::new()]);
}

#[test]
fn a_reconnect_re_adds_every_live_key_under_fresh_ids_after_the_token() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| {
        s.token("t".into(), 100, 0);
        s.subscribe(A, key("x"), out);
        s.subscribe(B, key("y"), out);
        s.subscribe(A, key("z"), out);
    });
    step(&mut s, |s, _| s.unsubscribe(A, &key("z")));
    step(&mut s, |s, out| s.disconnected(out));
    let mut out = Outbox::default();
    s.connected("again".into(), &mut out);
    s.validate().unwrap();
    assert!(matches!(out.to_convex[0], ClientMessage::Connect { .. }));
    assert!(matches!(
        out.to_convex[1],
        ClientMessage::Authenticate {
            base_version: IdentityVersion(0),
            ..
        }
    ));
    assert_eq!(
        query_set_changes(&out),
        (vec![QueryId(0), QueryId(1)], vec![])
    );
    assert!(matches!(
        out.to_convex[2],
        ClientMessage::ModifyQuerySet {
            base_version: QuerySetVersion(0),
            ..
        }
    ));
}

#[test]
fn subscriptions_made_while_disconnected_are_sent_on_connect() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    assert!(out.to_convex.is_empty());
    let mut out = Outbox::default();
    s.connected("c".into(), &mut out);
    assert_eq!(query_set_changes(&out), (vec![QueryId(0)], vec![]));
}

#[test]
fn keys_released_while_disconnected_are_not_re_added() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    step(&mut s, |s, out| s.disconnected(out));
    step(&mut s, |s, _| s.unsubscribe(A, &key("x")));
    let mut out = Outbox::default();
    s.connected("c".into(), &mut out);
    assert_eq!(out.to_convex.len(), 1, "only Connect: {:?}", out.to_convex);
}

#[test]
fn an_auth_error_reaches_every_listener_and_drops_the_token() {
    let (mut s, _) = connected();
    step(&mut s, |s, _| s.token("t".into(), 10, 0));
    let refused = ServerMessage::AuthError {
        error: "TokenExpired: Convex token identity expired".into(),
        base_version: Some(IdentityVersion(1)),
        auth_update_attempted: Some(false),
    };
    let out = step(&mut s, |s, out| s.on_server_message(refused, out).unwrap());
    assert!(matches!(
        &out.events[..],
        [(Audience::All, Event::AuthFailed { error, expired: true, .. })]
            if error.starts_with("TokenExpired")
    ));
    // A new token is taken even if it expires earlier than the refused one.
    let out = step(&mut s, |s, _| s.token("t2".into(), 5, 0));
    assert!(matches!(
        out.to_convex[..],
        [ClientMessage::Authenticate { .. }]
    ));
}

#[test]
fn a_fatal_error_from_convex_breaks_the_connection() {
    let (mut s, _) = connected();
    let mut out = Outbox::default();
    let fatal = ServerMessage::FatalError {
        error: "bad".into(),
    };
    assert!(s.on_server_message(fatal, &mut out).is_err());
}

#[test]
fn eviction_releases_the_listener_like_a_detach() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    assert!(s.evict(A));
    assert!(!s.evict(A), "already gone");
    let out = step(&mut s, |_, _| {});
    assert_eq!(query_set_changes(&out), (vec![], vec![QueryId(0)]));
    assert!(!s.is_idle(), "B is still attached");
    s.detach(B);
    assert!(s.is_idle());
}

#[test]
fn failed_results_are_shared_with_their_error_data() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    let t = ServerMessage::Transition {
        start_version: version(0, 0, 0),
        end_version: version(1, 0, 1),
        modifications: vec![StateModification::QueryFailed {
            query_id: QueryId(0),
            error_message: "ConvexError".into(),
            log_lines: vec![],
            journal: None,
            error_data: Some(json!({"code": "E"})),
        }],
        client_clock_skew: None,
        server_ts: None,
    };
    let out = step(&mut s, |s, out| s.on_server_message(t, out).unwrap());
    assert_eq!(
        updates(&out),
        vec![vec![r#"{"channel":"x"}!ConvexError"#.to_owned()]]
    );
}

/// A reconnect re-adds every live key; with more than one message's worth, they go in several
/// `ModifyQuerySet`s, each under the limit, versions one after another, every key once.
#[test]
fn the_resubscribe_after_a_reconnect_is_split_under_the_frame_limit() {
    const LIMIT: usize = 2_000;
    let mut s = UpstreamState::new(7, Arc::new(Stats::default()), Values::default())
        .with_max_message_bytes(LIMIT);
    s.attach(A);
    let mut out = Outbox::default();
    s.connected("test".into(), &mut out);
    let keys: Vec<QueryKey> = (0..100)
        .map(|i| {
            let pad = "p".repeat(100);
            QueryKey::new("messages:list", &json!({ "channel": i, "pad": pad }), None).unwrap()
        })
        .collect();
    let out = step(&mut s, |s, out| {
        for k in &keys {
            s.subscribe(A, k.clone(), out);
        }
    });
    assert!(
        out.to_convex.len() > 1,
        "the first adds were not split either"
    );
    let out = step(&mut s, |s, out| {
        s.disconnected(out);
        s.connected("again".into(), out);
    });
    let mut expected_base = QuerySetVersion(0);
    let mut messages = 0;
    for m in &out.to_convex {
        if let ClientMessage::ModifyQuerySet {
            base_version,
            new_version,
            ..
        } = m
        {
            let text = serde_json::to_string(m).unwrap();
            assert!(text.len() <= LIMIT, "{} bytes", text.len());
            assert_eq!(*base_version, expected_base);
            assert_eq!(new_version.0, base_version.0 + 1);
            expected_base = *new_version;
            messages += 1;
        }
    }
    assert!(
        messages > 5,
        "{messages} messages for 100 keys of ~150 bytes"
    );
    let (added, removed) = query_set_changes(&out);
    assert_eq!(added.len(), keys.len());
    assert!(removed.is_empty());
    let distinct: std::collections::BTreeSet<_> = added.iter().collect();
    assert_eq!(distinct.len(), keys.len());
}

/// After an upstream reconnect a paginated page goes back to Convex with the journal of its
/// latest result (the page's pinned end), as Convex's own client re-subscribes, so the page
/// keeps its bounds; a query not answered yet goes with the journal its key names.
#[test]
fn a_resubscribe_sends_the_journal_of_the_latest_result() {
    let (mut s, _) = connected();
    let page = |cursor: Option<&str>, journal: Option<&str>| {
        QueryKey::new(
            "messages:page",
            &json!({"channel": "c", "paginationOpts": {"numItems": 2, "cursor": cursor}}),
            journal.map(str::to_owned),
        )
        .unwrap()
    };
    step(&mut s, |s, out| {
        s.subscribe(A, page(None, None), out);
        s.subscribe(B, page(Some("after-m4"), Some("from-the-client")), out);
    });
    step(&mut s, |s, out| {
        s.on_server_message(
            ServerMessage::Transition {
                start_version: version(0, 0, 0),
                end_version: version(1, 0, 5),
                modifications: vec![StateModification::QueryUpdated {
                    query_id: QueryId(0),
                    value: json!({"page": [], "isDone": false, "continueCursor": "end-at-m4"}),
                    log_lines: vec![],
                    journal: Some("end-at-m4".into()),
                }],
                client_clock_skew: None,
                server_ts: None,
            },
            out,
        )
        .unwrap()
    });
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.connected("again".into(), out));
    let mut resent = Vec::new();
    for m in &out.to_convex {
        if let ClientMessage::ModifyQuerySet { modifications, .. } = m {
            for m in modifications {
                if let QuerySetModification::Add { args, journal, .. } = m {
                    resent.push((args[0]["paginationOpts"]["cursor"].clone(), journal.clone()));
                }
            }
        }
    }
    resent.sort_by_key(|(cursor, _)| cursor.to_string());
    assert_eq!(
        resent,
        vec![
            (json!("after-m4"), Some("from-the-client".to_owned())),
            (Value::Null, Some("end-at-m4".to_owned())),
        ]
    );
}

/// The empty `ModifyQuerySet`s in `out`, as (base, new) query-set versions.
fn empty_modify_query_sets(out: &Outbox) -> Vec<(u32, u32)> {
    out.to_convex
        .iter()
        .filter_map(|m| match m {
            ClientMessage::ModifyQuerySet {
                base_version,
                new_version,
                modifications,
            } if modifications.is_empty() => Some((base_version.0, new_version.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn advancing_sends_one_empty_modify_query_set_until_convex_answers_it() {
    let (mut s, _) = connected();
    let out = step(&mut s, |s, out| s.advance(out));
    assert_eq!(empty_modify_query_sets(&out), vec![(0, 1)]);
    let out = step(&mut s, |s, out| s.advance(out));
    assert!(
        out.to_convex.is_empty(),
        "a second one while the first is unanswered"
    );
    // Convex answers with a transition at a fresh ts, passed on to every listener.
    let t = transition(version(0, 0, 0), version(1, 0, 9), &[]);
    let out = step(&mut s, |s, out| s.on_server_message(t, out).unwrap());
    assert!(matches!(
        out.events[..],
        [(
            Audience::All,
            Event::Transition {
                ts: Timestamp(9),
                ..
            }
        )]
    ));
    let out = step(&mut s, |s, out| s.advance(out));
    assert_eq!(empty_modify_query_sets(&out), vec![(1, 2)]);
}

#[test]
fn advancing_sends_nothing_while_a_query_set_change_is_unanswered_or_disconnected() {
    let (mut s, _) = connected();
    step(&mut s, |s, out| s.subscribe(A, key("x"), out));
    let out = step(&mut s, |s, out| s.advance(out));
    assert!(
        out.to_convex.is_empty(),
        "the subscription's transition serves"
    );
    step(&mut s, |s, out| s.disconnected(out));
    let out = step(&mut s, |s, out| s.advance(out));
    assert!(out.to_convex.is_empty(), "sent while disconnected");
}
