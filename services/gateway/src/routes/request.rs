//! What Better Auth does with a request before its route runs, shared by every `/api/auth/*`
//! route (and any added later): the origin (CSRF) check and the body, JSON or form-encoded.
//!
//! The origin rules are Better Auth 1.7's `originCheckMiddleware` and `formCsrfMiddleware`:
//! a state-changing request that carries cookies must name a trusted origin in `Origin` (or,
//! without one, `Referer`) — none is 403 `MISSING_OR_NULL_ORIGIN`, a foreign one 403
//! `INVALID_ORIGIN`; a first login (sign-in, sign-up) without cookies is checked the same way
//! when the browser sent `Origin`, `Referer` or Fetch Metadata, and a cross-site navigation
//! (a plain form posted from another site) is 403 `CROSS_SITE_NAVIGATION_LOGIN_BLOCKED`.
//! Trusted origins are the gateway's own (as the client reached it) and
//! `GATEWAY_TRUSTED_ORIGINS`.

use actix_web::http::{Method, header};
use actix_web::{HttpRequest, web};
use edge_proto::error::ErrorCode;
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::State;
use crate::error::ApiError;
use crate::routes::client_view;

/// Which of Better Auth's checks a route runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Csrf {
    /// Every state-changing route: checked when the request carries cookies.
    CookieBearing,
    /// Sign-in and sign-up (`formCsrfMiddleware`): also checked without cookies when the
    /// browser says where the request comes from.
    FirstLogin,
}

fn header_str<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `scheme://host[:port]` of a URL, or `None` when it is not one.
pub(crate) fn origin_of(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    matches!(url.scheme(), "http" | "https").then(|| url.origin().ascii_serialization())
}

/// Whether `claimed` (an `Origin` or `Referer` value) is one of the trusted origins.
pub(crate) fn is_trusted(req: &HttpRequest, state: &State, claimed: &str) -> bool {
    let Some(origin) = origin_of(claimed) else {
        return false;
    };
    let own = client_view(req).origin();
    std::iter::once(own.as_str())
        .chain(state.config.trusted_origins.iter().map(String::as_str))
        .filter_map(origin_of)
        .any(|trusted| trusted == origin)
}

/// Better Auth's `validateOrigin`: with `force` or any `Cookie` header, the request must come
/// from a trusted origin.
fn validate_origin(req: &HttpRequest, state: &State, force: bool) -> Result<(), ApiError> {
    if !force && !req.headers().contains_key(header::COOKIE) {
        return Ok(());
    }
    let origin = header_str(req, "origin");
    // A same-origin request from an opaque context (sandboxed frame) says `Origin: null`.
    let claimed =
        if origin == Some("null") && header_str(req, "sec-fetch-site") == Some("same-origin") {
            client_view(req).origin()
        } else {
            origin
                .filter(|o| !o.is_empty())
                .or_else(|| header_str(req, "referer"))
                .unwrap_or_default()
                .to_owned()
        };
    if claimed.is_empty() || claimed == "null" {
        return Err(ApiError::new(
            ErrorCode::MISSING_OR_NULL_ORIGIN,
            "Missing or null Origin",
        ));
    }
    if !is_trusted(req, state, &claimed) {
        return Err(ApiError::new(ErrorCode::INVALID_ORIGIN, "Invalid origin"));
    }
    Ok(())
}

/// Refuses cross-site state-changing requests as Better Auth does (see the module docs).
pub fn check_origin(req: &HttpRequest, state: &State, kind: Csrf) -> Result<(), ApiError> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    validate_origin(req, state, false)?;
    if kind == Csrf::CookieBearing || req.headers().contains_key(header::COOKIE) {
        return Ok(());
    }
    let fetch = |name| {
        header_str(req, name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let (site, mode, dest) = (
        fetch("sec-fetch-site"),
        fetch("sec-fetch-mode"),
        fetch("sec-fetch-dest"),
    );
    if site.is_some() || mode.is_some() || dest.is_some() {
        if site == Some("cross-site") && mode == Some("navigate") {
            tracing::warn!("blocked a cross-site navigation login");
            return Err(ApiError::new(
                ErrorCode::CROSS_SITE_NAVIGATION_LOGIN_BLOCKED,
                "Cross-site navigation login blocked. This request appears to be a CSRF attack.",
            ));
        }
        return validate_origin(req, state, true);
    }
    if fetch("origin").is_some() || fetch("referer").is_some() {
        return validate_origin(req, state, true);
    }
    Ok(())
}

/// Better Auth's check of a body's `callbackURL`: a relative path on this site (`/next`, not
/// `//host`) or a URL of a trusted origin; anything else is 403 `INVALID_CALLBACK_URL`.
/// Returns the URL to answer with (`{redirect: true, url}`), if the body names one.
pub fn callback_url(
    req: &HttpRequest,
    state: &State,
    body: &Map<String, Value>,
) -> Result<Option<String>, ApiError> {
    let url = match body.get("callbackURL") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(url)) if url.is_empty() => return Ok(None),
        Some(Value::String(url)) => url,
        Some(_) => {
            return Err(ApiError::new(
                ErrorCode::VALIDATION_ERROR,
                "[body.callbackURL] must be a string",
            ));
        }
    };
    let relative = url.starts_with('/')
        && !url.starts_with("//")
        && !url.starts_with("/\\")
        && !url.chars().any(|c| c.is_control());
    if relative || is_trusted(req, state, url) {
        return Ok(Some(url.clone()));
    }
    Err(ApiError::new(
        ErrorCode::INVALID_CALLBACK_URL,
        "Invalid callbackURL",
    ))
}

