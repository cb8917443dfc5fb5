//! Generated gRPC code for convex-edge's services and the error table they share.

pub mod endpoint;
pub mod error;

/// The longest auth waits on a social provider within one call (discovery, code exchange,
/// JWKS and userinfo together): 10 s. Calls to auth that wait on a provider (a social
/// callback, an ID-token sign-in or link) need a deadline this much longer than the usual one.
pub const SOCIAL_PROVIDER_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// `edge.auth.v1`: sessions, tokens, keys and revocations.
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("edge.auth.v1");
    }
}

/// `edge.query.v1`: Convex function calls for the gateway.
pub mod query {
    pub mod v1 {
        tonic::include_proto!("edge.query.v1");
    }
}
