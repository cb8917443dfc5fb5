//! Convex values in their encoded JSON form.
//!
//! Values cross every wire as "convex encoded JSON": JSON, except that 64-bit integers are
//! `{"$integer": base64(i64 little-endian)}`, non-finite or negative-zero floats are
//! `{"$float": base64(f64 little-endian)}`, and bytes are `{"$bytes": base64}`. Objects keep
//! their keys; keys starting with `$` are reserved.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

/// Encodes an i64 as Convex does.
pub fn encode_int64(n: i64) -> Value {
    let mut m = Map::new();
    m.insert(
        "$integer".into(),
        Value::String(STANDARD.encode(n.to_le_bytes())),
    );
    Value::Object(m)
}

/// The i64 inside `{"$integer": …}`.
pub fn decode_int64(v: &Value) -> Option<i64> {
    let s = v.as_object()?.get("$integer")?.as_str()?;
    let bytes: [u8; 8] = STANDARD.decode(s).ok()?.try_into().ok()?;
    Some(i64::from_le_bytes(bytes))
}

/// Checks that `v` is a valid Convex value in encoded JSON.
pub fn validate(v: &Value) -> Result<(), String> {
    validate_at(v, 0)
}

const MAX_DEPTH: usize = 64;

fn validate_at(v: &Value, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err("value is nested too deeply".into());
    }
    match v {
        Value::Array(items) => items.iter().try_for_each(|i| validate_at(i, depth + 1)),
        Value::Object(map) => {
            if map.len() == 1 {
                let (k, inner) = map.iter().next().expect("one entry");
                let decoded = match k.as_str() {
                    "$integer" => Some(
                        inner
                            .as_str()
                            .and_then(|s| STANDARD.decode(s).ok())
                            .is_some_and(|b| b.len() == 8),
                    ),
                    "$float" => Some(
                        inner
                            .as_str()
                            .and_then(|s| STANDARD.decode(s).ok())
                            .is_some_and(|b| b.len() == 8),
                    ),
                    "$bytes" => Some(inner.as_str().is_some_and(|s| STANDARD.decode(s).is_ok())),
                    _ => None,
                };
                match decoded {
                    Some(true) => return Ok(()),
                    Some(false) => return Err(format!("malformed {k} value")),
                    None => {}
                }
            }
            for (k, inner) in map {
                if k.starts_with('$') {
                    return Err(format!("field name `{k}` starts with a reserved `$`"));
                }
                validate_at(inner, depth + 1)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The plain-JSON export used by the `json` format: int64 as a number when it is exactly
/// representable, else a decimal string; bytes as base64 strings; special floats as strings.
pub fn export_json(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(items.iter().map(export_json).collect()),
        Value::Object(map) => {
            if let Some(n) = decode_int64(v) {
                return if n.unsigned_abs() <= (1u64 << 53) {
                    Value::from(n)
                } else {
                    Value::String(n.to_string())
                };
            }
            if map.len() == 1 {
                if let Some(Value::String(b)) = map.get("$bytes") {
                    return Value::String(b.clone());
                }
                if let Some(Value::String(f)) = map.get("$float") {
                    let bytes: Option<[u8; 8]> =
                        STANDARD.decode(f).ok().and_then(|b| b.try_into().ok());
                    return match bytes.map(f64::from_le_bytes) {
                        Some(x) if x.is_nan() => Value::String("NaN".into()),
                        Some(x) if x.is_infinite() => {
                            Value::String(if x > 0.0 { "Infinity" } else { "-Infinity" }.into())
                        }
                        Some(_) => Value::from(-0.0),
                        None => Value::Null,
                    };
                }
            }
            Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), export_json(v)))
                    .collect(),
            )
        }
        other => other.clone(),
    }
}

/// A canonical serialisation (object keys sorted at every level) for cache and dedup keys.
pub fn canonical_string(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), sorted(v)))
                        .collect(),
                )
            }
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn int64_round_trip_and_export() {
        let v = encode_int64(-5);
        assert_eq!(decode_int64(&v), Some(-5));
        assert_eq!(export_json(&json!({"a": encode_int64(7)})), json!({"a": 7}));
        assert_eq!(
            export_json(&encode_int64(i64::MAX)),
            json!(i64::MAX.to_string())
        );
    }

    #[test]
    fn validation() {
        assert!(validate(&json!({"a": [1, "x", {"$bytes": "AAEC"}]})).is_ok());
        assert!(validate(&json!({"$bad": 1})).is_err());
        assert!(validate(&json!({"$integer": "AA=="})).is_err());
    }
}
