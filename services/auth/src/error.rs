//! Domain errors of the auth service and their place in the shared error table.

use edge_proto::error::ErrorCode;

use crate::keys::KeysError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Bad input: the code names what was wrong.
    #[error("{1}")]
    Invalid(ErrorCode, String),
    #[error("user already exists. Use another email.")]
    UserExists,
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("no valid session")]
    Unauthorized,
    #[error("failed to get session")]
    NoSession,
    #[error("too many requests. Please try again later.")]
    RateLimited { retry_after_secs: u64 },
    /// The password hashing budget stayed full for its whole wait.
    #[error("password hashing busy")]
    Busy { retry_after_secs: u64 },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("keys: {0}")]
    Keys(#[from] KeysError),
    #[error("signing: {0}")]
    Sign(#[from] edge_keys::KeyError),
    #[error("mail: {0}")]
    Mail(#[from] crate::mail::MailError),
}

impl AuthError {
    pub fn invalid(code: ErrorCode, message: impl Into<String>) -> Self {
        AuthError::Invalid(code, message.into())
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Invalid(code, _) => *code,
            AuthError::UserExists => ErrorCode::USER_ALREADY_EXISTS,
            AuthError::InvalidCredentials => ErrorCode::INVALID_EMAIL_OR_PASSWORD,
            AuthError::Unauthorized => ErrorCode::UNAUTHORIZED,
            AuthError::NoSession => ErrorCode::FAILED_TO_GET_SESSION,
            AuthError::RateLimited { .. } => ErrorCode::TOO_MANY_REQUESTS,
            AuthError::Busy { .. } => ErrorCode::SERVICE_UNAVAILABLE,
            AuthError::Store(StoreError::UserExists) => ErrorCode::USER_ALREADY_EXISTS,
            AuthError::Store(StoreError::Database(
                sqlx::Error::PoolTimedOut | sqlx::Error::Io(_),
            )) => ErrorCode::SERVICE_UNAVAILABLE,
            AuthError::Store(_) | AuthError::Keys(_) | AuthError::Sign(_) | AuthError::Mail(_) => {
                ErrorCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The message a client sees: internal details stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            AuthError::Invalid(_, m) => m.clone(),
            AuthError::UserExists | AuthError::Store(StoreError::UserExists) => {
                "User already exists. Use another email.".into()
            }
            AuthError::InvalidCredentials => "Invalid email or password".into(),
            AuthError::Unauthorized => "Unauthorized".into(),
            AuthError::NoSession => "Failed to get session".into(),
            AuthError::RateLimited { .. } => "Too many requests. Please try again later.".into(),
            AuthError::Busy { .. } => "Server busy. Please try again shortly.".into(),
            other if other.code() == ErrorCode::SERVICE_UNAVAILABLE => "Service unavailable".into(),
            _ => "Internal server error".into(),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        let code = e.code();
        let busy = matches!(e, AuthError::Busy { .. });
        if !busy
            && (code == ErrorCode::INTERNAL_SERVER_ERROR || code == ErrorCode::SERVICE_UNAVAILABLE)
        {
            tracing::error!(error = %e, "request failed");
        }
        let mut status = code.to_status(e.public_message());
        let retry_after = match e {
            AuthError::RateLimited { retry_after_secs } | AuthError::Busy { retry_after_secs } => {
                Some(retry_after_secs)
            }
            // The database did not answer in time (a burst, an outage): worth a retry soon.
            _ if code == ErrorCode::SERVICE_UNAVAILABLE => Some(1),
            _ => None,
        };
        if let Some(Ok(v)) = retry_after.map(|secs| secs.to_string().parse()) {
            status.metadata_mut().insert("retry-after", v);
        }
        status
    }
}
