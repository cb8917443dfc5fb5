//! HTTP calls to Convex on behalf of clients: queries answered from a live subscription when
//! one exists, else coalesced (single-flight) across identical concurrent requests; mutations
//! and actions forwarded as they are, never cached or merged.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use edge_convex::http::Format;
use edge_convex::value::export_json;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use serde_json::{Value, json};
use std::time::Duration;

use crate::hub::Hub;
use crate::identity::{Identities, IdentityError, IdentityKey, VerifiedUser};
use crate::key::QueryKey;
use crate::listener::Inbox;
use crate::metrics::CallKind;
use crate::upstream::{Event, QueryResult};

/// An HTTP answer to relay: status and body.
/// The body is shared (cheap to clone) across coalesced callers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Arc<[u8]>,
    pub from_subscription: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The token is bad (HTTP 401, gRPC `UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthorized(String),
    /// The token could not be checked: auth's JWKS could not be had (HTTP 503, gRPC
    /// `UNAVAILABLE`); the client keeps its token and retries.
    #[error("{0}")]
    AuthUnavailable(String),
    #[error("Convex unreachable: {0}")]
    Upstream(String),
}

impl From<IdentityError> for ProxyError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Unauthenticated(m) => ProxyError::Unauthorized(m),
            IdentityError::AuthUnavailable(m) => ProxyError::AuthUnavailable(m),
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<Reply, String>>>;
type FlightKey = (IdentityKey, QueryKey, Format);

pub struct Proxy {
    pub convex_url: String,
    pub hub: Arc<Hub>,
    pub identities: Arc<Identities>,
    pub shared_functions: std::collections::BTreeSet<String>,
    /// Trusts the OS roots plus `SSL_CERT_FILE` (see `edge_tls`).
    pub(crate) http: reqwest::Client,
    flights: Mutex<HashMap<FlightKey, Flight>>,
    /// `QUERY_READ_LINGER_SECONDS`: reads subscribe and keep the subscription this long.
    read_linger: Option<Duration>,
    warming: Arc<Mutex<HashMap<WarmKey, Warm>>>,
}

type Warm = Shared<BoxFuture<'static, Option<Arc<QueryResult>>>>;

/// What a read through a subscription found.
enum Warmed {
    /// The first value of the subscription this read started or joined.
    Value(Arc<QueryResult>),
    /// The subscription was already warm: look its live value up.
    Live,
}
type WarmKey = (IdentityKey, QueryKey);

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A subscription's result as Convex's HTTP API words it: `{"status":"success","value",…}` or
/// `{"status":"error","errorMessage",…}`.
pub(crate) fn result_body(result: &QueryResult, format: Format) -> String {
    match result {
        QueryResult::Value {
            value, log_lines, ..
        } => {
            let value = match format {
                Format::Json => {
                    export_json(&serde_json::from_str(value.get()).unwrap_or(Value::Null))
                        .to_string()
                }
                Format::ConvexEncodedJson => value.get().to_owned(),
            };
            format!(
                "{{\"status\":\"success\",\"value\":{value},\"logLines\":{}}}",
                serde_json::to_string(log_lines).unwrap_or_else(|_| "[]".into())
            )
        }
        QueryResult::Failed {
            message,
            data,
            log_lines,
            ..
        } => {
            let mut body =
                json!({"status": "error", "errorMessage": message, "logLines": log_lines});
            if let Some(data) = data {
                body["errorData"] = serde_json::from_str(data.get()).unwrap_or(Value::Null);
            }
            body.to_string()
        }
    }
}

/// Subscribes `key` for a listener of its own, returns the first result, and keeps the
/// subscription for `linger` (draining its events) before releasing it.
async fn warm_up(
    hub: Arc<Hub>,
    warming: Arc<Mutex<HashMap<WarmKey, Warm>>>,
    warm_key: WarmKey,
    user: Option<VerifiedUser>,
    linger: Duration,
) -> Option<Arc<QueryResult>> {
    let (identity, key) = warm_key.clone();
    let (inbox, mailbox) = Inbox::new(64);
    let mut rx = mailbox.events;
    let attachment = hub.attach(&identity, user.as_ref(), &inbox).await;
    attachment.subscribe(key.clone()).await;
    // Bounded; on timeout the read goes over HTTP.
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = rx.recv().await {
            match event {
                Event::Current { key: k, result, .. } if k == key => return Some(result),
                Event::Transition { updates, .. } => {
                    if let Some((_, r)) = updates.iter().find(|(k, _)| *k == key) {
                        return Some(r.clone());
                    }
                }
                Event::AuthFailed { .. } => return None,
                _ => {}
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(linger, async { while rx.recv().await.is_some() {} }).await;
        warming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&warm_key);
        // Detaching releases the subscription.
        drop(attachment);
    });
    first
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("convex_url", &self.convex_url)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    pub fn new(
        convex_url: String,
        hub: Arc<Hub>,
        identities: Arc<Identities>,
        shared_functions: std::collections::BTreeSet<String>,
        read_linger: Option<Duration>,
        http: reqwest::Client,
    ) -> Self {
        Proxy {
            convex_url,
            hub,
            identities,
            shared_functions,
            http,
            flights: Mutex::new(HashMap::new()),
            read_linger,
            warming: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Verifies a bearer token locally; `None` is anonymous.
    pub async fn identity(&self, token: Option<&str>) -> Result<IdentityKey, ProxyError> {
        match token {
            None => Ok(IdentityKey::Anonymous),
            Some(t) => Ok(self.identities.verify(t).await?.key),
        }
    }

    /// A query: from a live subscription of the same (identity, path, args), else one upstream
    /// call shared by identical concurrent requests.
    pub async fn query(
        &self,
        token: Option<&str>,
        path: &str,
        args: &Value,
        format: Format,
    ) -> Result<Reply, ProxyError> {
        let identity = self.identity(token).await?;
        let Ok(key) = QueryKey::new(path, args, None) else {
            // Let Convex word the error for a malformed path.
            let body = json!({"path": path, "args": args, "format": format});
            return self
                .forward(
                    CallKind::Query,
                    "/api/query",
                    body.to_string().into_bytes(),
                    token,
                )
                .await;
        };
        let via = if self.shared_functions.contains(key.path.as_str()) {
            IdentityKey::Anonymous
        } else {
            identity.clone()
        };
        if let Some(result) = self.lookup(&via, &key)
            && let Some(reply) = self.served(&result, format)
        {
            return Ok(reply);
        }
        if let Some(linger) = self.read_linger {
            let result = match self
                .read_through_subscription(&via, token, &key, linger)
                .await
            {
                Some(Warmed::Value(result)) => Some(result),
                // Subscribed since the lookup above: the live value is there now.
                Some(Warmed::Live) => self.lookup(&via, &key),
                None => None,
            };
            if let Some(reply) = result.and_then(|r| self.served(&r, format)) {
                return Ok(reply);
            }
        }
        // Identical concurrent requests of one identity share one call (shared functions are
        // called anonymously, so every identity shares theirs).
        let flight_key = (via.clone(), key, format);
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&flight_key) {
                Some(f) => f.clone(),
                None => {
                    let body = json!({"path": path, "args": args, "format": format})
                        .to_string()
                        .into_bytes();
                    let token = if via == IdentityKey::Anonymous {
                        None
                    } else {
                        token.map(str::to_owned)
                    };
                    let call = self.call(CallKind::Query, "/api/query", body, token);
                    let f = call.boxed().shared();
                    flights.insert(flight_key.clone(), f.clone());
                    f
                }
            }
        };
        let result = flight.clone().await;
        // Only this flight's entry: a later one for the same key may already be in the map.
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if flights.get(&flight_key).is_some_and(|f| f.ptr_eq(&flight)) {
            flights.remove(&flight_key);
        }
        drop(flights);
        result.map_err(ProxyError::Upstream)
    }

    /// The current result of a live subscription of `key` on the upstream of `via`, if any.
    fn lookup(&self, via: &IdentityKey, key: &QueryKey) -> Option<Arc<QueryResult>> {
        self.hub.get(via)?.lookup(key)
    }

    /// The HTTP answer for a subscription's value (counted as served from a subscription);
    /// `None` for a failed query, whose error Convex words over HTTP.
    fn served(&self, result: &QueryResult, format: Format) -> Option<Reply> {
        if !matches!(result, QueryResult::Value { .. }) {
            return None;
        }
        self.hub
            .stats
            .served_from_subscription
            .fetch_add(1, Ordering::Relaxed);
        Some(Reply {
            status: 200,
            body: result_body(result, format).into_bytes().into(),
            from_subscription: true,
        })
    }

    /// A read that subscribes instead of calling Convex over HTTP, and keeps the subscription
    /// for `linger` so the next reads (the page's own client subscribing right after SSR, the
    /// next render) are served from it. Concurrent first reads share one subscription. `None`
    /// (the caller goes over HTTP) when the token expires too soon or no value came in time.
    async fn read_through_subscription(
        &self,
        via: &IdentityKey,
        token: Option<&str>,
        key: &QueryKey,
        linger: Duration,
    ) -> Option<Warmed> {
        let user = match (via, token) {
            (IdentityKey::Anonymous, _) | (_, None) => None,
            (_, Some(t)) => {
                let user = self.identities.verify(t).await.ok()?;
                let left = user.expires_at - unix_now();
                if left < linger.as_secs() as i64 + 60 {
                    return None;
                }
                Some(user)
            }
        };
        let warm_key = (via.clone(), key.clone());
        let warm = {
            let mut warming = self.warming.lock().unwrap_or_else(|e| e.into_inner());
            match warming.get(&warm_key) {
                // A finished warm-up's value may be stale: only a live lookup can be trusted.
                Some(w) if w.peek().is_some() => return Some(Warmed::Live),
                Some(w) => w.clone(),
                None => {
                    let w = warm_up(
                        self.hub.clone(),
                        self.warming.clone(),
                        warm_key.clone(),
                        user,
                        linger,
                    )
                    .boxed()
                    .shared();
                    warming.insert(warm_key, w.clone());
                    w
                }
            }
        };
        warm.await.map(Warmed::Value)
    }

    /// Sends `body` to `route` on Convex as it is.
    pub async fn forward(
        &self,
        kind: CallKind,
        route: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<Reply, ProxyError> {
        if let Some(t) = token {
            self.identities.verify(t).await?;
        }
        self.call(kind, route, body, token.map(str::to_owned))
            .await
            .map_err(ProxyError::Upstream)
    }

    fn call(
        &self,
        kind: CallKind,
        route: &str,
        body: Vec<u8>,
        token: Option<String>,
    ) -> impl std::future::Future<Output = Result<Reply, String>> + Send + 'static {
        let mut request = self
            .http
            .post(format!("{}{route}", self.convex_url))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        let stats = self.hub.stats.clone();
        async move {
            stats.upstream_request(kind);
            let response = request.send().await.map_err(|e| edge_tls::describe(&e))?;
            let status = response.status().as_u16();
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            Ok(Reply {
                status,
                body: body.to_vec().into(),
                from_subscription: false,
            })
        }
    }
}