/// The media types a route takes: Better Auth's `allowedMediaTypes` (the router's
/// `["application/json"]`, and form-encoded bodies too on sign-in, sign-up and the OAuth
/// callback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepts {
    Json,
    JsonOrForm,
}

impl Accepts {
    /// The list as Better Auth's 415 message names it.
    fn listed(self) -> &'static str {
        match self {
            Accepts::Json => "application/json",
            Accepts::JsonOrForm => "application/x-www-form-urlencoded, application/json",
        }
    }
}

/// A body's media type as better-call reads it: the type before any `;`, case-insensitive,
/// exactly one of the route's [`Accepts`] (no `+json` suffixes, which its list does not name).
enum Media {
    Json,
    Form,
}

fn media(content_type: &str, accepts: Accepts) -> Option<Media> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Some(Media::Json),
        "application/x-www-form-urlencoded" if accepts == Accepts::JsonOrForm => Some(Media::Form),
        _ => None,
    }
}

/// What the route's body schema is, as zod names it when the body is not one: most routes'
/// `z.object`, update-user's `z.record`, sign-up's object intersected with a record (zod names
/// both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Object,
    Record,
    ObjectAndRecord,
}

impl Schema {
    /// zod's message for a body of `kind`.
    fn refusal(self, kind: &str) -> String {
        let one =
            |expected: &str| format!("[body] Invalid input: expected {expected}, received {kind}");
        match self {
            Schema::Object => one("object"),
            Schema::Record => one("record"),
            Schema::ObjectAndRecord => format!("{}; {}", one("object"), one("record")),
        }
    }
}

/// What a JSON value is, in zod's words (`received array`).
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// The request body as an object of at most `limit` bytes (413 `PAYLOAD_TOO_LARGE` past it),
/// answered as Better Auth 1.7 (better-call's `getBody`, then the route's schema) answers:
/// - a `Content-Type` the route does not accept: 415 `UNSUPPORTED_MEDIA_TYPE`, `Content-Type
///   "<as sent>" is not allowed. Allowed types: …` (`Content-Type is required. …` with a body
///   and none);
/// - JSON (`application/json`) that does not parse: 400 `BAD_REQUEST`, `Invalid JSON in request
///   body`; JSON that is not an object, or no body at all: 400 `VALIDATION_ERROR`, `[body]
///   Invalid input: expected object, received array` (`… undefined` without a body);
/// - form-encoded (`application/x-www-form-urlencoded`, where `accepts` allows it): every value
///   a string, the last of a repeated name winning.
pub async fn body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
    accepts: Accepts,
) -> Result<Map<String, Value>, ApiError> {
    body_as(req, payload, limit, accepts, Schema::Object).await
}

/// [`body`] for the routes that take JSON only (all but sign-in, sign-up and the OAuth
/// callback), within the gateway's `max_body_bytes`.
pub async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    state: &State,
) -> Result<Map<String, Value>, ApiError> {
    body(req, payload, state.config.max_body_bytes, Accepts::Json).await
}

/// [`body`] for a route whose schema is not a plain object ([`Schema`]).
pub async fn body_as(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    accepts: Accepts,
    schema: Schema,
) -> Result<Map<String, Value>, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let mut bytes = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| ApiError::new(ErrorCode::VALIDATION_ERROR, "Invalid request body"))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(
                ErrorCode::PAYLOAD_TOO_LARGE,
                format!("Request body exceeds {limit} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let expected =
        |received: &str| ApiError::new(ErrorCode::VALIDATION_ERROR, schema.refusal(received));
    let Some(content_type) = content_type.filter(|v| !v.is_empty()) else {
        if bytes.is_empty() {
            return Err(expected("undefined"));
        }
        return Err(ApiError::new(
            ErrorCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type is required. Allowed types: {}",
                accepts.listed()
            ),
        ));
    };
    let Some(media) = media(&content_type, accepts) else {
        return Err(ApiError::new(
            ErrorCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type \"{content_type}\" is not allowed. Allowed types: {}",
                accepts.listed()
            ),
        ));
    };
    match media {
        Media::Json => match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(expected(json_kind(&other))),
            // better-call's own answer, which names its code.
            Err(_) => {
                Err(ApiError::new(ErrorCode::BAD_REQUEST, "Invalid JSON in request body").coded())
            }
        },
        Media::Form => {
            let pairs: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).map_err(|e| {
                    ApiError::new(
                        ErrorCode::VALIDATION_ERROR,
                        format!("Malformed form body: {e}"),
                    )
                })?;
            Ok(pairs
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect())
        }
    }
}
