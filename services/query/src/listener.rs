//! A listener's side of an upstream: an [`Inbox`] where upstreams deliver its events, and an
//! [`Attachment`] per upstream it listens to, which subscribes, forwards requests and tokens,
//! and detaches when dropped (releasing every subscription it still holds).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use edge_convex::RequestId;
use edge_convex::sync::RequestKind;
use serde_json::Value;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, mpsc};

use crate::identity::VerifiedUser;
use crate::key::QueryKey;
use crate::upstream::{Command, Event, ListenerId, Upstream, UpstreamId, next_id};

/// Where upstreams deliver one listener's events, in order; shared by all its attachments.
#[derive(Debug, Clone)]
pub struct Inbox {
    listener: ListenerId,
    tx: mpsc::Sender<Event>,
    evicted: Arc<Notify>,
    queue: Arc<QueueBytes>,
}

/// The bytes of results queued for one listener ([`Event::bytes`]), and their bound: an
/// upstream evicts a listener rather than queue an event past it (unless its queue is
/// empty, so that one large result still gets through).
#[derive(Debug)]
pub struct QueueBytes {
    pub queued: AtomicUsize,
    /// `usize::MAX`: not counted.
    pub max: usize,
    /// Where client sockets' queues are reported (`edge_query_downstream_queued_bytes`).
    pub stats: Option<Arc<crate::metrics::Stats>>,
}

impl QueueBytes {
    /// Counts `bytes` in if they fit; `false` when the listener must be evicted.
    pub fn admit(&self, bytes: usize) -> bool {
        if self.max == usize::MAX {
            return true;
        }
        let queued = self.queued.load(Ordering::Acquire);
        if queued > 0 && queued.saturating_add(bytes) > self.max {
            return false;
        }
        let now = self.queued.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if let Some(stats) = &self.stats {
            let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
            stats
                .downstream_queued_bytes
                .fetch_add(bytes, Ordering::Relaxed);
            let now = i64::try_from(now).unwrap_or(i64::MAX);
            stats
                .downstream_queue_peak_bytes
                .fetch_max(now, Ordering::Relaxed);
        }
        true
    }

    /// Returns the bytes of an event taken off the queue (or never delivered).
    pub fn release(&self, bytes: usize) {
        if self.max == usize::MAX {
            return;
        }
        // Never below zero, whatever the order of a concurrent admit.
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(bytes))
            })
            .unwrap_or(0);
        if let Some(stats) = &self.stats {
            let freed = i64::try_from(before.min(bytes)).unwrap_or(i64::MAX);
            stats
                .downstream_queued_bytes
                .fetch_sub(freed, Ordering::Relaxed);
        }
    }
}

/// The receiving end of an [`Inbox`].
#[derive(Debug)]
pub struct Mailbox {
    pub events: mpsc::Receiver<Event>,
    /// Notified when an upstream evicted the listener (its queue was full).
    pub evicted: Arc<Notify>,
    queue: Arc<QueueBytes>,
}

impl Mailbox {
    /// The next event; its bytes leave the queue's count.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.events.recv().await?;
        self.queue.release(event.bytes());
        Some(event)
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.events.try_recv().ok()?;
        self.queue.release(event.bytes());
        Some(event)
    }

    /// Bytes of results queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queue.queued.load(Ordering::Acquire)
    }
}

impl Mailbox {
    /// Closes the queue; events left in it give their bytes back, and none is admitted after.
    pub fn discard(mut self) {
        self.events.close();
        while let Ok(event) = self.events.try_recv() {
            self.queue.release(event.bytes());
        }
    }
}

impl Inbox {
    /// A new listener whose queue holds `capacity` events, whatever their size.
    pub fn new(capacity: usize) -> (Inbox, Mailbox) {
        Self::bounded(capacity, usize::MAX, None)
    }

    /// A new listener whose queue holds `capacity` events and at most `max_bytes` of results
    /// (one event of any size when empty): a client socket's send queue.
    pub fn bounded(
        capacity: usize,
        max_bytes: usize,
        stats: Option<Arc<crate::metrics::Stats>>,
    ) -> (Inbox, Mailbox) {
        let (tx, events) = mpsc::channel(capacity);
        let evicted = Arc::new(Notify::new());
        let queue = Arc::new(QueueBytes {
            queued: AtomicUsize::new(0),
            max: max_bytes,
            stats,
        });
        let inbox = Inbox {
            listener: next_id(),
            tx,
            evicted: evicted.clone(),
            queue: queue.clone(),
        };
        (
            inbox,
            Mailbox {
                events,
                evicted,
                queue,
            },
        )
    }

