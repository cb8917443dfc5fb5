//! The client session's rules: unit tests on single sequences, and property tests that drive
//! random interleavings of client messages, upstream transitions, identity changes and stale
//! events from upstreams the socket left. After every step the session validates its
//! invariants and every frame passes the client model (`edge_convex::client_model`), plus the
//! proxy's own rules: no `ts` newer than an upstream sent, no non-shared value from another
//! identity's upstream, every mutation completes once every upstream caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use edge_convex::client_model::ClientModel;
use edge_convex::sync::{QuerySetModification, RequestKind, TokenType};
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, ServerMessage, Timestamp,
};
use proptest::prelude::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ClientSession, Effect, End, Route};
use crate::identity::{IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::{Event, QueryResult, RequestOutcome, SharedText};

const SHARED: &str = "messages:list";
const PRIVATE: &str = "tasks:list";

/// Who an upstream serves: `""` is anonymous.
type Who = String;

/// A simulated upstream per identity and the driver's routing, around a session.
struct Harness {
    session: ClientSession,
    model: ClientModel,
    /// The identity of the main route, and whether the shared (anonymous) route is attached.
    main: Who,
    shared: bool,
    /// Keys subscribed per upstream identity (as the driver would have forwarded them).
    subscribed: BTreeMap<Who, BTreeMap<QueryKey, usize>>,
    /// Latest `ts` per upstream identity, and the newest of all.
    ts: BTreeMap<Who, u64>,
    newest: u64,
    /// The client's queries: id → (path, args).
    queries: BTreeMap<QueryId, (String, Value)>,
    next_query_id: u32,
    next_request: u32,
    /// Whom the client is signed in as (after the last accepted `Authenticate`).
    signed_in_as: Who,
    /// Why the session ended, once it has.
    ended: Option<End>,
}

fn user(who: &str) -> VerifiedUser {
    VerifiedUser {
        key: IdentityKey::User(format!("{{\"sub\":\"{who}\"}}")),
        token: format!("token-of-{who}"),
        expires_at: i64::MAX,
    }
}

fn who_of(key: &IdentityKey) -> Who {
    match key {
        IdentityKey::Anonymous => String::new(),
        IdentityKey::User(claims) => {
            let v: Value = serde_json::from_str(claims).unwrap();
            v["sub"].as_str().unwrap().to_owned()
        }
    }
}

/// The value an upstream of `who` has for a query at `ts`: tagged with whose it is.
fn value(who: &str, key: &QueryKey, ts: u64) -> Arc<QueryResult> {
    let text = json!({ "who": who, "args": key.args, "ts": ts }).to_string();
    Arc::new(QueryResult::Value {
        value: RawValue::from_string(text).unwrap(),
        log_lines: vec![],
        journal: None,
    })
}

impl Harness {
    fn new() -> Self {
        let shared = Arc::new(BTreeSet::from([SHARED.to_owned()]));
        Harness {
            session: ClientSession::new(shared, 4, Arc::new(Stats::default())),
            model: ClientModel::new(),
            main: String::new(),
            shared: false,
            subscribed: BTreeMap::new(),
            ts: BTreeMap::new(),
            newest: 0,
            queries: BTreeMap::new(),
            next_query_id: 0,
            next_request: 0,
            signed_in_as: String::new(),
            ended: None,
        }
    }

    fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    /// Runs the driver's side of effects and checks every frame.
    fn effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(text) => {
                    let message: ServerMessage = serde_json::from_str(&text).unwrap();
                    let newest_before = self.newest;
                    if let ServerMessage::Transition {
                        end_version,
                        modifications,
                        ..
                    } = &message
                    {
                        assert!(
                            end_version.ts.0 <= newest_before,
                            "ts {:?} newer than any upstream's {newest_before}",
                            end_version.ts
                        );
                        let json = serde_json::to_value(modifications).unwrap();
                        for m in json.as_array().unwrap() {
                            if m["type"] != "QueryUpdated" {
                                continue;
                            }
                            let id = QueryId(m["queryId"].as_u64().unwrap() as u32);
                            let (path, _) = &self.queries[&id];
                            let tag: Value = m["value"].clone();
                            let expected = if path == SHARED {
                                ""
                            } else {
                                self.signed_in_as.as_str()
                            };
                            assert_eq!(
                                tag["who"], expected,
                                "query {id} ({path}) got another identity's value"
                            );
                        }
                    }
                    self.model
                        .receive(&message)
                        .unwrap_or_else(|e| panic!("client rule broken: {e}\n{text}"));
                }
                Effect::AttachShared => {
                    assert!(!self.shared, "attached twice");
                    self.shared = true;
                }
                Effect::SwitchMain { user, reuse_shared } => {
                    let who = user.as_ref().map_or(String::new(), |u| who_of(&u.key));
                    if reuse_shared {
                        assert!(self.shared && who.is_empty());
                        self.shared = false;
                    }
                    self.main = who;
                }
                Effect::Subscribe(route, key) => {
                    let who = self.route_who(route);
                    *self
                        .subscribed
                        .entry(who)
                        .or_default()
                        .entry(key)
                        .or_default() += 1;
                }
                Effect::Unsubscribe(route, key) => {
                    let who = self.route_who(route);
                    let keys = self.subscribed.entry(who).or_default();
                    let n = keys
                        .get_mut(&key)
                        .expect("unsubscribed a key never subscribed");
                    *n -= 1;
                    if *n == 0 {
                        keys.remove(&key);
                    }
                }
                Effect::Token(u) => assert_eq!(who_of(&u.key), self.main),
                Effect::Request { request_id, .. } => {
                    // Convex commits it on the main upstream, answers, then sends the
                    // transition that reaches its ts.
                    let who = self.main.clone();
                    let ts = self.tick(&who);
                    let outcome = RequestOutcome {
                        success: true,
                        result: Value::Null,
                        ts: Some(Timestamp(ts)),
                        log_lines: vec![],
                        error_data: None,
                    };
                    let response = Event::Response {
                        request_id,
                        kind: RequestKind::Mutation,
                        outcome: Box::new(Ok(outcome)),
                    };
                    self.deliver(vec![(None, response)]);
                    self.upstream_transition(&who);
                }
            }
        }
        self.session.validate().unwrap();
    }

    fn route_who(&self, route: Route) -> Who {
        match route {
            Route::Main => self.main.clone(),
            Route::Shared => {
                assert!(self.shared, "the shared route used before it was attached");
                String::new()
            }
        }
    }

    fn route_of(&self, who: &str) -> Option<Route> {
        if who == self.main {
            Some(Route::Main)
        } else if self.shared && who.is_empty() {
            Some(Route::Shared)
        } else {
            None
        }
    }

    fn tick(&mut self, who: &str) -> u64 {
        self.newest += 1;
        self.ts.insert(who.to_owned(), self.newest);
        self.newest
    }

    fn deliver(&mut self, events: Vec<(Option<Route>, Event)>) {
        if !self.is_open() {
            return;
        }
        let mut effects = Vec::new();
        let step = self.session.on_events(events, &mut effects);
        self.effects(effects);
        if let Err(end) = step {
            self.ended = Some(end);
        }
    }

    /// The upstream of `who` moves to a new `ts` with new values for every key it holds.
    fn upstream_transition(&mut self, who: &str) {
        let ts = self.tick(who);
        let updates = self
            .subscribed
            .get(who)
            .map(|keys| {
                keys.keys()
                    .map(|k| (k.clone(), value(who, k, ts)))
                    .collect()
            })
            .unwrap_or_default();
        let event = Event::Transition {
            upstream: 0,
            ts: Timestamp(ts),
            updates: Arc::new(updates),
            text: Arc::new(SharedText::default()),
        };
        let route = self.route_of(who);
        self.deliver(vec![(route, event)]);
    }

    fn client(&mut self, message: ClientMessage) {
        if !self.is_open() {
            return;
        }
        self.model.send(&message).unwrap();
        let mut effects = Vec::new();
        let step = self.session.on_client(message, &mut effects);
        self.effects(effects);
        match step {
            Ok(Some(pending)) => {
                let who = pending.token.trim_start_matches("token-of-").to_owned();
                let mut effects = Vec::new();
                let step = self
                    .session
                    .authenticated(pending.base, Some(user(&who)), &mut effects);
                self.signed_in_as = who;
                self.effects(effects);
                if let Err(end) = step {
                    self.ended = Some(end);
                }
            }
            Ok(None) => {}
            Err(end) => self.ended = Some(end),
        }
    }

    fn add(&mut self, path: &str, args: Value) -> QueryId {
        let id = QueryId(self.next_query_id);
        self.next_query_id += 1;
        self.queries.insert(id, (path.to_owned(), args.clone()));
        let base = self.last_query_set();
        self.client(ClientMessage::ModifyQuerySet {
            base_version: base,
            new_version: QuerySetVersion(base.0 + 1),
            modifications: vec![QuerySetModification::Add {
                query_id: id,
                udf_path: path.into(),
                args: vec![args],
                journal: None,
                component_path: None,
            }],
        });
        id
    }

    fn last_query_set(&self) -> QuerySetVersion {
        // The client sends from its own last version; with immediate transitions it is held.
        self.model.held().query_set
    }

    fn remove(&mut self, id: QueryId) {
        let base = self.last_query_set();
        self.client(ClientMessage::ModifyQuerySet {
            base_version: base,
            new_version: QuerySetVersion(base.0 + 1),
            modifications: vec![QuerySetModification::Remove { query_id: id }],
        });
    }

    fn sign_in(&mut self, who: &str) {
        let base = self.model.held().identity;
        let (token_type, value) = if who.is_empty() {
            (TokenType::None, None)
        } else {
            (TokenType::User, Some(format!("token-of-{who}")))
        };
        self.client(ClientMessage::Authenticate {
            base_version: base,
            token_type,
            value,
        });
        if who.is_empty() {
            self.signed_in_as = String::new();
        }
    }

    fn mutate(&mut self) {
        let request_id = RequestId(self.next_request);
        self.next_request += 1;
        self.client(ClientMessage::Mutation {
            request_id,
            udf_path: "tasks:add".into(),
            args: vec![json!({})],
            component_path: None,
        });
    }

    /// Every upstream the socket uses catches up past everything; then nothing is owed.
    fn settle(&mut self) {
        let main = self.main.clone();
        self.upstream_transition(&main);
        if self.shared {
            self.upstream_transition("");
            self.upstream_transition(&main);
        }
        if self.is_open() {
            assert_eq!(
                self.model.awaiting().count(),
                0,
                "mutations never completed"
            );
            assert_eq!(self.model.in_flight(), 0, "requests never answered");
        }
    }
}

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

