//! One client socket's protocol state, without I/O: its query ids and versions, which upstream
//! route serves each query, and the transitions it is owed.
//!
//! Rules kept here (checked by [`ClientSession::validate`] after every step in tests, and by
//! the client model on every frame in the property tests):
//! - versions follow [`ClientVersion`]: a transition starts at what the client holds, the query
//!   set moves only with `ModifyQuerySet`, the identity by one per `Authenticate`;
//! - as Convex's sync worker, the transition that reaches a query-set version carries the
//!   result of every query that version added, and the one that moves the identity version
//!   carries the new identity's results of the queries that moved upstream: a version is held
//!   back until those results are known, and results of queries in a version the client does
//!   not hold yet wait with it (convex-js rebuilds its results after a reconnect, and a
//!   transition without them shows every query as loading);
//! - `ts` is the minimum of the latest `ts` of the routes the socket uses (a consistent
//!   frontier), never beyond what an upstream sent and never backwards;
//! - a query of a function not in `QUERY_SHARED_FUNCTIONS` is only ever served by the
//!   socket's own identity's upstream (the main route); shared functions of a signed-in socket
//!   go through the anonymous upstream (the shared route);
//! - an upstream key is subscribed once per socket, however many query ids use it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use edge_convex::sync::{RequestKind, TokenType};
use edge_convex::versions::ClientVersion;
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, StateVersion, Timestamp,
};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::frames::{self, Pending};
use crate::identity::{IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::owners::Budget;
use crate::upstream::{Event, QueryResult, SharedText};

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
    /// A `Transition`'s text, shared with other sockets: the driver adds this socket's
    /// `clientClockSkew` and `serverTs` as it writes it.
    Transition(Utf8Bytes),
    /// Attach to the anonymous upstream as the shared route (first shared query signed in).
    AttachShared,
    /// The identity changed: the main route becomes the upstream of `user` (anonymous when
    /// `None`); with `reuse_shared`, the shared route's upstream (already anonymous) is it.
    ///
    /// With `keep_previous`, the previous main upstream still owes answers to requests of this
    /// socket: its attachment stays (its queries already released, its other events ignored)
    /// until [`Effect::Release`] names its identity, or the socket switches back to it.
    SwitchMain {
        user: Option<VerifiedUser>,
        reuse_shared: bool,
        keep_previous: bool,
    },
    /// The upstream of this identity, kept by a [`Effect::SwitchMain`] with `keep_previous`,
    /// answered the socket's last request on it: detach from it now.
    Release(IdentityKey),
    Subscribe(Route, QueryKey),
    Unsubscribe(Route, QueryKey),
    /// A mutation answer the client does not hold yet has a `ts` beyond this route's latest:
    /// its upstream asks Convex for a transition at a fresh `ts`, so the frontier reaches the
    /// mutation's (Convex sends a connection transitions only when its query set, identity or
    /// results change, or after its own requests).
    Advance(Route),
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
    /// The socket's token reached its `exp` before the client replaced it: `AuthError` at the
    /// held identity version with `authUpdateAttempted: false`, as Convex's `TokenExpired`.
    Expired { base_version: IdentityVersion },
    /// The client did not read fast enough.
    TooSlow,
    /// A token that could not be checked (auth's JWKS unreachable): the socket closes with no
    /// `AuthError`, so the client keeps its token and sends it again when it reconnects.
    AuthUnavailable(String),
}

/// An `Authenticate` whose token the driver must verify before [`ClientSession::authenticated`].
#[derive(Debug)]
pub struct TokenToVerify {
    pub base: IdentityVersion,
    pub token: String,
}

/// What one client socket may hold in its query set (see README, "Limits").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Queries in the set (`QUERY_MAX_QUERIES_PER_SOCKET`); an `Add` beyond it is a
    /// `FatalError` for this socket.
    pub max_queries: usize,
    /// One query's size, path + canonical arguments + journal, in bytes
    /// (`QUERY_MAX_QUERY_BYTES`); a larger query fails alone (`QueryFailed`), like a Convex
    /// query whose arguments are too large, and never reaches an upstream.
    pub max_query_bytes: usize,
    /// All the set's queries together, in bytes (`QUERY_MAX_SOCKET_QUERY_BYTES`); an `Add`
    /// beyond it is a `FatalError` for this socket.
    pub max_socket_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            max_queries: 4096,
            max_query_bytes: 1024 * 1024,
            max_socket_bytes: 8 * 1024 * 1024,
        }
    }
}

