//! A client's WebSocket: the sync protocol towards the client, over shared upstreams.
//!
//! [`session`] holds the protocol state and its rules without I/O; this module is the driver:
//! one task per socket that reads client frames and upstream events into the session, runs
//! the [`Effect`]s it returns (frames to write, attachments to make, subscriptions and
//! requests to forward), and closes the socket with the right message and code.

pub mod frames;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::web;
use edge_convex::sync::RequestKind;
use edge_convex::{ClientMessage, RequestId, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use crate::AppState;
use crate::identity::{IdentityError, IdentityKey};
use crate::journal::{Claim, JournalKey, Waiter};
use crate::listener::{Attachment, Inbox};
use crate::upstream::{Event, UpstreamId};
use session::{ClientSession, Effect, End, Route};

/// How long one write to a client may take before the client counts as gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing socket waits for the client's Close (reading what it still sends).
const CLOSE_DRAIN: Duration = Duration::from_secs(2);
/// How long a socket with requests outstanding stays open once the service shuts down, for
/// their answers and the transitions past them: the mutation journal lives in this process,
/// and convex-js sends every unconfirmed mutation again on its next socket, which a restarted
/// service would run a second time. The deploy files' grace periods cover it (compose's
/// `stop_grace_period`, Kubernetes' `terminationGracePeriodSeconds` after the `preStop`).
pub(crate) const RESTART_DRAIN: Duration = Duration::from_secs(10);

/// A client's socket, after the handshake (see [`crate::ws`]).
pub type ClientSocket = WebSocketStream<TcpStream>;

struct Downstream {
    state: web::Data<AppState>,
    ws: ClientSocket,
    inbox: Inbox,
    evicted: Arc<tokio::sync::Notify>,
    session: ClientSession,
    /// The identity's upstream (the anonymous one when signed out).
    main: Attachment,
    /// The anonymous upstream, attached once a shared function is used by a signed-in socket.
    shared: Option<Attachment>,
    /// Upstreams of identities the socket left that still owe answers to its requests
    /// ([`Effect::SwitchMain`]'s `keep_previous`), until [`Effect::Release`]: their queries
    /// are released and their events other than answers go nowhere (no route serves them).
    owing: HashMap<IdentityKey, Attachment>,
    /// The identity of the main route's upstream.
    main_key: IdentityKey,
    /// When the client was last sent anything (for the heartbeat `Ping`).
    last_sent: tokio::time::Instant,
    /// `Connect.clientTs` minus the service's Unix ms when it arrived (`clientClockSkew`).
    clock_skew: Option<i64>,
    /// Whether the client assembles `TransitionChunk`s (its sync path's version).
    chunks: bool,
    /// The client's `Connect.sessionId`: its mutations go through the journal under it.
    session_id: Option<Arc<str>>,
    /// Mutations the client sent again that wait for their first send's answer, kept to be
    /// run here if that one fails or never reaches Convex ([`Event::Rerun`]).
    waiting: HashMap<RequestId, (String, Value)>,
    /// The service is shutting down: the socket closes once its requests are settled, or at
    /// this deadline ([`RESTART_DRAIN`]); requests it receives meanwhile are not run here.
    draining: Option<tokio::time::Instant>,
}

/// What woke a socket's task.
enum Wake {
    Client(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Events(Vec<Event>),
    Evicted,
    Restart,
    /// The shutdown's drain deadline passed.
    Drained,
    /// The heartbeat timer ticked.
    Heartbeat,
    /// The socket's token reached its `exp`.
    Expired,
}

/// Serves one client socket until it closes.
pub async fn run(
    state: web::Data<AppState>,
    ws: ClientSocket,
    chunks: bool,
    client: std::net::IpAddr,
) {
    let stats = state.hub.stats.clone();
    stats.downstream_connections.fetch_add(1, Ordering::Relaxed);
    let (inbox, mut mailbox) = Inbox::bounded(
        state.config.socket_queue,
        state.config.socket_queue_bytes,
        Some(stats.clone()),
    );
    let mut shutting_down = state.shutting_down.clone();
    let main = state
        .hub
        .attach(&IdentityKey::Anonymous, None, &inbox)
        .await;
    let session = ClientSession::new(
        state.shared_functions.clone(),
        state.config.max_pending_requests,
        state.config.query_limits,
        state.owners.budget(client),
        stats.clone(),
    );
    let mut d = Downstream {
        state,
        ws,
        inbox,
        evicted: mailbox.evicted.clone(),
        session,
        main,
        shared: None,
        owing: HashMap::new(),
        main_key: IdentityKey::Anonymous,
        last_sent: tokio::time::Instant::now(),
        clock_skew: None,
        chunks,
        session_id: None,
        waiting: HashMap::new(),
        draining: None,
    };
    let evicted = mailbox.evicted.clone();
    let ping = d.state.config.ping_interval;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + ping, ping);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        let expiry = d.session.expires_at().map(deadline_of);
        let wake = tokio::select! {
            message = d.ws.next() => Wake::Client(message),
            Some(event) = mailbox.recv() => {
                let mut batch = vec![event];
                while let Some(e) = mailbox.try_recv() {
                    batch.push(e);
                }
                Wake::Events(batch)
            }
            _ = evicted.notified() => Wake::Evicted,
            _ = shutting_down.wait_for(|s| *s), if d.draining.is_none() => Wake::Restart,
            _ = sleep_until_some(d.draining) => Wake::Drained,
            _ = heartbeat.tick() => Wake::Heartbeat,
            _ = sleep_until_some(expiry) => Wake::Expired,
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
            // A client that drops its connection (no close handshake, a reset) has gone; only
            // what it sent that breaks the WebSocket protocol is a violation.
            Wake::Client(Some(Err(e))) if client_left(&e) => Err(End::Gone),
            Wake::Client(Some(Err(e))) => Err(End::Fatal(format!("invalid WebSocket frame: {e}"))),
            Wake::Events(batch) => Box::pin(d.on_events(batch)).await,
            Wake::Evicted => Err(End::TooSlow),
            // The socket closes once its requests are settled (at once when none are
            // outstanding), or at the deadline (see `RESTART_DRAIN`).
            Wake::Restart => {
                d.draining = Some(tokio::time::Instant::now() + RESTART_DRAIN);
                Ok(())
            }
            Wake::Drained => Err(End::Restart),
            // Convex pings a socket it has sent nothing for a while; so does the proxy, for the
            // client's inactivity timer (sockets busy with transitions are never pinged).
            // A tenth of slack: the tick right after a Ping comes a hair under `ping` later.
            Wake::Heartbeat if d.last_sent.elapsed() + ping / 10 >= ping => {
                Box::pin(d.send(Message::text(ServerMessage::Ping.to_text()))).await
            }
            Wake::Heartbeat => Ok(()),
            // Convex refuses an identity past its `exp` (`TokenExpired`) with `AuthError`;
            // the client fetches a fresh token and reconnects.
            Wake::Expired => Err(End::Expired {
                base_version: d.session.identity_version(),
            }),
        };
        if let Err(end) = step {
            break end;
        }
        if d.draining.is_some() && d.session.settled() {
            break End::Restart;
        }
    };
    Box::pin(d.close(end)).await;
    mailbox.discard();
    stats.downstream_connections.fetch_sub(1, Ordering::Relaxed);
}

