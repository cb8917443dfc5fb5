//! devconvex against the official `convex` npm client, raw protocol checks over a WebSocket,
//! and the HTTP API.

mod http_api;
mod npm_client;
mod protocol;
mod rust_client;

use std::net::SocketAddr;
use std::sync::Arc;

use edge_devconvex::{Application, Config, Engine};

/// A running devconvex; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    pub engine: Arc<Engine>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

pub async fn spawn(auth_config: Option<String>) -> Running {
    let mut config = Config::local();
    config.addr = "127.0.0.1:0".parse().unwrap();
    config.auth_config = auth_config;
    config.max_message_bytes = 256 * 1024;
    let app = Application::build(config).await.expect("devconvex builds");
    let (addr, engine) = (app.addr(), app.engine());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        engine,
        _stop: stop,
    }
}

/// An auth service on SQLite that issues real Convex JWTs.
pub struct Auth {
    pub core: Arc<edge_auth::AuthCore>,
    pub http: SocketAddr,
    _dir: edge_testkit::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Auth {
    pub async fn start() -> Auth {
        let dir = edge_testkit::TempDir::default();
        let mut config = edge_auth::Config::local(edge_keys::Secret::new(
            "devconvex-test-secret-0123456789abcdef",
        ));
        config.database_url = format!("sqlite://{}/auth.db", dir.path().display());
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        let app = edge_auth::Application::build(config)
            .await
            .expect("auth builds");
        let (core, http) = (app.core(), app.http_addr());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Auth {
            core,
            http,
            _dir: dir,
            _stop: stop,
        }
    }

    /// Signs up `email` and returns a JWT for the new session.
    pub async fn token_for(&self, email: &str) -> String {
        let client = edge_auth::service::Client::default();
        let info = self
            .core
            .sign_up(
                "Test User",
                email,
                "correct horse battery staple",
                None,
                "",
                &client,
            )
            .await
            .unwrap()
            .session()
            .expect("sign-up opens a session");
        self.core
            .issue_token(&info.cookie_value)
            .await
            .unwrap()
            .token
            .jwt
    }

    /// `DEVCONVEX_AUTH_CONFIG` pointing at this auth's JWKS URL.
    pub fn convex_auth_config(&self) -> String {
        serde_json::json!({"providers": [{
            "type": "customJwt",
            "issuer": "http://localhost:8080",
            "applicationID": "convex",
            "algorithm": "RS256",
            "jwks": format!("http://{}/api/auth/jwks", self.http),
        }]})
        .to_string()
    }
}
