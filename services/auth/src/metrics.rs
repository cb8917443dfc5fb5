//! The auth service's metrics (names fixed by DESIGN section 7).

use std::sync::LazyLock;

use edge_telemetry::prometheus::IntCounter;

pub static JWKS_DB_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter("edge_auth_jwks_db_reads_total", "reads of the jwks table")
});
pub static TOKENS_ISSUED: LazyLock<IntCounter> =
    LazyLock::new(|| edge_telemetry::counter("edge_auth_tokens_issued_total", "JWTs signed"));
pub static SESSION_DB_READS: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter(
        "edge_auth_session_db_reads_total",
        "session lookups that reached the database",
    )
});
pub static PASSWORD_HASH_REFUSED: LazyLock<IntCounter> = LazyLock::new(|| {
    edge_telemetry::counter(
        "edge_auth_password_hash_refused_total",
        "requests refused (503) because the password hashing memory budget stayed full",
    )
});

/// Registers every metric so `/metrics` lists them from the start.
pub fn init() {
    LazyLock::force(&JWKS_DB_READS);
    LazyLock::force(&TOKENS_ISSUED);
    LazyLock::force(&SESSION_DB_READS);
    LazyLock::force(&PASSWORD_HASH_REFUSED);
}
