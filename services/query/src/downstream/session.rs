//! One client socket's protocol state, without I/O: its query ids and versions, which upstream
//! route serves each query, and the transitions it is owed.
//!
//! Rules kept here (checked by [`ClientSession::validate`] after every step in tests, and by
//! the client model on every frame in the property tests):
//! - versions follow [`ClientVersion`]: a transition starts at what the client holds, the query
//!   set moves only with `ModifyQuerySet`, the identity by one per `Authenticate`;
//! - `ts` is the minimum of the latest `ts` of the routes the socket uses (a consistent
//!   frontier), never beyond what an upstream sent and never backwards;
//! - a query of a function not in `QUERY_SHARED_FUNCTIONS` is only ever served by the
//!   socket's own identity's upstream (the main route); shared functions of a signed-in socket
//!   go through the anonymous upstream (the shared route);
//! - an upstream key is subscribed once per socket, however many query ids use it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edge_convex::sync::{QuerySetModification, RequestKind, TokenType};
use edge_convex::versions::ClientVersion;
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, ServerMessage, Timestamp,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frames::{self, Pending};
use crate::identity::{IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::upstream::{Event, QueryResult, RequestOutcome, SharedText};

/// Which upstream serves a query: the socket's identity's, or the anonymous one for shared
/// functions while signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Route {
    Main,
    Shared,
}

/// What the driver does for a step, in order.
#[derive(Debug)]
pub enum Effect {
    /// A text frame for the client.
    Send(Utf8Bytes),
    /// Attach to the anonymous upstream as the shared route (first shared query signed in).
    AttachShared,
    /// The identity changed: the main route becomes the upstream of `user` (anonymous when
    /// `None`); with `reuse_shared`, the shared route's upstream (already anonymous) is it.
    SwitchMain {
        user: Option<VerifiedUser>,
        reuse_shared: bool,
    },
    Subscribe(Route, QueryKey),
    Unsubscribe(Route, QueryKey),
    /// A fresher token for the main route's identity.
    Token(VerifiedUser),
    /// A mutation or action through the main route.
    Request {
        request_id: RequestId,
        kind: RequestKind,
        udf_path: String,
        args: Value,
    },
}

/// Why a session ends.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The client closed or went away.
    Gone,
    /// The service is shutting down: the client should reconnect.
    Restart,
    /// A protocol violation: `FatalError` with this message.
    Fatal(String),
    /// A token refused: `AuthError` for the identity version it was sent at.
    Auth {
        error: String,
        base_version: IdentityVersion,
    },
    /// The client did not read fast enough.
    TooSlow,
}

/// An `Authenticate` whose token the driver must verify before [`ClientSession::authenticated`].
#[derive(Debug)]
pub struct TokenToVerify {
    pub base: IdentityVersion,
    pub token: String,
}

/// One client query.
#[derive(Debug)]
struct ClientQuery {
    /// `None` when the path was invalid (answered locally with a failure).
    key: Option<QueryKey>,
    route: Route,
    last: Option<Arc<QueryResult>>,
}

#[derive(Debug)]
pub struct ClientSession {
    version: ClientVersion,
    identity: Option<VerifiedUser>,
    shared_attached: bool,
    shared_functions: Arc<BTreeSet<String>>,
    queries: BTreeMap<QueryId, ClientQuery>,
    /// Client query ids by route and key.
    by_key: HashMap<Route, HashMap<QueryKey, BTreeSet<QueryId>>>,
    /// Latest `ts` seen per route.
    upstream_ts: HashMap<Route, Timestamp>,
    /// The newest `ts` any upstream ever sent this socket: the held `ts` never passes it.
    newest_ts: Timestamp,
    in_flight: usize,
    max_in_flight: usize,
    stats: Arc<Stats>,
}

type Step = Result<(), End>;

impl ClientSession {
    pub fn new(
        shared_functions: Arc<BTreeSet<String>>,
        max_in_flight: usize,
        stats: Arc<Stats>,
    ) -> Self {
        ClientSession {
            version: ClientVersion::default(),
            identity: None,
            shared_attached: false,
            shared_functions,
            queries: BTreeMap::new(),
            by_key: HashMap::new(),
            upstream_ts: HashMap::new(),
            newest_ts: Timestamp::default(),
            in_flight: 0,
            max_in_flight,
            stats,
        }
    }

    /// Queries in the client's set.
    pub fn query_count(&self) -> usize {
        self.queries.len()
    }

