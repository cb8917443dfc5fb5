//! The WebSocket sync protocol, one task per socket.
//!
//! The version rules are `edge_convex::versions::ClientVersion`, the copy the query service uses
//! too: each Transition starts at the version the client holds; the query-set version moves only
//! with `ModifyQuerySet`, the identity version by one per `Authenticate`; `ts` never goes
//! backwards. Violations by the client end the session with `FatalError`; a bad token gets
//! `AuthError` and the socket is closed, and so does a token that reaches its `exp` before the
//! client replaced it (`authUpdateAttempted: false`, Convex's `TokenExpired`).
//!
//! Transitions go out when Convex's sync worker sends them (`crates/sync/src/worker.rs`,
//! `SyncWorker::go_inner`: an update is scheduled by a `ModifyQuerySet`, an `Authenticate`,
//! each mutation or action answer, and a commit that invalidates one of the socket's
//! subscriptions; each update ends in one `Transition` at the latest `ts`, even with no
//! modification): after each of the client's messages that moves its versions, after every
//! mutation and action answer (convex-js resolves a mutation only at a transition reaching its
//! `ts`), and after a commit that wrote a table one of its queries read (devconvex tracks reads
//! by table, Convex by index range, so devconvex may send a few more). A commit that touches
//! none of its queries sends a socket nothing.
//!
//! Transitions carry `clientClockSkew` (from the socket's `Connect.clientTs`) and `serverTs`;
//! one whose text is over the chunk size goes as `TransitionChunk`s to clients whose version
//! (the `/api/{version}/sync` path) supports them; a `Connect` whose `maxObservedTimestamp` is
//! ahead of this backend ends the socket (Convex's linearizability check).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use edge_convex::sync::{QuerySetModification, StateModification, TokenType};
use edge_convex::versions::ClientVersion;
use edge_convex::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, ServerMessage, Timestamp,
};
use serde_json::Value;

use crate::auth::Identity;
use crate::engine::{Engine, Subscription};
use crate::{AppState, functions::FunctionError};

/// What a transition answers, which decides whether one that moves nothing but `ts` goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A commit moved the latest `ts`: a transition only if it invalidated a subscription.
    Commit,
    /// A mutation or action answer: always a transition, even one that moves nothing.
    Request,
    /// A `ModifyQuerySet` or `Authenticate`: the versions it moves.
    Client,
}

/// Why a session ends.
enum End {
    /// The client closed or went away.
    Gone,
    /// A protocol violation: `FatalError` with this message.
    Fatal(String),
    /// A token was refused (`attempted`: by an `Authenticate`; else it expired): `AuthError`,
    /// then close.
    Auth {
        error: String,
        base_version: IdentityVersion,
        attempted: bool,
    },
    /// The server cannot serve this client (close code 1011, no message, like Convex's
    /// internal errors): the client reconnects.
    Internal(String),
}

struct SyncSession {
    engine: Arc<Engine>,
    ws: Session,
    version: ClientVersion,
    subs: BTreeMap<QueryId, Subscription>,
    identity: Option<Identity>,
    last_sent: Instant,
    /// `Connect.clientTs` minus the server's Unix ms when it arrived.
    clock_skew: Option<i64>,
    /// Largest transition frame before it is chunked; `None`: the client cannot take chunks.
    chunk_bytes: Option<usize>,
    /// `Connect.sessionId`: a mutation runs once per `(sessionId, requestId)`.
    session_id: Option<String>,
}

/// The server's Unix time: milliseconds (for the clock skew) and nanoseconds (`serverTs`).
fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

pub async fn handler(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let limit = state.config.max_message_bytes;
    let stream = stream
        .max_frame_size(limit)
        .aggregate_continuations()
        .max_continuation_size(limit);
    let engine = state.engine.clone();
    let ping_interval = state.config.ping_interval;
    let chunk_bytes =
        edge_convex::sync::supports_transition_chunks(req.match_info().get("version"))
            .then_some(state.config.transition_chunk_bytes);
    actix_web::rt::spawn(async move {
        let session = SyncSession {
            version: ClientVersion::default(),
            engine,
            ws,
            subs: BTreeMap::new(),
            identity: None,
            last_sent: Instant::now(),
            clock_skew: None,
            chunk_bytes,
            session_id: None,
        };
        session.run(stream, ping_interval).await;
    });
    Ok(response)
}

