//! The upstream's driver: connects to Convex, reconnects with the service's backoff, and runs
//! one loop that reads Convex's frames and the listeners' commands into [`UpstreamState`],
//! then sends what it returns to Convex and delivers its events.

use std::collections::HashMap;

use std::sync::atomic::Ordering;

use edge_convex::ServerMessage;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::state::{Audience, Outbox, UpstreamState};
use super::{Command, Event, ListenerId, Settings, Upstream, Values, next_id};
use crate::listener::Inbox;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Task {
    settings: Settings,
    /// Convex's `Connect.sessionId`, the same on every connection of this upstream: Convex runs
    /// a mutation once per `(sessionId, requestId)`, so one sent again after a reconnect is
    /// answered with its first outcome rather than run twice.
    session_id: String,
    state: UpstreamState,
    /// Where each listener's events go.
    mailboxes: HashMap<ListenerId, Inbox>,
}

/// Starts an upstream task; it ends when idle (see [`super::Retire`]) or when every handle is
/// dropped.
pub fn spawn(settings: Settings) -> Upstream {
    let id = next_id();
    let (tx, rx) = mpsc::channel(4096);
    let values = Values::default();
    let stats = settings.stats.clone();
    let task = Task {
        state: UpstreamState::new(id, stats.clone(), values.clone())
            .with_max_message_bytes(settings.max_message_bytes),
        settings,
        session_id: session_id(),
        mailboxes: HashMap::new(),
    };
    tokio::spawn(async move {
        stats.upstream_connections.fetch_add(1, Ordering::Relaxed);
        task.run(rx).await;
        stats.upstream_connections.fetch_sub(1, Ordering::Relaxed);
    });
    Upstream { id, tx, values }
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let id = self.state.id();
        let mut backoff = edge_telemetry::backoff::reconnect();
        loop {
            let tls = tokio_tungstenite::Connector::Rustls(self.settings.tls.client_config());
            let url = self.settings.ws_url.as_str();
            let connect =
                tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(tls));
            // A connect whose traffic is swallowed would otherwise wait forever.
            let connected = tokio::time::timeout(self.settings.inactivity, connect)
                .await
                .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut).into()));
            match connected {
                Ok((socket, _)) => {
                    backoff = edge_telemetry::backoff::reconnect();
                    match self.serve(socket, &mut rx).await {
                        Ok(()) => return,
                        Err(reason) => {
                            tracing::warn!(%reason, upstream = id, "upstream connection lost; reconnecting")
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, upstream = id, "cannot reach convex; retrying")
                }
            }
            let mut out = Outbox::default();
            self.state.disconnected(&mut out);
            self.deliver(out);
            // Keep taking commands while waiting, so listeners never block on us.
            let retry = tokio::time::sleep(backoff.next().unwrap_or_default());
            tokio::pin!(retry);
            loop {
                tokio::select! {
                    _ = &mut retry => break,
                    command = rx.recv() => match command {
                        Some(c) => {
                            let mut out = Outbox::default();
                            self.on_command(c, &mut out);
                            self.deliver(out);
                        }
                        None => return,
                    },
                }
            }
            if self.try_retire(&mut rx) {
                return;
            }
        }
    }

    /// Ends the upstream if nobody uses it, it owes the journal no answer, and no command is
    /// waiting.
    fn try_retire(&self, rx: &mut mpsc::Receiver<Command>) -> bool {
        if !self.state.is_idle() || self.state.owes_journal() {
            return false;
        }
        (self.settings.retire)(self.state.id(), &mut || rx.is_empty())
    }

    /// Serves one connection until it fails (`Err`) or the upstream is done (`Ok`).
    async fn serve(
        &mut self,
        socket: Socket,
        rx: &mut mpsc::Receiver<Command>,
    ) -> Result<(), String> {
        let (mut sink, mut stream) = socket.split();
        let mut out = Outbox::default();
        self.state.connected(self.session_id.clone(), &mut out);
        self.send(&mut sink, out).await?;
        let mut idle = tokio::time::interval(self.settings.idle);
        idle.tick().await;
        let mut chunks = edge_convex::sync::ChunkAssembler::default();
        // Convex pings an idle socket: a connection silent for `inactivity` is dead even if
        // TCP says nothing (a NAT or load balancer dropped the flow).
        let mut heard = tokio::time::Instant::now();
        loop {
            let mut out = Outbox::default();
            let silence = tokio::time::sleep_until(heard + self.settings.inactivity);
            tokio::select! {
                _ = silence => {
                    return Err(format!(
                        "nothing from convex for {:.1} s",
                        self.settings.inactivity.as_secs_f32()
                    ));
                }
                message = stream.next() => {
                    heard = tokio::time::Instant::now();
                    match message {
                    Some(Ok(Message::Text(text))) => {
                        let message: ServerMessage = serde_json::from_str(&text)
                            .map_err(|e| format!("unreadable message from convex: {e}"))?;
                        if let Some(message) = assemble(&mut chunks, message)? {
                            self.state.on_server_message(message, &mut out)?;
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Binary(_))) => return Err("binary frame from convex".into()),
                    Some(Ok(Message::Close(_))) | None => return Err("convex closed the connection".into()),
                    Some(Err(e)) => return Err(e.to_string()),
                    }
                }
                command = rx.recv() => match command {
                    Some(c) => {
                        self.on_command(c, &mut out);
                        // Batch: take everything already queued before writing.
                        while let Ok(c) = rx.try_recv() {
                            self.on_command(c, &mut out);
                        }
                    }
                    None => return Ok(()),
                },
                _ = idle.tick() => {
                    if self.try_retire(rx) {
                        return Ok(());
                    }
                }
            }
            self.state.flush(&mut out);
            self.send(&mut sink, out).await?;
        }
    }

    fn on_command(&mut self, command: Command, out: &mut Outbox) {
        match command {
            Command::Attach(inbox) => {
                let listener = inbox.listener();
                self.mailboxes.insert(listener, inbox);
                self.state.attach(listener);
            }
            Command::Detach { listener } => {
                self.mailboxes.remove(&listener);
                self.state.detach(listener);
            }
            Command::Subscribe { listener, key } => self.state.subscribe(listener, key, out),
            Command::Unsubscribe { listener, key } => self.state.unsubscribe(listener, &key),
            Command::Token {
                token,
                expires_at,
                issued_at,
            } => self.state.token(token, expires_at, issued_at),
            Command::Revoke { revocation, reason } => self.state.revoke(&revocation, &reason, out),
            Command::Advance => self.state.advance(out),
            Command::Request {
                listener,
                request_id,
                kind,
                udf_path,
                args,
                ticket,
            } => self
                .state
                .request(listener, request_id, kind, udf_path, args, ticket, out),
        }
    }

    /// Delivers events; a listener whose queue is full is evicted.
    fn deliver(&mut self, out: Outbox) {
        // Every integration test (debug builds) checks the state's invariants on each step.
        #[cfg(debug_assertions)]
        if let Err(broken) = self.state.validate() {
            panic!("upstream state invariant broken: {broken}");
        }
        let settled = out.settled;
        for (audience, event) in out.events {
            // Counted once per event, not per listener.
            let bytes = event.bytes();
            match audience {
                Audience::One(listener) => self.deliver_to(listener, event, bytes),
                Audience::All => {
                    let ids: Vec<ListenerId> = self.mailboxes.keys().copied().collect();
                    for listener in ids {
                        self.deliver_to(listener, event.clone(), bytes);
                    }
                }
            }
        }
        // After the sender's own answer, so a repeat never gets it before the sender.
        for (ticket, outcome) in settled {
            ticket.settle(&outcome);
        }
    }

    /// A listener whose queue is full, in events or in bytes, is evicted.
    fn deliver_to(&mut self, listener: ListenerId, event: Event, bytes: usize) {
        let full = self
            .mailboxes
            .get(&listener)
            .is_some_and(|inbox| !inbox.deliver(event, bytes));
        if full {
            tracing::warn!(
                listener,
                upstream = self.state.id(),
                "downstream socket too slow; disconnecting it"
            );
            self.mailboxes.remove(&listener);
            self.state.evict(listener);
        }
    }

    /// Delivers events, then writes the messages for Convex (evictions may add removals).
    async fn send(
        &mut self,
        sink: &mut futures_util::stream::SplitSink<Socket, Message>,
        mut out: Outbox,
    ) -> Result<(), String> {
        let to_convex = std::mem::take(&mut out.to_convex);
        self.deliver(out);
        let mut later = Outbox::default();
        self.state.flush(&mut later);
        for message in to_convex.into_iter().chain(later.to_convex) {
            let text = serde_json::to_string(&message).map_err(|e| e.to_string())?;
            sink.feed(Message::Text(text.into()))
                .await
                .map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())
    }
}

