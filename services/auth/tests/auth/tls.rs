//! auth on a Postgres that speaks TLS: `sslmode` as libpq means it, the server's CA trusted
//! through the service's `SSL_CERT_FILE`.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server's own certificate file (Debian's snakeoil, self-signed for `localhost`), which a
/// client trusts as its CA for `verify-ca`/`verify-full`.
async fn server_certificate(url: &str) -> std::path::PathBuf {
    let mut c = PgConnection::connect(url).await.unwrap();
    let (ssl,): (String,) = sqlx::query_as("SHOW ssl").fetch_one(&mut c).await.unwrap();
    assert_eq!(
        ssl, "on",
        "the Postgres server has TLS on (scripts/test.sh turns it on)"
    );
    let (file,): (String,) = sqlx::query_as("SHOW ssl_cert_file")
        .fetch_one(&mut c)
        .await
        .unwrap();
    let path = std::path::PathBuf::from(file);
    if path.is_absolute() {
        return path;
    }
    let (data,): (String,) = sqlx::query_as("SHOW data_directory")
        .fetch_one(&mut c)
        .await
        .unwrap();
    std::path::Path::new(&data).join(path)
}

#[tokio::test]
async fn auth_with_sslmode_require_talks_to_postgres_encrypted() {
    let db = edge_testkit::test_database().await;
    let app_name = format!("auth-tls-{}", db.name);
    let url = format!("{}?sslmode=require&application_name={app_name}", db.url);
    let auth = crate::spawn(crate::config(&url)).await;
    let mut client = auth.client().await;
    crate::sign_up(&mut client, "tls@example.com").await;

    // pg_stat_ssl, read on a connection of our own, for every connection auth holds open.
    let mut own = PgConnection::connect(&format!("{}?sslmode=disable", db.url))
        .await
        .unwrap();
    let rows: Vec<(bool, Option<String>)> = sqlx::query_as(
        "SELECT s.ssl, s.version FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(&app_name)
    .fetch_all(&mut own)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "auth holds connections");
    assert!(
        rows.iter().all(|(ssl, version)| *ssl && version.is_some()),
        "every connection of auth is encrypted: {rows:?}"
    );
    let (mine,): (bool,) =
        sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut own)
            .await
            .unwrap();
    assert!(
        !mine,
        "sslmode=disable stays plaintext (the check can tell them apart)"
    );
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_name() {
    let db = edge_testkit::test_database().await;
    let ca = server_certificate(&db.url).await;
    // The snakeoil certificate names `localhost`; the service trusts it through SSL_CERT_FILE
    // (Debian's OS store lists it too).
    let by_name = format!(
        "{}?sslmode=verify-full",
        db.url.replacen("@127.0.0.1:", "@localhost:", 1)
    );
    let mut trusted = crate::config(&by_name);
    trusted.ssl_cert_file = Some(ca.clone());
    let auth = crate::spawn(trusted).await;
    let mut client = auth.client().await;
    crate::sign_up(&mut client, "verified@example.com").await;

    // The same server reached by an address its certificate does not name is refused.
    let mut by_address = crate::config(&format!("{}?sslmode=verify-full", db.url));
    by_address.ssl_cert_file = Some(ca.clone());
    let refused = match edge_auth::Application::build(by_address).await {
        Ok(_) => panic!("verify-full refuses a certificate that does not name the host"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("not valid for name \"127.0.0.1\""),
        "the error says why: {refused}"
    );

    // verify-ca checks the chain but not the name: the address passes.
    let mut chain_only = crate::config(&format!("{}?sslmode=verify-ca", db.url));
    chain_only.ssl_cert_file = Some(ca);
    crate::spawn(chain_only).await;
}

/// libpq: `sslmode=require` with an `sslrootcert` in the URL verifies the chain, as
/// `verify-ca` does; a root that did not sign the server's certificate is refused.
#[tokio::test]
async fn require_with_a_root_certificate_verifies_the_chain_as_libpq_does() {
    let db = edge_testkit::test_database().await;
    let right = server_certificate(&db.url).await;
    let url = |root: &std::path::Path| {
        format!("{}?sslmode=require&sslrootcert={}", db.url, root.display())
    };
    crate::spawn(crate::config(&url(&right))).await;

    let other = edge_testkit::TestCa::new();
    let refused = match edge_auth::Application::build(crate::config(&url(&other.ca_file))).await {
        Ok(_) => panic!("require with sslrootcert refuses a chain that root did not sign"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the error says why: {refused}"
    );
}

/// libpq 16's `sslrootcert=system`: the system's roots (here with the server's certificate
/// through `SSL_CERT_FILE`), `verify-full` by default (a name the certificate does not hold is
/// refused), and a weaker `sslmode` beside it refused before anything connects.
#[tokio::test]
async fn sslrootcert_system_is_the_system_roots_with_verify_full() {
    let db = edge_testkit::test_database().await;
    let ca = server_certificate(&db.url).await;
    let by_name = db.url.replacen("@127.0.0.1:", "@localhost:", 1);
    let mut system = crate::config(&format!("{by_name}?sslrootcert=system"));
    system.ssl_cert_file = Some(ca.clone());
    let auth = crate::spawn(system).await;
    let mut client = auth.client().await;
    crate::sign_up(&mut client, "system-roots@example.com").await;

    let mut by_address = crate::config(&format!("{}?sslrootcert=system", db.url));
    by_address.ssl_cert_file = Some(ca.clone());
    let refused = match edge_auth::Application::build(by_address).await {
        Ok(_) => panic!("sslrootcert=system checks the host name"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("not valid for name"), "{refused}");

    let mut weak = crate::config(&format!("{by_name}?sslmode=require&sslrootcert=system"));
    weak.ssl_cert_file = Some(ca);
    let refused = match edge_auth::Application::build(weak).await {
        Ok(_) => panic!("libpq refuses a weak sslmode with sslrootcert=system"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        refused.contains("weak sslmode \"require\" may not be used with sslrootcert=system"),
        "{refused}"
    );
}
