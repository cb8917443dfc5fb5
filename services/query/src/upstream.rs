//! One WebSocket to Convex per identity, shared by every downstream socket of that identity.
//!
//! The task owns the connection and a reference-counted query set keyed by [`QueryKey`]. Each
//! Convex transition becomes one [`Event::Transition`] whose results are serialised once and
//! shared by every listener. A listener that cannot keep up (its queue is full) is evicted.
//! On connection loss the task reconnects with backoff and re-adds every live query; listeners
//! stay attached and see only results that changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_convex::sync::{QuerySetModification, StateModification, TokenType};
use edge_convex::{ClientMessage, ServerMessage, StateVersion};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::key::QueryKey;
use crate::metrics::Stats;

pub type UpstreamId = u64;
pub type ListenerId = u64;

/// A query's result as Convex sent it, serialised once for every fan-out.
#[derive(Debug)]
pub enum QueryResult {
    Value {
        value: Box<RawValue>,
        log_lines: Vec<String>,
        journal: Option<String>,
    },
    Failed {
        message: String,
        data: Option<Box<RawValue>>,
        log_lines: Vec<String>,
        journal: Option<String>,
    },
}

impl QueryResult {
    /// Whether a client holding `other` needs this result sent.
    pub fn same_as(&self, other: &QueryResult) -> bool {
        match (self, other) {
            (
                QueryResult::Value {
                    value: a,
                    journal: ja,
                    ..
                },
                QueryResult::Value {
                    value: b,
                    journal: jb,
                    ..
                },
            ) => a.get() == b.get() && ja == jb,
            (QueryResult::Failed { message: a, .. }, QueryResult::Failed { message: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }
}

/// One client transition's text, shared by every socket whose transition is identical (same
/// versions, same query ids, same results): in a fan-out to many clients of one page, the
/// text is built once and each socket sends the same bytes.
#[derive(Debug, Default)]
pub struct SharedText(std::sync::Mutex<Option<(TextKey, Utf8Bytes)>>);

/// What a transition's text depends on: its start and end versions and, per modification,
/// the query id and the result (by identity; results are shared and immutable).
pub type TextKey = (StateVersion, StateVersion, Vec<(u32, usize)>);

impl SharedText {
    /// The text for `key`, made by `make` unless the last socket already made it.
    pub fn get_or_make(&self, key: TextKey, make: impl FnOnce() -> String) -> Utf8Bytes {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, text)) = slot.as_ref()
            && *k == key
        {
            return text.clone();
        }
        let text = Utf8Bytes::from(make());
        *slot = Some((key, text.clone()));
        text
    }
}

/// What an upstream tells its listeners, in order.
#[derive(Debug, Clone)]
pub enum Event {
    /// Convex moved to `ts`; these results changed.
    Transition {
        upstream: UpstreamId,
        ts: u64,
        updates: Arc<Vec<(QueryKey, Arc<QueryResult>)>>,
        /// The text of the last client transition made from this event alone, for the next
        /// client that would send the same one.
        text: Arc<SharedText>,
    },
    /// The current result of a key the listener subscribed to, after every earlier event.
    Current {
        upstream: UpstreamId,
        ts: u64,
        key: QueryKey,
        result: Arc<QueryResult>,
    },
    /// Convex refused this identity's token.
    AuthFailed { upstream: UpstreamId, error: String },
    /// The answer to one of this listener's mutations or actions. It travels in the same
    /// ordered queue as transitions, so a client always gets a `MutationResponse` before the
    /// transition that reaches its `ts`, as Convex sends them.
    Response {
        request_id: u32,
        mutation: bool,
        outcome: Box<Result<RequestOutcome, String>>,
    },
}

/// The answer to a mutation or action.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub success: bool,
    pub result: Value,
    pub ts: Option<edge_convex::Timestamp>,
    pub log_lines: Vec<String>,
    pub error_data: Option<Value>,
}

pub enum Command {
    Attach {
        listener: ListenerId,
        tx: mpsc::Sender<Event>,
        evicted: Arc<Notify>,
    },
    Detach {
        listener: ListenerId,
    },
    Subscribe {
        listener: ListenerId,
        key: QueryKey,
    },
    Unsubscribe {
        listener: ListenerId,
        key: QueryKey,
    },
    /// A token for this identity; the freshest is used.
    Token {
        token: String,
        expires_at: i64,
    },
    /// A listener's mutation or action; the answer comes back as [`Event::Response`].
    Request {
        listener: ListenerId,
        request_id: u32,
        mutation: bool,
        udf_path: String,
        args: Value,
    },
}

