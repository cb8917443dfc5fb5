//! HTTP routes of the gateway.

pub mod auth;
pub mod ops;

use actix_web::HttpRequest;
use actix_web::http::header;

/// The session cookie's value from every `Cookie` header of the request.
pub(crate) fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .find_map(edge_keys::cookie::from_header)
        .map(str::to_owned)
}

/// Whether the client reached us over https (directly or through a proxy that says so).
pub(crate) fn is_https(req: &HttpRequest) -> bool {
    req.connection_info().scheme() == "https"
}
