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

    /// Better Auth's `derivePurposeKey` for a single secret: the secret isolated for one
    /// purpose of its OAuth ciphertexts (`oauth-link-session-token`, …), as the lowercase hex
    /// of HKDF-SHA256(ikm = the secret, salt = `better-auth:oauth-encryption:v1`,
    /// info = `better-auth:<purpose>:v1`, 32 bytes). [`crate::encryption`] under the result
    /// is Better Auth's `symmetricEncrypt` under that key.
    pub fn purpose_key(&self, purpose: &str) -> Secret {
        use aws_lc_rs::hkdf;
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"better-auth:oauth-encryption:v1");
        let info = format!("better-auth:{purpose}:v1");
        let info = [info.as_bytes()];
        let mut out = [0u8; 32];
        salt.extract(self.raw.as_bytes())
            .expand(&info, hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        Secret::new(hex::encode(out))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_keys_are_better_auths() {
        // `derivePurposeKey("gateway-test-secret-0123456789abcdef", "oauth-link-session-token")`
        // as better-auth 1.7 computes it.
        let key = Secret::new("gateway-test-secret-0123456789abcdef")
            .purpose_key("oauth-link-session-token");
        assert_eq!(
            key.raw,
            "2b15e7500897239b9b9f2496fa6cdee2ba73b3faa7b40948c33c173a23c7aff3"
        );
    }
}
