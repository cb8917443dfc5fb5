//! Convex's HTTP API: `/api/query` (POST and GET), `/api/mutation`, `/api/action`,
//! `/api/function`, `/api/run/{path}`, `/api/query_batch`, `/api/query_ts`, `/api/query_at_ts`.
//!
//! A function that fails is answered with HTTP 560 and `{"status":"error",…}`, as Convex does
//! (the official client's `STATUS_CODE_UDF_FAILED`); bad requests get 400, bad tokens 401.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use edge_convex::Timestamp;
use edge_convex::http::{Format, FunctionResult, STATUS_UDF_FAILED, args_object};
use edge_convex::value::export_json;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::auth::Identity;
use crate::engine::Engine;
use crate::functions::{FunctionError, Kind};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/query", web::post().to(query_post))
        .route("/api/query", web::get().to(query_get))
        .route("/api/mutation", web::post().to(mutation))
        .route("/api/action", web::post().to(action))
        .route("/api/function", web::post().to(function))
        .route("/api/run/{path:.*}", web::post().to(run))
        .route("/api/query_batch", web::post().to(query_batch))
        .route("/api/query_ts", web::post().to(query_ts))
        .route("/api/query_at_ts", web::post().to(query_at_ts));
}

/// A request that never reached a function: 400 or 401 with `{code, message}`.
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
        HttpResponse::build(self.status).json(json!({"code": self.code, "message": self.message}))
    }
}

type Reply = Result<HttpResponse, HttpError>;

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError {
        status: StatusCode::BAD_REQUEST,
        code: "BadRequest",
        message: message.into(),
    }
}

/// The caller's identity from `Authorization: Bearer <jwt>`; a present but bad token is an error.
async fn identity(req: &HttpRequest, engine: &Engine) -> Result<Option<Identity>, HttpError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("Authorization header must be `Bearer <token>`"))?;
    engine
        .auth
        .verify(token.trim())
        .await
        .map(Some)
        .map_err(unauthorized)
}

fn unauthorized(message: impl Into<String>) -> HttpError {
    HttpError {
        status: StatusCode::UNAUTHORIZED,
        code: "Unauthenticated",
        message: message.into(),
    }
}

/// A call as the HTTP API receives it.
#[derive(Debug, Deserialize)]
struct Call {
    path: Option<String>,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    ts: Option<Value>,
}

fn parse_call(body: &[u8]) -> Result<Call, HttpError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

fn result_of(outcome: Result<Value, FunctionError>, format: Format) -> FunctionResult {
    logged(outcome, format, Vec::new())
}

/// [`result_of`] with the lines the function logged (Convex's `logLines`).
fn logged(
    outcome: Result<Value, FunctionError>,
    format: Format,
    log_lines: Vec<String>,
) -> FunctionResult {
    match outcome {
        Ok(value) => FunctionResult::Success {
            value: if format == Format::Json {
                export_json(&value)
            } else {
                value
            },
            log_lines,
        },
        Err(e) => FunctionResult::Error {
            error_message: e.message,
            error_data: e.data,
            log_lines,
        },
    }
}

fn respond(result: FunctionResult) -> HttpResponse {
    let status = match result {
        FunctionResult::Success { .. } => StatusCode::OK,
        FunctionResult::Error { .. } => {
            StatusCode::from_u16(STATUS_UDF_FAILED).expect("valid status")
        }
    };
    HttpResponse::build(status).json(result)
}

/// Runs `call` as `kind` (or whatever the path names, for `/api/function`).
async fn execute(req: &HttpRequest, state: &AppState, call: Call, kind: Option<Kind>) -> Reply {
    let identity = identity(req, &state.engine).await?;
    let path = call.path.ok_or_else(|| bad_request("missing `path`"))?;
    let args = args_object(&call.args).map_err(bad_request)?;
    let format = call.format.unwrap_or_default();
    let kind = kind.or_else(|| Engine::kind(&path)).unwrap_or(Kind::Query);
    let engine = &state.engine;
    let result = match kind {
        Kind::Query => {
            let run = engine
                .query(&path, &args, identity.as_ref(), None)
                .map_err(bad_request)?;
            logged(run.result, format, run.log_lines)
        }
        Kind::Mutation => result_of(engine.mutation(&path, &args, identity.as_ref()).0, format),
        Kind::Action => result_of(engine.action(&path, &args, identity.as_ref()), format),
    };
    Ok(respond(result))
}

