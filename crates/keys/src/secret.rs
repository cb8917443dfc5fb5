//! `BETTER_AUTH_SECRET`: signs cookies and derives the key that encrypts private keys.

use std::fmt;

use aws_lc_rs::{digest, hmac};

/// The application secret. Its contents never appear in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret {
    raw: String,
    hmac_key: hmac::Key,
}

impl Secret {
    pub fn new(raw: impl Into<String>) -> Self {
        let raw = raw.into();
        let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, raw.as_bytes());
        Secret { raw, hmac_key }
    }

    /// HMAC-SHA256 of `data` under the secret.
    pub fn sign(&self, data: &[u8]) -> hmac::Tag {
        hmac::sign(&self.hmac_key, data)
    }

    /// Constant-time check of an HMAC-SHA256 tag.
    pub fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.hmac_key, data, tag).is_ok()
    }

    /// SHA-256 of the secret: the symmetric key for private keys at rest.
    pub(crate) fn encryption_key(&self) -> [u8; 32] {
        let d = digest::digest(&digest::SHA256, self.raw.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
