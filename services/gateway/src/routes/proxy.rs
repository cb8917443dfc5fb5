//! Proxy mode of SSR (`SSR_UPSTREAM_URL`): every request the gateway does not answer itself goes
//! to an existing SSR app with the user's Convex JWT attached, from the same token cache as
//! the token route. A token header sent by the client is removed first, so the app can trust
//! the one it sees. Responses stream through as they come.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, web};
use edge_proto::error::ErrorCode;
use futures_util::StreamExt;

use crate::State;
use crate::config::ProxyConfig;
use crate::routes::{clear_cookie, session_cookie};

/// Largest request body forwarded (request bodies are read whole; responses stream).
const MAX_REQUEST_BODY: usize = 8 * 1024 * 1024;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The names a `Connection` header lists: hop-by-hop too.
fn connection_names<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect()
}

fn forwardable(name: &str, connection: &[String]) -> bool {
    !HOP_BY_HOP.contains(&name) && !connection.iter().any(|c| c == name)
}

/// Whether two header names are one header to an app that reads `_` or `.` as `-` (CGI and
/// its heirs turn all three into `_`).
fn same_header(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes().zip(b.bytes()).all(|(x, y)| {
            let fold = |c: u8| match c {
                b'_' | b'.' => b'-',
                c => c.to_ascii_lowercase(),
            };
            fold(x) == fold(y)
        })
}

/// Headers in which apps and frameworks look for the client's address besides
/// `X-Forwarded-For`/`Forwarded`: passed on only from a trusted proxy; `X-Real-IP` is then set
/// to the client address the gateway found.
const CLIENT_ADDRESS_HEADERS: [&str; 6] = [
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
];

fn text(status: StatusCode, body: &'static str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(body)
}

pub async fn forward(
    req: HttpRequest,
    mut payload: web::Payload,
    state: web::Data<State>,
) -> HttpResponse {
    let Some(proxy) = state.proxy_config() else {
        return text(StatusCode::NOT_FOUND, "not found");
    };
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let Ok(chunk) = chunk else {
            return text(StatusCode::BAD_REQUEST, "invalid request body");
        };
        if body.len() + chunk.len() > MAX_REQUEST_BODY {
            return text(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
        }
        body.extend_from_slice(&chunk);
    }

    let mut clear = false;
    let jwt = match session_cookie(&req) {
        None => None,
        Some(cookie) => match state
            .token_for(cookie, crate::routes::dont_remember_cookie(&req))
            .await
        {
            Ok(token) => Some(token.jwt),
            Err(status) if ErrorCode::from_status(&status) == ErrorCode::UNAUTHORIZED => {
                clear = true;
                None
            }
            Err(status) => {
                tracing::warn!(grpc_code = ?status.code(), "page not forwarded: auth unavailable");
                return text(StatusCode::SERVICE_UNAVAILABLE, "auth service unavailable");
            }
        },
    };

    let upstream = upstream_request(&req, proxy, jwt.as_deref(), body.freeze(), &state);
    let response = match upstream.send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "SSR upstream unreachable");
            return text(StatusCode::BAD_GATEWAY, "SSR upstream unavailable");
        }
    };
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HttpResponse::build(status);
    let connection = connection_names(
        response
            .headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .map(|v| v.as_bytes()),
    );
    for (name, value) in response.headers() {
        if forwardable(name.as_str(), &connection)
            && name != reqwest::header::CONTENT_LENGTH
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            )
        {
            out.append_header((name, value));
        }
    }
    if clear {
        out.append_header((header::SET_COOKIE, clear_cookie(&req)));
    }
    if req.method() == Method::HEAD {
        return out.finish();
    }
    out.streaming(response.bytes_stream())
}

fn upstream_request(
    req: &HttpRequest,
    proxy: &ProxyConfig,
    jwt: Option<&str>,
    body: web::Bytes,
    state: &State,
) -> reqwest::RequestBuilder {
    let target = format!(
        "{}{}",
        proxy.upstream,
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let mut headers = reqwest::header::HeaderMap::new();
    let connection = connection_names(
        req.headers()
            .get_all(header::CONNECTION)
            .map(|v| v.as_bytes()),
    );
    let view = crate::routes::client_view(req);
    for (name, value) in req.headers() {
        // The client's own token header never reaches the app, in any spelling the app's
        // framework may read as it (`x_convex_token` is `HTTP_X_CONVEX_TOKEN` under CGI/WSGI/
        // Rack, as `x-convex-token` is); nor does an address it names for itself.
        let names_client = |h: &&str| same_header(name.as_str(), h);
        if !forwardable(name.as_str(), &connection)
            || name == header::HOST
            || same_header(name.as_str(), &proxy.token_header)
            || (!view.via_trusted_proxy && CLIENT_ADDRESS_HEADERS.iter().any(names_client))
        {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    // The chain so far only when a trusted proxy reported it; else the peer alone.
    let earlier = view.via_trusted_proxy.then(|| {
        req.headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    });
    let forwarded_for = match earlier.filter(|e| !e.is_empty()) {
        Some(earlier) => format!("{earlier}, {peer}"),
        None => peer,
    };
    headers.remove("forwarded");
    let client = view.ip.map(|ip| ip.to_string()).unwrap_or_default();
    for (name, value) in [
        ("x-real-ip", client.as_str()),
        ("x-forwarded-for", forwarded_for.as_str()),
        ("x-forwarded-host", view.host.as_str()),
        ("x-forwarded-proto", view.scheme.as_str()),
    ] {
        if let Ok(v) = reqwest::header::HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    }
    if let Some(jwt) = jwt {
        let value = if proxy.token_header == "authorization" {
            format!("Bearer {jwt}")
        } else {
            jwt.to_owned()
        };
        if let (Ok(name), Ok(mut value)) = (
            reqwest::header::HeaderName::from_bytes(proxy.token_header.as_bytes()),
            reqwest::header::HeaderValue::from_str(&value),
        ) {
            value.set_sensitive(true);
            headers.insert(name, value);
        }
    }
    state
        .http_client()
        .request(method, target)
        .headers(headers)
        .body(body)
}
