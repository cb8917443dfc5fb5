//! CORS on `/api/auth/*` for the trusted origins, so a site on another origin
//! (`GATEWAY_TRUSTED_ORIGINS`, Better Auth's `trustedOrigins`) can call the auth routes with
//! the browser's cookies.
//!
//! Better Auth 1.7 sends no CORS headers itself (apart from the jwt plugin's
//! `Access-Control-Expose-Headers`): its documentation has the app put its framework's CORS
//! middleware in front of the handler for the trusted origins with credentials allowed (Hono's
//! `cors({origin, credentials: true, allowMethods: ["POST", "GET", "OPTIONS"]})`). This is that
//! middleware. A preflight (`OPTIONS` with `Access-Control-Request-Method`) from a trusted
//! origin gets 204 with the origin echoed, credentials allowed, `GET, POST, OPTIONS`, the
//! requested headers and a 600 s max-age; an actual request from one gets
//! `Access-Control-Allow-Origin` and `-Credentials` on its answer. Any other origin gets no
//! `Access-Control-*` header at all (a preflight is still 204, so the browser refuses the
//! request; an actual request is answered as without CORS, and the browser hides the answer).
//! Trust is the origin check's (`routes::request`): the gateway's own origin and the listed
//! ones.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::State;
use crate::routes::request;

/// Preflight answers are cached by the browser this long (seconds).
const MAX_AGE_SECONDS: &str = "600";
/// What the `Vary` header of every `/api/auth/*` answer names.
const VARY: &str = "Origin";

/// The middleware (`actix_web::middleware::from_fn`), in front of the routes and of the rate
/// limits: answers preflights of `/api/auth/*` itself and adds the grant to every other answer
/// there.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == Method::OPTIONS && req.path().starts_with("/api/auth/") {
        let response = preflight(req.request());
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    grant(&mut response);
    Ok(response.map_into_left_body())
}

/// The request's `Origin`, when it is exactly an origin (`scheme://host[:port]`) the gateway
/// trusts and the path is an auth route.
fn trusted_origin(req: &HttpRequest) -> Option<HeaderValue> {
    if !req.path().starts_with("/api/auth/") {
        return None;
    }
    let value = req.headers().get(header::ORIGIN)?;
    let origin = value.to_str().ok()?;
    let state = req.app_data::<web::Data<State>>()?;
    (request::origin_of(origin).as_deref() == Some(origin)
        && request::is_trusted(req, state, origin))
    .then(|| value.clone())
}

/// `Access-Control-Request-Headers` when it is a list of header names, else nothing.
fn requested_headers(req: &HttpRequest) -> Option<HeaderValue> {
    let value = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS)?;
    let names = value.to_str().ok()?;
    names
        .split(',')
        .map(str::trim)
        .all(|n| !n.is_empty() && header::HeaderName::from_bytes(n.as_bytes()).is_ok())
        .then(|| value.clone())
}

fn preflight(req: &HttpRequest) -> HttpResponse {
    let mut response = HttpResponse::NoContent();
    response.insert_header((header::VARY, VARY));
    let (Some(origin), true) = (
        trusted_origin(req),
        req.headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD),
    ) else {
        return response.finish();
    };
    response
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
        .insert_header((header::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true"))
        .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST, OPTIONS"))
        .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE_SECONDS));
    if let Some(headers) = requested_headers(req) {
        response.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, headers));
    }
    response.finish()
}

/// Adds the CORS headers to an actual request's answer (any `/api/auth/*` route, errors
/// included, so the page can read why it was refused).
fn grant<B>(response: &mut ServiceResponse<B>) {
    if !response.request().path().starts_with("/api/auth/") {
        return;
    }
    let origin = trusted_origin(response.request());
    let headers = response.headers_mut();
    headers.append(header::VARY, HeaderValue::from_static(VARY));
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}
