//! Generated gRPC code for convex-edge's services and the error table they share.

pub mod endpoint;
pub mod error;

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