    /// Handles a client message. An `Authenticate` with a user token comes back as
    /// [`TokenToVerify`]; everything else is done here.
    pub fn on_client(
        &mut self,
        message: ClientMessage,
        out: &mut Vec<Effect>,
    ) -> Result<Option<TokenToVerify>, End> {
        match message {
            ClientMessage::Connect { .. } | ClientMessage::Event { .. } => {}
            ClientMessage::ModifyQuerySet {
                base_version,
                new_version,
                modifications,
            } => self.modify_query_set(base_version, new_version, modifications, out)?,
            ClientMessage::Authenticate {
                base_version,
                token_type,
                value,
            } => {
                // Checked before the token is looked at; accepted once it is.
                let mut check = self.version;
                check
                    .accept_identity(base_version)
                    .map_err(|e| End::Fatal(e.to_string()))?;
                match (token_type, value) {
                    (TokenType::None, _) => self.authenticated(base_version, None, out)?,
                    (TokenType::User, Some(token)) => {
                        return Ok(Some(TokenToVerify {
                            base: base_version,
                            token,
                        }));
                    }
                    (TokenType::User, None) => {
                        return Err(End::Fatal(
                            "Authenticate with a User token needs a value".into(),
                        ));
                    }
                    (TokenType::Admin, _) => {
                        return Err(End::Auth {
                            error: "admin keys are not accepted by the proxy".into(),
                            base_version,
                        });
                    }
                }
            }
            ClientMessage::Mutation {
                request_id,
                udf_path,
                args,
                ..
            } => self.request(RequestKind::Mutation, request_id, udf_path, args, out)?,
            ClientMessage::Action {
                request_id,
                udf_path,
                args,
                ..
            } => self.request(RequestKind::Action, request_id, udf_path, args, out)?,
        }
        Ok(None)
    }

    /// The identity of an accepted `Authenticate` (`None`: anonymous): moves the socket's
    /// queries to that identity's upstream if it changed, then confirms with a transition.
    pub fn authenticated(
        &mut self,
        base: IdentityVersion,
        user: Option<VerifiedUser>,
        out: &mut Vec<Effect>,
    ) -> Step {
        self.version
            .accept_identity(base)
            .map_err(|e| End::Fatal(e.to_string()))?;
        if key_of(user.as_ref()) != key_of(self.identity.as_ref()) {
            self.switch_identity(user.clone(), out);
        }
        if let Some(u) = &user {
            out.push(Effect::Token(u.clone()));
        }
        self.identity = user;
        self.transition(Vec::new(), None, out)
    }

    /// Applies a batch of upstream events, each with the route its upstream serves for this
    /// socket (`None`: an upstream the socket no longer uses).
    pub fn on_events(
        &mut self,
        events: Vec<(Option<Route>, Event)>,
        out: &mut Vec<Effect>,
    ) -> Step {
        // A batch of one transition (a fan-out) yields the same text on every socket in the
        // same state.
        let shared = match events.as_slice() {
            [(_, Event::Transition { text, .. })] => Some(text.clone()),
            _ => None,
        };
        let mut pending = Vec::new();
        for (route, event) in events {
            match event {
                Event::Transition { ts, updates, .. } => {
                    let Some(route) = route else { continue };
                    self.upstream_ts.insert(route, ts);
                    self.newest_ts = self.newest_ts.max(ts);
                    for (key, result) in updates.iter() {
                        self.apply(route, key, result, &mut pending);
                    }
                }
                Event::Current {
                    ts, key, result, ..
                } => {
                    let Some(route) = route else { continue };
                    let known = self.upstream_ts.entry(route).or_insert(ts);
                    *known = (*known).max(ts);
                    self.newest_ts = self.newest_ts.max(ts);
                    self.apply(route, &key, &result, &mut pending);
                }
                Event::AuthFailed { error, .. } => {
                    let held = self.version.held().identity;
                    return Err(End::Auth {
                        error,
                        base_version: IdentityVersion(held.0.saturating_sub(1)),
                    });
                }
                Event::Response {
                    request_id,
                    kind,
                    outcome,
                } => {
                    // What came before the response goes first, then the response itself.
                    self.transition(std::mem::take(&mut pending), None, out)?;
                    self.respond(request_id, kind, *outcome, out);
                }
            }
        }
        self.transition(pending, shared.as_deref(), out)
    }

    fn is_shared(&self, key: &QueryKey) -> bool {
        self.shared_functions.contains(key.path.as_str())
    }

    /// The consistent `ts`: the oldest latest-`ts` among the routes in use.
    fn frontier(&self) -> Option<Timestamp> {
        let shared_in_use = self.queries.values().any(|q| q.route == Route::Shared);
        let mut frontier = *self.upstream_ts.get(&Route::Main)?;
        if shared_in_use {
            frontier = frontier.min(*self.upstream_ts.get(&Route::Shared)?);
        }
        Some(frontier)
    }