/// A query removed in a query-set version the client does not hold yet.
#[derive(Debug)]
struct Gap {
    added: QuerySetVersion,
    removed: QuerySetVersion,
    route: Route,
    /// The client holds a result of it that is right below this identity version (`None`:
    /// no result the client may keep).
    held_below: Option<IdentityVersion>,
}

/// One client query.
#[derive(Debug)]
struct ClientQuery {
    /// `None` when the path was invalid (answered locally with a failure).
    key: Option<QueryKey>,
    route: Route,
    last: Option<Arc<QueryResult>>,
    /// The query-set version that added it: no transition reaches it before `last` is known.
    added_in: QuerySetVersion,
    /// The identity version it was (re)subscribed under: no transition moves the identity
    /// there before `last` (from that identity's upstream) is known.
    owed_identity: IdentityVersion,
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
    /// The newest `ts` of a mutation answered to this socket that the client does not hold
    /// yet: convex-js resolves the mutation only once a transition reaches it.
    owed_ts: Option<Timestamp>,
    /// Routes with a transition on its way (asked to advance, or the route of an upstream that
    /// answered a mutation, which Convex follows with a transition), until they send one.
    asked: BTreeSet<Route>,
    /// Answers to requests waiting for the transition that reaches the accepted versions.
    held_responses: Vec<(Effect, Option<Timestamp>)>,
    /// Changes not sent yet because they belong to versions the client does not hold yet.
    deferred: Vec<Pending>,
    /// The query-set version each deferred `QueryRemoved` belongs to.
    removed_in: HashMap<QueryId, QuerySetVersion>,
    /// Queries removed in a version the client does not hold yet: a transition ends between
    /// the versions that added and removed one only if the client holds a result of it that
    /// is still right there.
    gaps: Vec<Gap>,
    /// The socket's requests not answered yet, each with the identity whose upstream carries
    /// it (the main route's when it was made): every one is answered exactly once.
    requests: HashMap<RequestId, IdentityKey>,
    /// The requests run upstream, each charged to the budget until answered.
    charged: BTreeSet<RequestId>,
    max_in_flight: usize,
    limits: QueryLimits,
    /// [`QueryKey::bytes`] of every query with a key, summed.
    query_bytes: usize,
    /// The same queries charged to the socket's identity (or, signed out, its address)
    /// across all its sockets.
    budget: Budget,
    stats: Arc<Stats>,
}

type Step = Result<(), End>;