/// A random (version 4) UUID in hyphenated form: Convex parses `Connect.sessionId` as a UUID
/// (`SessionId` in `crates/convex/sync_types`), and keys mutation idempotency on it, so it must
/// be unique across upstreams, processes and replicas (convex-js uses `crypto.randomUUID`).
fn session_id() -> String {
    let mut b = [0u8; 16];
    edge_keys::random_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Joins Convex's `TransitionChunk`s into the transition they carry (`None` until the last
/// part); other messages pass through, and must not arrive between two parts.
fn assemble(
    chunks: &mut edge_convex::sync::ChunkAssembler,
    message: ServerMessage,
) -> Result<Option<ServerMessage>, String> {
    match message {
        ServerMessage::TransitionChunk {
            chunk,
            part_number,
            total_parts,
            transition_id,
        } => match chunks.push(chunk, part_number, total_parts, transition_id)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| format!("unreadable chunked transition from convex: {e}")),
            None => Ok(None),
        },
        _ if chunks.in_progress() => Err("a message between two TransitionChunks".into()),
        other => Ok(Some(other)),
    }
}

#[cfg(test)]
mod tests {
    /// Convex parses `Connect.sessionId` as a UUID: hyphenated, version 4, RFC 4122 variant,
    /// and a fresh one per upstream.
    #[test]
    fn session_ids_are_fresh_version_4_uuids() {
        let (a, b) = (super::session_id(), super::session_id());
        assert_ne!(a, b);
        for id in [a, b] {
            let groups: Vec<&str> = id.split('-').collect();
            let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
            assert_eq!(lengths, [8, 4, 4, 4, 12], "{id}");
            assert!(
                id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(groups[2].starts_with('4'), "{id}");
            assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{id}");
        }
    }
}
