//! The state of one upstream connection, without I/O: the reference-counted query set, the
//! ids Convex knows, the token, the requests in flight, the results.
//!
//! Rules kept here (checked by [`UpstreamState::validate`] after every step in tests):
//! - a key is subscribed upstream once, whatever the number of listeners; its refcount is the
//!   number of (listener, subscribe) pairs still held, and it is removed upstream when that
//!   reaches zero;
//! - towards Convex this is a client like any other: `ModifyQuerySet` from the last version
//!   sent to one more, `Authenticate` from the last identity version sent, the token before
//!   any query-set change that follows it, everything re-added under fresh query ids after a
//!   reconnect;
//! - a transition from Convex must start where the last one ended, else the connection is
//!   broken; only results that changed are passed on, once, to every listener;
//! - a listener that subscribes to a key already live gets its current value at once, in
//!   order with later events.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edge_convex::sync::{QuerySetModification, RequestKind, TokenType};
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, StateVersion,
};
use serde_json::Value;

use super::{Event, ListenerId, QueryResult, RequestOutcome, UpstreamId, Values, lock};
use crate::journal::Ticket;
use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::revocations::Revocation;

/// Who an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    One(ListenerId),
    All,
}

/// What a step asks the driver to do, in order: messages for Convex, events for listeners.
#[derive(Debug, Default)]
pub struct Outbox {
    pub to_convex: Vec<ClientMessage>,
    pub events: Vec<(Audience, Event)>,
    /// Convex's answers to journaled mutations, for [`crate::journal`] (after the events).
    pub settled: Vec<(Ticket, RequestOutcome)>,
}

/// One key subscribed upstream.
#[derive(Debug)]
struct Sub {
    /// The query id on the current connection (`None` while disconnected).
    query_id: Option<QueryId>,
    refcount: usize,
    result: Option<Arc<QueryResult>>,
}

/// A mutation or action forwarded to Convex under our own request id, kept until Convex
/// answers it: a mutation is sent again on the next connection if the one it went on is lost
/// (as convex-js's `RequestManager.restart` does; Convex runs a `(sessionId, requestId)` once).
#[derive(Debug)]
struct InFlight {
    listener: ListenerId,
    request_id: RequestId,
    kind: RequestKind,
    udf_path: String,
    args: Value,
    /// Sent on the current connection; `false` while it waits for one.
    sent: bool,
    /// Sent on some connection: Convex may have run it.
    went: bool,
    /// Its listener left after it was sent: kept (counted against Convex's cap) until Convex
    /// answers or the connection drops, and the answer goes only to the journal.
    orphaned: bool,
    /// The order requests were made in, the order they are sent again.
    seq: u64,
    /// A client mutation the journal follows ([`crate::journal`]): Convex's answer settles
    /// it, and it is sent again after a lost connection even when its listener left, so the
    /// client's own repeat (waiting on the journal) gets the outcome of the one run.
    ticket: Option<Ticket>,
}

impl InFlight {
    fn message(&self, upstream_id: RequestId) -> ClientMessage {
        let (request_id, udf_path, args) =
            (upstream_id, self.udf_path.clone(), vec![self.args.clone()]);
        match self.kind {
            RequestKind::Mutation => ClientMessage::Mutation {
                request_id,
                udf_path,
                args,
                component_path: None,
            },
            RequestKind::Action => ClientMessage::Action {
                request_id,
                udf_path,
                args,
                component_path: None,
            },
        }
    }
}

/// What an action in flight when the connection to Convex is lost fails with: convex-js's own
/// words (`RequestManager.restart` in `src/browser/sync/request_manager.ts`). An action is not
/// idempotent, so it is never sent again; it may or may not have run.
pub const ACTION_LOST: &str = "Connection lost while action was in flight";

/// The token the connection authenticates with.
#[derive(Debug)]
struct Token {
    value: String,
    /// Unix seconds.
    expires_at: i64,
    /// Unix seconds.
    issued_at: i64,
}

/// The versions sent on the current connection.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    query_set: QuerySetVersion,
    identity: IdentityVersion,
}

