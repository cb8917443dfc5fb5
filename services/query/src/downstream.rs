//! A client's WebSocket: the sync protocol towards the client, over shared upstreams.
//!
//! Each socket keeps its own query ids and versions and turns upstream events into transitions
//! that satisfy every client rule: a transition starts at the version the client holds; the
//! query-set version moves only with the client's `ModifyQuerySet`, the identity version by one
//! per `Authenticate`; `ts` is the minimum of the latest `ts` of the upstreams the socket uses
//! (a consistent frontier), never beyond any of them and never backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::web;
use edge_convex::sync::{QuerySetModification, TokenType};
use edge_convex::{ClientMessage, ServerMessage, StateVersion, Timestamp};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::AppState;
use crate::identity::{IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::upstream::{
    self, Command, Event, QueryResult, RequestOutcome, SharedText, Upstream, UpstreamId,
};

/// How long one write to a client may take before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

enum End {
    Gone,
    /// The service is shutting down: the client should reconnect.
    Restart,
    Fatal(String),
    Auth {
        error: String,
        base_version: u32,
    },
    TooSlow,
}

fn out_modification(p: &Pending) -> OutModification<'_> {
    match p {
        Pending::Removed(query_id) => OutModification::QueryRemoved {
            query_id: *query_id,
        },
        Pending::Result(query_id, result) => match result.as_ref() {
            QueryResult::Value {
                value,
                log_lines,
                journal,
            } => OutModification::QueryUpdated {
                query_id: *query_id,
                value,
                log_lines,
                journal,
            },
            QueryResult::Failed {
                message,
                data,
                log_lines,
                journal,
            } => OutModification::QueryFailed {
                query_id: *query_id,
                error_message: message,
                log_lines,
                journal,
                error_data: data.as_deref(),
            },
        },
    }
}

/// One client query.
struct ClientQuery {
    /// `None` when the path was invalid (answered locally with a failure).
    key: Option<QueryKey>,
    upstream: UpstreamId,
    last: Option<Arc<QueryResult>>,
}

enum Pending {
    Removed(u32),
    Result(u32, Arc<QueryResult>),
}

/// A modification borrowing a shared result, so each value is serialised once per fan-out.
/// The variant names are the wire format's.
#[allow(clippy::enum_variant_names)]
#[derive(Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
enum OutModification<'a> {
    QueryUpdated {
        query_id: u32,
        value: &'a RawValue,
        log_lines: &'a [String],
        journal: &'a Option<String>,
    },
    QueryFailed {
        query_id: u32,
        error_message: &'a str,
        log_lines: &'a [String],
        journal: &'a Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error_data: Option<&'a RawValue>,
    },
    QueryRemoved {
        query_id: u32,
    },
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all_fields = "camelCase")]
enum OutTransition<'a> {
    Transition {
        start_version: StateVersion,
        end_version: StateVersion,
        modifications: Vec<OutModification<'a>>,
    },
}

/// A client's socket, after the handshake (see [`crate::ws`]).
pub type ClientSocket = WebSocketStream<TcpStream>;

struct Downstream {
    state: web::Data<AppState>,
    ws: ClientSocket,
    version: StateVersion,
    listener: u64,
    events: mpsc::Sender<Event>,
    evicted: Arc<Notify>,
    identity: Option<VerifiedUser>,
    /// The identity's upstream (the anonymous one when signed out).
    main: Upstream,
    /// The anonymous upstream, attached once a shared function is used by a signed-in socket.
    shared: Option<Upstream>,
    queries: BTreeMap<u32, ClientQuery>,
    /// Client query ids by upstream and key (looked up per event without cloning the key).
    by_key: HashMap<UpstreamId, HashMap<QueryKey, BTreeSet<u32>>>,
    /// Latest `ts` seen per upstream.
    upstream_ts: HashMap<UpstreamId, u64>,
    in_flight: usize,
}

