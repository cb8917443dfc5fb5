//! Tool subcommands: migrate, jwks export/rotate, convex-auth-config, configuration errors.

use base64::Engine;
use serde_json::Value;

use crate::{SECRET, run};

#[test]
fn invalid_configuration_is_one_line_and_exit_code_64() {
    /// (arguments, environment, the variable the error must name)
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["auth"], &[], "BETTER_AUTH_SECRET"),
        (
            &["auth"],
            &[("BETTER_AUTH_SECRET", SECRET), ("JWT_ALG", "HS256")],
            "JWT_ALG",
        ),
        (
            &["auth"],
            &[
                ("BETTER_AUTH_SECRET", SECRET),
                ("AUTH_GRPC_ADDR", "nowhere"),
            ],
            "AUTH_GRPC_ADDR",
        ),
        (
            &["gateway"],
            &[("GATEWAY_HTTP_ADDR", "x")],
            "GATEWAY_HTTP_ADDR",
        ),
        (
            &["gateway"],
            &[("AUTH_GRPC_URL", "ftp://x")],
            "AUTH_GRPC_URL",
        ),
        (
            &["auth"],
            &[("BETTER_AUTH_SECRET", SECRET), ("LOG_FORMAT", "xml")],
            "LOG_FORMAT",
        ),
        // Convex's customJwt takes RS256 and ES256: no auth config for an EdDSA issuer.
        (
            &["convex-auth-config"],
            &[("BETTER_AUTH_SECRET", SECRET), ("JWT_ALG", "EdDSA")],
            "JWT_ALG",
        ),
    ];
    for (args, env, var) in cases {
        let out = run(args, env);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
    let out = run(&["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(run(&["--help"], &[]).status.code(), Some(0));
}

#[tokio::test]
async fn migrate_is_idempotent_and_keys_export_into_a_static_jwks() {
    let db = edge_testkit::test_database().await;
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("BETTER_AUTH_SECRET", SECRET),
        ("JWT_ALG", "ES256"),
    ];
    for _ in 0..2 {
        let out = run(&["migrate"], &env[..1]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // No key yet: export says so.
    assert!(!run(&["jwks", "export"], &env).status.success());
    assert!(run(&["jwks", "rotate"], &env).status.success());
    assert!(run(&["jwks", "rotate"], &env).status.success());
    let out = run(&["jwks", "export"], &env);
    assert!(out.status.success());
    let exported = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Value> = serde_json::from_str(&exported).unwrap();
    // Both keys: the first, rotated out, is still published (and still signs for one JWKS
    // cache lifetime), so a static JWKS made now must hold it.
    assert_eq!(rows.len(), 2, "every published key is exported");
    assert!(rows[0]["expiresAt"].is_null() && !rows[1]["expiresAt"].is_null());
    for field in ["id", "publicKey", "privateKey", "createdAt", "alg"] {
        assert!(rows[0].get(field).is_some(), "{field}");
    }
    assert!(
        rows[0]["privateKey"].as_str().unwrap().starts_with('"'),
        "still encrypted"
    );

    // The exported rows work as the static JWKS: convex-auth-config embeds them as a data: URI.
    let static_env = [
        ("BETTER_AUTH_SECRET", SECRET),
        ("JWT_ALG", "ES256"),
        ("JWKS", exported.trim()),
    ];
    let out = run(&["convex-auth-config"], &static_env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    let provider = &config["providers"][0];
    assert_eq!(provider["type"], "customJwt");
    assert_eq!(provider["issuer"], "http://localhost:8080");
    assert_eq!(provider["applicationID"], "convex");
    assert_eq!(provider["algorithm"], "ES256");
    let uri = provider["jwks"].as_str().unwrap();
    let b64 = uri
        .strip_prefix("data:text/plain;charset=utf-8;base64,")
        .expect("a data: URI");
    let jwks: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(jwks["keys"][0]["kid"], rows[0]["id"]);
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part published"
    );

    // Dynamic mode points Convex at the JWKS URL instead.
    let out = run(&["convex-auth-config"], &env);
    let config: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        config["providers"][0]["jwks"],
        "http://localhost:8080/api/auth/convex/jwks"
    );

    // Rotation refuses static mode; a bad JWKS names the variable.
    assert_eq!(
        run(&["jwks", "rotate"], &static_env).status.code(),
        Some(64)
    );
    let out = run(
        &["convex-auth-config"],
        &[("BETTER_AUTH_SECRET", SECRET), ("JWKS", "[{}]")],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JWKS"));
}

/// `SSL_CERT_FILE=""` (a template left unfilled) fails start-up with a clear line instead of a
/// warning about a file named '' and TLS clients that fail later.
#[test]
fn an_empty_ssl_cert_file_is_refused_at_start_up() {
    let dir = edge_testkit::TempDir::default();
    let mut child = std::process::Command::new(crate::BIN)
        .arg("auth")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BETTER_AUTH_SECRET", SECRET)
        .env("SSL_CERT_FILE", "")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("a.db").display()),
        )
        .env("AUTH_GRPC_ADDR", "127.0.0.1:0")
        .env("AUTH_HTTP_ADDR", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("auth started with SSL_CERT_FILE empty");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("SSL_CERT_FILE is set but empty"),
        "{stderr}"
    );
}

/// libpq's `PGSSLROOTCERT`: with no `sslrootcert` in the URL, the root certificate the
/// environment names is the one a verifying `sslmode` checks against, in place of the OS roots
/// and `SSL_CERT_FILE`.
#[tokio::test]
async fn pgsslrootcert_names_the_root_as_libpq_reads_it() {
    let db = edge_testkit::test_database().await;
    let show = |setting: &str| {
        let out = std::process::Command::new("psql")
            .args([db.url.as_str(), "-Atqc", &format!("SHOW {setting}")])
            .output()
            .expect("psql runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(
        show("ssl"),
        "on",
        "scripts/test.sh turns TLS on in Postgres"
    );
    let server_cert = std::path::Path::new(&show("data_directory")).join(show("ssl_cert_file"));
    let url = format!("{}?sslmode=verify-ca", db.url);
    let migrate = |root: &std::path::Path| {
        let root = root.to_string_lossy();
        run(
            &["migrate"],
            &[("DATABASE_URL", url.as_str()), ("PGSSLROOTCERT", &root)],
        )
    };
    let out = migrate(&server_cert);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = edge_testkit::TestCa::new();
    let out = migrate(&other.ca_file);
    assert!(
        !out.status.success(),
        "a root that did not sign the server's certificate"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("certificate"),
        "the error says why: {stderr}"
    );
}