    /// Sends the transition to the accepted versions at the frontier, if it moves anything.
    fn transition(
        &mut self,
        pending: Vec<Pending>,
        shared: Option<&SharedText>,
        out: &mut Vec<Effect>,
    ) -> Step {
        let held = self.version.held();
        let step = self.version.step(self.frontier().unwrap_or(held.ts));
        if step.is_still() && pending.is_empty() {
            return Ok(());
        }
        let make = || frames::transition(step.start, step.end, &pending);
        let text = match shared {
            Some(shared) => {
                shared.get_or_make((step.start, step.end, frames::text_ids(&pending)), make)
            }
            None => Utf8Bytes::from(make()),
        };
        self.version.sent(step);
        out.push(Effect::Send(text));
        Ok(())
    }

    /// Applies a result to every client query on (route, key) whose last result differs.
    fn apply(
        &mut self,
        route: Route,
        key: &QueryKey,
        result: &Arc<QueryResult>,
        pending: &mut Vec<Pending>,
    ) {
        let Some(ids) = self.by_key.get(&route).and_then(|keys| keys.get(key)) else {
            return;
        };
        for id in ids {
            let Some(q) = self.queries.get_mut(id) else {
                continue;
            };
            if q.last
                .as_ref()
                .is_some_and(|last| Arc::ptr_eq(last, result) || last.same_as(result))
            {
                continue;
            }
            q.last = Some(result.clone());
            pending.push(Pending::Result(*id, result.clone()));
        }
    }

    fn subscribe(&mut self, query_id: QueryId, key: QueryKey, out: &mut Vec<Effect>) {
        let route = if self.identity.is_some() && self.is_shared(&key) {
            Route::Shared
        } else {
            Route::Main
        };
        if route == Route::Shared && !self.shared_attached {
            self.shared_attached = true;
            out.push(Effect::AttachShared);
        }
        let ids = self
            .by_key
            .entry(route)
            .or_default()
            .entry(key.clone())
            .or_default();
        let first = ids.is_empty();
        ids.insert(query_id);
        let query = ClientQuery {
            key: Some(key.clone()),
            route,
            last: None,
        };
        self.queries.insert(query_id, query);
        if first {
            out.push(Effect::Subscribe(route, key));
        }
    }

