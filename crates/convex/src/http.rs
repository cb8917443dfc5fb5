//! Bodies of Convex's HTTP API.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How values are encoded in a request's args and its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Format {
    /// Convex encoded JSON (what the official clients send).
    #[default]
    #[serde(rename = "convex_encoded_json")]
    ConvexEncodedJson,
    /// Plain JSON in and out (the documented HTTP API).
    #[serde(rename = "json")]
    Json,
}

/// `{path, args, format}`; `args` may be an object or a one-element array of it.
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionRequest {
    pub path: String,
    #[serde(default)]
    pub args: Value,
    #[serde(default)]
    pub format: Option<Format>,
}

impl FunctionRequest {
    /// The single arguments object.
    pub fn args_object(&self) -> Result<Value, String> {
        args_object(&self.args)
    }
}

/// Normalises `args` (object, `[object]`, or absent) to the arguments object.
pub fn args_object(args: &Value) -> Result<Value, String> {
    match args {
        Value::Null => Ok(Value::Object(Default::default())),
        Value::Object(_) => Ok(args.clone()),
        Value::Array(items) if items.len() == 1 && items[0].is_object() => Ok(items[0].clone()),
        _ => Err("args must be an object".into()),
    }
}

/// A function's outcome as the HTTP API returns it. A failed function is answered with
/// HTTP 560 (`STATUS_CODE_UDF_FAILED` in Convex's client), a success with 200.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum FunctionResult {
    #[serde(rename = "success")]
    Success {
        value: Value,
        #[serde(rename = "logLines")]
        log_lines: Vec<String>,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(rename = "errorMessage")]
        error_message: String,
        #[serde(rename = "errorData", default, skip_serializing_if = "Option::is_none")]
        error_data: Option<Value>,
        #[serde(rename = "logLines")]
        log_lines: Vec<String>,
    },
}

/// The HTTP status for a failed function.
pub const STATUS_UDF_FAILED: u16 = 560;