impl SyncSession {
    async fn run(
        mut self,
        mut stream: actix_ws::AggregatedMessageStream,
        ping_interval: std::time::Duration,
    ) {
        let mut ts_changes = self.engine.watch_ts();
        let mut ticker = tokio::time::interval(ping_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            // The held token's `exp`, as a deadline (far away without one).
            let expiry = self
                .identity
                .as_ref()
                .and_then(|i| i.expires_at)
                .map(|exp| {
                    let left = (exp as i128 * 1000 - unix_now().as_millis() as i128).max(0);
                    tokio::time::Instant::now() + std::time::Duration::from_millis(left as u64)
                });
            let step = tokio::select! {
                message = stream.recv() => match message {
                    None | Some(Ok(AggregatedMessage::Close(_))) => Err(End::Gone),
                    Some(Ok(AggregatedMessage::Text(text))) => self.on_text(&text).await,
                    Some(Ok(AggregatedMessage::Ping(bytes))) => self.ws.pong(&bytes).await.map_err(|_| End::Gone),
                    Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                    Some(Ok(AggregatedMessage::Binary(_))) => Err(End::Fatal("binary frames are not part of the sync protocol".into())),
                    Some(Err(e)) => Err(End::Fatal(format!("invalid WebSocket frame: {e}"))),
                },
                changed = ts_changes.changed() => match changed {
                    Ok(()) => self.transition(Vec::new(), |_| false, Cause::Commit).await,
                    Err(_) => Err(End::Gone),
                },
                _ = tokio::time::sleep_until(expiry.unwrap_or_else(far_future)), if expiry.is_some() => {
                    Err(End::Auth {
                        error: "TokenExpired: Convex token identity expired".into(),
                        base_version: self.version.held().identity,
                        attempted: false,
                    })
                }
                _ = ticker.tick() => {
                    if self.last_sent.elapsed() + ping_interval / 10 >= ping_interval {
                        self.send(&ServerMessage::Ping).await
                    } else {
                        Ok(())
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        self.engine
            .stats
            .add_subscriptions(-(self.subs.len() as i64));
        let (message, code) = match end {
            End::Gone => (None, CloseCode::Normal),
            End::Fatal(error) => {
                tracing::info!(%error, "sync session ended by a protocol violation");
                (Some(ServerMessage::FatalError { error }), CloseCode::Policy)
            }
            End::Auth {
                error,
                base_version,
                attempted,
            } => (
                Some(ServerMessage::AuthError {
                    error,
                    base_version: Some(base_version),
                    auth_update_attempted: Some(attempted),
                }),
                CloseCode::Normal,
            ),
            End::Internal(error) => {
                tracing::warn!(%error, "sync session ended by a server error");
                (None, CloseCode::Error)
            }
        };
        if let Some(message) = message {
            let _ = self.ws.text(message.to_text()).await;
        }
        let _ = self
            .ws
            .close(Some(CloseReason {
                code,
                description: None,
            }))
            .await;
    }

    async fn send(&mut self, message: &ServerMessage) -> Result<(), End> {
        self.last_sent = Instant::now();
        self.ws.text(message.to_text()).await.map_err(|_| End::Gone)
    }

    /// Sends the transition from the client's version to the accepted versions at the current
    /// snapshot, re-running the queries `forced` picks and those whose tables changed, if
    /// `cause` calls for one (see the module docs).
    async fn transition(
        &mut self,
        mut modifications: Vec<StateModification>,
        forced: impl Fn(&Subscription) -> bool,
        cause: Cause,
    ) -> Result<(), End> {
        let since = self.version.held().ts.0;
        let refresh = self.engine.refresh(
            self.subs.values_mut(),
            since,
            self.identity.as_ref(),
            forced,
        );
        modifications.extend(refresh.modifications);
        let step = self.version.step(Timestamp(refresh.ts));
        let due = match cause {
            Cause::Commit => refresh.invalidated || !modifications.is_empty(),
            Cause::Request => true,
            Cause::Client => !step.is_still() || !modifications.is_empty(),
        };
        if !due {
            return Ok(());
        }
        let message = ServerMessage::Transition {
            start_version: step.start,
            end_version: step.end,
            modifications,
            client_clock_skew: self.clock_skew,
            server_ts: Some(unix_now().as_nanos() as u64),
        };
        self.version.sent(step);
        let text = message.to_text();
        let parts = self
            .chunk_bytes
            .and_then(|max| edge_convex::sync::split_transition(&text, max));
        self.last_sent = Instant::now();
        for part in parts.unwrap_or_else(|| vec![text]) {
            self.ws.text(part).await.map_err(|_| End::Gone)?;
        }
        Ok(())
    }

    async fn on_text(&mut self, text: &str) -> Result<(), End> {
        let message: ClientMessage = serde_json::from_str(text)
            .map_err(|e| End::Fatal(format!("malformed client message: {e}")))?;
        match message {
            ClientMessage::Connect {
                session_id,
                client_ts,
                max_observed_timestamp,
                ..
            } => {
                self.session_id = Some(session_id);
                if let Some(client_ts) = client_ts {
                    // Any number a client sends: saturating, never an overflow.
                    self.clock_skew =
                        Some((client_ts as i64).saturating_sub(unix_now().as_millis() as i64));
                }
                let latest = self.engine.ts();
                match max_observed_timestamp {
                    Some(seen) if seen.0 > latest => Err(End::Internal(format!(
                        "Client has observed a timestamp {} ahead of the backend latest known timestamp {latest}",
                        seen.0
                    ))),
                    _ => Ok(()),
                }
            }
            ClientMessage::Event { .. } => Ok(()),
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
                component_path,
            } => {
                root_component(component_path.as_deref())?;
                let args = single_args(&args)?;
                let once = self.session_id.as_deref().map(|id| (id, request_id.0));
                let (result, ts) =
                    self.engine
                        .mutation_once(once, &udf_path, &args, self.identity.as_ref());
                let (success, result, error_data) = outcome(result);
                let message = ServerMessage::MutationResponse {
                    request_id,
                    success,
                    result,
                    ts: success.then_some(Timestamp(ts)),
                    log_lines: vec![],
                    error_data,
                };
                self.send(&message).await?;
                // convex-js resolves a mutation only on a transition reaching its `ts`: the
                // one after every answer reaches it, or moves nothing when the client holds it
                // already (a mutation that ran before under this `(sessionId, requestId)`).
                self.transition(Vec::new(), |_| false, Cause::Request).await
            }
            ClientMessage::Action {
                request_id,
                udf_path,
                args,
                component_path,
            } => {
                root_component(component_path.as_deref())?;
                let args = single_args(&args)?;
                let (success, result, error_data) =
                    outcome(self.engine.action(&udf_path, &args, self.identity.as_ref()));
                self.send(&ServerMessage::ActionResponse {
                    request_id,
                    success,
                    result,
                    log_lines: vec![],
                    error_data,
                })
                .await?;
                self.transition(Vec::new(), |_| false, Cause::Request).await
            }
        }
    }

    async fn modify_query_set(
        &mut self,
        base: QuerySetVersion,
        new: QuerySetVersion,
        modifications: Vec<QuerySetModification>,
    ) -> Result<(), End> {
        self.version
            .accept_query_set(base, new)
            .map_err(|e| End::Fatal(e.to_string()))?;
        let mut removed = Vec::new();
        let mut added = BTreeSet::new();
        for m in modifications {
            match m {
                QuerySetModification::Add {
                    query_id,
                    udf_path,
                    args,
                    journal,
                    component_path,
                } => {
                    root_component(component_path.as_deref())?;
                    if self.subs.contains_key(&query_id) {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is already in the query set"
                        )));
                    }
                    let args = single_args(&args)?;
                    self.subs.insert(
                        query_id,
                        Subscription::new(query_id, udf_path, args, journal),
                    );
                    added.insert(query_id);
                }
                QuerySetModification::Remove { query_id } => {
                    if self.subs.remove(&query_id).is_none() {
                        return Err(End::Fatal(format!(
                            "query id {query_id} is not in the query set"
                        )));
                    }
                    added.remove(&query_id);
                    removed.push(StateModification::QueryRemoved { query_id });
                }
            }
        }
        self.engine
            .stats
            .add_subscriptions(added.len() as i64 - removed.len() as i64);
        self.transition(removed, |s| added.contains(&s.query_id), Cause::Client)
            .await
    }