/// What woke a socket's task.
enum Wake {
    Client(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Events(Vec<Event>),
    Evicted,
    Restart,
}

/// Serves one client socket until it closes.
pub async fn run(state: web::Data<AppState>, ws: ClientSocket) {
    let stats = state.hub.stats.clone();
    stats.downstream_connections.fetch_add(1, Ordering::Relaxed);
    let (events, mut events_rx) = mpsc::channel(state.config.socket_queue);
    let evicted = Arc::new(Notify::new());
    let listener = upstream::next_id();
    let mut shutting_down = state.shutting_down.clone();
    let attach = Command::Attach {
        listener,
        tx: events.clone(),
        evicted: evicted.clone(),
    };
    let main = state.hub.send(&IdentityKey::Anonymous, attach).await;
    let mut d = Downstream {
        state,
        ws,
        version: StateVersion::default(),
        listener,
        events,
        evicted: evicted.clone(),
        identity: None,
        main,
        shared: None,
        queries: BTreeMap::new(),
        by_key: HashMap::new(),
        upstream_ts: HashMap::new(),
        in_flight: 0,
    };
    let end = loop {
        let wake = tokio::select! {
            message = d.ws.next() => Wake::Client(message),
            Some(event) = events_rx.recv() => {
                let mut batch = vec![event];
                while let Ok(e) = events_rx.try_recv() {
                    batch.push(e);
                }
                Wake::Events(batch)
            }
            _ = evicted.notified() => Wake::Evicted,
            _ = shutting_down.wait_for(|s| *s) => Wake::Restart,
        };
        let step = match wake {
            Wake::Client(None | Some(Ok(Message::Close(_)))) => Err(End::Gone),
            // Boxed so an idle socket's task stays small: only a running handler's state is
            // allocated.
            Wake::Client(Some(Ok(Message::Text(text)))) => Box::pin(d.on_text(&text)).await,
            // Pings are answered by the WebSocket layer itself.
            Wake::Client(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                Ok(())
            }
            Wake::Client(Some(Ok(Message::Binary(_)))) => Err(End::Fatal(
                "binary frames are not part of the sync protocol".into(),
            )),
            Wake::Client(Some(Err(e))) => Err(End::Fatal(format!("invalid WebSocket frame: {e}"))),
            Wake::Events(batch) => Box::pin(d.on_events(batch)).await,
            Wake::Evicted => Err(End::TooSlow),
            Wake::Restart => Err(End::Restart),
        };
        if let Err(end) = step {
            break end;
        }
    };
    d.close(end).await;
    stats.downstream_connections.fetch_sub(1, Ordering::Relaxed);
}

impl Downstream {
    async fn close(mut self, end: End) {
        let stats = self.state.hub.stats.clone();
        stats
            .downstream_subscriptions
            .fetch_sub(self.queries.len() as i64, Ordering::Relaxed);
        // Awaited, so a busy upstream cannot lose the detach (and keep this socket's
        // subscriptions alive).
        let _ = self
            .main
            .tx
            .send(Command::Detach {
                listener: self.listener,
            })
            .await;
        if let Some(shared) = &self.shared {
            let _ = shared
                .tx
                .send(Command::Detach {
                    listener: self.listener,
                })
                .await;
        }
        let too_slow = matches!(end, End::TooSlow);
        let (message, code) = match end {
            End::Gone => (None, CloseCode::Normal),
            End::Restart => (None, CloseCode::Restart),
            End::TooSlow => (None, CloseCode::Again),
            End::Fatal(error) => {
                tracing::info!(%error, "client session ended by a protocol violation");
                (Some(ServerMessage::FatalError { error }), CloseCode::Policy)
            }
            End::Auth {
                error,
                base_version,
            } => (
                Some(ServerMessage::AuthError {
                    error,
                    base_version: Some(base_version),
                    auth_update_attempted: Some(true),
                }),
                CloseCode::Normal,
            ),
        };
        // A client too slow to read has a full socket: it gets a moment for the close frame,
        // not the full send timeout.
        let wait = if too_slow {
            Duration::from_millis(100)
        } else {
            SEND_TIMEOUT
        };
        if let Some(message) = message {
            let text = Message::text(message.to_text());
            let _ = tokio::time::timeout(wait, self.ws.send(text)).await;
        }
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: "".into(),
        }));
        let _ = tokio::time::timeout(wait, self.ws.send(close)).await;
    }

    async fn send_text(&mut self, text: String) -> Result<(), End> {
        self.send(Message::text(text)).await
    }

    /// Sends one message. A write blocked by a client that does not read ends when the
    /// upstream evicts the socket (its queue filled meanwhile) or after [`SEND_TIMEOUT`].
    async fn send(&mut self, message: Message) -> Result<(), End> {
        let evicted = self.evicted.clone();
        tokio::select! {
            // The write first: one that completes at once never registers with `evicted`.
            biased;
            sent = tokio::time::timeout(SEND_TIMEOUT, self.ws.send(message)) => match sent {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => Err(End::TooSlow),
            },
            _ = evicted.notified() => Err(End::TooSlow),
        }
    }

    fn is_shared(&self, key: &QueryKey) -> bool {
        self.state.config.shared_functions.contains(&key.path)
    }

    /// The upstream a key is served by, attaching the shared one on first use.
    async fn upstream_for(&mut self, key: &QueryKey) -> Upstream {
        if self.identity.is_none() || !self.is_shared(key) {
            return self.main.clone();
        }
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let attach = Command::Attach {
            listener: self.listener,
            tx: self.events.clone(),
            evicted: self.evicted.clone(),
        };
        let shared = self.state.hub.send(&IdentityKey::Anonymous, attach).await;
        self.shared = Some(shared.clone());
        shared
    }

    /// The consistent `ts`: the oldest latest-`ts` among the upstreams in use.
    fn frontier(&self) -> Option<u64> {
        let mut ids = vec![self.main.id];
        if let Some(shared) = &self.shared
            && self.queries.values().any(|q| q.upstream == shared.id)
        {
            ids.push(shared.id);
        }
        ids.iter()
            .map(|id| self.upstream_ts.get(id).copied())
            .collect::<Option<Vec<u64>>>()?
            .into_iter()
            .min()
    }

    async fn transition(
        &mut self,
        query_set: Option<u32>,
        identity: Option<u32>,
        pending: Vec<Pending>,
    ) -> Result<(), End> {
        self.transition_shared(query_set, identity, pending, None)
            .await
    }

    /// A transition whose text other sockets may share through `shared`.
    async fn transition_shared(
        &mut self,
        query_set: Option<u32>,
        identity: Option<u32>,
        pending: Vec<Pending>,
        shared: Option<&SharedText>,
    ) -> Result<(), End> {
        let ts = self
            .frontier()
            .map_or(self.version.ts, |f| Timestamp(f.max(self.version.ts.0)));
        let end = StateVersion {
            query_set: query_set.unwrap_or(self.version.query_set),
            identity: identity.unwrap_or(self.version.identity),
            ts,
        };
        if end == self.version && pending.is_empty() {
            return Ok(());
        }
        let start = self.version;
        let make = || {
            let modifications = pending.iter().map(out_modification).collect();
            serde_json::to_string(&OutTransition::Transition {
                start_version: start,
                end_version: end,
                modifications,
            })
            .expect("transitions serialise")
        };
        let text = match shared {
            Some(shared) => {
                let ids = pending
                    .iter()
                    .map(|p| match p {
                        Pending::Removed(id) => (*id, 0),
                        Pending::Result(id, result) => (*id, Arc::as_ptr(result) as usize),
                    })
                    .collect();
                shared.get_or_make((start, end, ids), make)
            }
            None => Utf8Bytes::from(make()),
        };
        self.version = end;
        self.send(Message::Text(text)).await
    }

    /// Applies a result to every client query on (upstream, key) whose last result differs.
    fn apply(
        &mut self,
        upstream: UpstreamId,
        key: &QueryKey,
        result: &Arc<QueryResult>,
        pending: &mut Vec<Pending>,
    ) {
        let Some(ids) = self.by_key.get(&upstream).and_then(|keys| keys.get(key)) else {
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

    async fn on_events(&mut self, events: Vec<Event>) -> Result<(), End> {
        // A batch of one transition (a fan-out) yields the same text on every socket in the
        // same state.
        let shared = match events.as_slice() {
            [Event::Transition { text, .. }] => Some(text.clone()),
            _ => None,
        };
        let mut pending = Vec::new();
        for event in events {
            match event {
                Event::Transition {
                    upstream,
                    ts,
                    updates,
                    ..
                } => {
                    self.upstream_ts.insert(upstream, ts);
                    for (key, result) in updates.iter() {
                        self.apply(upstream, key, result, &mut pending);
                    }
                }
                Event::Current {
                    upstream,
                    ts,
                    key,
                    result,
                } => {
                    let known = self.upstream_ts.entry(upstream).or_insert(ts);
                    *known = (*known).max(ts);
                    self.apply(upstream, &key, &result, &mut pending);
                }
                Event::AuthFailed { error, .. } => {
                    return Err(End::Auth {
                        error,
                        base_version: self.version.identity.saturating_sub(1),
                    });
                }
                Event::Response {
                    request_id,
                    mutation,
                    outcome,
                } => {
                    // What came before the response goes first, then the response itself.
                    self.transition(None, None, std::mem::take(&mut pending))
                        .await?;
                    self.respond(request_id, mutation, *outcome).await?;
                }
            }
        }
        self.transition_shared(None, None, pending, shared.as_deref())
            .await
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let message: ClientMessage = serde_json::from_str(text)
            .map_err(|e| End::Fatal(format!("malformed client message: {e}")))?;
        match message {
            ClientMessage::Connect { .. } | ClientMessage::Event { .. } => Ok(()),
            ClientMessage::ModifyQuerySet {
                base_version,
                new_version,
                modifications,
            } => {
                self.modify_query_set(base_version, new_version, modifications)
                    .await
            }
            ClientMessage::Authenticate {
                base_version,
                token_type,
                value,
            } => self.authenticate(base_version, token_type, value).await,
            ClientMessage::Mutation {
                request_id,
                udf_path,
                args,
                ..
            } => self.request(true, request_id, udf_path, args).await,
            ClientMessage::Action {
                request_id,
                udf_path,
                args,
                ..
            } => self.request(false, request_id, udf_path, args).await,
        }
    }

    async fn subscribe(&mut self, query_id: u32, key: QueryKey) {
        let upstream = self.upstream_for(&key).await;
        let ids = self
            .by_key
            .entry(upstream.id)
            .or_default()
            .entry(key.clone())
            .or_default();
        let first = ids.is_empty();
        ids.insert(query_id);
        self.queries.insert(
            query_id,
            ClientQuery {
                key: Some(key.clone()),
                upstream: upstream.id,
                last: None,
            },
        );
        if first {
            let _ = upstream
                .tx
                .send(Command::Subscribe {
                    listener: self.listener,
                    key,
                })
                .await;
        }
    }

    async fn unsubscribe(&mut self, query_id: u32) -> bool {
        let Some(q) = self.queries.remove(&query_id) else {
            return false;
        };
        let Some(key) = q.key else { return true };
        let keys = self.by_key.entry(q.upstream).or_default();
        let now_empty = match keys.get_mut(&key) {
            Some(ids) => {
                ids.remove(&query_id);
                ids.is_empty()
            }
            None => false,
        };
        if now_empty {
            keys.remove(&key);
            if keys.is_empty() {
                self.by_key.remove(&q.upstream);
            }
            let upstream = if self.main.id == q.upstream {
                Some(self.main.clone())
            } else {
                self.shared.clone()
            };
            if let Some(u) = upstream {
                let _ =
                    u.tx.send(Command::Unsubscribe {
                        listener: self.listener,
                        key,
                    })
                    .await;
            }
        }
        true
    }

    async fn modify_query_set(
        &mut self,
        base: u32,
        new: u32,
        modifications: Vec<QuerySetModification>,
    ) -> Result<(), End> {
        if base != self.version.query_set || new != base + 1 {
            return Err(End::Fatal(format!(
                "ModifyQuerySet from version {base} to {new}, but the query set is at version {}",
                self.version.query_set
            )));
        }
        let stats = self.state.hub.stats.clone();
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
                        Ok(key) => self.subscribe(query_id, key).await,
                        Err(message) => {
                            let failed = Arc::new(QueryResult::Failed {
                                message,
                                data: None,
                                log_lines: vec![],
                                journal: None,
                            });
                            self.queries.insert(
                                query_id,
                                ClientQuery {
                                    key: None,
                                    upstream: self.main.id,
                                    last: Some(failed.clone()),
                                },
                            );
                            pending.push(Pending::Result(query_id, failed));
                        }
                    }
                    stats
                        .downstream_subscriptions
                        .fetch_add(1, Ordering::Relaxed);
                }
                QuerySetModification::Remove { query_id } => {
                    if !self.unsubscribe(query_id).await {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is not in the query set"
                        )));
                    }
                    pending.retain(|p| !matches!(p, Pending::Result(id, _) if *id == query_id));
                    pending.push(Pending::Removed(query_id));
                    stats
                        .downstream_subscriptions
                        .fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        self.transition(Some(new), None, pending).await
    }

    async fn authenticate(
        &mut self,
        base: u32,
        token_type: TokenType,
        value: Option<String>,
    ) -> Result<(), End> {
        if base != self.version.identity {
            return Err(End::Fatal(format!(
                "Authenticate with base version {base}, but the identity is at version {}",
                self.version.identity
            )));
        }
        let user = match (token_type, value) {
            (TokenType::None, _) => None,
            (TokenType::User, Some(token)) => match self.state.identities.verify(&token).await {
                Ok(user) => Some(user),
                // Refused locally: Convex never sees the token.
                Err(error) => {
                    return Err(End::Auth {
                        error,
                        base_version: base,
                    });
                }
            },
            (TokenType::User, None) => {
                return Err(End::Fatal(
                    "Authenticate with a User token needs a value".into(),
                ));
            }
            (TokenType::Admin, _) => {
                return Err(End::Auth {
                    error: "admin keys are not accepted by the proxy".into(),
                    base_version: base,
                });
            }
        };
        let new_key = user
            .as_ref()
            .map_or(IdentityKey::Anonymous, |u| u.key.clone());
        let old_key = self
            .identity
            .as_ref()
            .map_or(IdentityKey::Anonymous, |u| u.key.clone());
        if new_key != old_key {
            self.switch_identity(&new_key, user.clone()).await;
        }
        if let Some(u) = &user {
            let _ = self
                .main
                .tx
                .send(Command::Token {
                    token: u.token.clone(),
                    expires_at: u.expires_at,
                })
                .await;
        }
        self.identity = user;
        self.transition(None, Some(base + 1), Vec::new()).await
    }

    /// Moves the identity's queries to the new identity's upstream; shared ones stay.
    async fn switch_identity(&mut self, new_key: &IdentityKey, user: Option<VerifiedUser>) {
        let moving: Vec<(u32, QueryKey)> = self
            .queries
            .iter()
            .filter(|(_, q)| q.upstream == self.main.id)
            .filter_map(|(id, q)| q.key.clone().map(|k| (*id, k)))
            .collect();
        for (id, _) in &moving {
            self.unsubscribe(*id).await;
        }
        let old_main = self.main.clone();
        let attach = Command::Attach {
            listener: self.listener,
            tx: self.events.clone(),
            evicted: self.evicted.clone(),
        };
        if *new_key == IdentityKey::Anonymous
            && let Some(shared) = self.shared.take()
        {
            // Signing out: the anonymous upstream, already attached for shared queries, is main.
            self.main = shared;
        } else if let Some(u) = &user {
            // The token goes first so the upstream authenticates before subscribing.
            let token = Command::Token {
                token: u.token.clone(),
                expires_at: u.expires_at,
            };
            self.main = self.state.hub.send(new_key, token).await;
            let _ = self.main.tx.send(attach).await;
        } else {
            self.main = self.state.hub.send(new_key, attach).await;
        }
        if old_main.id != self.main.id {
            let _ = old_main
                .tx
                .send(Command::Detach {
                    listener: self.listener,
                })
                .await;
        }
        self.identity = user;
        for (id, key) in moving {
            self.subscribe(id, key).await;
        }
    }

    async fn request(
        &mut self,
        mutation: bool,
        request_id: u32,
        udf_path: String,
        args: Vec<Value>,
    ) -> Result<(), End> {
        if self.in_flight >= self.state.config.max_pending_requests {
            return Err(End::Fatal(format!(
                "more than {} requests in flight",
                self.state.config.max_pending_requests
            )));
        }
        let [args] = <[Value; 1]>::try_from(args)
            .map_err(|a| End::Fatal(format!("expected one arguments object, got {}", a.len())))?;
        self.in_flight += 1;
        let request = Command::Request {
            listener: self.listener,
            request_id,
            mutation,
            udf_path,
            args,
        };
        let _ = self.main.tx.send(request).await;
        Ok(())
    }

    /// Sends a mutation's or action's answer. The upstream queued it before any transition
    /// that reaches its `ts`, so the client sees them in Convex's order.
    async fn respond(
        &mut self,
        request_id: u32,
        mutation: bool,
        outcome: Result<RequestOutcome, String>,
    ) -> Result<(), End> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let outcome = outcome.unwrap_or_else(|error| RequestOutcome {
            success: false,
            result: Value::String(error),
            ts: None,
            log_lines: vec![],
            error_data: None,
        });
        let message = if mutation {
            ServerMessage::MutationResponse {
                request_id,
                success: outcome.success,
                result: outcome.result,
                ts: outcome.ts,
                log_lines: outcome.log_lines,
                error_data: outcome.error_data,
            }
        } else {
            ServerMessage::ActionResponse {
                request_id,
                success: outcome.success,
                result: outcome.result,
                log_lines: outcome.log_lines,
                error_data: outcome.error_data,
            }
        };
        self.send_text(message.to_text()).await
    }
}