/// A handle on a running upstream.
#[derive(Clone, Debug)]
pub struct Upstream {
    pub id: UpstreamId,
    pub tx: mpsc::Sender<Command>,
    /// The current result of every live subscription that has one.
    values: Values,
}

/// Written only by the upstream's task; read by HTTP and gRPC reads without a round trip
/// through the task.
type Values = Arc<std::sync::Mutex<HashMap<QueryKey, Arc<QueryResult>>>>;

impl Upstream {
    /// The result of a live subscription, if any.
    pub fn lookup(&self, key: &QueryKey) -> Option<Arc<QueryResult>> {
        lock(&self.values).get(key).cloned()
    }
}

fn lock(values: &Values) -> std::sync::MutexGuard<'_, HashMap<QueryKey, Arc<QueryResult>>> {
    values.lock().unwrap_or_else(|e| e.into_inner())
}

struct Sub {
    /// The query id on the current upstream connection.
    upstream_query_id: u32,
    refcount: usize,
    result: Option<Arc<QueryResult>>,
}

struct Listener {
    tx: mpsc::Sender<Event>,
    evicted: Arc<Notify>,
    keys: HashMap<QueryKey, usize>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Removes the upstream from the hub if `still_idle` holds, atomically with respect to new
/// attachments; returns whether it did.
pub type Retire = Arc<dyn Fn(UpstreamId, &mut dyn FnMut() -> bool) -> bool + Send + Sync>;

/// Everything the task needs to know from the outside.
pub struct Settings {
    pub ws_url: String,
    pub idle: Duration,
    pub stats: Arc<Stats>,
    pub retire: Retire,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Task {
    id: UpstreamId,
    settings: Settings,
    subs: HashMap<QueryKey, Sub>,
    /// `subs`' results, for [`Upstream::lookup`].
    values: Values,
    by_query_id: HashMap<u32, QueryKey>,
    listeners: HashMap<ListenerId, Listener>,
    token: Option<(String, i64)>,
    version: StateVersion,
    next_query_id: u32,
    next_request_id: u32,
    /// Upstream request id → (listener, the listener's request id, is a mutation).
    requests: HashMap<u32, (ListenerId, u32, bool)>,
    /// Query-set changes not yet sent.
    pending: Vec<QuerySetModification>,
    /// A token not yet sent on the current connection.
    token_dirty: bool,
    connected: bool,
    /// Versions of what was sent on this connection (Convex confirms them in transitions).
    sent_query_set: u32,
    sent_identity: u32,
}

/// Starts an upstream task; it ends when idle (see [`Retire`]) or when every handle is dropped.
pub fn spawn(settings: Settings) -> Upstream {
    let id = next_id();
    let (tx, rx) = mpsc::channel(4096);
    let values = Values::default();
    let task = Task {
        id,
        settings,
        subs: HashMap::new(),
        values: values.clone(),
        by_query_id: HashMap::new(),
        listeners: HashMap::new(),
        token: None,
        version: StateVersion::default(),
        next_query_id: 0,
        next_request_id: 0,
        requests: HashMap::new(),
        pending: Vec::new(),
        token_dirty: false,
        connected: false,
        sent_query_set: 0,
        sent_identity: 0,
    };
    tokio::spawn(async move {
        task.settings
            .stats
            .upstream_connections
            .fetch_add(1, Ordering::Relaxed);
        let stats = task.settings.stats.clone();
        task.run(rx).await;
        stats.upstream_connections.fetch_sub(1, Ordering::Relaxed);
    });
    Upstream { id, tx, values }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match tokio_tungstenite::connect_async(self.settings.ws_url.as_str()).await {
                Ok((socket, _)) => {
                    backoff = Duration::from_millis(50);
                    match self.serve(socket, &mut rx).await {
                        Ok(()) => return,
                        Err(reason) => {
                            tracing::warn!(%reason, upstream = self.id, "upstream connection lost; reconnecting")
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, upstream = self.id, "cannot reach Convex; retrying")
                }
            }
            self.disconnected();
            // Keep taking commands while waiting, so downstream sockets never block on us.
            let retry = tokio::time::sleep(backoff);
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    command = rx.recv() => match command {
                        Some(c) => self.on_command(c),
                        None => return,
                    },
                }
            }
            if self.try_retire(&mut rx) {
                return;
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Ends the upstream if nobody uses it and no command is waiting.
    fn try_retire(&self, rx: &mut mpsc::Receiver<Command>) -> bool {
        if !self.listeners.is_empty() {
            return false;
        }
        (self.settings.retire)(self.id, &mut || rx.is_empty())
    }

    fn disconnected(&mut self) {
        self.connected = false;
        self.sent_query_set = 0;
        self.sent_identity = 0;
        self.version = StateVersion::default();
        self.by_query_id.clear();
        self.pending.clear();
        let lost: Vec<(ListenerId, u32, bool)> = self.requests.drain().map(|(_, r)| r).collect();
        for (listener, request_id, mutation) in lost {
            let error = "the connection to Convex was lost; the request may not have run";
            let outcome = Box::new(Err(error.into()));
            self.deliver(
                listener,
                Event::Response {
                    request_id,
                    mutation,
                    outcome,
                },
            );
        }
    }

    /// Serves one connection until it fails (`Err`) or the upstream is done (`Ok`).
    async fn serve(
        &mut self,
        socket: Socket,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<(), String> {
        let (mut sink, mut stream) = socket.split();
        self.connected = true;
        let connect = ClientMessage::Connect {
            session_id: format!("edge-query-{}", self.id),
            connection_count: 0,
            last_close_reason: None,
            max_observed_timestamp: None,
            client_ts: None,
        };
        let mut out = vec![connect];
        self.token_dirty = self.token.is_some();
        // Re-add every live query under fresh ids.
        self.next_query_id = 0;
        let keys: Vec<QueryKey> = self.subs.keys().cloned().collect();
        for key in keys {
            let id = self.alloc_query_id(&key);
            self.pending.push(add(id, &key));
        }
        self.flush(&mut out);
        send_all(&mut sink, out).await?;
        let mut idle = tokio::time::interval(self.settings.idle);
        idle.tick().await;
        let mut idle_ticks = 0u32;
        loop {
            let mut out = Vec::new();
            tokio::select! {
                message = stream.next() => match message {
                    Some(Ok(Message::Text(text))) => self.on_server_message(&text)?,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => return Err("binary frame from Convex".into()),
                    Some(Ok(Message::Close(_))) | None => return Err("Convex closed the connection".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                },
                command = rx.recv() => match command {
                    Some(c) => {
                        self.on_command_with(c, &mut out);
                        // Batch: take everything already queued before writing.
                        while let Ok(c) = rx.try_recv() {
                            self.on_command_with(c, &mut out);
                        }
                    }
                    None => return Ok(()),
                },
                _ = idle.tick() => {
                    idle_ticks = if self.listeners.is_empty() { idle_ticks + 1 } else { 0 };
                    if idle_ticks >= 1 && self.try_retire(rx) {
                        return Ok(());
                    }
                }
            }
            self.flush(&mut out);
            send_all(&mut sink, out).await?;
        }
    }

    fn alloc_query_id(&mut self, key: &QueryKey) -> u32 {
        let id = self.next_query_id;
        self.next_query_id += 1;
        self.by_query_id.insert(id, key.clone());
        if let Some(sub) = self.subs.get_mut(key) {
            sub.upstream_query_id = id;
        }
        id
    }

    /// Turns pending changes into messages: the token first, then one ModifyQuerySet.
    fn flush(&mut self, out: &mut Vec<ClientMessage>) {
        if !self.connected {
            return;
        }
        if self.token_dirty {
            if let Some((token, _)) = &self.token {
                out.push(ClientMessage::Authenticate {
                    base_version: self.sent_identity,
                    token_type: TokenType::User,
                    value: Some(token.clone()),
                });
                self.sent_identity += 1;
            }
            self.token_dirty = false;
        }
        if !self.pending.is_empty() {
            let base = self.sent_query_set;
            out.push(ClientMessage::ModifyQuerySet {
                base_version: base,
                new_version: base + 1,
                modifications: std::mem::take(&mut self.pending),
            });
            self.sent_query_set += 1;
        }
    }

    fn on_command(&mut self, command: Command) {
        let mut out = Vec::new();
        self.on_command_with(command, &mut out);
    }

    fn on_command_with(&mut self, command: Command, out: &mut Vec<ClientMessage>) {
        match command {
            Command::Attach {
                listener,
                tx,
                evicted,
            } => {
                self.listeners.insert(
                    listener,
                    Listener {
                        tx,
                        evicted,
                        keys: HashMap::new(),
                    },
                );
            }
            Command::Detach { listener } => {
                if let Some(l) = self.listeners.remove(&listener) {
                    for (key, n) in l.keys {
                        self.release(&key, n);
                    }
                }
            }
            Command::Subscribe { listener, key } => {
                let Some(l) = self.listeners.get_mut(&listener) else {
                    return;
                };
                *l.keys.entry(key.clone()).or_default() += 1;
                match self.subs.get_mut(&key) {
                    Some(sub) => {
                        sub.refcount += 1;
                        // A late subscriber gets the live value at once, in order.
                        if let Some(result) = sub.result.clone() {
                            let event = Event::Current {
                                upstream: self.id,
                                ts: self.version.ts.0,
                                key,
                                result,
                            };
                            self.deliver(listener, event);
                        }
                    }
                    None => {
                        self.subs.insert(
                            key.clone(),
                            Sub {
                                upstream_query_id: u32::MAX,
                                refcount: 1,
                                result: None,
                            },
                        );
                        self.settings
                            .stats
                            .upstream_subscriptions
                            .fetch_add(1, Ordering::Relaxed);
                        if self.connected {
                            let id = self.alloc_query_id(&key);
                            self.pending.push(add(id, &key));
                        }
                    }
                }
            }
            Command::Unsubscribe { listener, key } => {
                let Some(l) = self.listeners.get_mut(&listener) else {
                    return;
                };
                let Some(n) = l.keys.get_mut(&key) else {
                    return;
                };
                *n -= 1;
                if *n == 0 {
                    l.keys.remove(&key);
                }
                self.release(&key, 1);
            }
            Command::Token { token, expires_at } => {
                if self.token.as_ref().is_none_or(|(_, exp)| expires_at > *exp) {
                    self.token = Some((token, expires_at));
                    self.token_dirty = true;
                }
            }
            Command::Request {
                listener,
                request_id: client_request_id,
                mutation,
                udf_path,
                args,
            } => {
                if !self.connected {
                    let outcome = Box::new(Err("not connected to Convex; try again".into()));
                    let event = Event::Response {
                        request_id: client_request_id,
                        mutation,
                        outcome,
                    };
                    self.deliver(listener, event);
                    return;
                }
                let request_id = self.next_request_id;
                self.next_request_id += 1;
                self.requests
                    .insert(request_id, (listener, client_request_id, mutation));
                self.flush(out);
                out.push(if mutation {
                    ClientMessage::Mutation {
                        request_id,
                        udf_path,
                        args: vec![args],
                        component_path: None,
                    }
                } else {
                    ClientMessage::Action {
                        request_id,
                        udf_path,
                        args: vec![args],
                        component_path: None,
                    }
                });
            }
        }
    }

    fn release(&mut self, key: &QueryKey, n: usize) {
        let Some(sub) = self.subs.get_mut(key) else {
            return;
        };
        sub.refcount = sub.refcount.saturating_sub(n);
        if sub.refcount == 0 {
            let id = sub.upstream_query_id;
            self.subs.remove(key);
            lock(&self.values).remove(key);
            self.settings
                .stats
                .upstream_subscriptions
                .fetch_sub(1, Ordering::Relaxed);
            if self.connected && self.by_query_id.remove(&id).is_some() {
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
    }

    /// Sends to one listener; a full queue evicts it.
    fn deliver(&mut self, listener: ListenerId, event: Event) {
        let full = match self.listeners.get(&listener) {
            Some(l) => l.tx.try_send(event).is_err(),
            None => false,
        };
        if full {
            self.evict(listener);
        }
    }

    fn evict(&mut self, listener: ListenerId) {
        if let Some(l) = self.listeners.remove(&listener) {
            tracing::warn!(
                listener,
                upstream = self.id,
                "downstream socket too slow; disconnecting it"
            );
            l.evicted.notify_one();
            for (key, n) in l.keys {
                self.release(&key, n);
            }
        }
    }

    fn respond(&mut self, upstream_request_id: u32, outcome: RequestOutcome) {
        if let Some((listener, request_id, mutation)) = self.requests.remove(&upstream_request_id) {
            self.deliver(
                listener,
                Event::Response {
                    request_id,
                    mutation,
                    outcome: Box::new(Ok(outcome)),
                },
            );
        }
    }

    fn on_server_message(&mut self, text: &str) -> Result<(), String> {
        let message: ServerMessage = serde_json::from_str(text)
            .map_err(|e| format!("unreadable message from Convex: {e}"))?;
        match message {
            ServerMessage::Transition {
                start_version,
                end_version,
                modifications,
            } => {
                if start_version != self.version {
                    return Err(format!(
                        "Convex sent a transition from {start_version:?}, expected {:?}",
                        self.version
                    ));
                }
                self.version = end_version;
                let mut updates = Vec::new();
                for m in modifications {
                    let (query_id, result) = match m {
                        StateModification::QueryUpdated {
                            query_id,
                            value,
                            log_lines,
                            journal,
                        } => {
                            let value = RawValue::from_string(value.to_string())
                                .map_err(|e| e.to_string())?;
                            (
                                query_id,
                                QueryResult::Value {
                                    value,
                                    log_lines,
                                    journal,
                                },
                            )
                        }
                        StateModification::QueryFailed {
                            query_id,
                            error_message,
                            log_lines,
                            journal,
                            error_data,
                        } => {
                            let data = error_data
                                .map(|d| RawValue::from_string(d.to_string()))
                                .transpose()
                                .map_err(|e| e.to_string())?;
                            (
                                query_id,
                                QueryResult::Failed {
                                    message: error_message,
                                    data,
                                    log_lines,
                                    journal,
                                },
                            )
                        }
                        StateModification::QueryRemoved { .. } => continue,
                    };
                    let Some(key) = self.by_query_id.get(&query_id) else {
                        continue;
                    };
                    let Some(sub) = self.subs.get_mut(key) else {
                        continue;
                    };
                    if sub.result.as_ref().is_some_and(|r| r.same_as(&result)) {
                        continue;
                    }
                    let result = Arc::new(result);
                    sub.result = Some(result.clone());
                    lock(&self.values).insert(key.clone(), result.clone());
                    updates.push((key.clone(), result));
                }
                let event = Event::Transition {
                    upstream: self.id,
                    ts: end_version.ts.0,
                    updates: Arc::new(updates),
                    text: Arc::default(),
                };
                let ids: Vec<ListenerId> = self.listeners.keys().copied().collect();
                for id in ids {
                    self.deliver(id, event.clone());
                }
            }
            ServerMessage::MutationResponse {
                request_id,
                success,
                result,
                ts,
                log_lines,
                error_data,
            } => {
                let outcome = RequestOutcome {
                    success,
                    result,
                    ts,
                    log_lines,
                    error_data,
                };
                self.respond(request_id, outcome);
            }
            ServerMessage::ActionResponse {
                request_id,
                success,
                result,
                log_lines,
                error_data,
            } => {
                let outcome = RequestOutcome {
                    success,
                    result,
                    ts: None,
                    log_lines,
                    error_data,
                };
                self.respond(request_id, outcome);
            }
            ServerMessage::AuthError { error, .. } => {
                tracing::warn!(upstream = self.id, %error, "Convex refused the token");
                let ids: Vec<ListenerId> = self.listeners.keys().copied().collect();
                for id in ids {
                    self.deliver(
                        id,
                        Event::AuthFailed {
                            upstream: self.id,
                            error: error.clone(),
                        },
                    );
                }
                self.token = None;
            }
            ServerMessage::FatalError { error } => {
                return Err(format!("Convex fatal error: {error}"));
            }
            ServerMessage::Ping => {}
        }
        Ok(())
    }
}

fn add(query_id: u32, key: &QueryKey) -> QuerySetModification {
    QuerySetModification::Add {
        query_id,
        udf_path: key.path.clone(),
        args: vec![key.args_value()],
        journal: key.journal.clone(),
        component_path: None,
    }
}

async fn send_all(
    sink: &mut futures_util::stream::SplitSink<Socket, Message>,
    out: Vec<ClientMessage>,
) -> Result<(), String> {
    for message in out {
        let text = serde_json::to_string(&message).map_err(|e| e.to_string())?;
        sink.feed(Message::Text(text.into()))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.flush().await.map_err(|e| e.to_string())
}

/// `http(s)://host` → `ws(s)://host/api/sync`.
pub fn ws_url(convex_url: &str) -> String {
    let base = convex_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/api/sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_text_is_made_once_per_key() {
        let shared = SharedText::default();
        let version = |ts| StateVersion {
            ts: edge_convex::Timestamp(ts),
            ..StateVersion::default()
        };
        let key = |ts| (version(0), version(ts), vec![(0, 1)]);
        let mut made = 0;
        let mut make = |text: &str| {
            made += 1;
            text.to_owned()
        };
        let first = shared.get_or_make(key(5), || make("five"));
        let again = shared.get_or_make(key(5), || make("never"));
        assert_eq!((first.as_str(), again.as_str()), ("five", "five"));
        let other = shared.get_or_make(key(6), || make("six"));
        assert_eq!(other.as_str(), "six");
        assert_eq!(made, 2);
    }
}
