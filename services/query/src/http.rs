//! Convex's HTTP API towards clients, over [`Proxy`].

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use edge_convex::http::{Format, args_object};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::metrics::CallKind;
use crate::proxy::{ProxyError, Reply};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/query", web::post().to(query_post))
        .route("/api/query", web::get().to(query_get))
        .route("/api/mutation", web::post().to(mutation))
        .route("/api/action", web::post().to(action))
        .route("/api/function", web::post().to(function))
        .route("/api/query_batch", web::post().to(query_batch))
        .route("/api/query_ts", web::post().to(query_ts))
        .route("/api/query_at_ts", web::post().to(query_at_ts))
        .route("/api/run/{path:.*}", web::post().to(run));
}

/// Handlers that pass the body to Convex unchanged.
macro_rules! forwarding {
    ($($name:ident => ($kind:expr, $route:literal);)*) => {$(
        async fn $name(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResult {
            forward(req, body, state, $kind, $route).await
        }
    )*};
}

forwarding! {
    mutation => (CallKind::Mutation, "/api/mutation");
    action => (CallKind::Action, "/api/action");
    function => (CallKind::Function, "/api/function");
    query_batch => (CallKind::Query, "/api/query_batch");
    query_ts => (CallKind::Query, "/api/query_ts");
    query_at_ts => (CallKind::Query, "/api/query_at_ts");
}

/// A request refused before reaching Convex: `{code, message}` with its status.
#[derive(Debug)]
struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl actix_web::ResponseError for HttpError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // auth's JWKS is asked for again at most every 2 s.
            response.insert_header((header::RETRY_AFTER, "2"));
        }
        response.json(json!({"code": self.code, "message": self.message}))
    }
}

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        code,
        message: message.into(),
    }
}

type HttpResult = Result<HttpResponse, HttpError>;

fn reply(result: Result<Reply, ProxyError>) -> HttpResult {
    match result {
        Ok(r) => Ok(HttpResponse::build(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY),
        )
        .content_type("application/json")
        .body(r.body.to_vec())),
        Err(ProxyError::Unauthorized(m)) => {
            Err(error(StatusCode::UNAUTHORIZED, "Unauthenticated", m))
        }
        // Not the token's fault: a 401 would make the client drop it (sign the user out).
        Err(ProxyError::AuthUnavailable(m)) => {
            tracing::warn!(error = %m, "token not checked: auth unavailable");
            Err(error(StatusCode::SERVICE_UNAVAILABLE, "AuthUnavailable", m))
        }
        Err(e @ ProxyError::Upstream(_)) => {
            tracing::warn!(error = %e, "upstream call failed");
            Err(error(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                "Convex is unreachable",
            ))
        }
    }
}

/// The bearer token, or an error response for a malformed header.
fn bearer(req: &HttpRequest) -> Result<Option<&str>, HttpError> {
    match req.headers().get(header::AUTHORIZATION) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Some(t.trim()))
            .ok_or_else(|| {
                error(
                    StatusCode::UNAUTHORIZED,
                    "Unauthenticated",
                    "Authorization header must be `Bearer <token>`",
                )
            }),
    }
}

#[derive(Deserialize)]
struct Call {
    path: Option<String>,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    format: Option<Format>,
}

async fn run_query(req: &HttpRequest, state: &AppState, call: Call) -> HttpResult {
    let token = bearer(req)?;
    let path = call
        .path
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "BadRequest", "missing `path`"))?;
    let args =
        args_object(&call.args).map_err(|e| error(StatusCode::BAD_REQUEST, "BadRequest", e))?;
    reply(
        state
            .proxy
            .query(token, &path, &args, call.format.unwrap_or_default())
            .await,
    )
}

async fn query_post(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResult {
    let call = serde_json::from_slice::<Call>(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            format!("invalid request body: {e}"),
        )
    })?;
    run_query(&req, &state, call).await
}

#[derive(Deserialize)]
struct QueryParams {
    path: String,
    args: Option<String>,
    format: Option<Format>,
}

async fn query_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResult {
    let bad = |m: String| error(StatusCode::BAD_REQUEST, "BadRequest", m);
    let params = web::Query::<QueryParams>::from_query(req.query_string())
        .map_err(|e| bad(format!("invalid query string: {e}")))?
        .into_inner();
    let args = match params.args.as_deref() {
        None => Value::Null,
        Some(text) => {
            serde_json::from_str(text).map_err(|e| bad(format!("`args` is not JSON: {e}")))?
        }
    };
    run_query(
        &req,
        &state,
        Call {
            path: Some(params.path),
            args,
            format: params.format,
        },
    )
    .await
}

async fn forward(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
    kind: CallKind,
    route: &str,
) -> HttpResult {
    let token = bearer(&req)?;
    if !body.is_empty() && serde_json::from_slice::<Value>(&body).is_err() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the request body is not JSON",
        ));
    }
    reply(state.proxy.forward(kind, route, body.to_vec(), token).await)
}

async fn run(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> HttpResult {
    let route = format!("/api/run/{path}");
    forward(req, body, state, CallKind::Function, &route).await
}
