//! Project Wycheproof vectors that apply to RS256, ES256 and EdDSA.
//!
//! JWS vectors: for keys of our algorithms, `valid` must verify and everything else must not;
//! for any other algorithm (HS*, PS*, RS384, …) nothing may verify, since convex-edge accepts
//! only RS256, ES256 and EdDSA. Raw signature vectors go through the same verification path
//! as tokens: the signature check that `VerifyKey::verify_jws` ends in.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use edge_keys::verify::VerifyKey;
use serde_json::{Map, Value};

fn object(v: &Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

#[test]
fn json_web_signature_vectors() {
    let file = edge_testkit::wycheproof("json_web_signature_test.json");
    let (mut accepted, mut rejected) = (0, 0);
    for group in file["testGroups"].as_array().unwrap() {
        let public = group
            .get("public")
            .or_else(|| group.get("private"))
            .map(object)
            .unwrap();
        let key = VerifyKey::from_jwk(&public).ok();
        for case in group["tests"].as_array().unwrap() {
            let id = case["tcId"].as_i64().unwrap();
            let Some(jws) = case["jws"].as_str() else {
                // JSON serialisation: never accepted by a compact-only verifier.
                rejected += 1;
                continue;
            };
            let ok = key.as_ref().is_some_and(|k| k.verify_jws(jws).is_ok());
            let expect = key.is_some() && case["result"] == "valid";
            assert_eq!(ok, expect, "tcId {id}: {}", case["comment"]);
            if ok { accepted += 1 } else { rejected += 1 }
        }
    }
    assert!(
        accepted >= 5 && rejected >= 300,
        "accepted {accepted}, rejected {rejected}"
    );
}

/// Runs raw (msg, sig) vectors through a compact JWS so the JWS path checks them.
fn raw_vectors(file: &str, alg: &str, jwk_of: impl Fn(&Value) -> Option<Map<String, Value>>) {
    let file = edge_testkit::wycheproof(file);
    let mut checked = 0;
    for group in file["testGroups"].as_array().unwrap() {
        let Some(mut jwk) = jwk_of(group) else {
            continue;
        };
        jwk.remove("kid");
        let Ok(key) = VerifyKey::from_jwk(&jwk) else {
            continue;
        };
        for case in group["tests"].as_array().unwrap() {
            let msg = hex::decode(case["msg"].as_str().unwrap()).unwrap();
            let sig = hex::decode(case["sig"].as_str().unwrap()).unwrap();
            // A JWS signs ASCII(header.payload), and a vector's message is arbitrary bytes, so
            // the vector goes through the signature check a JWS verification ends in.
            let valid = case["result"] == "valid";
            let ok = key_verifies(&key, alg, &msg, &sig);
            if case["result"] != "acceptable" {
                assert_eq!(
                    ok, valid,
                    "{alg} tcId {}: {}",
                    case["tcId"], case["comment"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 100, "{checked} vectors checked");
}

fn key_verifies(key: &VerifyKey, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    assert_eq!(key.alg().as_str(), alg);
    key.verify_raw(msg, &URL_SAFE_NO_PAD.encode(sig))
}

#[test]
fn ed25519_vectors() {
    raw_vectors("ed25519_test.json", "EdDSA", |g| {
        g.get("publicKeyJwk").map(object)
    });
}

#[test]
fn ecdsa_p256_vectors() {
    raw_vectors("ecdsa_secp256r1_sha256_p1363_test.json", "ES256", |g| {
        g.get("publicKeyJwk").map(object)
    });
}

#[test]
fn rsa_2048_vectors() {
    raw_vectors("rsa_signature_2048_sha256_test.json", "RS256", |g| {
        let mut jwk = object(g.get("keyJwk")?);
        jwk.remove("alg");
        Some(jwk)
    });
}

#[test]
fn the_jws_path_and_the_raw_path_agree() {
    // A JWS built from an Ed25519 vector's key would need its private key; instead show that a
    // token signed by us verifies raw too, tying the two paths together.
    let secret = edge_keys::Secret::new("tie-secret");
    let row =
        edge_keys::jwk::generate_row(edge_keys::Alg::EdDSA, &secret, chrono::Utc::now()).unwrap();
    let keys = edge_keys::KeySet::load(
        std::slice::from_ref(&row),
        &secret,
        chrono::Utc::now(),
        edge_keys::keyset::DEFAULT_GRACE,
    )
    .unwrap();
    let jwks: Value = serde_json::from_str(keys.jwks_json()).unwrap();
    let key = VerifyKey::from_jwk(&object(&jwks["keys"][0])).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = edge_keys::Claims {
        iat: now,
        name: "n".into(),
        email: "e".into(),
        email_verified: false,
        session_id: "s".into(),
        sub: "u".into(),
        exp: now + 60,
        iss: "i".into(),
        aud: "a".into(),
        jti: None,
    };
    let jwt = keys
        .sign(edge_keys::Alg::EdDSA, &claims, chrono::Utc::now())
        .unwrap()
        .jwt;
    let (input, sig) = jwt.rsplit_once('.').unwrap();
    assert!(key.verify_raw(input.as_bytes(), sig));
    assert!(key.verify_jws(&jwt).is_ok());
}
