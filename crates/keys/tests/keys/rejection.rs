//! Tokens that must be refused: alg none, HMAC confusion, unknown kid, embedded keys, time and
//! audience rules.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use edge_keys::keyset::{Claims, DEFAULT_GRACE};
use edge_keys::{Alg, KeySet, Secret, Verifier, VerifyError};
use serde_json::json;

fn setup() -> (KeySet, Verifier) {
    let secret = Secret::new("rejection-secret-0123456789abcdef");
    let rows = vec![edge_keys::jwk::generate_row(Alg::RS256, &secret, Utc::now()).unwrap()];
    let keys = KeySet::load(&rows, &secret, Utc::now(), DEFAULT_GRACE).unwrap();
    let verifier = keys
        .verifier()
        .with_issuer("https://issuer")
        .with_audience("convex");
    (keys, verifier)
}

fn claims(now: i64) -> Claims {
    Claims {
        iat: now,
        name: "n".into(),
        email: "e@x.y".into(),
        email_verified: true,
        session_id: "s".into(),
        sub: "user1".into(),
        exp: now + 900,
        iss: "https://issuer".into(),
        aud: "convex".into(),
        jti: None,
    }
}

fn enc(v: serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

fn kid_of(jwt: &str) -> String {
    let h: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(jwt.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    h["kid"].as_str().unwrap().to_owned()
}

#[test]
fn a_good_token_verifies() {
    let (keys, verifier) = setup();
    let now = Utc::now().timestamp();
    let t = keys.sign(Alg::RS256, &claims(now), Utc::now()).unwrap();
    let v = verifier.verify(&t.jwt, now).unwrap();
    assert_eq!(v.claims["sub"], "user1");
}

#[test]
fn alg_none_in_any_case_is_refused() {
    let (keys, verifier) = setup();
    let now = Utc::now().timestamp();
    let t = keys.sign(Alg::RS256, &claims(now), Utc::now()).unwrap();
    let kid = kid_of(&t.jwt);
    let payload = t.jwt.split('.').nth(1).unwrap();
    for alg in ["none", "None", "NONE", "nOnE"] {
        for sig in ["", "AAAA"] {
            let forged = format!("{}.{payload}.{sig}", enc(json!({"alg": alg, "kid": kid})));
            assert!(verifier.verify(&forged, now).is_err(), "{alg}");
        }
    }
}

#[test]
fn hs256_signed_with_the_public_key_is_refused() {
    let (keys, verifier) = setup();
    let now = Utc::now().timestamp();
    let t = keys.sign(Alg::RS256, &claims(now), Utc::now()).unwrap();
    let kid = kid_of(&t.jwt);
    let jwks: serde_json::Value = serde_json::from_str(keys.jwks_json()).unwrap();
    let public = jwks["keys"][0].to_string();
    let header = enc(json!({"alg": "HS256", "kid": kid}));
    let payload = t.jwt.split('.').nth(1).unwrap();
    let signing_input = format!("{header}.{payload}");
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes()),
        signing_input.as_bytes(),
    );
    let forged = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()));
    assert_eq!(
        verifier.verify(&forged, now).unwrap_err(),
        VerifyError::UnsupportedAlg("HS256".into())
    );
}

#[test]
fn unknown_kid_missing_kid_and_embedded_keys_are_refused() {
    let (keys, verifier) = setup();
    let now = Utc::now().timestamp();
    let t = keys.sign(Alg::RS256, &claims(now), Utc::now()).unwrap();
    let kid = kid_of(&t.jwt);
    let mut parts = t.jwt.splitn(2, '.');
    parts.next();
    let rest = parts.next().unwrap();
    let with = |h: serde_json::Value| format!("{}.{rest}", enc(h));
    assert_eq!(
        verifier
            .verify(&with(json!({"alg": "RS256", "kid": "nope"})), now)
            .unwrap_err(),
        VerifyError::UnknownKid
    );
    assert_eq!(
        verifier
            .verify(&with(json!({"alg": "RS256"})), now)
            .unwrap_err(),
        VerifyError::MissingKid
    );
    for field in ["jwk", "jku", "x5u", "x5c"] {
        let h = json!({"alg": "RS256", "kid": kid, field: "x"});
        assert!(matches!(
            verifier.verify(&with(h), now).unwrap_err(),
            VerifyError::ForbiddenHeader(_)
        ));
    }
    // ES256 named in the header against an RSA key.
    assert_eq!(
        verifier
            .verify(&with(json!({"alg": "ES256", "kid": kid})), now)
            .unwrap_err(),
        VerifyError::AlgMismatch
    );
}

