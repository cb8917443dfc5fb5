//! edge-keys against the Better Auth golden file and the Wycheproof vectors.

mod better_auth;
mod rejection;
mod wycheproof;
