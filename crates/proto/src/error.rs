//! One table maps every domain error code to its HTTP status and gRPC code.
//!
//! Codes are Better Auth's (`INVALID_EMAIL_OR_PASSWORD`, …) so the gateway can answer browsers
//! with Better Auth's JSON; the code travels over gRPC in the `edge-error-code` metadata entry.

use tonic::{Code, Status};

/// The metadata key that carries the domain error code on a gRPC status.
pub const ERROR_CODE_METADATA: &str = "edge-error-code";

/// A domain error code with its two wire mappings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode {
    pub code: &'static str,
    pub http_status: u16,
    pub grpc: Code,
}

macro_rules! codes {
    ($($name:ident = ($code:literal, $http:literal, $grpc:ident);)*) => {
        impl ErrorCode {
            $(pub const $name: ErrorCode = ErrorCode { code: $code, http_status: $http, grpc: Code::$grpc };)*
            /// Every code, for lookups by name.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];
        }
    };
}

codes! {
    VALIDATION_ERROR = ("VALIDATION_ERROR", 400, InvalidArgument);
    INVALID_EMAIL = ("INVALID_EMAIL", 400, InvalidArgument);
    PASSWORD_TOO_SHORT = ("PASSWORD_TOO_SHORT", 400, InvalidArgument);
    PASSWORD_TOO_LONG = ("PASSWORD_TOO_LONG", 400, InvalidArgument);
    FAILED_TO_GET_SESSION = ("FAILED_TO_GET_SESSION", 400, InvalidArgument);
    PAYLOAD_TOO_LARGE = ("PAYLOAD_TOO_LARGE", 413, InvalidArgument);
    UNSUPPORTED_MEDIA_TYPE = ("UNSUPPORTED_MEDIA_TYPE", 415, InvalidArgument);
    FAILED_TO_CREATE_USER = ("FAILED_TO_CREATE_USER", 422, InvalidArgument);
    USER_ALREADY_EXISTS = ("USER_ALREADY_EXISTS_USE_ANOTHER_EMAIL", 422, AlreadyExists);
    INVALID_EMAIL_OR_PASSWORD = ("INVALID_EMAIL_OR_PASSWORD", 401, Unauthenticated);
    UNAUTHORIZED = ("UNAUTHORIZED", 401, Unauthenticated);
    INVALID_ORIGIN = ("INVALID_ORIGIN", 403, PermissionDenied);
    INVALID_CALLBACK_URL = ("INVALID_CALLBACK_URL", 403, PermissionDenied);
    MISSING_OR_NULL_ORIGIN = ("MISSING_OR_NULL_ORIGIN", 403, PermissionDenied);
    CROSS_SITE_NAVIGATION_LOGIN_BLOCKED = ("CROSS_SITE_NAVIGATION_LOGIN_BLOCKED", 403, PermissionDenied);
    NOT_FOUND = ("NOT_FOUND", 404, NotFound);
    TOO_MANY_REQUESTS = ("TOO_MANY_REQUESTS", 429, ResourceExhausted);
    SERVICE_UNAVAILABLE = ("SERVICE_UNAVAILABLE", 503, Unavailable);
    // The query service could not check a token (auth's JWKS unreachable): not the token's
    // fault, so not UNAUTHORIZED; the gateway answers the page 503, not as signed out.
    AUTH_UNAVAILABLE = ("AUTH_UNAVAILABLE", 503, Unavailable);
    INTERNAL_SERVER_ERROR = ("INTERNAL_SERVER_ERROR", 500, Internal);
    BAD_REQUEST = ("BAD_REQUEST", 400, InvalidArgument);
    INVALID_TOKEN = ("INVALID_TOKEN", 400, InvalidArgument);
    TOKEN_EXPIRED = ("TOKEN_EXPIRED", 401, Unauthenticated);
    USER_NOT_FOUND = ("USER_NOT_FOUND", 400, NotFound);
    INVALID_PASSWORD = ("INVALID_PASSWORD", 400, InvalidArgument);
    CREDENTIAL_ACCOUNT_NOT_FOUND = ("CREDENTIAL_ACCOUNT_NOT_FOUND", 400, FailedPrecondition);
    SESSION_EXPIRED = ("SESSION_EXPIRED", 400, FailedPrecondition);
    SESSION_NOT_FRESH = ("SESSION_NOT_FRESH", 403, PermissionDenied);
    EMAIL_NOT_VERIFIED = ("EMAIL_NOT_VERIFIED", 403, PermissionDenied);
    EMAIL_ALREADY_VERIFIED = ("EMAIL_ALREADY_VERIFIED", 400, FailedPrecondition);
    EMAIL_MISMATCH = ("EMAIL_MISMATCH", 400, InvalidArgument);
    EMAIL_CAN_NOT_BE_UPDATED = ("EMAIL_CAN_NOT_BE_UPDATED", 400, InvalidArgument);
    VERIFICATION_EMAIL_NOT_ENABLED = ("VERIFICATION_EMAIL_NOT_ENABLED", 400, FailedPrecondition);
    RESET_PASSWORD_DISABLED = ("RESET_PASSWORD_DISABLED", 400, FailedPrecondition);
    CHANGE_EMAIL_DISABLED = ("CHANGE_EMAIL_DISABLED", 400, FailedPrecondition);
    INVALID_REDIRECT_URL = ("INVALID_REDIRECT_URL", 403, PermissionDenied);
    INVALID_USER = ("INVALID_USER", 400, InvalidArgument);
    PROVIDER_NOT_FOUND = ("PROVIDER_NOT_FOUND", 404, NotFound);
    ID_TOKEN_NOT_SUPPORTED = ("ID_TOKEN_NOT_SUPPORTED", 404, NotFound);
    // Better Auth answers a refused ID token `INVALID_TOKEN` with 401 (a reset token: 400);
    // the gateway renames this one.
    INVALID_ID_TOKEN = ("INVALID_ID_TOKEN", 401, Unauthenticated);
    FAILED_TO_GET_USER_INFO = ("FAILED_TO_GET_USER_INFO", 401, Unauthenticated);
    USER_EMAIL_NOT_FOUND = ("USER_EMAIL_NOT_FOUND", 401, Unauthenticated);
    OAUTH_LINK_ERROR = ("OAUTH_LINK_ERROR", 401, Unauthenticated);
    FAILED_TO_UNLINK_LAST_ACCOUNT = ("FAILED_TO_UNLINK_LAST_ACCOUNT", 400, FailedPrecondition);
    ACCOUNT_NOT_FOUND = ("ACCOUNT_NOT_FOUND", 400, NotFound);
    SOCIAL_ACCOUNT_ALREADY_LINKED = ("SOCIAL_ACCOUNT_ALREADY_LINKED", 409, AlreadyExists);
    LINKING_NOT_ALLOWED = ("LINKING_NOT_ALLOWED", 401, Unauthenticated);
    LINKING_DIFFERENT_EMAILS_NOT_ALLOWED = ("LINKING_DIFFERENT_EMAILS_NOT_ALLOWED", 401, Unauthenticated);
    LINKING_FAILED = ("LINKING_FAILED", 417, FailedPrecondition);
}

