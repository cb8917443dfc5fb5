//! Random interleavings of listener commands, tokens, requests, Convex transitions and
//! reconnects, against a model of Convex's side of the protocol: every message the state
//! sends must be one Convex accepts, and the query set Convex holds must be exactly the
//! keys some listener holds. Keys are of uneven sizes and the message limit is small, so
//! query-set changes (above all the re-subscribe after a reconnect) go in several
//! `ModifyQuerySet`s: each must fit under the limit and the version chain stay unbroken.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use edge_convex::sync::{QuerySetModification, RequestKind};
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, ServerMessage,
    StateVersion, Timestamp,
};
use serde_json::{Value, json};
use std::sync::Arc;

use super::tests::transition;
use super::{Outbox, UpstreamState};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::Values;

/// What Convex knows of this connection.
#[derive(Default)]
struct Convex {
    query_set: QuerySetVersion,
    identity: IdentityVersion,
    queries: BTreeMap<QueryId, QueryKey>,
    version: StateVersion,
    requests: BTreeSet<RequestId>,
}

/// The frame limit the state is given.
const LIMIT: usize = 700;

/// Key `k`: its arguments grow with `k`, so a handful of keys fill a message.
fn sized_key(k: u8) -> QueryKey {
    let pad = "x".repeat(usize::from(k) * 60);
    QueryKey::new(
        "messages:list",
        &json!({ "channel": k.to_string(), "pad": pad }),
        None,
    )
    .unwrap()
}

impl Convex {
    fn receive(&mut self, messages: &[ClientMessage]) {
        for m in messages {
            if let ClientMessage::ModifyQuerySet { modifications, .. } = m {
                let text = serde_json::to_string(m).unwrap();
                assert!(
                    text.len() <= LIMIT || modifications.len() == 1,
                    "a ModifyQuerySet of {} bytes with {} modifications",
                    text.len(),
                    modifications.len()
                );
            }
            match m {
                ClientMessage::Connect { .. } => *self = Convex::default(),
                ClientMessage::ModifyQuerySet {
                    base_version,
                    new_version,
                    modifications,
                } => {
                    assert_eq!(*base_version, self.query_set, "ModifyQuerySet base");
                    assert_eq!(new_version.0, base_version.0 + 1);
                    self.query_set = *new_version;
                    for m in modifications {
                        match m {
                            QuerySetModification::Add {
                                query_id,
                                udf_path,
                                args,
                                ..
                            } => {
                                let key = QueryKey::new(udf_path, &args[0], None).unwrap();
                                assert!(
                                    self.queries.insert(*query_id, key).is_none(),
                                    "query id {query_id} added twice"
                                );
                            }
                            QuerySetModification::Remove { query_id } => {
                                assert!(
                                    self.queries.remove(query_id).is_some(),
                                    "removed unknown {query_id}"
                                );
                            }
                        }
                    }
                }
                ClientMessage::Authenticate { base_version, .. } => {
                    assert_eq!(*base_version, self.identity, "Authenticate base");
                    self.identity = IdentityVersion(base_version.0 + 1);
                }
                ClientMessage::Mutation { request_id, .. }
                | ClientMessage::Action { request_id, .. } => {
                    assert!(self.requests.insert(*request_id), "request id reused");
                }
                ClientMessage::Event { .. } => {}
            }
        }
    }

    /// A transition with a new value for every query.
    fn transition(&mut self, ts: u64) -> ServerMessage {
        let end = StateVersion {
            query_set: self.query_set,
            identity: self.identity,
            ts: Timestamp(ts),
        };
        let values: Vec<(u32, Value)> = self.queries.keys().map(|id| (id.0, json!(ts))).collect();
        let t = transition(self.version, end, &values);
        self.version = end;
        t
    }
}

#[derive(Debug, Clone)]
enum Op {
    Attach(u8),
    Detach(u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    Token(u8),
    Request(u8),
    Transition,
    Answer,
    Reconnect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..4u8).prop_map(Op::Attach),
        1 => (0..4u8).prop_map(Op::Detach),
        5 => (0..4u8, 0..12u8).prop_map(|(l, k)| Op::Subscribe(l, k)),
        3 => (0..4u8, 0..12u8).prop_map(|(l, k)| Op::Unsubscribe(l, k)),
        1 => (0..200u8).prop_map(Op::Token),
        1 => (0..4u8).prop_map(Op::Request),
        3 => Just(Op::Transition),
        1 => Just(Op::Answer),
        1 => Just(Op::Reconnect),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn convex_always_holds_exactly_the_keys_listeners_hold(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut s = UpstreamState::new(1, Arc::new(Stats::default()), Values::default())
            .with_max_message_bytes(LIMIT);
        let mut convex = Convex::default();
        let mut ts = 0;
        let mut out = Outbox::default();
        s.connected("p".into(), &mut out);
        convex.receive(&out.to_convex);
        for op in ops {
            let mut out = Outbox::default();
            match op {
                Op::Attach(l) => s.attach(u64::from(l)),
                Op::Detach(l) => s.detach(u64::from(l)),
                Op::Subscribe(l, k) => s.subscribe(u64::from(l), sized_key(k), &mut out),
                Op::Unsubscribe(l, k) => s.unsubscribe(u64::from(l), &sized_key(k)),
                Op::Token(exp) => s.token(format!("t{exp}"), i64::from(exp), 0),
                Op::Request(l) => s.request(
                    u64::from(l),
                    RequestId(0),
                    RequestKind::Mutation,
                    "m:m".into(),
                    json!({}),
                    &mut out,
                ),
                Op::Transition => {
                    if s.is_connected() {
                        ts += 1;
                        let t = convex.transition(ts);
                        s.on_server_message(t, &mut out).unwrap();
                    }
                }
                Op::Answer => {
                    if let Some(id) = convex.requests.pop_first() {
                        let answer = ServerMessage::ActionResponse {
                            request_id: id,
                            success: true,
                            result: Value::Null,
                            log_lines: vec![],
                            error_data: None,
                        };
                        s.on_server_message(answer, &mut out).unwrap();
                    }
                }
                Op::Reconnect => {
                    s.disconnected(&mut out);
                    s.connected("again".into(), &mut out);
                }
            }
            s.flush(&mut out);
            if let Err(e) = s.validate() {
                prop_assert!(false, "{e}");
            }
            convex.receive(&out.to_convex);
            let held: BTreeSet<&QueryKey> = convex.queries.values().collect();
            prop_assert_eq!(held.len(), convex.queries.len(), "a key subscribed twice");
            prop_assert_eq!(held.len(), s.subscriptions());
        }
    }
}