impl Downstream {
    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let message: ClientMessage = serde_json::from_str(text)
            .map_err(|e| End::Fatal(format!("malformed client message: {e}")))?;
        if self.draining.is_some()
            && matches!(
                message,
                ClientMessage::Mutation { .. } | ClientMessage::Action { .. }
            )
        {
            // Not run here: the client sends an unanswered mutation again on its next socket
            // (to the restarted service, which runs it once), and fails an action with
            // "Connection lost while action was in flight", as on any lost socket.
            return Ok(());
        }
        if let ClientMessage::Connect {
            client_ts,
            session_id,
            ..
        } = &message
        {
            // Any number a client sends: saturating, never an overflow.
            if let Some(client_ts) = client_ts {
                self.clock_skew =
                    Some((*client_ts as i64).saturating_sub(unix_now().as_millis() as i64));
            }
            if self.session_id.is_none() && crate::journal::is_uuid(session_id) {
                self.session_id = Some(Arc::from(session_id.as_str()));
            }
        }
        let mut effects = Vec::new();
        let verify = self.session.on_client(message, &mut effects);
        self.run(effects).await?;
        let Some(pending) = verify? else {
            return Ok(());
        };
        // Refused locally: Convex never sees the token.
        let user =
            self.state
                .identities
                .verify(&pending.token)
                .await
                .map_err(|error| match error {
                    IdentityError::Unauthenticated(error) => End::Auth {
                        error,
                        base_version: pending.base,
                    },
                    IdentityError::AuthUnavailable(error) => End::AuthUnavailable(error),
                })?;
        let mut effects = Vec::new();
        let step = self
            .session
            .authenticated(pending.base, Some(user), &mut effects);
        self.run(effects).await?;
        step
    }

    async fn on_events(&mut self, events: Vec<Event>) -> Result<(), End> {
        let mut routed = Vec::with_capacity(events.len());
        for event in events {
            match event {
                Event::Rerun { request_id } => self.rerun(request_id).await,
                event => routed.push((self.route_of(&event), event)),
            }
        }
        let mut effects = Vec::new();
        let step = self.session.on_events(routed, &mut effects);
        self.run(effects).await?;
        step
    }

    /// Which route an event's upstream serves now; `None` for one the socket left.
    fn route_of(&self, event: &Event) -> Option<Route> {
        let upstream: UpstreamId = match event {
            Event::Transition { upstream, .. }
            | Event::Current { upstream, .. }
            | Event::AuthFailed { upstream, .. } => *upstream,
            Event::Response { .. } | Event::Rerun { .. } => return None,
        };
        if upstream == self.main.upstream_id() {
            Some(Route::Main)
        } else if self
            .shared
            .as_ref()
            .is_some_and(|s| s.upstream_id() == upstream)
        {
            Some(Route::Shared)
        } else {
            None
        }
    }

    fn route(&self, route: Route) -> &Attachment {
        match (route, &self.shared) {
            (Route::Shared, Some(shared)) => shared,
            _ => &self.main,
        }
    }

    /// Runs a step's effects in order.
    async fn run(&mut self, effects: Vec<Effect>) -> Result<(), End> {
        // Every integration test (debug builds) checks the session's invariants on each step.
        #[cfg(debug_assertions)]
        if let Err(broken) = self.session.validate() {
            panic!("client session invariant broken: {broken}");
        }
        for effect in effects {
            match effect {
                Effect::Send(text) => self.send(Message::Text(text)).await?,
                Effect::Transition(text) => self.send_transition(text).await?,
                Effect::AttachShared => {
                    // Still attached while it owes answers: that attachment serves the route.
                    let shared = match self.owing.remove(&IdentityKey::Anonymous) {
                        Some(owing) => owing,
                        None => {
                            let hub = &self.state.hub;
                            hub.attach(&IdentityKey::Anonymous, None, &self.inbox).await
                        }
                    };
                    self.shared = Some(shared);
                }
                Effect::SwitchMain {
                    user,
                    reuse_shared,
                    keep_previous,
                } => {
                    let previous_key = self.main_key.clone();
                    let key = user
                        .as_ref()
                        .map_or(IdentityKey::Anonymous, |u| u.key.clone());
                    let next = match (reuse_shared, self.shared.take()) {
                        (true, Some(shared)) => shared,
                        (_, shared) => {
                            self.shared = shared;
                            match self.owing.remove(&key) {
                                // Back to an upstream that still owes answers: the listener
                                // is attached there already (a second attach of the same
                                // listener would be detached with the first). Its token is
                                // sent after this effect.
                                Some(owing) => owing,
                                None => {
                                    self.state
                                        .hub
                                        .attach(&key, user.as_ref(), &self.inbox)
                                        .await
                                }
                            }
                        }
                    };
                    self.main_key = key;
                    let previous = std::mem::replace(&mut self.main, next);
                    if keep_previous {
                        self.owing.insert(previous_key, previous);
                    } else {
                        // Awaited: the shared route may attach this listener to the old
                        // main's upstream next, and must come after this detach.
                        previous.detach().await;
                    }
                }
                Effect::Release(key) => {
                    if let Some(owing) = self.owing.remove(&key) {
                        owing.detach().await;
                    }
                }
                Effect::Subscribe(route, key) => self.route(route).subscribe(key).await,
                Effect::Unsubscribe(route, key) => self.route(route).unsubscribe(key).await,
                Effect::Advance(route) => self.route(route).advance().await,
                Effect::Token(user) => self.main.token(&user).await,
                Effect::Request {
                    request_id,
                    kind,
                    udf_path,
                    args,
                } => self.forward(request_id, kind, udf_path, args).await,
            }
        }
        Ok(())
    }

    /// Sends a request through the main route; a mutation first through the journal, which
    /// answers one the client sent before (on an earlier socket) instead of running it again.
    async fn forward(
        &mut self,
        request_id: RequestId,
        kind: RequestKind,
        udf_path: String,
        args: Value,
    ) {
        let ticket = match (&self.session_id, kind) {
            (Some(session_id), RequestKind::Mutation) => {
                let key = JournalKey {
                    session_id: session_id.clone(),
                    request_id,
                };
                let waiter = Waiter {
                    inbox: self.inbox.clone(),
                    request_id,
                };
                match self.state.journal.claim(key, waiter) {
                    Claim::Run(ticket) => Some(ticket),
                    Claim::Replayed => return,
                    Claim::Wait => {
                        self.waiting.insert(request_id, (udf_path, args));
                        return;
                    }
                }
            }
            _ => None,
        };
        if let Err(error) = self.session.charge(request_id) {
            // Its owner at its most: it fails alone and the socket goes on (the ticket dropped
            // here lets a repeat waiting on it run it).
            drop(ticket);
            self.inbox.offer(Event::Response {
                request_id,
                kind,
                outcome: Box::new(Err(error)),
                replayed: false,
            });
            return;
        }
        self.main
            .request(request_id, kind, udf_path, args, ticket)
            .await;
    }

    /// The first send of a mutation this socket sent again failed or never reached Convex:
    /// it runs now, from here (or waits again for another socket's send of it).
    async fn rerun(&mut self, request_id: RequestId) {
        if let Some((udf_path, args)) = self.waiting.remove(&request_id) {
            self.forward(request_id, RequestKind::Mutation, udf_path, args)
                .await;
        }
    }

    /// Sends one message. A write blocked by a client that does not read ends when the
    /// upstream evicts the socket (its queue filled meanwhile) or after [`SEND_TIMEOUT`].
    async fn send(&mut self, message: Message) -> Result<(), End> {
        self.last_sent = tokio::time::Instant::now();
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

    /// Sends a shared transition text with this socket's `clientClockSkew` and `serverTs`.
    ///
    /// The shared text is not copied: it goes as the first fragment of the message (all but
    /// its closing `}`) and the two fields as the last one, so a fan-out to many sockets still
    /// holds one copy of the results. A text over Convex's chunk size goes, to a client that
    /// takes them, as `TransitionChunk`s instead (a copy, as Convex makes one).
    async fn send_transition(&mut self, text: Utf8Bytes) -> Result<(), End> {
        let suffix = transition_suffix(self.clock_skew, unix_now().as_nanos() as u64);
        let body = Bytes::from(text);
        if body.last() != Some(&b'}') {
            // Not an object's text: never made by `frames::transition`.
            return Err(End::Fatal(
                "internal: transition text is not an object".into(),
            ));
        }
        let head = body.slice(..body.len() - 1);
        if self.chunks && head.len() + suffix.len() > edge_convex::sync::TRANSITION_CHUNK_BYTES {
            let mut whole = String::with_capacity(head.len() + suffix.len());
            whole.push_str(std::str::from_utf8(&head).unwrap_or_default());
            whole.push_str(&suffix);
            let parts = edge_convex::sync::split_transition(
                &whole,
                edge_convex::sync::TRANSITION_CHUNK_BYTES,
            )
            .unwrap_or_else(|| vec![whole.clone()]);
            for part in parts {
                self.send(Message::text(part)).await?;
            }
            return Ok(());
        }
        let first = Frame::message(head, OpCode::Data(Data::Text), false);
        self.send(Message::Frame(first)).await?;
        let last = Frame::message(Bytes::from(suffix), OpCode::Data(Data::Continue), true);
        self.send(Message::Frame(last)).await
    }

    async fn close(self, end: End) {
        let Downstream {
            state,
            mut ws,
            session,
            main,
            shared,
            owing,
            ..
        } = self;
        state
            .hub
            .stats
            .downstream_subscriptions
            .fetch_sub(session.query_count() as i64, Ordering::Relaxed);
        // Detached first, so the socket's subscriptions end even if the client never reads
        // the close frame.
        main.detach().await;
        if let Some(shared) = shared {
            shared.detach().await;
        }
        // The socket is gone: answers still owed have no one to go to.
        for owing in owing.into_values() {
            owing.detach().await;
        }
        // Its charge to its identity (or address) goes back now, not after the close frame.
        drop(session);
        let too_slow = matches!(end, End::TooSlow);
        // convex-js logs a close reason, and backs off from 1 s for one it does not know.
        let reason = match end {
            End::AuthUnavailable(_) => "AuthUnavailable: the token could not be checked, retry",
            _ => "",
        };
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
            // Convex answers a JWKS it cannot fetch with `AuthError` (its `fetch_jwks` errors
            // are `Unauthenticated`), and convex-js signs out after a fresh token fails twice
            // (`MAX_TOKEN_CONFIRMATION_ATTEMPTS`), or at once when the fresh token is the one
            // it held. An outage of auth must not sign anyone out: the socket closes with
            // 1013 (try again later) and no message, and convex-js reconnects with backoff
            // and sends the same token again, keeping its auth state until it is checked.
            End::AuthUnavailable(error) => {
                tracing::warn!(%error, "client socket closed: its token could not be checked");
                (None, CloseCode::Again)
            }
            End::Expired { base_version } => (
                Some(ServerMessage::AuthError {
                    error: "TokenExpired: Convex token identity expired".into(),
                    base_version: Some(base_version),
                    auth_update_attempted: Some(false),
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
            let _ = tokio::time::timeout(wait, ws.send(text)).await;
        }
        let close = Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        }));
        let _ = tokio::time::timeout(wait, ws.send(close)).await;
        // The closing handshake: read (and drop) what the client still sends until its own
        // Close. A socket closed with unread data in it is reset, and a reset can make the
        // client's side throw away the `FatalError` it had not read yet.
        let drain = async { while let Some(Ok(_)) = ws.next().await {} };
        let _ = tokio::time::timeout(wait.min(CLOSE_DRAIN), drain).await;
    }
}

