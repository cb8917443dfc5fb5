//! Compatibility with `fixtures/better-auth-1.6.15.json`, made by the real better-auth.

use chrono::Utc;
use edge_keys::jwk::KeyRow;
use edge_keys::keyset::{Claims, DEFAULT_GRACE};
use edge_keys::{Alg, KeySet, Secret, Verifier, cookie, encryption, password};
use serde_json::Value;

fn fixture() -> (Secret, Vec<Value>) {
    let f = edge_testkit::better_auth_fixture();
    let secret = Secret::new(f["secret"].as_str().unwrap());
    (secret, f["cases"].as_array().unwrap().clone())
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter()
        .fold(v, |v, p| &v[*p])
        .as_str()
        .unwrap_or_else(|| panic!("{path:?}"))
}

#[test]
fn signed_cookies_verify_with_the_secret() {
    let (secret, cases) = fixture();
    for case in &cases {
        let cookie_header = str_of(case, &["sessionCookie"]);
        let value = cookie::from_header(cookie_header, false).unwrap();
        let token = cookie::verify(&secret, value).expect("fixture cookie verifies");
        assert_eq!(token.as_str(), str_of(case, &["signInResponse", "token"]));
        // Our signature of the same token is byte-for-byte Better Auth's cookie value.
        assert_eq!(cookie::sign(&secret, &token), value);
        // And the Set-Cookie header starts with it.
        assert!(
            str_of(case, &["signInSetCookie"])
                .starts_with(&format!("{}={value};", cookie::COOKIE_NAME))
        );
        assert!(cookie::verify(&Secret::new("not-the-secret"), value).is_none());
    }
}

#[test]
fn password_hashes_verify() {
    let (_, cases) = fixture();
    for case in &cases {
        let hash = case["tables"]["account"][0]["password"].as_str().unwrap();
        assert!(password::verify(hash, "correct horse battery staple"));
        assert!(!password::verify(hash, "correct horse battery stapler"));
    }
}

#[test]
fn private_keys_decrypt() {
    let (secret, cases) = fixture();
    for case in &cases {
        let row = &case["tables"]["jwks"][0];
        let plain = encryption::decrypt(&secret, row["privateKey"].as_str().unwrap()).unwrap();
        let jwk: Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(jwk, case["decryptedPrivateJwk"]);
    }
}

fn static_rows(cases: &[Value]) -> Vec<KeyRow> {
    let rows: Vec<Value> = cases
        .iter()
        .map(|c| c["tables"]["jwks"][0].clone())
        .collect();
    KeyRow::parse_static(&Value::Array(rows).to_string()).unwrap()
}

#[test]
fn static_rows_sign_tokens_that_verify_against_better_auths_jwks() {
    let (secret, cases) = fixture();
    let keys = KeySet::load(&static_rows(&cases), &secret, Utc::now(), DEFAULT_GRACE).unwrap();
    assert_eq!(keys.len(), 3);
    let now = Utc::now().timestamp();
    for case in &cases {
        let alg: Alg = case["alg"].as_str().unwrap().parse().unwrap();
        let payload = &case["jwtPayload"];
        let claims = Claims {
            iat: now,
            name: payload["name"].as_str().unwrap().into(),
            email: payload["email"].as_str().unwrap().into(),
            email_verified: false,
            session_id: payload["sessionId"].as_str().unwrap().into(),
            sub: payload["sub"].as_str().unwrap().into(),
            exp: now + 900,
            iss: "http://localhost:8080".into(),
            aud: "convex".into(),
            jti: None,
        };
        let signed = keys.sign(alg, &claims, Utc::now()).unwrap();
        // Verify against the JWKS response Better Auth served, not our own.
        let verifier = Verifier::from_jwks_value(&case["jwksResponse"])
            .unwrap()
            .with_issuer("http://localhost:8080")
            .with_audience("convex");
        let verified = verifier.verify(&signed.jwt, now).unwrap();
        // Same header and the same claim set, in the same order.
        let header = decode_part(&signed.jwt, 0);
        assert_eq!(header, case["jwtHeader"]);
        let ours: Vec<&String> = verified.claims.keys().collect();
        let theirs: Vec<&String> = payload.as_object().unwrap().keys().collect();
        let mut ours_sorted = ours.clone();
        let mut theirs_sorted = theirs.clone();
        ours_sorted.sort();
        theirs_sorted.sort();
        assert_eq!(ours_sorted, theirs_sorted);
        assert_eq!(
            decode_part(&signed.jwt, 1)
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            theirs
        );
    }
    // Our published JWKS holds the same public keys Better Auth published.
    let ours: Value = serde_json::from_str(keys.jwks_json()).unwrap();
    for case in &cases {
        let theirs = &case["jwksResponse"]["keys"][0];
        assert!(
            ours["keys"].as_array().unwrap().contains(theirs),
            "{theirs}"
        );
    }
}

#[test]
fn better_auths_own_tokens_verify_with_our_verifier() {
    let (_, cases) = fixture();
    for case in &cases {
        let verifier = Verifier::from_jwks_value(&case["jwksResponse"])
            .unwrap()
            .with_audience("convex");
        let jwt = case["tokenEndpointJwt"].as_str().unwrap();
        let iat = case["jwtPayload"]["iat"].as_i64().unwrap();
        verifier.verify(jwt, iat + 1).unwrap();
        assert_eq!(
            verifier.verify(jwt, iat + 901).unwrap_err(),
            edge_keys::VerifyError::Expired
        );
    }
}

#[test]
fn static_dates_may_be_numbers_or_strings() {
    let (secret, cases) = fixture();
    let mut row = cases[0]["tables"]["jwks"][0].clone();
    row["createdAt"] = Value::from(1_795_779_599_526_i64);
    row["expiresAt"] = Value::from("2099-01-01T00:00:00.000Z");
    let rows = KeyRow::parse_static(&Value::Array(vec![row]).to_string()).unwrap();
    assert_eq!(rows[0].created_at.timestamp_millis(), 1_795_779_599_526);
    assert!(rows[0].expires_at.is_some());
    KeySet::load(&rows, &secret, Utc::now(), DEFAULT_GRACE).unwrap();
    for bad in [
        "",
        "{}",
        "[]",
        "[{\"id\":\"x\"}]",
        "[{\"id\":\"x\",\"publicKey\":\"{}\",\"privateKey\":\"\",\"createdAt\":true}]",
    ] {
        assert!(KeyRow::parse_static(bad).is_err(), "{bad}");
    }
}

#[test]
fn generated_keys_round_trip_through_better_auths_row_format() {
    let secret = Secret::new("generated-secret-0123456789abcdef");
    for alg in [Alg::RS256, Alg::ES256, Alg::EdDSA] {
        let row = edge_keys::jwk::generate_row(alg, &secret, Utc::now()).unwrap();
        assert!(
            row.private_key.starts_with('"'),
            "stored as a JSON string like Better Auth"
        );
        let keys = KeySet::load(
            std::slice::from_ref(&row),
            &secret,
            Utc::now(),
            DEFAULT_GRACE,
        )
        .unwrap();
        assert!(keys.can_sign(alg, Utc::now()));
        // A wrong secret cannot load it.
        assert!(KeySet::load(&[row], &Secret::new("wrong"), Utc::now(), DEFAULT_GRACE).is_err());
    }
}

fn decode_part(jwt: &str, i: usize) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(i).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}
