//! The auth service against real Postgres and SQLite: the store contract, token issuance
//! without key reads, rotation, the revocation stream and gRPC error mapping.

mod account;
mod grpc_errors;
mod revocations;
mod session_log;
mod store_contract;
mod tls;
mod tokens;

use std::net::SocketAddr;
use std::time::Duration;

use edge_auth::{Application, AuthCore, Config};
use edge_keys::Secret;
use edge_proto::auth::v1 as pb;
use edge_proto::auth::v1::auth_service_client::AuthServiceClient;
use tonic::transport::Channel;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789";

/// Local defaults on port 0 against `database_url`.
pub fn config(database_url: &str) -> Config {
    let mut c = Config::local(Secret::new(SECRET));
    c.database_url = database_url.to_owned();
    c.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.poll_interval = Duration::from_millis(200);
    // Every test client is 127.0.0.1: rate limits are off unless a test turns them on
    // (`limits` tests use Better Auth's defaults).
    c.sign_in_limit.per_address = 100_000;
    c.sign_in_limit.per_account = 100_000;
    c
}

/// A running auth service; stops when dropped.
pub struct Running {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub core: std::sync::Arc<AuthCore>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to auth")
    }
}

pub async fn spawn(config: Config) -> Running {
    let app = Application::build(config).await.expect("auth builds");
    let (grpc, http, core) = (app.grpc_addr(), app.http_addr(), app.core());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        grpc,
        http,
        core,
        _stop: stop,
    }
}

pub async fn postgres() -> (edge_testkit::TestDb, Running) {
    let db = edge_testkit::test_database().await;
    let running = spawn(config(&db.url)).await;
    (db, running)
}

/// Signs up a user through gRPC and returns the cookie value.
pub async fn sign_up(client: &mut AuthServiceClient<Channel>, email: &str) -> String {
    let r = client
        .sign_up(pb::SignUpRequest {
            callback_url: String::new(),
            name: "Test User".into(),
            email: email.into(),
            password: "correct horse battery staple".into(),
            image: None,
            client: Some(pb::ClientInfo {
                ip_address: "127.0.0.1".into(),
                user_agent: "test".into(),
            }),
            ..Default::default()
        })
        .await
        .expect("sign up");
    r.into_inner().cookie_value
}

pub fn sqlite_url() -> (edge_testkit::TempDir, String) {
    let dir = edge_testkit::TempDir::default();
    let url = format!("sqlite://{}/auth.db", dir.path().display());
    (dir, url)
}