    pub fn listener(&self) -> ListenerId {
        self.listener
    }

    /// Queues `event`, whose [`Event::bytes`] are `bytes` (counted once for a fan-out). A
    /// listener whose queue is full, in events or in bytes, or closed, is told it is evicted
    /// and `false` returned: its sender stops delivering to it.
    pub fn deliver(&self, event: Event, bytes: usize) -> bool {
        if !self.queue.admit(bytes) {
            self.evicted.notify_one();
            return false;
        }
        if self.tx.try_send(event).is_err() {
            self.queue.release(bytes);
            self.evicted.notify_one();
            return false;
        }
        true
    }

    /// Delivers an event from outside any upstream (the mutation journal's answers) as an
    /// upstream does ([`Inbox::deliver`]).
    pub fn offer(&self, event: Event) {
        let bytes = event.bytes();
        self.deliver(event, bytes);
    }

    pub(crate) fn attach_command(&self) -> Command {
        Command::Attach(self.clone())
    }
}

/// One listener attached to one upstream; detaches on drop.
#[derive(Debug)]
pub struct Attachment {
    listener: ListenerId,
    upstream: Upstream,
    /// Detach on drop (all but a handle replaced by one on the same upstream).
    armed: bool,
}

impl Attachment {
    pub(crate) fn new(listener: ListenerId, upstream: Upstream) -> Self {
        Attachment {
            listener,
            upstream,
            armed: true,
        }
    }

    /// Detaches now, after every command this handle sent. Where the same listener may attach
    /// to the same upstream next (a socket switching identity), this keeps the order: a
    /// detach left to `Drop` on a full queue goes through a task and could land after the new
    /// attach, detaching it.
    pub async fn detach(mut self) {
        self.armed = false;
        let detach = Command::Detach {
            listener: self.listener,
        };
        let _ = self.upstream.tx.send(detach).await;
    }

    pub fn upstream_id(&self) -> UpstreamId {
        self.upstream.id
    }

    /// The upstream's current result for `key`, if it holds one.
    pub fn lookup(&self, key: &QueryKey) -> Option<Arc<crate::upstream::QueryResult>> {
        self.upstream.lookup(key)
    }

    pub async fn subscribe(&self, key: QueryKey) {
        let listener = self.listener;
        self.send(Command::Subscribe { listener, key }).await;
    }

    pub async fn unsubscribe(&self, key: QueryKey) {
        let listener = self.listener;
        self.send(Command::Unsubscribe { listener, key }).await;
    }

    /// Asks the upstream for a transition at a fresh `ts` (a mutation answer beyond its latest).
    pub async fn advance(&self) {
        self.send(Command::Advance).await;
    }

    /// A fresher token for the upstream's identity.
    pub async fn token(&self, user: &VerifiedUser) {
        let command = Command::Token {
            token: user.token.clone(),
            expires_at: user.expires_at,
            issued_at: user.issued_at,
        };
        self.send(command).await;
    }

    pub async fn request(
        &self,
        request_id: RequestId,
        kind: RequestKind,
        udf_path: String,
        args: Value,
        ticket: Option<crate::journal::Ticket>,
    ) {
        let command = Command::Request {
            listener: self.listener,
            request_id,
            kind,
            udf_path,
            args,
            ticket,
        };
        self.send(command).await;
    }

    async fn send(&self, command: Command) {
        // A closed upstream has retired: it holds nothing of ours any more.
        let _ = self.upstream.tx.send(command).await;
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let detach = Command::Detach {
            listener: self.listener,
        };
        // Never lost to a busy upstream: a full queue gets the detach from a task.
        if let Err(TrySendError::Full(detach)) = self.upstream.tx.try_send(detach)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let tx = self.upstream.tx.clone();
            runtime.spawn(async move {
                let _ = tx.send(detach).await;
            });
        }
    }
}
