//! Property tests: random interleavings of client messages, upstream transitions, identity
//! changes, stale events from upstreams the socket left, upstream auth failures and requests
//! answered late (after identity changes, by upstreams the socket left), each step checked by
//! the harness (the client model, isolation, the frontier, no answer from an upstream the socket
//! detached), answers from the mutation journal (no transition follows them) and, at the end, every request answered exactly once and every mutation
//! completed. An auth failure from the socket's own upstreams ends it with
//! `AuthError` for the identity version it holds; one from an upstream it left changes
//! nothing.

use edge_convex::{IdentityVersion, QueryId};
use proptest::prelude::*;
use serde_json::json;

use super::End;
use super::harness::{Harness, PRIVATE, SHARED};
use crate::upstream::Event;

#[derive(Debug, Clone)]
enum Op {
    Add {
        shared: bool,
        arg: u8,
    },
    Remove(usize),
    SignIn(u8),
    SignOut,
    Mutate,
    /// An upstream answers one of the requests it carries (perhaps after the socket left it).
    Answer(u8),
    /// The journal answers one with the outcome of an earlier socket's send of it, committed
    /// on the anonymous upstream or one of the people's.
    Replay(u8, u8),
    Upstream(u8),
    Stale(u8),
    /// An upstream refuses its token: the anonymous one, the main one, or one of the people's.
    AuthFailed(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..3u8).prop_map(|(shared, arg)| Op::Add { shared, arg }),
        2 => (0..8usize).prop_map(Op::Remove),
        1 => (0..3u8).prop_map(Op::SignIn),
        1 => Just(Op::SignOut),
        2 => Just(Op::Mutate),
        2 => any::<u8>().prop_map(Op::Answer),
        1 => (any::<u8>(), 0..4u8).prop_map(|(i, who)| Op::Replay(i, who)),
        4 => (0..4u8).prop_map(Op::Upstream),
        1 => (0..3u8).prop_map(Op::Stale),
        1 => (0..5u8).prop_map(Op::AuthFailed),
    ]
}

const PEOPLE: [&str; 3] = ["ada", "bob", "cy"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any interleaving keeps every client rule, isolation and the frontier, and every
    /// mutation completes once the upstreams catch up.
    #[test]
    fn every_interleaving_keeps_the_rules(ops in proptest::collection::vec(op(), 1..60)) {
        let mut h = Harness::new();
        h.hold_requests = true;
        for op in ops {
            match op {
                Op::Add { shared, arg } => {
                    let path = if shared { SHARED } else { PRIVATE };
                    h.add(path, json!({ "n": arg }));
                }
                Op::Remove(i) => {
                    let live: Vec<QueryId> = h.model.query_set();
                    if let Some(id) = live.get(i % live.len().max(1)) {
                        h.remove(*id);
                    }
                }
                Op::SignIn(who) => h.sign_in(PEOPLE[who as usize]),
                Op::SignOut => h.sign_in(""),
                Op::Mutate => {
                    if h.model.in_flight() < 4 {
                        h.mutate();
                    }
                }
                Op::Answer(i) => h.answer(i as usize),
                Op::Replay(i, who) => {
                    let who = match who {
                        0 => "",
                        n => PEOPLE[n as usize - 1],
                    };
                    h.replay(i as usize, who);
                }
                Op::Upstream(n) => {
                    let who = match n {
                        0 => String::new(),
                        _ => h.main.clone(),
                    };
                    h.upstream_transition(&who);
                }
                Op::Stale(who) => {
                    // An upstream the socket may have left sends anyway.
                    let who = PEOPLE[who as usize].to_owned();
                    h.subscribed.entry(who.clone()).or_default();
                    h.upstream_transition(&who);
                }
                Op::AuthFailed(n) => {
                    let who = match n {
                        0 => String::new(),
                        1 => h.main.clone(),
                        n => PEOPLE[n as usize - 2].to_owned(),
                    };
                    let route = h.route_of(&who);
                    // The base of the last Authenticate sent (its confirmation may be held back).
                    let held = h.model.authenticates_sent();
                    let failed = Event::AuthFailed {
                        upstream: 0,
                        error: format!("{who}'s token refused"),
                        expired: false,
                    };
                    h.deliver(vec![(route, failed)]);
                    if route.is_some() {
                        let expected = End::Auth {
                            error: format!("{who}'s token refused"),
                            base_version: IdentityVersion(held.0.saturating_sub(1)),
                        };
                        prop_assert_eq!(h.ended.as_ref(), Some(&expected));
                        return Ok(());
                    }
                }
            }
            prop_assert!(h.is_open(), "the session ended: {:?}", h.ended);
        }
        h.settle();
    }
}