    /// Removes a query; `false` if it was not in the set.
    fn unsubscribe(&mut self, query_id: QueryId, out: &mut Vec<Effect>) -> bool {
        let Some(q) = self.queries.remove(&query_id) else {
            return false;
        };
        let Some(key) = q.key else { return true };
        let keys = self.by_key.entry(q.route).or_default();
        let now_empty = keys.get_mut(&key).is_some_and(|ids| {
            ids.remove(&query_id);
            ids.is_empty()
        });
        if now_empty {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_key.remove(&q.route);
            }
            out.push(Effect::Unsubscribe(q.route, key));
        }
        true
    }

    fn modify_query_set(
        &mut self,
        base: QuerySetVersion,
        new: QuerySetVersion,
        modifications: Vec<QuerySetModification>,
        out: &mut Vec<Effect>,
    ) -> Step {
        self.version
            .accept_query_set(base, new)
            .map_err(|e| End::Fatal(e.to_string()))?;
        let mut pending = Vec::new();
        for m in modifications {
            match m {
                QuerySetModification::Add {
                    query_id,
                    udf_path,
                    args,
                    journal,
                    ..
                } => {
                    if self.queries.contains_key(&query_id) {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is already in the query set"
                        )));
                    }
                    let [args] = &args[..] else {
                        return Err(End::Fatal(format!(
                            "expected one arguments object, got {}",
                            args.len()
                        )));
                    };
                    match QueryKey::new(&udf_path, args, journal) {
                        Ok(key) => self.subscribe(query_id, key, out),
                        Err(message) => {
                            let failed = Arc::new(QueryResult::Failed {
                                message,
                                data: None,
                                log_lines: vec![],
                                journal: None,
                            });
                            let query = ClientQuery {
                                key: None,
                                route: Route::Main,
                                last: Some(failed.clone()),
                            };
                            self.queries.insert(query_id, query);
                            pending.push(Pending::Result(query_id, failed));
                        }
                    }
                    self.stats
                        .downstream_subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
                QuerySetModification::Remove { query_id } => {
                    if !self.unsubscribe(query_id, out) {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is not in the query set"
                        )));
                    }
                    pending.retain(|p| p.query_id() != query_id);
                    pending.push(Pending::Removed(query_id));
                    self.stats
                        .downstream_subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.transition(pending, None, out)
    }

    /// Moves the main route's queries to the new identity's upstream; shared ones stay.
    fn switch_identity(&mut self, user: Option<VerifiedUser>, out: &mut Vec<Effect>) {
        let moving: Vec<(QueryId, QueryKey)> = self
            .queries
            .iter()
            .filter(|(_, q)| q.route == Route::Main)
            .filter_map(|(id, q)| q.key.clone().map(|k| (*id, k)))
            .collect();
        for (id, _) in &moving {
            self.unsubscribe(*id, out);
        }
        // Signing out: the anonymous upstream, already attached for shared queries, is main.
        let reuse_shared = user.is_none() && self.shared_attached;
        out.push(Effect::SwitchMain {
            user: user.clone(),
            reuse_shared,
        });
        if reuse_shared {
            self.shared_attached = false;
            if let Some(keys) = self.by_key.remove(&Route::Shared) {
                self.by_key.insert(Route::Main, keys);
            }
            for q in self.queries.values_mut() {
                q.route = Route::Main;
            }
            match self.upstream_ts.remove(&Route::Shared) {
                Some(ts) => self.upstream_ts.insert(Route::Main, ts),
                None => self.upstream_ts.remove(&Route::Main),
            };
        } else {
            // A new upstream: its `ts` is unknown until it sends.
            self.upstream_ts.remove(&Route::Main);
        }
        self.identity = user;
        for (id, key) in moving {
            self.subscribe(id, key, out);
        }
    }

    fn request(
        &mut self,
        kind: RequestKind,
        request_id: RequestId,
        udf_path: String,
        args: Vec<Value>,
        out: &mut Vec<Effect>,
    ) -> Step {
        if self.in_flight >= self.max_in_flight {
            return Err(End::Fatal(format!(
                "more than {} requests in flight",
                self.max_in_flight
            )));
        }
        let [args] = <[Value; 1]>::try_from(args)
            .map_err(|a| End::Fatal(format!("expected one arguments object, got {}", a.len())))?;
        self.in_flight += 1;
        out.push(Effect::Request {
            request_id,
            kind,
            udf_path,
            args,
        });
        Ok(())
    }

    /// A mutation's or action's answer. The upstream queued it before any transition that
    /// reaches its `ts`, so the client sees them in Convex's order.
    fn respond(
        &mut self,
        request_id: RequestId,
        kind: RequestKind,
        outcome: Result<RequestOutcome, String>,
        out: &mut Vec<Effect>,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let outcome = outcome.unwrap_or_else(|error| RequestOutcome {
            success: false,
            result: Value::String(error),
            ts: None,
            log_lines: vec![],
            error_data: None,
        });
        let message = match kind {
            RequestKind::Mutation => ServerMessage::MutationResponse {
                request_id,
                success: outcome.success,
                result: outcome.result,
                ts: outcome.ts,
                log_lines: outcome.log_lines,
                error_data: outcome.error_data,
            },
            RequestKind::Action => ServerMessage::ActionResponse {
                request_id,
                success: outcome.success,
                result: outcome.result,
                log_lines: outcome.log_lines,
                error_data: outcome.error_data,
            },
        };
        out.push(Effect::Send(Utf8Bytes::from(message.to_text())));
    }

    /// Checks the invariants; `Err` names the first one broken.
    pub fn validate(&self) -> Result<(), String> {
        for (id, q) in &self.queries {
            let Some(key) = &q.key else { continue };
            let indexed = self
                .by_key
                .get(&q.route)
                .and_then(|keys| keys.get(key))
                .is_some_and(|ids| ids.contains(id));
            if !indexed {
                return Err(format!("query {id} is missing from its route's index"));
            }
            match (q.route, self.is_shared(key), self.identity.is_some()) {
                (Route::Shared, true, true)
                | (Route::Main, false, _)
                | (Route::Main, true, false) => {}
                (route, shared, signed_in) => {
                    return Err(format!(
                        "query {id} on {route:?} (shared function: {shared}, signed in: {signed_in})"
                    ));
                }
            }
        }
        for (route, keys) in &self.by_key {
            if *route == Route::Shared && !self.shared_attached {
                return Err("queries on the shared route without its upstream".into());
            }
            for (key, ids) in keys {
                if ids.is_empty() {
                    return Err(format!("an empty index entry for {key:?}"));
                }
                for id in ids {
                    let q = self.queries.get(id);
                    if q.is_none_or(|q| q.route != *route || q.key.as_ref() != Some(key)) {
                        return Err(format!("index entry {id} does not match its query"));
                    }
                }
            }
        }
        let held = self.version.held().ts;
        if held > self.newest_ts {
            return Err(format!(
                "held ts {held:?} is beyond every upstream's ({:?})",
                self.newest_ts
            ));
        }
        if self.in_flight > self.max_in_flight {
            return Err(format!("{} requests in flight", self.in_flight));
        }
        Ok(())
    }
}

fn key_of(user: Option<&VerifiedUser>) -> IdentityKey {
    user.map_or(IdentityKey::Anonymous, |u| u.key.clone())
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