#[derive(Debug)]
pub struct UpstreamState {
    id: UpstreamId,
    stats: Arc<Stats>,
    subs: HashMap<QueryKey, Sub>,
    /// `subs`' results, published for [`super::Upstream::lookup`].
    values: Values,
    by_query_id: HashMap<QueryId, QueryKey>,
    /// Each listener's keys with how many times it subscribed each.
    listeners: HashMap<ListenerId, HashMap<QueryKey, usize>>,
    /// The freshest token.
    token: Option<Token>,
    token_dirty: bool,
    /// What Convex last said this connection holds.
    version: StateVersion,
    /// The newest `ts` Convex ever sent this upstream, on any connection: a reconnect's
    /// `Connect.maxObservedTimestamp`, so a Convex replica behind it refuses the connection
    /// rather than serve older data (Convex's linearizability check).
    max_observed: edge_convex::Timestamp,
    next_query_id: u32,
    next_request_id: u32,
    next_request_seq: u64,
    requests: HashMap<RequestId, InFlight>,
    /// Query-set changes not sent yet.
    pending: Vec<QuerySetModification>,
    /// `Some` while connected.
    sent: Option<Sent>,
    /// Largest `ModifyQuerySet` text sent to Convex, in bytes: the pending changes go in as
    /// many messages as it takes (a reconnect re-adds every live key), each under Convex's
    /// WebSocket frame limit.
    max_message_bytes: usize,
}

/// Default of [`UpstreamState::with_max_message_bytes`]: 4 MiB, half of devconvex's 8 MiB
/// frame limit and a quarter of Convex's (tungstenite's default 16 MiB frame).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// Room left in a `ModifyQuerySet` for its envelope (`type`, the versions, brackets).
const ENVELOPE_BYTES: usize = 128;

/// Mutations, and separately actions, one upstream may have unanswered: Convex's own cap per
/// WebSocket (`OPERATION_QUEUE_BUFFER_SIZE` in `crates/sync/src/worker.rs`), past which it
/// ends the socket with `TooManyConcurrentMutations` /
/// `TooManyInflightActionsForSingleClient`. Every socket of an identity shares its upstream,
/// so the upstream refuses the request beyond it itself.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 1000;

impl UpstreamState {
    pub fn new(id: UpstreamId, stats: Arc<Stats>, values: Values) -> Self {
        UpstreamState {
            id,
            stats,
            subs: HashMap::new(),
            values,
            by_query_id: HashMap::new(),
            listeners: HashMap::new(),
            token: None,
            token_dirty: false,
            version: StateVersion::default(),
            max_observed: edge_convex::Timestamp::default(),
            next_query_id: 0,
            next_request_id: 0,
            next_request_seq: 0,
            requests: HashMap::new(),
            pending: Vec::new(),
            sent: None,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }

    /// Caps each `ModifyQuerySet` sent to Convex at `bytes` of JSON text. A single
    /// modification larger than that still goes alone (the client side bounds a key's size
    /// below this, see `QUERY_MAX_QUERY_BYTES`).
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    pub fn id(&self) -> UpstreamId {
        self.id
    }

    pub fn is_connected(&self) -> bool {
        self.sent.is_some()
    }

    /// No listener is attached.
    pub fn is_idle(&self) -> bool {
        self.listeners.is_empty()
    }

    /// A journaled mutation is still unanswered: the upstream stays until Convex answers it
    /// (a client's repeat waits for that answer).
    pub fn owes_journal(&self) -> bool {
        self.requests.values().any(|r| r.ticket.is_some())
    }

    /// Keys subscribed upstream.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    pub fn attach(&mut self, listener: ListenerId) {
        self.listeners.entry(listener).or_default();
    }

    /// Removes a listener, releases everything it subscribed and drops its requests not sent
    /// yet (those Convex has stay counted until answered; the answer goes nowhere).
    pub fn detach(&mut self, listener: ListenerId) {
        if let Some(keys) = self.listeners.remove(&listener) {
            for (key, n) in keys {
                self.release(&key, n);
            }
        }
        // A journaled mutation sent on an earlier connection may have run: it stays.
        self.requests
            .retain(|_, r| r.listener != listener || r.sent || (r.went && r.ticket.is_some()));
        for r in self.requests.values_mut() {
            if r.listener == listener {
                r.orphaned = true;
            }
        }
    }

