//! The key of a shared subscription: canonical path, arguments with sorted keys, journal.
//!
//! A key is made once, from the client's `Add` (or a page's call), and every structure that
//! names the query after that shares it: the socket's query set and its index by key, the
//! `Subscribe` to the upstream, the upstream's reference-counted subscriptions, its query ids
//! and its published results. A clone is a reference count, so what a query costs the
//! service is its bytes once ([`QueryKey::bytes`], what the query limits count), not once
//! per structure.

use std::ops::Deref;
use std::sync::Arc;

use edge_convex::UdfPath;
use serde_json::Value;

/// A query's identity across sockets and upstreams; cheap to clone (shared, immutable).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey(Arc<KeyParts>);

/// What a [`QueryKey`] names.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyParts {
    pub path: UdfPath,
    /// Canonical JSON of the arguments object.
    pub args: String,
    /// A paginated query's journal, as the client sent it.
    pub journal: Option<String>,
}

impl Deref for QueryKey {
    type Target = KeyParts;

    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl QueryKey {
    /// # Errors
    /// When `udf_path` is not a valid function path (the message names it).
    pub fn new(udf_path: &str, args: &Value, journal: Option<String>) -> Result<QueryKey, String> {
        let mut args = edge_convex::value::canonical_string(args);
        // Serialising grows the buffer by doubling: without this a key could hold up to
        // twice the bytes it is charged for.
        args.shrink_to_fit();
        let journal = journal.map(|mut j| {
            j.shrink_to_fit();
            j
        });
        Ok(QueryKey(Arc::new(KeyParts {
            path: UdfPath::parse(udf_path)?,
            args,
            journal,
        })))
    }

    /// Path, canonical arguments and journal, in bytes: what the query limits count.
    pub fn bytes(&self) -> usize {
        self.path.as_str().len() + self.args.len() + self.journal.as_ref().map_or(0, String::len)
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
