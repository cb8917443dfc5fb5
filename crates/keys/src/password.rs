//! Password hashes as Better Auth stores them: `"<saltHex>:<keyHex>"`, scrypt N=16384 r=16 p=1,
//! 64-byte key over the NFKC-normalised password, the salt being the 32-character hex string
//! itself (not its bytes).

use subtle::ConstantTimeEq;
use unicode_normalization::UnicodeNormalization;

/// Better Auth's length bounds for passwords.
pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 128;

/// The memory one hash or verification holds while it runs, in bytes: scrypt's `V` array of
/// 128 · r · N = 128 · 16 · 16384 bytes (32 MiB); its other buffers are a few KiB.
pub const MEMORY_BYTES: u64 = 128 * 16 * 16384;

fn derive(password: &str, salt: &str) -> [u8; 64] {
    let normalized: String = password.nfkc().collect();
    // log2(16384) = 14. These parameters are constants, so `new` cannot fail.
    let params = scrypt::Params::new(14, 16, 1, 64).expect("valid scrypt parameters");
    let mut key = [0u8; 64];
    scrypt::scrypt(normalized.as_bytes(), salt.as_bytes(), &params, &mut key)
        .expect("64 is a valid scrypt output length");
    key
}

/// A new hash with a random salt.
pub fn hash(password: &str) -> String {
    let salt = crate::random_hex(16);
    let key = derive(password, &salt);
    format!("{salt}:{}", hex::encode(key))
}

/// Whether `password` matches `stored`; malformed hashes never match.
pub fn verify(stored: &str, password: &str) -> bool {
    let Some((salt, key_hex)) = stored.split_once(':') else {
        return false;
    };
    let Ok(expected) = hex::decode(key_hex) else {
        return false;
    };
    if expected.len() != 64 {
        return false;
    }
    derive(password, salt).ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hash_then_verify() {
        let h = super::hash("correct horse battery staple");
        assert!(super::verify(&h, "correct horse battery staple"));
        assert!(!super::verify(&h, "wrong"));
        assert!(!super::verify("garbage", "x"));
        assert!(!super::verify("ab:cd", "x"));
    }
}