    pub fn subscribe(&mut self, listener: ListenerId, key: QueryKey, out: &mut Outbox) {
        let Some(keys) = self.listeners.get_mut(&listener) else {
            return;
        };
        *keys.entry(key.clone()).or_default() += 1;
        if let Some(sub) = self.subs.get_mut(&key) {
            sub.refcount += 1;
            // A late subscriber gets the live value at once, in order.
            if let Some(result) = sub.result.clone() {
                let event = Event::Current {
                    upstream: self.id,
                    ts: self.version.ts,
                    key,
                    result,
                };
                out.events.push((Audience::One(listener), event));
            }
            return;
        }
        let query_id = self.sent.map(|_| self.alloc_query_id(&key));
        if let Some(query_id) = query_id {
            self.pending.push(add(query_id, &key, key.journal.clone()));
        }
        self.subs.insert(
            key,
            Sub {
                query_id,
                refcount: 1,
                result: None,
            },
        );
        self.stats
            .upstream_subscriptions
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn unsubscribe(&mut self, listener: ListenerId, key: &QueryKey) {
        let Some(keys) = self.listeners.get_mut(&listener) else {
            return;
        };
        let Some(n) = keys.get_mut(key) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            keys.remove(key);
        }
        self.release(key, 1);
    }

    /// Keeps the token that expires last.
    pub fn token(&mut self, value: String, expires_at: i64, issued_at: i64) {
        if self
            .token
            .as_ref()
            .is_none_or(|t| expires_at > t.expires_at)
        {
            self.token = Some(Token {
                value,
                expires_at,
                issued_at,
            });
            self.token_dirty = true;
        }
    }

    /// Auth's session log ended this identity's session, or changed its user after the token
    /// was issued: every listener is told, as if Convex refused the token, and the token is
    /// dropped. A user entry spares a token issued after it.
    pub fn revoke(&mut self, revocation: &Revocation, reason: &str, out: &mut Outbox) {
        let spared = match (revocation, &self.token) {
            (Revocation::User { before_ms, .. }, Some(t)) => {
                !crate::revocations::issued_before(t.issued_at, *before_ms)
            }
            _ => false,
        };
        if spared {
            return;
        }
        tracing::info!(upstream = self.id, reason, "session log revoked the token");
        self.token = None;
        let event = Event::AuthFailed {
            upstream: self.id,
            error: format!("the token was revoked ({reason})"),
            expired: false,
        };
        out.events.push((Audience::All, event));
    }

