//! The test harness around a client session: a simulated upstream per identity and the
//! driver's routing. After every step the session validates its invariants and every frame
//! passes the client model (`edge_convex::client_model`), plus the proxy's own rules: no `ts`
//! newer than an upstream sent, no non-shared value from another identity's upstream, every
//! mutation completes once every upstream caught up.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use edge_convex::client_model::ClientModel;
use edge_convex::sync::{QuerySetModification, RequestKind, TokenType};
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, ServerMessage, Timestamp,
};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{ClientSession, Effect, End, Route};
use crate::identity::{IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::{Event, QueryResult, RequestOutcome, SharedText};

pub const SHARED: &str = "messages:list";
pub const PRIVATE: &str = "tasks:list";

/// Who an upstream serves: `""` is anonymous.
pub type Who = String;

/// A simulated upstream per identity and the driver's routing, around a session.
pub struct Harness {
    pub session: ClientSession,
    pub model: ClientModel,
    /// The identity of the main route, and whether the shared (anonymous) route is attached.
    pub main: Who,
    pub shared: bool,
    /// Keys subscribed per upstream identity (as the driver would have forwarded them).
    pub subscribed: BTreeMap<Who, BTreeMap<QueryKey, usize>>,
    /// Latest `ts` per upstream identity, and the newest of all.
    pub ts: BTreeMap<Who, u64>,
    pub newest: u64,
    /// The client's queries: id → (path, args).
    pub queries: BTreeMap<QueryId, (String, Value)>,
    /// The query-set version that added each query, and the one that removed it.
    pub versions: BTreeMap<QueryId, (u32, Option<u32>)>,
    pub next_query_id: u32,
    pub next_request: u32,
    /// Whom the client is signed in as (after the last accepted `Authenticate`).
    pub signed_in_as: Who,
    /// Why the session ended, once it has.
    pub ended: Option<End>,
    /// Requests are answered only by [`Harness::answer`] (else at once, by the main route).
    pub hold_requests: bool,
    /// Requests the upstreams have not answered yet, with the upstream that carries each.
    pub unanswered: Vec<(Who, RequestId)>,
    /// Upstreams the socket left but stays attached to, for the answers they owe.
    pub owing: BTreeSet<Who>,
    /// Upstreams asked to advance ([`Effect::Advance`]) during the current step: each then
    /// sends a transition at a fresh `ts`, as Convex answers an empty `ModifyQuerySet`.
    pub advancing: Vec<Who>,
    /// Every upstream ever asked to advance, in order.
    pub advanced: Vec<Who>,
    /// Upstreams asked to advance send nothing for it (a `ModifyQuerySet` of theirs is
    /// unanswered, so `UpstreamState::advance` waits for its transition instead).
    pub advances_wait: bool,
}

pub fn user(who: &str) -> VerifiedUser {
    VerifiedUser {
        key: IdentityKey::User(format!("{{\"sub\":\"{who}\"}}")),
        token: format!("token-of-{who}"),
        expires_at: i64::MAX,
        issued_at: 0,
        session_id: Some(format!("session-of-{who}")),
        subject: Some(who.to_owned()),
    }
}

pub fn who_of(key: &IdentityKey) -> Who {
    match key {
        IdentityKey::Anonymous => String::new(),
        IdentityKey::User(claims) => {
            let v: Value = serde_json::from_str(claims).unwrap();
            v["sub"].as_str().unwrap().to_owned()
        }
    }
}

/// The value an upstream of `who` has for a query at `ts`: tagged with whose it is.
pub fn value(who: &str, key: &QueryKey, ts: u64) -> Arc<QueryResult> {
    let text = json!({ "who": who, "args": key.args, "ts": ts }).to_string();
    Arc::new(QueryResult::Value {
        value: RawValue::from_string(text).unwrap(),
        log_lines: vec![],
        journal: None,
    })
}

/// A budget no harness step reaches (the owner limits have their own tests in `owners`).
fn unlimited() -> crate::owners::Budget {
    crate::owners::Owners::new(crate::owners::OwnerLimits {
        max_queries: usize::MAX,
        max_bytes: usize::MAX,
        max_address_requests: usize::MAX,
        max_total_bytes: usize::MAX,
    })
    .budget(std::net::Ipv4Addr::LOCALHOST.into())
}

impl Harness {
    pub fn new() -> Self {
        Self::with_limits(super::QueryLimits::default())
    }

    pub fn with_limits(limits: super::QueryLimits) -> Self {
        let shared = Arc::new(BTreeSet::from([SHARED.to_owned()]));
        Harness {
            session: ClientSession::new(shared, 4, limits, unlimited(), Arc::new(Stats::default())),
            model: ClientModel::new(),
            main: String::new(),
            shared: false,
            subscribed: BTreeMap::new(),
            ts: BTreeMap::new(),
            newest: 0,
            queries: BTreeMap::new(),
            versions: BTreeMap::new(),
            next_query_id: 0,
            next_request: 0,
            signed_in_as: String::new(),
            ended: None,
            hold_requests: false,
            unanswered: Vec::new(),
            owing: BTreeSet::new(),
            advancing: Vec::new(),
            advanced: Vec::new(),
            advances_wait: false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.ended.is_none()
    }

    /// Runs the driver's side of effects and checks every frame.
    pub fn effects(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send(text) | Effect::Transition(text) => {
                    let message: ServerMessage = serde_json::from_str(&text).unwrap();
                    let newest_before = self.newest;
                    if let ServerMessage::Transition {
                        start_version,
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
                        // The consistent frontier: no newer than the oldest route in use.
                        let frontier = self.frontier().unwrap_or(0).max(start_version.ts.0);
                        assert!(
                            end_version.ts.0 <= frontier,
                            "ts {:?} beyond the frontier {frontier} of the routes in use",
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
                    if let ServerMessage::Transition { end_version, .. } = &message {
                        self.check_complete(end_version.query_set.0, end_version.identity);
                    }
                }
                Effect::AttachShared => {
                    assert!(!self.shared, "attached twice");
                    self.shared = true;
                    // The attachment kept for answers it owes serves the route.
                    self.owing.remove("");
                }
                Effect::SwitchMain {
                    user,
                    reuse_shared,
                    keep_previous,
                } => {
                    let who = user.as_ref().map_or(String::new(), |u| who_of(&u.key));
                    let previous = self.main.clone();
                    let owes = self.unanswered.iter().any(|(w, _)| *w == previous);
                    assert_eq!(
                        keep_previous, owes,
                        "the previous upstream kept iff it owes answers"
                    );
                    if keep_previous {
                        self.owing.insert(previous);
                    }
                    // Back to an upstream that owes answers: the same attachment.
                    self.owing.remove(&who);
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
                Effect::Advance(route) => {
                    let who = self.route_who(route);
                    self.advanced.push(who.clone());
                    self.advancing.push(who);
                }
                Effect::Token(u) => assert_eq!(who_of(&u.key), self.main),
                Effect::Release(key) => {
                    let who = who_of(&key);
                    assert!(self.owing.remove(&who), "released {who:?}, not kept");
                    assert!(
                        self.unanswered.iter().all(|(w, _)| *w != who),
                        "released {who:?} while it owes answers"
                    );
                }
                Effect::Request { request_id, .. } if self.hold_requests => {
                    self.session.charge(request_id).unwrap();
                    self.unanswered.push((self.main.clone(), request_id));
                }
                Effect::Request { request_id, .. } => {
                    self.session.charge(request_id).unwrap();
                    // Convex commits it on the main upstream, answers, then sends the
                    // transition that reaches its ts.
                    let who = self.main.clone();
                    self.commit_and_answer(&who, request_id);
                }
            }
        }
        self.session.validate().unwrap();
    }

    /// Convex's rule: the client never holds a query-set version without the result of every
    /// query in it, and once it holds the last identity it sent, every private result is that
    /// identity's.
    fn check_complete(&self, query_set: u32, identity: IdentityVersion) {
        for (id, (added, removed)) in &self.versions {
            let live = *added <= query_set && removed.is_none_or(|r| r > query_set);
            if live {
                assert!(
                    self.model.result(*id).is_some(),
                    "query-set version {query_set} reached without query {id}'s result"
                );
            }
        }
        if identity != self.model.authenticates_sent() {
            return;
        }
        for (id, result) in self.model.results() {
            let path = &self.queries[id].0;
            if path == SHARED || result.get("who").is_none() {
                continue;
            }
            assert_eq!(
                result["who"], self.signed_in_as,
                "identity version {identity} reached with another identity's result for {id}"
            );
        }
    }

    /// The oldest latest `ts` of the upstreams the socket's queries use, if all have one.
    pub fn frontier(&self) -> Option<u64> {
        let main = *self.ts.get(&self.main)?;
        let shared_in_use = !self.signed_in_as.is_empty()
            && self
                .model
                .query_set()
                .iter()
                .any(|id| self.queries[id].0 == SHARED);
        if shared_in_use {
            return Some(main.min(*self.ts.get("")?));
        }
        Some(main)
    }

    pub fn route_who(&self, route: Route) -> Who {
        match route {
            Route::Main => self.main.clone(),
            Route::Shared => {
                assert!(self.shared, "the shared route used before it was attached");
                String::new()
            }
        }
    }

    pub fn route_of(&self, who: &str) -> Option<Route> {
        if who == self.main {
            Some(Route::Main)
        } else if self.shared && who.is_empty() {
            Some(Route::Shared)
        } else {
            None
        }
    }

    pub fn tick(&mut self, who: &str) -> u64 {
        self.newest += 1;
        self.ts.insert(who.to_owned(), self.newest);
        self.newest
    }

    pub fn deliver(&mut self, events: Vec<(Option<Route>, Event)>) {
        if !self.is_open() {
            return;
        }
        let mut effects = Vec::new();
        let step = self.session.on_events(events, &mut effects);
        self.effects(effects);
        if let Err(end) = step {
            self.ended = Some(end);
        }
        // After the step's frames: the advanced upstreams answer (a round trip to Convex).
        for who in std::mem::take(&mut self.advancing) {
            if !self.advances_wait {
                self.upstream_transition(&who);
            }
        }
    }

    /// The upstream of `who` moves to a new `ts` with new values for every key it holds.
    pub fn upstream_transition(&mut self, who: &str) {
        let ts = self.tick(who);
        self.upstream_transition_at(who, ts);
    }

    /// The upstream of `who` sends a transition to `ts`, its latest (from [`Harness::tick`]),
    /// with new values for every key it holds.
    pub fn upstream_transition_at(&mut self, who: &str, ts: u64) {
        assert_eq!(self.ts.get(who), Some(&ts), "{who:?}'s latest ts");
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

    pub fn client(&mut self, message: ClientMessage) {
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

    pub fn add(&mut self, path: &str, args: Value) -> QueryId {
        let id = QueryId(self.next_query_id);
        self.next_query_id += 1;
        self.queries.insert(id, (path.to_owned(), args.clone()));
        let base = self.last_query_set();
        self.versions.insert(id, (base.0 + 1, None));
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

    pub fn last_query_set(&self) -> QuerySetVersion {
        // The client sends from its own last version, held or not.
        self.model.last_query_set()
    }

    pub fn remove(&mut self, id: QueryId) {
        let base = self.last_query_set();
        if let Some((_, removed)) = self.versions.get_mut(&id) {
            removed.get_or_insert(base.0 + 1);
        }
        self.client(ClientMessage::ModifyQuerySet {
            base_version: base,
            new_version: QuerySetVersion(base.0 + 1),
            modifications: vec![QuerySetModification::Remove { query_id: id }],
        });
    }

    pub fn sign_in(&mut self, who: &str) {
        let base = self.model.authenticates_sent();
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

    pub fn mutate(&mut self) {
        let request_id = RequestId(self.next_request);
        self.next_request += 1;
        self.client(ClientMessage::Mutation {
            request_id,
            udf_path: "tasks:add".into(),
            args: vec![json!({})],
            component_path: None,
        });
    }

    /// The upstream carrying the `i`th unanswered request (modulo their number) commits it,
    /// answers it, then sends the transition that reaches its `ts`, as Convex does. The
    /// upstream must still have the socket attached, else the answer would be lost.
    pub fn answer(&mut self, i: usize) {
        if self.unanswered.is_empty() {
            return;
        }
        let (who, request_id) = self.unanswered.remove(i % self.unanswered.len());
        let attached =
            who == self.main || (who.is_empty() && self.shared) || self.owing.contains(&who);
        assert!(
            attached,
            "request {request_id:?} answered by {who:?}, which the socket detached"
        );
        self.commit_and_answer(&who, request_id);
    }

    /// The journal answers the `i`th unanswered request (modulo their number) with the outcome
    /// of an earlier socket's send of it, committed on `who`'s upstream: no transition of any
    /// upstream follows it.
    pub fn replay(&mut self, i: usize, who: &str) {
        if self.unanswered.is_empty() {
            return;
        }
        let (_, request_id) = self.unanswered.remove(i % self.unanswered.len());
        let ts = self.tick(who);
        let mut answer = mutation_answer(request_id, Timestamp(ts));
        if let Event::Response { replayed, .. } = &mut answer {
            *replayed = true;
        }
        self.deliver(vec![(None, answer)]);
    }

    /// `who`'s upstream commits the mutation `request_id`, answers it, then sends the
    /// transition that reaches its `ts`, as Convex does.
    fn commit_and_answer(&mut self, who: &str, request_id: RequestId) {
        let ts = self.tick(who);
        self.deliver(vec![(None, mutation_answer(request_id, Timestamp(ts)))]);
        self.upstream_transition(who);
    }

    /// Every upstream the socket uses catches up past everything; then nothing is owed.
    pub fn settle(&mut self) {
        while !self.unanswered.is_empty() && self.is_open() {
            self.answer(0);
        }
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
            assert!(self.owing.is_empty(), "upstreams kept after their answers");
        }
    }
}

/// A successful mutation's answer at `ts`, as an upstream delivers it.
pub fn mutation_answer(request_id: RequestId, ts: Timestamp) -> Event {
    Event::Response {
        request_id,
        kind: RequestKind::Mutation,
        outcome: Box::new(Ok(RequestOutcome {
            success: true,
            result: Value::Null,
            ts: Some(ts),
            log_lines: vec![],
            error_data: None,
        })),
        replayed: false,
    }
}
