//! Convex's wire formats, kept exact (they come from Convex's own client and server sources):
//!
//! - [`value`]: Convex values in encoded JSON (`$integer`, `$float`, `$bytes`), the plain-JSON
//!   export of the `json` format, and canonical forms for cache keys.
//! - [`sync`]: the WebSocket sync protocol's messages and its `ts` encoding.
//! - [`http`]: bodies of the HTTP API (`/api/query`, `/api/mutation`, …).

pub mod http;
pub mod sync;
pub mod udf_path;
pub mod value;

pub use sync::{ClientMessage, ServerMessage, StateModification, StateVersion, Timestamp};
pub use udf_path::UdfPath;
