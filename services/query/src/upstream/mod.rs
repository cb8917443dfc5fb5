//! One WebSocket to Convex per identity, shared by every listener of that identity.
//!
//! [`state`] holds the rules and no I/O: the reference-counted query set keyed by [`QueryKey`],
//! upstream query and request ids, the versions sent and received, the results. [`task`] is
//! the driver: it owns the connection, feeds the state what Convex and the listeners send, and
//! sends and delivers what the state returns. Each Convex transition becomes one
//! [`Event::Transition`] whose results are serialised once and shared by every listener; a
//! listener whose queue is full is evicted. On connection loss the task reconnects with the
//! service's one backoff and re-adds every live query; listeners stay attached and see only
//! results that changed.

pub mod state;
mod task;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edge_convex::sync::{RequestKind, StateVersion};
use edge_convex::{RequestId, Timestamp};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::key::QueryKey;
use crate::metrics::Stats;
use crate::revocations::Revocation;

pub use task::spawn;

/// Names one upstream task (unique in the process).
pub type UpstreamId = u64;
/// Names one listener: a client socket, a page watch, a read through a subscription.
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
    /// What holding this result costs, in bytes (value or message, data, log lines).
    pub fn bytes(&self) -> usize {
        let lines = |l: &[String]| l.iter().map(|s| s.len() + 8).sum::<usize>();
        match self {
            QueryResult::Value {
                value,
                log_lines,
                journal,
            } => value.get().len() + lines(log_lines) + journal.as_ref().map_or(0, String::len),
            QueryResult::Failed {
                message,
                data,
                log_lines,
                journal,
            } => {
                message.len()
                    + data.as_ref().map_or(0, |d| d.get().len())
                    + lines(log_lines)
                    + journal.as_ref().map_or(0, String::len)
            }
        }
    }

    /// The journal Convex sent with this result (`null` for a query that did not paginate).
    pub fn journal(&self) -> Option<&str> {
        match self {
            QueryResult::Value { journal, .. } | QueryResult::Failed { journal, .. } => {
                journal.as_deref()
            }
        }
    }

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
        ts: Timestamp,
        updates: Arc<Vec<(QueryKey, Arc<QueryResult>)>>,
        /// The text of the last client transition made from this event alone, for the next
        /// client that would send the same one.
        text: Arc<SharedText>,
    },
    /// The current result of a key the listener subscribed to, after every earlier event.
    Current {
        upstream: UpstreamId,
        ts: Timestamp,
        key: QueryKey,
        result: Arc<QueryResult>,
    },
    /// Convex refused this identity's token: `expired` when it reached its `exp` on the
    /// upstream (Convex's `authUpdateAttempted: false`), else refused or revoked.
    AuthFailed {
        upstream: UpstreamId,
        error: String,
        expired: bool,
    },
    /// The answer to one of this listener's mutations or actions. It travels in the same
    /// ordered queue as transitions, so a client always gets a `MutationResponse` before the
    /// transition that reaches its `ts`, as Convex sends them.
    Response {
        request_id: RequestId,
        kind: RequestKind,
        outcome: Box<Result<RequestOutcome, String>>,
        /// From the mutation journal ([`crate::journal`]), for a mutation the client sent
        /// again: no upstream of the socket follows it with a transition.
        replayed: bool,
    },
    /// A mutation this listener sent again was waiting for its first send, which failed or
    /// never reached Convex ([`crate::journal`]): the listener runs it now.
    Rerun { request_id: RequestId },
}

impl Event {
    /// The bytes a listener's queue counts for this event (see
    /// [`crate::listener::QueueBytes`]): its results, and a little for the event itself.
    pub fn bytes(&self) -> usize {
        const EVENT: usize = 64;
        match self {
            Event::Transition { updates, .. } => {
                EVENT
                    + updates
                        .iter()
                        .map(|(_, r)| EVENT + r.bytes())
                        .sum::<usize>()
            }
            Event::Current { result, .. } => EVENT + result.bytes(),
            Event::AuthFailed { error, .. } => EVENT + error.len(),
            Event::Rerun { .. } => EVENT,
            Event::Response { outcome, .. } => {
                EVENT
                    + match outcome.as_ref() {
                        Ok(o) => o.result.to_string().len(),
                        Err(e) => e.len(),
                    }
            }
        }
    }
}

/// The answer to a mutation or action.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub success: bool,
    pub result: Value,
    pub ts: Option<Timestamp>,
    pub log_lines: Vec<String>,
    pub error_data: Option<Value>,
}