    async fn authenticate(
        &mut self,
        base: IdentityVersion,
        token_type: TokenType,
        value: Option<String>,
    ) -> Result<(), End> {
        // Checked before the token, as Convex does; the version moves only once it is accepted.
        let mut accepted = self.version;
        accepted
            .accept_identity(base)
            .map_err(|e| End::Fatal(e.to_string()))?;
        self.identity = match (token_type, value) {
            (TokenType::None, _) => None,
            (TokenType::User, Some(token)) => match self.engine.auth.verify(&token).await {
                Ok(identity) => Some(identity),
                Err(error) => {
                    return Err(End::Auth {
                        error,
                        base_version: base,
                        attempted: true,
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
                    error: "admin keys are not accepted by devconvex".into(),
                    base_version: base,
                    attempted: true,
                });
            }
        };
        self.version = accepted;
        // Every query re-runs under the new identity.
        self.transition(Vec::new(), |_| true, Cause::Client).await
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365)
}

/// The sync protocol carries arguments as a one-element array.
/// Only the root component's functions, as Convex serves a client.
fn root_component(component_path: Option<&str>) -> Result<(), End> {
    edge_convex::sync::root_component(component_path).map_err(End::Fatal)
}

fn single_args(args: &[Value]) -> Result<Value, End> {
    edge_convex::sync::one_argument(args.to_vec()).map_err(End::Fatal)
}

fn outcome(result: Result<Value, FunctionError>) -> (bool, Value, Option<Value>) {
    match result {
        Ok(v) => (true, v, None),
        Err(e) => (false, Value::String(e.message), e.data),
    }
}
