//! Keys and the Better Auth formats that carry them: the only crate that touches private keys.
//!
//! - [`secret`]: the `BETTER_AUTH_SECRET`, HMAC and key derivation.
//! - [`cookie`]: signed session cookies, session tokens, cache keys.
//! - [`password`]: scrypt password hashes as Better Auth stores them.
//! - [`email_token`]: Better Auth's HS256 email-verification tokens.
//! - [`encryption`]: XChaCha20-Poly1305 encryption of private keys at rest.
//! - [`jwk`]: JWKs, key generation, `jwks` table rows and the static `JWKS` format.
//! - [`keyset`]: a loaded key set that signs JWTs and publishes a JWKS.
//! - [`verify`]: JWS/JWT verification under Convex's `customJwt` rules.

pub mod alg;
mod b64;
pub mod cookie;
mod der;
pub mod email_token;
pub mod encryption;
pub mod jwk;
pub mod keyset;
pub mod password;
pub mod secret;
pub mod verify;

pub use alg::Alg;
pub use cookie::{CacheKey, SessionToken};
pub use jwk::{KeyId, KeyRow};
pub use keyset::{Claims, KeySet, SignedToken};
pub use secret::Secret;
pub use verify::{VerifiedToken, Verifier, VerifyError};

/// Errors from key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("private key could not be decrypted with BETTER_AUTH_SECRET")]
    Decrypt,
    #[error("unsupported algorithm `{0}`")]
    UnsupportedAlg(String),
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
    #[error("no signing key for {0}")]
    NoSigningKey(Alg),
    #[error("signing failed")]
    Sign,
}

/// 32 random characters from `[a-zA-Z0-9]`, as Better Auth's `generateId` makes ids and tokens
/// (about 190 bits).
pub fn generate_id() -> String {
    generate_id_of(32)
}

/// `len` random characters from `[a-zA-Z0-9]` (Better Auth's `generateId(len)`; reset-password
/// tokens are 24).
pub fn generate_id_of(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        aws_lc_rs::rand::fill(&mut buf).expect("system randomness");
        // 248 = 4 * 62: rejection sampling keeps the distribution uniform.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[(*b % 62) as usize] as char);
        }
    }
    out
}

/// Fills `buf` from the system's secure random source.
pub fn random_bytes(buf: &mut [u8]) {
    aws_lc_rs::rand::fill(buf).expect("system randomness");
}

/// Random bytes as lowercase hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    random_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_32_alphanumerics_and_differ() {
        let a = super::generate_id();
        let b = super::generate_id();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
