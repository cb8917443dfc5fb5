//! The key of a shared subscription: canonical path, arguments with sorted keys, journal.

use edge_convex::UdfPath;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey {
    pub path: UdfPath,
    /// Canonical JSON of the arguments object.
    pub args: String,
    /// A paginated query's journal, as the client sent it.
    pub journal: Option<String>,
}

impl QueryKey {
    /// # Errors
    /// When `udf_path` is not a valid function path (the message names it).
    pub fn new(udf_path: &str, args: &Value, journal: Option<String>) -> Result<QueryKey, String> {
        Ok(QueryKey {
            path: UdfPath::parse(udf_path)?,
            args: edge_convex::value::canonical_string(args),
            journal,
        })
    }

    /// The arguments object as the sync protocol sends it.
    pub fn args_value(&self) -> Value {
        serde_json::from_str(&self.args).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_canonical_in_path_and_argument_order() {
        let a = QueryKey::new("messages.js:list", &json!({"b": 1, "a": 2}), None).unwrap();
        let b = QueryKey::new("messages:list", &json!({"a": 2, "b": 1}), None).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.args_value(), json!({"a": 2, "b": 1}));
    }

    #[test]
    fn journals_and_arguments_tell_keys_apart() {
        let plain = QueryKey::new("messages:list", &json!({}), None).unwrap();
        let journal = QueryKey::new("messages:list", &json!({}), Some("j".into())).unwrap();
        let other = QueryKey::new("messages:list", &json!({"channel": "x"}), None).unwrap();
        assert_ne!(plain, journal);
        assert_ne!(plain, other);
    }

    #[test]
    fn an_invalid_path_is_refused_with_its_name() {
        let error = QueryKey::new("no spaces:here", &json!({}), None).unwrap_err();
        assert!(error.contains("no spaces:here"), "{error}");
    }
}
