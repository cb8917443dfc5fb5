//! Page data kept live (`GATEWAY_PAGE_WATCH_SECONDS`): a page's subscribed queries are watched
//! on the query service (`Watch`, on the identity's shared upstream subscriptions), and renders
//! read the latest batch instead of calling the query service each time.
//!
//! One watch per (identity, page calls), shared by every render of that page for that identity
//! on this gateway. The identity is the token's claims without `iat`, `exp`, `nbf`, `jti` — the
//! query service's own identity key — so a session's successive tokens share a watch. A watch
//! ends when no render used it for the idle time, when the query service ends it (token expired
//! or refused, Convex lost), or is replaced by the next render once its token has less than
//! [`MIN_TOKEN_LEFT`] to live. Renders wait for a new watch's first batch for at most
//! [`FIRST_BATCH_WAIT`] after it opened; past that, or when a watch cannot be opened, they
//! fetch with `QueryBatch`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use edge_proto::query::v1 as qpb;
use edge_proto::query::v1::query_service_client::QueryServiceClient;
use tokio::sync::watch;
use tonic::transport::Channel;

/// A watch whose token expires sooner than this is replaced.
const MIN_TOKEN_LEFT: i64 = 60;
/// At most this many watches; past it, renders fetch.
const CAPACITY: usize = 10_000;
/// Renders wait at most this long after a watch opened for its first batch, then fetch (the
/// watch goes on: Convex may be slow or unreachable, and the query service gives up on a
/// first batch after 10 s).
const FIRST_BATCH_WAIT: Duration = Duration::from_secs(2);

pub type Results = Arc<Vec<qpb::FunctionResult>>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    identity: String,
    calls: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum Batch {
    Pending,
    Ready(Results),
    Ended,
}

#[derive(Debug)]
struct Entry {
    batch: watch::Receiver<Batch>,
    /// Unix seconds at which the token the watch was opened with expires.
    expires_at: i64,
    /// Milliseconds since [`EPOCH`] when it opened.
    opened: u64,
    /// Milliseconds since [`EPOCH`] of the last render that used it.
    last_used: AtomicU64,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

impl Entry {
    fn usable(&self, now: i64) -> bool {
        !matches!(*self.batch.borrow(), Batch::Ended) && self.expires_at - now > MIN_TOKEN_LEFT
    }

    fn idle_for(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.last_used.load(Ordering::Relaxed)))
    }
}

#[derive(Debug)]
pub struct LiveData {
    idle: Duration,
    entries: Mutex<HashMap<Key, Arc<Entry>>>,
}

/// Who a page renders for.
pub struct Identity {
    /// As the query service keys its upstreams (`""` for anonymous); `None` when the token's
    /// claims cannot be read, so that no watch is shared on a guess.
    pub key: Option<String>,
    pub jwt: Option<String>,
    /// Unix seconds; `i64::MAX` for anonymous.
    pub expires_at: i64,
}

impl LiveData {
    pub fn new(idle: Duration) -> Arc<LiveData> {
        Arc::new(LiveData {
            idle,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches open now.
    pub fn watches(&self) -> usize {
        self.entries().len()
    }

    /// The latest results of `calls` (in order) for `identity`, opening a watch if there is
    /// none; `None` when no watch can serve them (the caller fetches).
    pub async fn results(
        self: &Arc<Self>,
        client: QueryServiceClient<Channel>,
        identity: &Identity,
        calls: &[&(String, String)],
    ) -> Option<Results> {
        let key = Key {
            identity: identity.key.clone()?,
            calls: calls.iter().map(|c| (*c).clone()).collect(),
        };
        let now = super::unix_now();
        let (mut batch, opened) = {
            let mut entries = self.entries();
            match entries.get(&key) {
                Some(entry) if entry.usable(now) => {
                    entry.last_used.store(now_ms(), Ordering::Relaxed);
                    (entry.batch.clone(), entry.opened)
                }
                existing => {
                    if existing.is_none() && entries.len() >= CAPACITY {
                        return None;
                    }
                    let (tx, rx) = watch::channel(Batch::Pending);
                    let opened = now_ms();
                    let entry = Arc::new(Entry {
                        batch: rx.clone(),
                        expires_at: identity.expires_at,
                        opened,
                        last_used: AtomicU64::new(opened),
                    });
                    entries.insert(key.clone(), entry.clone());
                    let request = qpb::QueryBatchRequest {
                        queries: super::function_calls(calls, identity.jwt.as_deref()),
                    };
                    tokio::spawn(self.clone().run(client, request, tx, key, entry));
                    (rx, opened)
                }
            }
        };
        let waited = Duration::from_millis(now_ms().saturating_sub(opened));
        let ready = tokio::time::timeout(
            FIRST_BATCH_WAIT.saturating_sub(waited),
            batch.wait_for(|b| !matches!(b, Batch::Pending)),
        )
        .await;
        match ready.ok()?.ok()?.clone() {
            Batch::Ready(results) if results.len() == calls.len() => Some(results),
            _ => None,
        }
    }

    /// Holds one watch open until it idles out or the query service ends it.
    async fn run(
        self: Arc<Self>,
        mut client: QueryServiceClient<Channel>,
        request: qpb::QueryBatchRequest,
        tx: watch::Sender<Batch>,
        key: Key,
        entry: Arc<Entry>,
    ) {
        match client.watch(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    let idle_left = self.idle.saturating_sub(entry.idle_for());
                    if idle_left.is_zero() {
                        break;
                    }
                    tokio::select! {
                        message = stream.message() => match message {
                            Ok(Some(batch)) => {
                                tx.send_replace(Batch::Ready(Arc::new(batch.results)));
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(grpc_code = ?status.code(), message = status.message(), "page watch ended");
                                break;
                            }
                        },
                        () = tokio::time::sleep(idle_left) => {}
                    }
                }
            }
            Err(status) => {
                tracing::warn!(grpc_code = ?status.code(), message = status.message(), "page watch refused; rendering with QueryBatch");
            }
        }
        tx.send_replace(Batch::Ended);
        let mut entries = self.entries();
        if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            entries.remove(&key);
        }
    }
}
