//! Random interleavings of listener commands, tokens, requests, Convex transitions and
//! reconnects, against a model of Convex's side of the protocol: every message the state
//! sends must be one Convex accepts, and the query set Convex holds must be exactly the
//! keys some listener holds. Requests cross reconnects as convex-js carries them: Convex
//! never sees an action twice, runs a mutation once per `(sessionId, requestId)` however often
//! it is sent, and every request of a listener still attached is answered exactly once. Keys are of uneven sizes and the message limit is small, so
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
use super::{Audience, Outbox, UpstreamState};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::Event;
use crate::upstream::Values;

/// What Convex knows of this connection.
#[derive(Default)]
struct Convex {
    query_set: QuerySetVersion,
    identity: IdentityVersion,
    queries: BTreeMap<QueryId, QueryKey>,
    version: StateVersion,
    /// Requests received on this connection and not answered, in order.
    requests: Vec<(RequestId, RequestKind)>,
    /// Kept across connections of the session, as Convex's records are.
    session: Session,
}

/// What Convex keeps of a session: the mutations it ran (`SessionRequestModel`) with their
/// commit `ts`, and every action it was sent.
#[derive(Default, Clone)]
struct Session {
    id: Option<String>,
    committed: BTreeMap<RequestId, u64>,
    actions: BTreeSet<RequestId>,
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
                ClientMessage::Connect { session_id, .. } => {
                    let session = std::mem::take(&mut self.session);
                    assert!(
                        session.id.as_ref().is_none_or(|id| id == session_id),
                        "a reconnect under another session id"
                    );
                    *self = Convex::default();
                    self.session = Session {
                        id: Some(session_id.clone()),
                        ..session
                    };
                }
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
                ClientMessage::Mutation { request_id, .. } => {
                    assert!(
                        self.requests.iter().all(|(id, _)| id != request_id),
                        "request id {request_id} reused on one connection"
                    );
                    self.requests.push((*request_id, RequestKind::Mutation));
                }
                ClientMessage::Action { request_id, .. } => {
                    assert!(
                        !self.session.committed.contains_key(request_id)
                            && self.session.actions.insert(*request_id),
                        "action {request_id} sent twice"
                    );
                    self.requests.push((*request_id, RequestKind::Action));
                }
                ClientMessage::Event { .. } => {}
            }
        }
    }

    /// Runs the oldest request received; a mutation commits at `ts` unless it already did.
    fn run(&mut self, ts: u64) -> Option<ServerMessage> {
        if self.requests.is_empty() {
            return None;
        }
        let (request_id, kind) = self.requests.remove(0);
        Some(match kind {
            RequestKind::Mutation => {
                let ts = *self.session.committed.entry(request_id).or_insert(ts);
                ServerMessage::MutationResponse {
                    request_id,
                    success: true,
                    result: Value::Null,
                    ts: Some(Timestamp(ts)),
                    log_lines: vec![],
                    error_data: None,
                }
            }
            RequestKind::Action => ServerMessage::ActionResponse {
                request_id,
                success: true,
                result: Value::Null,
                log_lines: vec![],
                error_data: None,
            },
        })
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

/// Flushes a step, checks the state's invariants, hands its messages to Convex, and ticks off
/// the answers listeners got: each request answered at most once, and Convex holding exactly
/// the keys listeners hold while connected.
fn check_step(
    s: &mut UpstreamState,
    convex: &mut Convex,
    outstanding: &mut BTreeSet<(u64, RequestId)>,
    mut out: Outbox,
) -> Result<(), String> {
    s.flush(&mut out);
    s.validate()?;
    convex.receive(&out.to_convex);
    for (audience, event) in &out.events {
        if let (Audience::One(l), Event::Response { request_id, .. }) = (audience, event)
            && !outstanding.remove(&(*l, *request_id))
        {
            return Err(format!("request {request_id} of {l} answered twice"));
        }
    }
    let held: BTreeSet<&QueryKey> = convex.queries.values().collect();
    if held.len() != convex.queries.len() {
        return Err("a key subscribed twice".into());
    }
    if s.is_connected() && held.len() != s.subscriptions() {
        return Err(format!(
            "convex holds {} keys, listeners {}",
            held.len(),
            s.subscriptions()
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Op {
    Attach(u8),
    Detach(u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    Token(u8),
    Request(u8, bool),
    Transition,
    Answer,
    /// Convex runs the oldest request, and the connection drops before the answer arrives.
    RunThenDrop,
    Disconnect,
    Connect,
    /// A listener asks for a transition at a fresh `ts` (an empty `ModifyQuerySet`).
    Advance,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..4u8).prop_map(Op::Attach),
        1 => (0..4u8).prop_map(Op::Detach),
        5 => (0..4u8, 0..12u8).prop_map(|(l, k)| Op::Subscribe(l, k)),
        3 => (0..4u8, 0..12u8).prop_map(|(l, k)| Op::Unsubscribe(l, k)),
        1 => (0..200u8).prop_map(Op::Token),
        2 => (0..4u8, any::<bool>()).prop_map(|(l, action)| Op::Request(l, action)),
        3 => Just(Op::Transition),
        2 => Just(Op::Answer),
        1 => Just(Op::RunThenDrop),
        1 => Just(Op::Disconnect),
        1 => Just(Op::Connect),
        1 => Just(Op::Advance),
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
        s.connected("session".into(), &mut out);
        convex.receive(&out.to_convex);
        // Requests of attached listeners not answered yet: (listener, its request id).
        let mut outstanding = BTreeSet::new();
        let mut next_request = 0;
        for op in ops {
            let mut out = Outbox::default();
            match op {
                Op::Attach(l) => s.attach(u64::from(l)),
                Op::Detach(l) => {
                    s.detach(u64::from(l));
                    outstanding.retain(|(owner, _)| *owner != u64::from(l));
                }
                Op::Subscribe(l, k) => s.subscribe(u64::from(l), sized_key(k), &mut out),
                Op::Unsubscribe(l, k) => s.unsubscribe(u64::from(l), &sized_key(k)),
                Op::Token(exp) => s.token(format!("t{exp}"), i64::from(exp), 0),
                Op::Request(l, action) => {
                    let listener = u64::from(l);
                    let request_id = RequestId(next_request);
                    next_request += 1;
                    if s.listeners.contains_key(&listener) {
                        outstanding.insert((listener, request_id));
                    }
                    let kind = if action { RequestKind::Action } else { RequestKind::Mutation };
                    s.request(listener, request_id, kind, "m:m".into(), json!({}), None, &mut out);
                }
                Op::Transition => {
                    if s.is_connected() {
                        ts += 1;
                        let t = convex.transition(ts);
                        s.on_server_message(t, &mut out).unwrap();
                    }
                }
                Op::Answer => {
                    if s.is_connected() {
                        ts += 1;
                        if let Some(answer) = convex.run(ts) {
                            s.on_server_message(answer, &mut out).unwrap();
                        }
                    }
                }
                Op::RunThenDrop => {
                    if s.is_connected() {
                        ts += 1;
                        convex.run(ts);
                        s.disconnected(&mut out);
                    }
                }
                Op::Disconnect => s.disconnected(&mut out),
                Op::Advance => s.advance(&mut out),
                Op::Connect => {
                    if !s.is_connected() {
                        s.connected("session".into(), &mut out);
                    }
                }
            }
            if let Err(e) = check_step(&mut s, &mut convex, &mut outstanding, out) {
                prop_assert!(false, "{e}");
            }
        }
        // Connected again and with every request answered, nothing is left unanswered.
        let mut out = Outbox::default();
        if !s.is_connected() {
            s.connected("session".into(), &mut out);
        }
        if let Err(e) = check_step(&mut s, &mut convex, &mut outstanding, out) {
            prop_assert!(false, "{e}");
        }
        while let Some(answer) = convex.run(ts + 1) {
            ts += 1;
            let mut out = Outbox::default();
            s.on_server_message(answer, &mut out).unwrap();
            if let Err(e) = check_step(&mut s, &mut convex, &mut outstanding, out) {
                prop_assert!(false, "{e}");
            }
        }
        prop_assert!(outstanding.is_empty(), "never answered: {outstanding:?}");
    }
}
