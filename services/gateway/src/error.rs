//! HTTP errors in Better Auth's shape: `{"code": "…", "message": "…"}` with its statuses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use edge_proto::error::ErrorCode;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: Option<String>,
    /// Whether the body names the code. Better Auth leaves it out of its rate limiter's 429 and
    /// of its bare `APIError.fromStatus("BAD_REQUEST", {message})`, and names it everywhere
    /// else (better-call's own `BAD_REQUEST` for JSON that does not parse included).
    pub code_in_body: bool,
}

/// Codes Better Auth answers with a message alone, unless [`ApiError::coded`] says otherwise.
fn bare(code: ErrorCode) -> bool {
    code == ErrorCode::TOO_MANY_REQUESTS || code == ErrorCode::BAD_REQUEST
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
            code_in_body: !bare(code),
        }
    }

    /// The same error with its code in the body whatever it is.
    pub fn coded(mut self) -> Self {
        self.code_in_body = true;
        self
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.code, self.message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = ErrorCode::from_status(&status);
        let message = if code == ErrorCode::SERVICE_UNAVAILABLE
            && status
                .metadata()
                .get(edge_proto::error::ERROR_CODE_METADATA)
                .is_none()
        {
            let error = edge_tls::describe(&status);
            tracing::warn!(grpc_code = ?status.code(), %error, "auth service unavailable");
            "Auth service unavailable".to_owned()
        } else {
            status.message().to_owned()
        };
        let retry_after = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ApiError {
            code,
            message,
            retry_after,
            code_in_body: !bare(code),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(retry) = &self.retry_after {
            // Better Auth's 429 names it `X-Retry-After`; a 503 uses the standard header.
            let name = if self.code == ErrorCode::TOO_MANY_REQUESTS {
                "X-Retry-After"
            } else {
                "Retry-After"
            };
            response.insert_header((name, retry.as_str()));
        }
        if !self.code_in_body {
            // Better Auth's rate limiter answers before any route, and its bare
            // `APIError.fromStatus("BAD_REQUEST", {message})` ("No fields to update", "Email is
            // the same"): a message, no code.
            return response.json(serde_json::json!({"message": self.message}));
        }
        response.json(serde_json::json!({"code": self.code.code, "message": self.message}))
    }
}
