//! Better Auth's rate limits in front of every `/api/auth/*` route: before a route runs, auth
//! counts the request of the client's address on its path (`ConsumeRateLimit`, in the shared
//! `rateLimit` table, so every gateway and auth replica counts together) under Better Auth's
//! rule for that path, and a full window is answered 429 `{"message"}` with `X-Retry-After`,
//! as Better Auth's `onRequestRateLimit` answers before its router.
//!
//! Not asked for: sign-in and sign-up (auth counts them in the operation itself, per address
//! and per account), preflights, and the read routes the token cache serves (`get-session`,
//! `token`, `convex/token`, `jwks`, `convex/jwks`), which would otherwise pay a database write
//! per cache hit (see the README).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{ResponseError, web};
use edge_proto::auth::v1 as pb;

use crate::State;
use crate::error::ApiError;
use crate::routes::auth::client_info;

/// The route below `/api/auth` when the request is one the gateway asks auth to count: its
/// pattern, not the raw path (`/reset-password/{token}` keeps the token out of the key), and
/// only for a route the gateway serves, so made-up paths (answered 404 without auth) cannot
/// add rows to the shared table.
fn counted_path(req: &ServiceRequest) -> Option<String> {
    if req.method() == Method::OPTIONS {
        return None;
    }
    // The raw path first: pages and the cached read routes (the hot paths) never pay for a
    // route lookup.
    let path = req.path().strip_prefix("/api/auth")?;
    let by_auth = path.starts_with("/sign-in") || path.starts_with("/sign-up");
    let cached = matches!(
        path,
        "/get-session" | "/token" | "/convex/token" | "/jwks" | "/convex/jwks"
    );
    if !path.starts_with('/') || by_auth || cached {
        return None;
    }
    let pattern = req.match_pattern()?;
    pattern
        .strip_prefix("/api/auth")
        .filter(|p| p.starts_with('/'))
        .map(str::to_owned)
}

/// The middleware (`actix_web::middleware::from_fn`).
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let (Some(path), Some(state)) = (counted_path(&req), req.app_data::<web::Data<State>>()) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let request = pb::ConsumeRateLimitRequest {
        client: Some(client_info(req.request())),
        path,
    };
    match state.auth().consume_rate_limit(request).await {
        Ok(_) => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body),
        Err(status) => {
            let response = ApiError::from(status).error_response();
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}