/// A token signed with a fresh Ed25519 key over any `claims` (the key set signs only its own
/// `Claims`, which carry no `nbf`), and a verifier that trusts that key.
fn sign_any(claims: serde_json::Value) -> (String, Verifier) {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
    let pair = Ed25519KeyPair::generate().unwrap();
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let jwks =
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]});
    let verifier = Verifier::from_jwks_value(&jwks)
        .unwrap()
        .with_issuer("https://issuer")
        .with_audience("convex");
    let input = format!(
        "{}.{}",
        enc(json!({"alg": "EdDSA", "kid": "k1"})),
        enc(claims)
    );
    let signature = URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes()).as_ref());
    (format!("{input}.{signature}"), verifier)
}

#[test]
fn a_token_is_refused_before_its_nbf_and_accepted_from_it() {
    let now = Utc::now().timestamp();
    let nbf = now + 600;
    let (token, verifier) = sign_any(json!({
        "sub": "user1", "iss": "https://issuer", "aud": "convex",
        "iat": now, "nbf": nbf, "exp": now + 900,
    }));
    assert_eq!(
        verifier.verify(&token, now).unwrap_err(),
        VerifyError::NotYetValid
    );
    assert_eq!(
        verifier.verify(&token, nbf - 1).unwrap_err(),
        VerifyError::NotYetValid,
        "one second early"
    );
    // The same token from its nbf on: nothing else about it is wrong.
    assert_eq!(verifier.verify(&token, nbf).unwrap().claims["sub"], "user1");
    // Leeway moves the boundary, as it does for exp.
    let lenient = verifier.with_leeway(60);
    assert!(lenient.verify(&token, nbf - 60).is_ok());
    assert_eq!(
        lenient.verify(&token, nbf - 61).unwrap_err(),
        VerifyError::NotYetValid
    );
    // An nbf that is not a number is refused, not ignored.
    let (token, verifier) = sign_any(json!({
        "sub": "user1", "iss": "https://issuer", "aud": "convex", "nbf": "soon", "exp": now + 900,
    }));
    assert_eq!(
        verifier.verify(&token, now).unwrap_err(),
        VerifyError::MissingClaim("nbf")
    );
}

#[test]
fn expired_wrong_issuer_and_audience_are_refused() {
    let (keys, verifier) = setup();
    let now = Utc::now().timestamp();
    let sign = |c: &Claims| keys.sign(Alg::RS256, c, Utc::now()).unwrap().jwt;
    let mut expired = claims(now - 2000);
    expired.exp = now - 1;
    assert_eq!(
        verifier.verify(&sign(&expired), now).unwrap_err(),
        VerifyError::Expired
    );
    let mut wrong_iss = claims(now);
    wrong_iss.iss = "https://evil".into();
    assert_eq!(
        verifier.verify(&sign(&wrong_iss), now).unwrap_err(),
        VerifyError::WrongIssuer
    );
    let mut wrong_aud = claims(now);
    wrong_aud.aud = "other".into();
    assert_eq!(
        verifier.verify(&sign(&wrong_aud), now).unwrap_err(),
        VerifyError::WrongAudience
    );
    // Checked at its exp, a token is expired (nbf has its own test above).
    let t = sign(&claims(now));
    assert_eq!(
        verifier.verify(&t, now + 900).unwrap_err(),
        VerifyError::Expired
    );
    // Tampered payload.
    let mut parts: Vec<&str> = t.split('.').collect();
    let evil =
        enc(json!({"sub": "admin", "iss": "https://issuer", "aud": "convex", "exp": now + 900}));
    parts[1] = &evil;
    assert_eq!(
        verifier.verify(&parts.join("."), now).unwrap_err(),
        VerifyError::BadSignature
    );
}

/// Without a key (the JWKS cannot be had), the claims still condemn an expired token or one
/// for another issuer or audience; a token whose claims hold is left to its signature.
#[test]
fn claims_are_checked_without_a_key() {
    let (keys, _) = setup();
    let checker = Verifier::default()
        .with_issuer("https://issuer")
        .with_audience("convex");
    let now = Utc::now().timestamp();
    let sign = |c: &Claims| keys.sign(Alg::RS256, c, Utc::now()).unwrap().jwt;
    let mut expired = claims(now - 2000);
    expired.exp = now - 1;
    let mut wrong_iss = claims(now);
    wrong_iss.iss = "https://evil".into();
    let mut wrong_aud = claims(now);
    wrong_aud.aud = "other".into();
    for (token, error) in [
        (sign(&expired), VerifyError::Expired),
        (sign(&wrong_iss), VerifyError::WrongIssuer),
        (sign(&wrong_aud), VerifyError::WrongAudience),
        ("not-a-jwt".to_owned(), VerifyError::Malformed),
    ] {
        assert_eq!(checker.check_unverified_claims(&token, now), Err(error));
    }
    // Good claims, whatever the signature: only a key can decide.
    let good = sign(&claims(now));
    let (head, _) = good.rsplit_once('.').unwrap();
    assert_eq!(
        checker.check_unverified_claims(&format!("{head}.AAAA"), now),
        Ok(())
    );
    // No key set checks no key: an unknown kid is not a refusal here.
    assert_eq!(checker.check_unverified_claims(&good, now), Ok(()));
}