    /// Forwards a listener's mutation or action under an upstream request id. While
    /// disconnected it waits and goes on the next connection, as convex-js holds a request made
    /// while its socket is down. Refused at once when [`MAX_REQUESTS_IN_FLIGHT`] of its kind
    /// (sent or waiting) are unanswered; ignored from a listener not attached (its answer would
    /// go nowhere). A `ticket` dropped with a request that never reached Convex tells the
    /// journal so ([`Ticket`]).
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &mut self,
        listener: ListenerId,
        request_id: RequestId,
        kind: RequestKind,
        udf_path: String,
        args: Value,
        ticket: Option<Ticket>,
        out: &mut Outbox,
    ) {
        if !self.listeners.contains_key(&listener) {
            return;
        }
        let in_flight = self.requests.values().filter(|r| r.kind == kind).count();
        if in_flight >= MAX_REQUESTS_IN_FLIGHT {
            // Convex would end the whole upstream, every socket of the identity with it.
            let what = match kind {
                RequestKind::Mutation => "mutations",
                RequestKind::Action => "actions",
            };
            let outcome = Box::new(Err(format!(
                "too many concurrent {what} for this identity: at most \
                 {MAX_REQUESTS_IN_FLIGHT} in flight; try again"
            )));
            let event = Event::Response {
                request_id,
                kind,
                outcome,
                replayed: false,
            };
            out.events.push((Audience::One(listener), event));
            return;
        }
        let upstream_id = RequestId(self.next_request_id);
        self.next_request_id = self.next_request_id.wrapping_add(1);
        let request = InFlight {
            listener,
            request_id,
            kind,
            udf_path,
            args,
            sent: self.is_connected(),
            went: self.is_connected(),
            orphaned: false,
            seq: self.next_request_seq,
            ticket,
        };
        self.next_request_seq += 1;
        if request.sent {
            // What the listener did before (a token, a subscription) reaches Convex first.
            self.flush(out);
            out.to_convex.push(request.message(upstream_id));
        }
        self.requests.insert(upstream_id, request);
    }

    /// A new connection: `Connect`, the token, every live key under a fresh query id.
    pub fn connected(&mut self, session_id: String, out: &mut Outbox) {
        self.sent = Some(Sent::default());
        self.version = StateVersion::default();
        self.by_query_id.clear();
        self.pending.clear();
        self.next_query_id = 0;
        self.token_dirty = self.token.is_some();
        out.to_convex.push(ClientMessage::Connect {
            session_id,
            connection_count: 0,
            last_close_reason: None,
            max_observed_timestamp: (self.max_observed > edge_convex::Timestamp::default())
                .then_some(self.max_observed),
            client_ts: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_millis() as f64),
            ),
        });
        let mut keys: Vec<QueryKey> = self.subs.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let query_id = self.alloc_query_id(&key);
            // As Convex's own client does on a reconnect (local_state.ts `restart`): a query
            // Convex has answered goes back with the journal of its latest result, so a page
            // keeps the bounds it had; one never answered, with the journal its key names.
            let journal = match self.subs.get(&key).and_then(|s| s.result.as_deref()) {
                Some(result) => result.journal().map(str::to_owned),
                None => key.journal.clone(),
            };
            self.pending.push(add(query_id, &key, journal));
        }
        self.flush(out);
        // Then every request Convex has not answered, in the order they were made: those made
        // while disconnected, and the mutations the lost connection carried (Convex runs a
        // `(sessionId, requestId)` once and answers a repeat with the first outcome).
        let mut waiting: Vec<(u64, RequestId)> =
            self.requests.iter().map(|(id, r)| (r.seq, *id)).collect();
        waiting.sort_unstable();
        for (_, id) in waiting {
            if let Some(r) = self.requests.get_mut(&id) {
                r.sent = true;
                r.went = true;
                out.to_convex.push(r.message(id));
            }
        }
    }

    /// The connection is gone. As convex-js's `RequestManager.restart`: mutations it carried
    /// wait to be sent again on the next connection, actions it carried fail with
    /// [`ACTION_LOST`] (they may or may not have run), and requests not sent keep waiting. A
    /// sent request whose listener has left is dropped, but for a journaled mutation: Convex
    /// may have run it, and only a send under the same upstream request id gets that run's
    /// answer for the client's repeat. That holds whatever token the next connection has, or
    /// none (its token revoked or refused meanwhile): Convex answers a repeated
    /// `(sessionId, requestId)` from its record without comparing identities.
    pub fn disconnected(&mut self, out: &mut Outbox) {
        self.sent = None;
        self.version = StateVersion::default();
        self.by_query_id.clear();
        self.pending.clear();
        for sub in self.subs.values_mut() {
            sub.query_id = None;
        }
        let mut lost = Vec::new();
        self.requests.retain(|_, r| {
            if !r.sent {
                return true;
            }
            r.sent = false;
            if r.orphaned {
                return r.ticket.is_some();
            }
            if r.kind == RequestKind::Action {
                lost.push((r.listener, r.request_id, r.kind));
                return false;
            }
            true
        });
        lost.sort_unstable_by_key(|(listener, request_id, _)| (*listener, *request_id));
        for (listener, request_id, kind) in lost {
            let event = Event::Response {
                request_id,
                kind,
                outcome: Box::new(Err(ACTION_LOST.into())),
                replayed: false,
            };
            out.events.push((Audience::One(listener), event));
        }
    }

    /// Evicts a listener that cannot keep up; returns whether it was attached.
    pub fn evict(&mut self, listener: ListenerId) -> bool {
        let attached = self.listeners.contains_key(&listener);
        self.detach(listener);
        attached
    }

    /// A listener holds a mutation answer at a `ts` beyond this upstream's latest, and Convex
    /// sends transitions only when something of this connection changes: an empty
    /// `ModifyQuerySet` (one version on, no modifications) makes Convex answer with a
    /// `Transition` at a fresh `ts`, at or after every commit. Nothing is sent while a
    /// `ModifyQuerySet` is unanswered or pending (its transition serves), nor while
    /// disconnected (the reconnect's first transition serves).
    pub fn advance(&mut self, out: &mut Outbox) {
        let Some(sent) = self.sent.as_mut() else {
            return;
        };
        if sent.query_set != self.version.query_set || !self.pending.is_empty() {
            return;
        }
        let Some(next) = sent.query_set.next() else {
            return;
        };
        out.to_convex.push(ClientMessage::ModifyQuerySet {
            base_version: sent.query_set,
            new_version: next,
            modifications: Vec::new(),
        });
        sent.query_set = next;
    }

    /// Turns pending changes into messages: the token first, then one `ModifyQuerySet`.
    pub fn flush(&mut self, out: &mut Outbox) {
        let Some(sent) = self.sent.as_mut() else {
            return;
        };
        if self.token_dirty {
            if let Some(token) = &self.token
                && let Some(next) = sent.identity.next()
            {
                out.to_convex.push(ClientMessage::Authenticate {
                    base_version: sent.identity,
                    token_type: TokenType::User,
                    value: Some(token.value.clone()),
                });
                sent.identity = next;
            }
            self.token_dirty = false;
        }
        // One message per chunk of modifications that fits under the frame limit; each moves
        // the query-set version by one, so Convex sees an unbroken chain.
        let budget = self.max_message_bytes.saturating_sub(ENVELOPE_BYTES);
        let mut pending = std::mem::take(&mut self.pending).into_iter().peekable();
        while pending.peek().is_some() {
            let Some(next) = sent.query_set.next() else {
                break;
            };
            let mut modifications = Vec::new();
            let mut bytes = 0;
            while let Some(m) = pending.peek() {
                let size = modification_bytes(m);
                if !modifications.is_empty() && bytes + size > budget {
                    break;
                }
                bytes += size;
                modifications.extend(pending.next());
            }
            out.to_convex.push(ClientMessage::ModifyQuerySet {
                base_version: sent.query_set,
                new_version: next,
                modifications,
            });
            sent.query_set = next;
        }
        // Only an exhausted version counter leaves anything (kept, as before the split).
        self.pending.extend(pending);
    }

    fn alloc_query_id(&mut self, key: &QueryKey) -> QueryId {
        let id = QueryId(self.next_query_id);
        self.next_query_id = self.next_query_id.wrapping_add(1);
        self.by_query_id.insert(id, key.clone());
        if let Some(sub) = self.subs.get_mut(key) {
            sub.query_id = Some(id);
        }
        id
    }

    fn release(&mut self, key: &QueryKey, n: usize) {
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        sub.refcount = sub.refcount.saturating_sub(n);
        if sub.refcount > 0 {
            return;
        }
        let query_id = sub.query_id;
        self.subs.remove(key);
        lock(&self.values).remove(key);
        self.stats
            .upstream_subscriptions
            .fetch_sub(1, Ordering::Relaxed);
        let Some(id) = query_id else { return };
        if self.by_query_id.remove(&id).is_none() {
            return;
        }
        // Dropped before it was ever sent: cancel the pending Add instead.
        let before = self.pending.len();
        self.pending.retain(
            |m| !matches!(m, QuerySetModification::Add { query_id, .. } if *query_id == id),
        );
        if self.pending.len() == before {
            self.pending
                .push(QuerySetModification::Remove { query_id: id });
        }
    }
}

/// A modification's JSON text length, with its separating comma.
fn modification_bytes(m: &QuerySetModification) -> usize {
    serde_json::to_string(m).map_or(usize::MAX / 2, |text| text.len() + 1)
}

fn add(query_id: QueryId, key: &QueryKey, journal: Option<String>) -> QuerySetModification {
    QuerySetModification::Add {
        query_id,
        udf_path: key.path.as_str().to_owned(),
        args: vec![key.args_value()],
        journal,
        component_path: None,
    }
}

mod from_convex;
mod invariants;
#[cfg(test)]
mod properties;
#[cfg(test)]
mod request_tests;
#[cfg(test)]
mod tests;