#[test]
fn a_mutation_completes_only_when_every_route_caught_up() {
    let mut h = Harness::new();
    h.sign_in("ada");
    h.add(SHARED, json!({}));
    h.add(PRIVATE, json!({}));
    h.upstream_transition("");
    h.mutate();
    assert_eq!(
        h.model.awaiting().count(),
        1,
        "the shared route is behind the commit"
    );
    h.upstream_transition("");
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
        error: "expired".into(),
    };
    h.deliver(vec![(Some(Route::Main), failed)]);
    assert!(matches!(
        &h.ended,
        Some(End::Auth { base_version: IdentityVersion(0), error }) if error == "expired"
    ));
}

#[test]
fn unchanged_results_are_not_sent_again() {
    let mut h = Harness::new();
    h.add(PRIVATE, json!({}));
    let key = QueryKey::new(PRIVATE, &json!({}), None).unwrap();
    let result = value("", &key, 1);
    h.newest = 2;
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
        [Effect::Send(text)] => text.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(frame.contains("\"modifications\":[]"), "{frame}");
}

#[derive(Debug, Clone)]
enum Op {
    Add { shared: bool, arg: u8 },
    Remove(usize),
    SignIn(u8),
    SignOut,
    Mutate,
    Upstream(u8),
    Stale(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<bool>(), 0..3u8).prop_map(|(shared, arg)| Op::Add { shared, arg }),
        2 => (0..8usize).prop_map(Op::Remove),
        1 => (0..3u8).prop_map(Op::SignIn),
        1 => Just(Op::SignOut),
        2 => Just(Op::Mutate),
        4 => (0..4u8).prop_map(Op::Upstream),
        1 => (0..3u8).prop_map(Op::Stale),
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
            }
            prop_assert!(h.is_open(), "the session ended: {:?}", h.ended);
        }
        h.settle();
    }
}