/// What listeners ask of an upstream. Listeners use it through
/// [`crate::listener::Attachment`], which detaches on drop.
pub enum Command {
    /// A listener and the inbox its events go to.
    Attach(crate::listener::Inbox),
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
        /// Unix seconds.
        expires_at: i64,
        /// Unix seconds.
        issued_at: i64,
    },
    /// Auth's session log revoked this identity's token: listeners get `AuthFailed`.
    Revoke {
        revocation: Revocation,
        reason: String,
    },
    /// A listener holds a mutation answer at a `ts` beyond this upstream's latest: ask Convex
    /// for a transition at a fresh `ts` (see [`state::UpstreamState::advance`]).
    Advance,
    /// A listener's mutation or action; the answer comes back as [`Event::Response`].
    Request {
        listener: ListenerId,
        request_id: RequestId,
        kind: RequestKind,
        udf_path: String,
        args: Value,
        /// A mutation of the journal: settled with Convex's answer.
        ticket: Option<crate::journal::Ticket>,
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

/// Written only by the upstream's state; read by HTTP and gRPC reads without a round trip
/// through the task.
pub type Values = Arc<std::sync::Mutex<HashMap<QueryKey, Arc<QueryResult>>>>;

impl Upstream {
    /// The result of a live subscription, if any.
    pub fn lookup(&self, key: &QueryKey) -> Option<Arc<QueryResult>> {
        lock(&self.values).get(key).cloned()
    }
}

pub(crate) fn lock(
    values: &Values,
) -> std::sync::MutexGuard<'_, HashMap<QueryKey, Arc<QueryResult>>> {
    values.lock().unwrap_or_else(|e| e.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A process-unique id for an upstream or a listener.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Removes the upstream from the hub if `still_idle` holds, atomically with respect to new
/// attachments; returns whether it did.
pub type Retire = Arc<dyn Fn(UpstreamId, &mut dyn FnMut() -> bool) -> bool + Send + Sync>;

/// Everything the task needs to know from the outside.
pub struct Settings {
    pub ws_url: String,
    /// Roots for `wss://` (the OS roots plus `SSL_CERT_FILE`).
    pub tls: edge_tls::Trust,
    pub idle: Duration,
    /// How long a connection may bring nothing (or take to open) before it is made again.
    pub inactivity: Duration,
    /// Largest `ModifyQuerySet` sent to Convex, in bytes (`QUERY_UPSTREAM_MESSAGE_BYTES`).
    pub max_message_bytes: usize,
    pub stats: Arc<Stats>,
    pub retire: Retire,
}

/// The convex-js release whose sync protocol the upstream speaks, named in its sync path so
/// Convex treats it as that client (e.g. it sends `TransitionChunk`s, which the upstream
/// joins).
pub const CLIENT_VERSION: &str = "1.49.0";

/// `http(s)://host` → `ws(s)://host/api/<CLIENT_VERSION>/sync`.
pub fn ws_url(convex_url: &str) -> String {
    let base = convex_url.trim_end_matches('/');
    let ws = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{ws}/api/{CLIENT_VERSION}/sync")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_text_is_made_once_per_key() {
        let shared = SharedText::default();
        let version = |ts| StateVersion {
            ts: Timestamp(ts),
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

    #[test]
    fn ws_urls_follow_the_scheme() {
        assert_eq!(
            ws_url("https://a.convex.cloud/"),
            "wss://a.convex.cloud/api/1.49.0/sync"
        );
        assert_eq!(
            ws_url("http://127.0.0.1:3230"),
            "ws://127.0.0.1:3230/api/1.49.0/sync"
        );
    }

    #[test]
    fn results_compare_by_value_and_journal_or_by_message() {
        let value = |v: &str, journal: Option<&str>| QueryResult::Value {
            value: RawValue::from_string(v.into()).unwrap(),
            log_lines: vec!["ignored".into()],
            journal: journal.map(str::to_owned),
        };
        let failed = |m: &str| QueryResult::Failed {
            message: m.into(),
            data: None,
            log_lines: vec![],
            journal: None,
        };
        assert!(value("[1]", None).same_as(&value("[1]", None)));
        assert!(!value("[1]", None).same_as(&value("[2]", None)));
        assert!(!value("[1]", Some("j1")).same_as(&value("[1]", Some("j2"))));
        assert!(failed("boom").same_as(&failed("boom")));
        assert!(!failed("boom").same_as(&value("[1]", None)));
    }
}

#[cfg(test)]
mod detach_order_tests {
    use super::*;
    use crate::listener::{Attachment, Inbox};

    /// A socket switching identity detaches from the old main, then may attach the same
    /// listener to the same (anonymous) upstream as its shared route: on a busy upstream the
    /// detach must still arrive first, or it would detach the new attachment.
    #[tokio::test(flavor = "current_thread")]
    async fn an_awaited_detach_reaches_a_busy_upstream_before_a_later_attach() {
        let (tx, mut rx) = mpsc::channel(1);
        let upstream = Upstream {
            id: 1,
            tx,
            values: Values::default(),
        };
        let (inbox, _mailbox) = Inbox::new(8);
        let listener = inbox.listener();
        let old = Attachment::new(listener, upstream.clone());
        // The upstream's queue is full.
        upstream
            .tx
            .send(Command::Detach { listener: 0 })
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let mut order = Vec::new();
            for _ in 0..3 {
                match rx.recv().await.unwrap() {
                    Command::Attach(_) => order.push("attach"),
                    Command::Detach { listener: l } if l == listener => order.push("detach"),
                    _ => {}
                }
            }
            order
        });
        old.detach().await;
        upstream.tx.send(inbox.attach_command()).await.unwrap();
        let order = reader.await.unwrap();
        assert_eq!(
            order,
            ["detach", "attach"],
            "the new attachment was detached"
        );
    }
}
