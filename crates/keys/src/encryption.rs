//! Private keys at rest, exactly as Better Auth's `symmetricEncrypt`: XChaCha20-Poly1305 under
//! SHA-256(secret), hex(nonce24 ‖ ciphertext ‖ tag16). The jwt plugin stores the result as a
//! JSON string literal. Secrets rotated with Better Auth's versioned format carry a
//! `$ba$<version>$` prefix before the hex.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::{KeyError, Secret};

/// Encrypts `plaintext` and returns the hex string (without JSON quoting).
pub fn encrypt(secret: &Secret, plaintext: &str) -> String {
    let cipher = XChaCha20Poly1305::new(&secret.encryption_key().into());
    let mut nonce = [0u8; 24];
    aws_lc_rs::rand::fill(&mut nonce).expect("system randomness");
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), plaintext.as_bytes())
        .expect("encryption of in-memory data cannot fail");
    let mut out = Vec::with_capacity(24 + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    hex::encode(out)
}

/// Decrypts a stored value: a JSON string literal or bare hex, optionally `$ba$<v>$`-prefixed.
pub fn decrypt(secret: &Secret, stored: &str) -> Result<String, KeyError> {
    let trimmed = stored.trim();
    let unquoted = if trimmed.starts_with('"') {
        serde_json::from_str::<String>(trimmed).map_err(|_| KeyError::Decrypt)?
    } else {
        trimmed.to_owned()
    };
    let hex_part = match unquoted.strip_prefix("$ba$") {
        Some(rest) => rest
            .split_once('$')
            .map(|(_, h)| h)
            .ok_or(KeyError::Decrypt)?,
        None => unquoted.as_str(),
    };
    let bytes = hex::decode(hex_part).map_err(|_| KeyError::Decrypt)?;
    if bytes.len() < 24 + 16 {
        return Err(KeyError::Decrypt);
    }
    let (nonce, sealed) = bytes.split_at(24);
    let cipher = XChaCha20Poly1305::new(&secret.encryption_key().into());
    let plain = cipher
        .decrypt(XNonce::from_slice(nonce), sealed)
        .map_err(|_| KeyError::Decrypt)?;
    String::from_utf8(plain).map_err(|_| KeyError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = Secret::new("k");
        let enc = encrypt(&s, "{\"d\":\"x\"}");
        assert_eq!(decrypt(&s, &enc).unwrap(), "{\"d\":\"x\"}");
        assert_eq!(decrypt(&s, &format!("\"{enc}\"")).unwrap(), "{\"d\":\"x\"}");
        let mut tampered = enc.into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(decrypt(&s, std::str::from_utf8(&tampered).unwrap()).is_err());
        assert!(decrypt(&Secret::new("other"), "00").is_err());
    }
}