impl ErrorCode {
    /// A gRPC status carrying this code and a message for humans.
    pub fn to_status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.grpc, message);
        if let Ok(value) = self.code.parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA, value);
        }
        status
    }

    /// The code a gRPC status carries, or the closest one its gRPC code implies.
    pub fn from_status(status: &Status) -> ErrorCode {
        let named = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|name| Self::ALL.iter().find(|c| c.code == name));
        if let Some(code) = named {
            return *code;
        }
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                Self::VALIDATION_ERROR
            }
            Code::Unauthenticated => Self::UNAUTHORIZED,
            Code::PermissionDenied => Self::INVALID_ORIGIN,
            Code::NotFound => Self::NOT_FOUND,
            Code::AlreadyExists => Self::USER_ALREADY_EXISTS,
            Code::ResourceExhausted => Self::TOO_MANY_REQUESTS,
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                Self::SERVICE_UNAVAILABLE
            }
            _ => Self::INTERNAL_SERVER_ERROR,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_grpc_status() {
        for code in ErrorCode::ALL {
            let status = code.to_status("x");
            assert_eq!(ErrorCode::from_status(&status), *code);
            assert_eq!(status.code(), code.grpc);
        }
    }

    #[test]
    fn unnamed_statuses_map_by_grpc_code() {
        let status = Status::unavailable("down");
        assert_eq!(
            ErrorCode::from_status(&status),
            ErrorCode::SERVICE_UNAVAILABLE
        );
    }
}