impl ClientSession {
    pub fn new(
        shared_functions: Arc<BTreeSet<String>>,
        max_in_flight: usize,
        limits: QueryLimits,
        budget: Budget,
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
            owed_ts: None,
            asked: BTreeSet::new(),
            deferred: Vec::new(),
            held_responses: Vec::new(),
            removed_in: HashMap::new(),
            gaps: Vec::new(),
            requests: HashMap::new(),
            charged: BTreeSet::new(),
            max_in_flight,
            limits,
            query_bytes: 0,
            budget,
            stats,
        }
    }

    /// The `exp` (Unix seconds) of the token the socket holds; `None` when signed out.
    pub fn expires_at(&self) -> Option<i64> {
        self.identity.as_ref().map(|u| u.expires_at)
    }

    /// The identity version the client holds.
    pub fn identity_version(&self) -> IdentityVersion {
        self.version.held().identity
    }

    /// Every request of the socket is answered, and the client holds a transition at or past
    /// every mutation answered: convex-js would send none of them again on a new socket.
    pub fn settled(&self) -> bool {
        self.requests.is_empty()
            && self.held_responses.is_empty()
            && self.owed_ts.is_none_or(|ts| ts <= self.version.held().ts)
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
                component_path,
            } => {
                root_component(component_path.as_deref())?;
                self.request(RequestKind::Mutation, request_id, udf_path, args, out)?
            }
            ClientMessage::Action {
                request_id,
                udf_path,
                args,
                component_path,
            } => {
                root_component(component_path.as_deref())?;
                self.request(RequestKind::Action, request_id, udf_path, args, out)?
            }
        }
        Ok(None)
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
                    self.asked.remove(&route);
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
                // From an upstream the socket left (a token it no longer uses): nothing to do.
                Event::AuthFailed { .. } if route.is_none() => {}
                // The token reached its `exp` on the upstream before this socket's own timer
                // fired: the same end as that timer's, at the identity the socket holds.
                Event::AuthFailed { expired: true, .. } => {
                    return Err(End::Expired {
                        base_version: self.version.held().identity,
                    });
                }
                // The base of the last `Authenticate` accepted: the transition confirming it
                // may still be held back for its results.
                Event::AuthFailed { error, .. } => {
                    let accepted = self.version.identity();
                    return Err(End::Auth {
                        error,
                        base_version: IdentityVersion(accepted.0.saturating_sub(1)),
                    });
                }
                Event::Response {
                    request_id,
                    kind,
                    outcome,
                    replayed,
                } => {
                    // What came before the response goes first, then the response itself.
                    self.transition(std::mem::take(&mut pending), None, out)?;
                    self.respond(request_id, kind, *outcome, replayed, out);
                }
                // The driver's (it holds the request to run).
                Event::Rerun { .. } => {}
            }
        }
        self.transition(pending, shared.as_deref(), out)?;
        self.advance_lagging(out);
        Ok(())
    }

    fn is_shared(&self, key: &QueryKey) -> bool {
        self.shared_functions.contains(key.path.as_str())
    }

    /// The routes whose latest `ts` the frontier takes: the main route, and the shared one
    /// while a query uses it.
    fn routes_in_use(&self) -> impl Iterator<Item = Route> + '_ {
        let shared_in_use = self.queries.values().any(|q| q.route == Route::Shared);
        [Route::Main, Route::Shared]
            .into_iter()
            .filter(move |r| *r == Route::Main || shared_in_use)
    }

    /// The consistent `ts`: the oldest latest-`ts` among the routes in use.
    fn frontier(&self) -> Option<Timestamp> {
        self.routes_in_use()
            .map(|r| self.upstream_ts.get(&r).copied())
            .min()
            .flatten()
    }

    /// A mutation answered at `ts` by the upstream of `carrier` (`None`: by the journal, for
    /// a mutation sent again): owed until the client holds `ts`. The carrier's route, if the
    /// socket still uses it, has a transition on its way: Convex sends the connection that ran
    /// a mutation one after it, at or beyond its `ts`. An answer from the journal has none.
    fn owe_mutation(&mut self, ts: Timestamp, carrier: Option<&IdentityKey>) {
        if ts <= self.version.held().ts {
            return;
        }
        self.owed_ts = self.owed_ts.max(Some(ts));
        let Some(carrier) = carrier else { return };
        if *carrier == key_of(self.identity.as_ref()) {
            self.asked.insert(Route::Main);
        } else if *carrier == IdentityKey::Anonymous && self.shared_attached {
            self.asked.insert(Route::Shared);
        }
    }

    /// Asks each route in use whose latest `ts` is below the owed mutation `ts` (or not known
    /// yet), and has no transition on its way, to advance: an idle upstream would hold the
    /// frontier below the mutation's `ts` and convex-js would never resolve it. Run after every
    /// step that can leave a route behind: an answer, a transition still below it (the answer
    /// to a `ModifyQuerySet` Convex handled before the commit, which the upstream waited for
    /// instead of asking), an identity change (a new main route).
    fn advance_lagging(&mut self, out: &mut Vec<Effect>) {
        let Some(owed) = self.owed_ts else { return };
        if owed <= self.version.held().ts {
            self.owed_ts = None;
            return;
        }
        let lagging: Vec<Route> = self
            .routes_in_use()
            .filter(|r| !self.asked.contains(r))
            .filter(|r| self.upstream_ts.get(r).is_none_or(|known| *known < owed))
            .collect();
        for route in lagging {
            self.asked.insert(route);
            out.push(Effect::Advance(route));
        }
    }

    /// Sends the transition to the accepted versions at the frontier, if it moves anything;
    /// a version whose results are not all known yet is held back (see the module rules), and
    /// changes belonging to it wait in `deferred`.
    fn transition(
        &mut self,
        pending: Vec<Pending>,
        shared: Option<&SharedText>,
        out: &mut Vec<Effect>,
    ) -> Step {
        let held = self.version.held();
        let mut step = self.version.step(self.frontier().unwrap_or(held.ts));
        step.end = self.reachable(held, step.end);
        let waited = !self.deferred.is_empty();
        let mut now = Vec::with_capacity(pending.len());
        let mut later = Vec::new();
        for p in std::mem::take(&mut self.deferred)
            .into_iter()
            .chain(pending)
        {
            match self.belongs_to(&p) {
                None => {}
                Some(needs) if needs.0 <= step.end.query_set && needs.1 <= step.end.identity => {
                    if let Pending::Removed(id) = &p {
                        self.removed_in.remove(id);
                    }
                    now.push(p);
                }
                Some(_) => later.push(p),
            }
        }
        // A fan-out's text is shared only by sockets that send exactly its changes.
        let shared = shared.filter(|_| !waited && later.is_empty());
        self.deferred = later;
        if step.is_still() && now.is_empty() {
            self.release_responses(out);
            return Ok(());
        }
        let make = || frames::transition(step.start, step.end, &now);
        let text = match shared {
            Some(shared) => {
                shared.get_or_make((step.start, step.end, frames::text_ids(&now)), make)
            }
            None => Utf8Bytes::from(make()),
        };
        self.version.sent(step);
        out.push(Effect::Transition(text));
        self.release_responses(out);
        Ok(())
    }

    /// Whether the client holds the query-set and identity versions it asked for.
    fn caught_up(&self) -> bool {
        let held = self.version.held();
        held.query_set == self.version.query_set() && held.identity == self.version.identity()
    }

    /// Sends the answers held for a transition, once the client caught up.
    fn release_responses(&mut self, out: &mut Vec<Effect>) {
        if !self.caught_up() || self.held_responses.is_empty() {
            return;
        }
        let mut reached = None;
        for (answer, ts) in std::mem::take(&mut self.held_responses) {
            out.push(answer);
            reached = reached.max(ts);
        }
        self.owe_transition(reached, out);
    }

    /// convex-js resolves a mutation only on a transition reaching its `ts`, and Convex sends
    /// one after every mutation answer: one answered with a `ts` the client already holds (a
    /// mutation sent again after a reconnect of its upstream, answered with its first commit's
    /// `ts`) gets a transition that moves nothing, as Convex's would.
    fn owe_transition(&mut self, mutation_ts: Option<Timestamp>, out: &mut Vec<Effect>) {
        let held = self.version.held();
        if mutation_ts.is_some_and(|ts| ts <= held.ts) {
            out.push(Effect::Transition(Utf8Bytes::from(frames::transition(
                held,
                held,
                &[],
            ))));
        }
    }

    /// The furthest versions a transition may reach from `held` towards `end` (the query-set
    /// version first, then the identity): every query in the set at the reached query-set
    /// version has a result the client may hold there, either one known from the upstream
    /// that serves it under the reached identity, or, below the identity it was resubscribed
    /// under, the one the client already holds. Staying at `held` is always allowed.
    fn reachable(&mut self, held: StateVersion, end: StateVersion) -> StateVersion {
        self.gaps.retain(|gap| gap.removed > held.query_set);
        // (added_in, owed_identity, result known) of the queries and of the gaps.
        let owed: Vec<(QuerySetVersion, IdentityVersion, bool)> = self
            .queries
            .values()
            .filter(|q| q.key.is_some())
            .filter(|q| q.last.is_none() || q.owed_identity > held.identity)
            .map(|q| (q.added_in, q.owed_identity, q.last.is_some()))
            .collect();
        let fits = |query_set: QuerySetVersion, identity: IdentityVersion| {
            let queries_fit = owed.iter().all(|(added, owed_identity, known)| {
                *added > query_set
                    || if identity >= *owed_identity {
                        *known
                    } else {
                        *added <= held.query_set
                    }
            });
            let gaps_fit = self.gaps.iter().all(|gap| {
                gap.added > query_set
                    || gap.removed <= query_set
                    || gap.held_below.is_some_and(|below| identity < below)
            });
            queries_fit && gaps_fit
        };
        for query_set in (held.query_set.0..=end.query_set.0).rev() {
            for identity in (held.identity.0..=end.identity.0).rev() {
                let (query_set, identity) = (QuerySetVersion(query_set), IdentityVersion(identity));
                if fits(query_set, identity) {
                    return StateVersion {
                        query_set,
                        identity,
                        ts: end.ts,
                    };
                }
            }
        }
        StateVersion { ts: end.ts, ..held }
    }

    /// The query-set and identity versions a change belongs to; `None` for the result of a
    /// query no longer in the set (dropped).
    fn belongs_to(&self, p: &Pending) -> Option<(QuerySetVersion, IdentityVersion)> {
        match p {
            Pending::Result(id, _) => self.queries.get(id).map(|q| (q.added_in, q.owed_identity)),
            Pending::Removed(id) => Some((
                self.removed_in
                    .get(id)
                    .copied()
                    .unwrap_or(QuerySetVersion(0)),
                IdentityVersion(0),
            )),
        }
    }
}

/// The proxy calls every function as the root component's: one of another component ends the
/// socket as Convex ends it ([`edge_convex::sync::root_component`]), rather than run the root's
/// function of that name.
fn root_component(component_path: Option<&str>) -> Result<(), End> {
    edge_convex::sync::root_component(component_path).map_err(End::Fatal)
}

fn key_of(user: Option<&VerifiedUser>) -> IdentityKey {
    user.map_or(IdentityKey::Anonymous, |u| u.key.clone())
}

mod identity;
mod invariants;
mod query_set;
mod requests;

#[cfg(test)]
mod harness;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
