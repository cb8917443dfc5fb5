//! `Watch` for the gateway: a page's queries held live on the identity's shared upstream
//! subscriptions, sent as one batch once every query has a result and again whenever one of
//! them changes. The gateway renders pages from the last batch instead of asking per render.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use edge_proto::error::ErrorCode;
use edge_proto::query::v1 as pb;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;
use tonic::Status;

use crate::grpc::Parsed;
use crate::identity::{IdentityError, IdentityKey};
use crate::key::QueryKey;
use crate::listener::{Attachment, Inbox};
use crate::proxy::{self, Proxy};
use crate::upstream::{Event, QueryResult, UpstreamId};

/// The first batch (every query's first result) must come within this.
const FIRST_BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gRPC response streams.
pub type Batches = mpsc::Receiver<Result<pb::QueryBatchResponse, Status>>;

/// One watched query and its latest result.
struct Slot {
    upstream: UpstreamId,
    key: QueryKey,
    format: edge_convex::http::Format,
    result: Option<Arc<QueryResult>>,
}

/// Checks every call, subscribes them all, and returns the stream of batches. Nothing is
/// subscribed when a call is invalid or the token is refused. The watch ends when
/// `shutting_down` flips.
pub async fn start(
    proxy: Arc<Proxy>,
    calls: Vec<Parsed>,
    shutting_down: watch::Receiver<bool>,
) -> Result<Batches, Status> {
    let invalid = |m: &str| ErrorCode::VALIDATION_ERROR.to_status(m.to_owned());
    let Some(token) = calls.first().map(|c| c.token.clone()) else {
        return Err(invalid("a watch needs at least one query"));
    };
    if calls.iter().any(|c| c.token != token) {
        return Err(invalid("every query of a watch carries the same JWT"));
    }
    let mut keys = Vec::with_capacity(calls.len());
    for call in &calls {
        let key = QueryKey::new(&call.path, &call.args, None).map_err(|e| invalid(&e))?;
        keys.push(key);
    }
    let user = match &token {
        Some(t) => Some(proxy.identities.verify(t).await.map_err(|e| match e {
            IdentityError::Unauthenticated(m) => ErrorCode::UNAUTHORIZED.to_status(m),
            IdentityError::AuthUnavailable(m) => ErrorCode::AUTH_UNAVAILABLE.to_status(m),
        })?),
        None => None,
    };
    let identity = user
        .as_ref()
        .map_or(IdentityKey::Anonymous, |u| u.key.clone());

    let (inbox, mailbox) = Inbox::new(64);
    let mut attachments: Vec<(IdentityKey, Attachment)> = Vec::new();
    let mut slots = Vec::with_capacity(keys.len());
    for (call, key) in calls.into_iter().zip(keys) {
        // Shared functions run anonymously, as for every other read.
        let via = if proxy.shared_functions.contains(key.path.as_str()) {
            IdentityKey::Anonymous
        } else {
            identity.clone()
        };
        let at = match attachments.iter().position(|(v, _)| *v == via) {
            Some(at) => at,
            None => {
                let attachment = proxy.hub.attach(&via, user.as_ref(), &inbox).await;
                attachments.push((via, attachment));
                attachments.len() - 1
            }
        };
        let attachment = &attachments[at].1;
        attachment.subscribe(key.clone()).await;
        slots.push(Slot {
            upstream: attachment.upstream_id(),
            key,
            format: call.format,
            result: None,
        });
    }
    // Only the upstreams hold the inbox now: the event stream ends when they all go.
    drop(inbox);
    let (tx, rx) = mpsc::channel(2);
    let expires_at = user.map(|u| u.expires_at);
    proxy.hub.stats.watches.fetch_add(1, Ordering::Relaxed);
    let stats = proxy.hub.stats.clone();
    tokio::spawn(async move {
        let watch = Watch {
            slots,
            events: mailbox.events,
            evicted: mailbox.evicted,
            tx,
        };
        watch.run(expires_at, attachments, shutting_down).await;
        stats.watches.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(rx)
}

struct Watch {
    slots: Vec<Slot>,
    events: mpsc::Receiver<Event>,
    evicted: Arc<Notify>,
    tx: mpsc::Sender<Result<pb::QueryBatchResponse, Status>>,
}

impl Watch {
    async fn run(
        mut self,
        expires_at: Option<i64>,
        attachments: Vec<(IdentityKey, Attachment)>,
        mut shutting_down: watch::Receiver<bool>,
    ) {
        let first_deadline = Instant::now() + FIRST_BATCH_TIMEOUT;
        // Convex would refuse the token from then on; the caller watches again with a newer one.
        let expiry = expires_at.map(|exp| {
            let left = exp - proxy::unix_now();
            Instant::now() + Duration::from_secs(left.max(0) as u64)
        });
        let closing = async move {
            if shutting_down.wait_for(|closing| *closing).await.is_err() {
                // No one can shut the service down any more.
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(closing);
        let mut sent = false;
        let mut changed = false;
        let end = loop {
            tokio::select! {
                event = self.events.recv() => {
                    let Some(event) = event else {
                        break Some(ErrorCode::SERVICE_UNAVAILABLE.to_status(
                            "the connection to Convex was lost",
                        ));
                    };
                    // Everything already queued goes into one batch.
                    let mut next = Some(event);
                    let mut refused = None;
                    while let Some(event) = next {
                        match self.apply(event) {
                            Applied::Changed => changed = true,
                            Applied::Refused(e) => refused = Some(e),
                            Applied::Nothing => {}
                        }
                        next = self.events.try_recv().ok();
                    }
                    if let Some(error) = refused {
                        break Some(ErrorCode::UNAUTHORIZED.to_status(error));
                    }
                    if changed && self.slots.iter().all(|s| s.result.is_some()) {
                        if self.tx.send(Ok(self.batch())).await.is_err() {
                            break None;
                        }
                        sent = true;
                        changed = false;
                    }
                }
                () = self.evicted.notified() => {
                    break Some(ErrorCode::SERVICE_UNAVAILABLE.to_status(
                        "the watch fell behind its subscriptions",
                    ));
                }
                () = self.tx.closed() => break None,
                () = &mut closing => {
                    break Some(ErrorCode::SERVICE_UNAVAILABLE.to_status(
                        "the query service is shutting down",
                    ));
                }
                () = tokio::time::sleep_until(first_deadline), if !sent => {
                    break Some(ErrorCode::SERVICE_UNAVAILABLE.to_status(
                        "no result from Convex in time",
                    ));
                }
                () = tokio::time::sleep_until(expiry.unwrap_or(first_deadline)), if expiry.is_some() => {
                    break Some(ErrorCode::UNAUTHORIZED.to_status("the token expired"));
                }
            }
        };
        if let Some(status) = end {
            let _ = self.tx.send(Err(status)).await;
        }
        // Detaching releases the watch's subscriptions.
        drop(attachments);
    }

    fn apply(&mut self, event: Event) -> Applied {
        let mut set = |upstream: UpstreamId, key: &QueryKey, result: &Arc<QueryResult>| {
            let mut changed = false;
            for slot in &mut self.slots {
                if slot.upstream == upstream
                    && slot.key == *key
                    && slot.result.as_ref().is_none_or(|r| !r.same_as(result))
                {
                    slot.result = Some(result.clone());
                    changed = true;
                }
            }
            changed
        };
        match event {
            Event::Transition {
                upstream, updates, ..
            } => {
                let mut changed = false;
                for (key, result) in updates.iter() {
                    changed |= set(upstream, key, result);
                }
                if changed {
                    Applied::Changed
                } else {
                    Applied::Nothing
                }
            }
            Event::Current {
                upstream,
                key,
                result,
                ..
            } => {
                if set(upstream, &key, &result) {
                    Applied::Changed
                } else {
                    Applied::Nothing
                }
            }
            Event::AuthFailed { error, .. } => Applied::Refused(error),
            Event::Response { .. } | Event::Rerun { .. } => Applied::Nothing,
        }
    }

    fn batch(&self) -> pb::QueryBatchResponse {
        let results = self
            .slots
            .iter()
            .map(|slot| pb::FunctionResult {
                result_json: slot
                    .result
                    .as_deref()
                    .map(|r| proxy::result_body(r, slot.format))
                    .unwrap_or_default(),
                from_subscription: true,
            })
            .collect();
        pb::QueryBatchResponse { results }
    }
}

enum Applied {
    Changed,
    Refused(String),
    Nothing,
}
