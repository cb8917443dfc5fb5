//! The key of a shared subscription: canonical path, arguments with sorted keys, journal.

use edge_convex::UdfPath;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryKey {
    pub path: String,
    /// Canonical JSON of the arguments object.
    pub args: String,
    pub journal: Option<String>,
}

impl QueryKey {
    pub fn new(udf_path: &str, args: &Value, journal: Option<String>) -> Result<QueryKey, String> {
        let path = UdfPath::parse(udf_path)?;
        Ok(QueryKey {
            path: path.as_str().to_owned(),
            args: edge_convex::value::canonical_string(args),
            journal,
        })
    }

    /// The arguments as the sync protocol sends them: a one-element array.
    pub fn args_value(&self) -> Value {
        serde_json::from_str(&self.args).unwrap_or(Value::Null)
    }
}