/// The service's Unix time.
fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// The end of a transition's text for one socket: its two per-socket fields and the closing
/// brace (`clientClockSkew` only once the client's `Connect` gave a `clientTs`).
fn transition_suffix(clock_skew: Option<i64>, server_ts_ns: u64) -> String {
    match clock_skew {
        Some(skew) => format!(",\"clientClockSkew\":{skew},\"serverTs\":{server_ts_ns}}}"),
        None => format!(",\"serverTs\":{server_ts_ns}}}"),
    }
}

/// When a token whose `exp` is `exp` (Unix seconds) expires, on tokio's clock.
fn deadline_of(exp: i64) -> tokio::time::Instant {
    let left_ms = (i128::from(exp) * 1000 - unix_now().as_millis() as i128).max(0);
    tokio::time::Instant::now() + Duration::from_millis(left_ms as u64)
}

/// Sleeps until `deadline`; forever without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Whether a read error means the client's connection ended (reset, closed without the close
/// handshake, an I/O error) rather than a frame that breaks the WebSocket protocol.
fn client_left(error: &tokio_tungstenite::tungstenite::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    matches!(
        error,
        Error::ConnectionClosed
            | Error::AlreadyClosed
            | Error::Io(_)
            | Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_with_its_suffix_is_one_json_object() {
        let text = r#"{"type":"Transition","modifications":[]}"#;
        let whole = format!(
            "{}{}",
            &text[..text.len() - 1],
            transition_suffix(Some(-5), 7)
        );
        let v: serde_json::Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(v["clientClockSkew"], -5);
        assert_eq!(v["serverTs"], 7);
        let whole = format!("{}{}", &text[..text.len() - 1], transition_suffix(None, 7));
        let v: serde_json::Value = serde_json::from_str(&whole).unwrap();
        assert!(v.get("clientClockSkew").is_none());
    }
}
