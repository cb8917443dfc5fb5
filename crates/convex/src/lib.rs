//! Convex's wire formats, kept exact (they come from Convex's own client and server sources):
//!
//! - [`value`]: Convex values in encoded JSON (`$integer`, `$float`, `$bytes`), the plain-JSON
//!   export of the `json` format, and canonical forms for cache keys.
//! - [`sync`]: the WebSocket sync protocol's messages and its `ts` encoding.
//! - [`versions`]: the client-version rules a server keeps per socket (one copy, used by
//!   devconvex and the query service).
//! - [`client_model`]: the client's side of those rules, for tests.
//! - [`http`]: bodies of the HTTP API (`/api/query`, `/api/mutation`, …).

pub mod client_model;
pub mod http;
pub mod sync;
pub mod udf_path;
pub mod value;
pub mod versions;

pub use sync::{
    ClientMessage, IdentityVersion, QueryId, QuerySetVersion, RequestId, ServerMessage,
    StateModification, StateVersion, Timestamp,
};
pub use udf_path::UdfPath;
