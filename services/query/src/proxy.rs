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
use tokio::sync::oneshot;

use crate::hub::Hub;
use crate::identity::{Identities, IdentityKey};
use crate::key::QueryKey;
use crate::upstream::{Command, QueryResult};

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
    #[error("{0}")]
    Unauthorized(String),
    #[error("Convex unreachable: {0}")]
    Upstream(String),
}

type Flight = Shared<BoxFuture<'static, Result<Reply, String>>>;
type FlightKey = (IdentityKey, QueryKey, Format);

pub struct Proxy {
    pub convex_url: String,
    pub hub: Arc<Hub>,
    pub identities: Arc<Identities>,
    pub shared_functions: std::collections::BTreeSet<String>,
    http: reqwest::Client,
    flights: Mutex<HashMap<FlightKey, Flight>>,
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
    ) -> Self {
        Proxy {
            convex_url,
            hub,
            identities,
            shared_functions,
            http: reqwest::Client::new(),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a bearer token locally; `None` is anonymous.
    pub async fn identity(&self, token: Option<&str>) -> Result<IdentityKey, ProxyError> {
        match token {
            None => Ok(IdentityKey::Anonymous),
            Some(t) => self
                .identities
                .verify(t)
                .await
                .map(|u| u.key)
                .map_err(ProxyError::Unauthorized),
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
                .forward("query", "/api/query", body.to_string().into_bytes(), token)
                .await;
        };
        let via = if self.shared_functions.contains(&key.path) {
            IdentityKey::Anonymous
        } else {
            identity.clone()
        };
        if let Some(upstream) = self.hub.get(&via) {
            let (reply, answer) = oneshot::channel();
            if upstream
                .tx
                .send(Command::Lookup {
                    key: key.clone(),
                    reply,
                })
                .await
                .is_ok()
                && let Ok(Some(result)) = answer.await
                && let QueryResult::Value {
                    value, log_lines, ..
                } = result.as_ref()
            {
                self.hub
                    .stats
                    .served_from_subscription
                    .fetch_add(1, Ordering::Relaxed);
                let value = match format {
                    Format::Json => {
                        export_json(&serde_json::from_str(value.get()).unwrap_or(Value::Null))
                            .to_string()
                    }
                    Format::ConvexEncodedJson => value.get().to_owned(),
                };
                let body = format!(
                    "{{\"status\":\"success\",\"value\":{value},\"logLines\":{}}}",
                    serde_json::to_string(log_lines).unwrap_or_else(|_| "[]".into())
                );
                return Ok(Reply {
                    status: 200,
                    body: body.into_bytes().into(),
                    from_subscription: true,
                });
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
                    let call = self.call("query", "/api/query", body, token);
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

    /// Sends `body` to `route` on Convex as it is.
    pub async fn forward(
        &self,
        kind: &'static str,
        route: &str,
        body: Vec<u8>,
        token: Option<&str>,
    ) -> Result<Reply, ProxyError> {
        if let Some(t) = token {
            self.identities
                .verify(t)
                .await
                .map_err(ProxyError::Unauthorized)?;
        }
        self.call(kind, route, body, token.map(str::to_owned))
            .await
            .map_err(ProxyError::Upstream)
    }

    fn call(
        &self,
        kind: &'static str,
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
            let response = request.send().await.map_err(|e| e.to_string())?;
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
