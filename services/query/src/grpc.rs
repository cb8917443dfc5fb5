//! `edge.query.v1.QueryService` for the gateway: the same paths as the HTTP API.

use std::sync::Arc;

use edge_convex::http::Format;
use edge_proto::error::ErrorCode;
use edge_proto::query::v1 as pb;
use edge_proto::query::v1::query_service_server::QueryService;
use serde_json::{Value, json};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::downstream::session::QueryLimits;
use crate::metrics::CallKind;
use crate::proxy::{Proxy, ProxyError, Reply};

#[derive(Debug, Clone)]
pub struct GrpcApi {
    proxy: Arc<Proxy>,
    shutting_down: tokio::sync::watch::Receiver<bool>,
    /// A client socket's limits, applied to each batch and watch (a page's queries, with
    /// arguments from its URL): calls per request, one call's arguments, all of them.
    limits: QueryLimits,
}

impl GrpcApi {
    pub fn new(
        proxy: Arc<Proxy>,
        shutting_down: tokio::sync::watch::Receiver<bool>,
        limits: QueryLimits,
    ) -> Self {
        GrpcApi {
            proxy,
            shutting_down,
            limits,
        }
    }

    /// Parses a batch or a watch's calls within [`QueryLimits`]; nothing runs otherwise.
    fn parse_all(&self, calls: Vec<pb::FunctionCall>) -> Result<Vec<Parsed>, Status> {
        let invalid = |m: String| ErrorCode::VALIDATION_ERROR.to_status(m);
        if calls.len() > self.limits.max_queries {
            return Err(invalid(format!(
                "{} queries in one request, the limit is {}",
                calls.len(),
                self.limits.max_queries
            )));
        }
        let total: usize = calls.iter().map(|c| c.path.len() + c.args_json.len()).sum();
        if total > self.limits.max_socket_bytes {
            return Err(invalid(format!(
                "the request's queries are {total} bytes, the limit is {}",
                self.limits.max_socket_bytes
            )));
        }
        calls.into_iter().map(|c| self.parse(c)).collect()
    }

    /// One call, its path and arguments within `max_query_bytes`.
    fn parse(&self, call: pb::FunctionCall) -> Result<Parsed, Status> {
        let size = call.path.len() + call.args_json.len();
        if size > self.limits.max_query_bytes {
            return Err(ErrorCode::VALIDATION_ERROR.to_status(format!(
                "query {} is too large: {size} bytes of path and arguments, the limit is {}",
                call.path.chars().take(100).collect::<String>(),
                self.limits.max_query_bytes
            )));
        }
        parse(call)
    }
}

pub(crate) struct Parsed {
    pub token: Option<String>,
    pub path: String,
    pub args: Value,
    pub format: Format,
}

fn parse(call: pb::FunctionCall) -> Result<Parsed, Status> {
    let invalid = |m: String| ErrorCode::VALIDATION_ERROR.to_status(m);
    if call.path.is_empty() {
        return Err(invalid("path is required".into()));
    }
    let args: Value = if call.args_json.is_empty() {
        json!({})
    } else {
        serde_json::from_str(&call.args_json)
            .map_err(|e| invalid(format!("args_json is not JSON: {e}")))?
    };
    let args = edge_convex::http::args_object(&args).map_err(invalid)?;
    let format = match call.format.as_str() {
        "" | "convex_encoded_json" => Format::ConvexEncodedJson,
        "json" => Format::Json,
        other => return Err(invalid(format!("unknown format `{other}`"))),
    };
    Ok(Parsed {
        token: Some(call.jwt).filter(|t| !t.is_empty()),
        path: call.path,
        args,
        format,
    })
}

fn result(r: Result<Reply, ProxyError>) -> Result<pb::FunctionResult, Status> {
    match r {
        Ok(reply) => Ok(pb::FunctionResult {
            result_json: String::from_utf8_lossy(&reply.body).into_owned(),
            from_subscription: reply.from_subscription,
        }),
        Err(ProxyError::Unauthorized(m)) => Err(ErrorCode::UNAUTHORIZED.to_status(m)),
        Err(ProxyError::AuthUnavailable(m)) => Err(ErrorCode::AUTH_UNAVAILABLE.to_status(m)),
        Err(e @ ProxyError::Upstream(_)) => {
            Err(ErrorCode::SERVICE_UNAVAILABLE.to_status(e.to_string()))
        }
    }
}

impl GrpcApi {
    async fn call(
        &self,
        kind: CallKind,
        route: &'static str,
        call: pb::FunctionCall,
    ) -> Result<pb::FunctionResult, Status> {
        let p = parse(call)?;
        let body = json!({"path": p.path, "args": p.args, "format": p.format})
            .to_string()
            .into_bytes();
        result(
            self.proxy
                .forward(kind, route, body, p.token.as_deref())
                .await,
        )
    }
}

#[tonic::async_trait]
impl QueryService for GrpcApi {
    type WatchStream = ReceiverStream<Result<pb::QueryBatchResponse, Status>>;

    async fn query(
        &self,
        request: Request<pb::FunctionCall>,
    ) -> Result<Response<pb::FunctionResult>, Status> {
        let p = self.parse(request.into_inner())?;
        result(
            self.proxy
                .query(p.token.as_deref(), &p.path, &p.args, p.format)
                .await,
        )
        .map(Response::new)
    }

    async fn query_batch(
        &self,
        request: Request<pb::QueryBatchRequest>,
    ) -> Result<Response<pb::QueryBatchResponse>, Status> {
        let queries = self.parse_all(request.into_inner().queries)?;
        let calls = queries.into_iter().map(|p| async move {
            result(
                self.proxy
                    .query(p.token.as_deref(), &p.path, &p.args, p.format)
                    .await,
            )
        });
        let results = futures_util::future::try_join_all(calls).await?;
        Ok(Response::new(pb::QueryBatchResponse { results }))
    }

    async fn watch(
        &self,
        request: Request<pb::QueryBatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let calls = self.parse_all(request.into_inner().queries)?;
        let batches =
            crate::watch::start(self.proxy.clone(), calls, self.shutting_down.clone()).await?;
        Ok(Response::new(ReceiverStream::new(batches)))
    }

    async fn mutation(
        &self,
        request: Request<pb::FunctionCall>,
    ) -> Result<Response<pb::FunctionResult>, Status> {
        self.call(CallKind::Mutation, "/api/mutation", request.into_inner())
            .await
            .map(Response::new)
    }

    async fn action(
        &self,
        request: Request<pb::FunctionCall>,
    ) -> Result<Response<pb::FunctionResult>, Status> {
        self.call(CallKind::Action, "/api/action", request.into_inner())
            .await
            .map(Response::new)
    }
}