async fn query_post(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    execute(&req, &state, parse_call(&body)?, Some(Kind::Query)).await
}

#[derive(Deserialize)]
struct QueryParams {
    path: String,
    args: Option<String>,
    format: Option<Format>,
}

async fn query_get(req: HttpRequest, state: web::Data<AppState>) -> Reply {
    let params = web::Query::<QueryParams>::from_query(req.query_string())
        .map_err(|e| bad_request(format!("invalid query string: {e}")))?
        .into_inner();
    let args = match params.args.as_deref() {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| bad_request(format!("`args` is not JSON: {e}")))?,
    };
    let call = Call {
        path: Some(params.path),
        args,
        format: params.format,
        ts: None,
    };
    execute(&req, &state, call, Some(Kind::Query)).await
}

async fn mutation(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    execute(&req, &state, parse_call(&body)?, Some(Kind::Mutation)).await
}

async fn action(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    execute(&req, &state, parse_call(&body)?, Some(Kind::Action)).await
}

async fn function(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    execute(&req, &state, parse_call(&body)?, None).await
}

async fn run(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Reply {
    let udf = edge_convex::UdfPath::from_run_path(&path).map_err(bad_request)?;
    let mut call = if body.is_empty() {
        Call {
            path: None,
            args: Value::Null,
            format: None,
            ts: None,
        }
    } else {
        parse_call(&body)?
    };
    call.path = Some(udf.as_str().to_owned());
    execute(&req, &state, call, None).await
}

#[derive(Deserialize)]
struct Batch {
    queries: Vec<Call>,
}

async fn query_batch(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    let batch: Batch = serde_json::from_slice(&body)
        .map_err(|e| bad_request(format!("expected {{\"queries\": [...]}}: {e}")))?;
    let identity = identity(&req, &state.engine).await?;
    let fail = |message: String| {
        Err(FunctionError {
            message,
            data: None,
        })
    };
    let results: Vec<FunctionResult> = batch
        .queries
        .into_iter()
        .map(|call| {
            let format = call.format.unwrap_or_default();
            let outcome = match (call.path, args_object(&call.args)) {
                (Some(path), Ok(args)) => {
                    match state.engine.query(&path, &args, identity.as_ref(), None) {
                        Ok(run) => return logged(run.result, format, run.log_lines),
                        Err(e) => fail(e),
                    }
                }
                (None, _) => fail("missing `path`".into()),
                (_, Err(e)) => fail(e),
            };
            result_of(outcome, format)
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"results": results})))
}

async fn query_ts(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(json!({"ts": Timestamp(state.engine.ts()).encode()}))
}

async fn query_at_ts(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> Reply {
    let call = parse_call(&body)?;
    let ts = match &call.ts {
        Some(Value::String(s)) => Timestamp::decode(s),
        Some(Value::Number(n)) => n.as_u64().map(Timestamp),
        _ => None,
    }
    .ok_or_else(|| bad_request("`ts` must be a timestamp from /api/query_ts"))?;
    let identity = identity(&req, &state.engine).await?;
    let path = call
        .path
        .as_deref()
        .ok_or_else(|| bad_request("missing `path`"))?;
    let args = args_object(&call.args).map_err(bad_request)?;
    let run = state
        .engine
        .query(path, &args, identity.as_ref(), Some(ts.0))
        .map_err(bad_request)?;
    Ok(respond(logged(
        run.result,
        call.format.unwrap_or_default(),
        run.log_lines,
    )))
}
