//! The gateway's Better Auth routes end to end: real auth service, real Postgres, the real
//! better-auth and jose npm packages.

mod account;
mod auth_deadlines;
mod bad_input;
mod cache;
mod cors;
mod database_outage;
mod interop;
mod limits;
mod parity;
mod proxy;
mod revocation;
mod revocation_faults;
mod routes;
mod social;
mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use edge_keys::Secret;
use serde_json::Value;

pub const SECRET: &str = "gateway-test-secret-0123456789abcdef";
pub const PASSWORD: &str = "correct horse battery staple";

/// auth + gateway on one fresh Postgres database; both stop when dropped.
pub struct Stack {
    pub db: edge_testkit::TestDb,
    pub base: String,
    pub gateway: SocketAddr,
    pub auth_http: SocketAddr,
    pub auth_grpc: SocketAddr,
    pub auth: std::sync::Arc<edge_auth::AuthCore>,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

pub fn auth_config(db_url: &str) -> edge_auth::Config {
    let mut c = edge_auth::Config::local(Secret::new(SECRET));
    c.database_url = db_url.to_owned();
    c.grpc_addr = "127.0.0.1:0".parse().unwrap();
    c.http_addr = "127.0.0.1:0".parse().unwrap();
    c.poll_interval = Duration::from_millis(200);
    // Every test client is 127.0.0.1: rate limits are off unless a test turns them on
    // (`limits` tests use Better Auth's defaults).
    c.sign_in_limit.per_address = 100_000;
    c.sign_in_limit.per_account = 100_000;
    c.sign_in_limit.mail_per_address = 100_000;
    c.sign_in_limit.default_max = 100_000;
    c
}

fn stopper() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    (tx, async {
        let _ = rx.await;
    })
}

impl Stack {
    pub async fn start() -> Stack {
        let db = edge_testkit::test_database().await;
        Self::start_on(db, |_| {}).await
    }

    pub async fn start_on(
        db: edge_testkit::TestDb,
        tweak: impl FnOnce(&mut edge_auth::Config),
    ) -> Stack {
        Self::start_at(db, "127.0.0.1:0".parse().unwrap(), tweak).await
    }

    /// [`Stack::start_on`] with the gateway on `gateway_addr` (a site whose URL must be known
    /// before it starts: OAuth redirect URIs).
    pub async fn start_at(
        db: edge_testkit::TestDb,
        gateway_addr: SocketAddr,
        tweak: impl FnOnce(&mut edge_auth::Config),
    ) -> Stack {
        let mut config = auth_config(&db.url);
        tweak(&mut config);
        let auth = edge_auth::Application::build(config)
            .await
            .expect("auth builds");
        let (auth_http, auth_grpc, core) = (auth.http_addr(), auth.grpc_addr(), auth.core());
        let mut gateway_config = edge_gateway::Config::local();
        gateway_config.http_addr = gateway_addr;
        gateway_config.auth_grpc_url = format!("http://{}", auth.grpc_addr());
        gateway_config.workers = 1;
        // These tests drive the read routes from one address far past Better Auth's default
        // rule; `limits.rs` turns it on where it is the subject.
        gateway_config.read_rate_limit = None;
        let gateway = edge_gateway::Application::build(gateway_config)
            .await
            .expect("gateway builds");
        let addr = gateway.addr();
        let (stop_auth, auth_stopped) = stopper();
        let (stop_gateway, gateway_stopped) = stopper();
        tokio::spawn(auth.run_until(auth_stopped));
        tokio::spawn(gateway.run_until(gateway_stopped));
        Stack {
            db,
            base: format!("http://{addr}"),
            gateway: addr,
            auth_http,
            auth_grpc,
            auth: core,
            _stops: vec![stop_auth, stop_gateway],
        }
    }

    /// Another gateway on the same auth, with the token cache in Redis at `redis_url`.
    pub async fn extra_gateway(&mut self, redis_url: &str) -> String {
        self.gateway_with(|config| {
            if let Some(cache) = config.cache.as_mut() {
                cache.redis_url = Some(redis_url.to_owned());
            }
        })
        .await
    }

    /// Another gateway on the same auth, configured by `tweak`; returns its base URL.
    pub async fn gateway_with(&mut self, tweak: impl FnOnce(&mut edge_gateway::Config)) -> String {
        let mut config = edge_gateway::Config::local();
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.auth_grpc_url = format!("http://{}", self.auth_grpc);
        config.workers = 1;
        // These tests drive the read routes from one address far past Better Auth's default
        // rule; `limits.rs` turns it on where it is the subject.
        config.read_rate_limit = None;
        tweak(&mut config);
        let gateway = edge_gateway::Application::build(config)
            .await
            .expect("gateway builds");
        let base = format!("http://{}", gateway.addr());
        let (stop, stopped) = stopper();
        tokio::spawn(gateway.run_until(stopped));
        self._stops.push(stop);
        base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POSTs a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        http()
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// GETs with the session cookie, when given.
    pub async fn get(&self, path: &str, cookie: Option<&str>) -> reqwest::Response {
        let mut request = http().get(self.url(path));
        if let Some(c) = cookie {
            request = request.header("cookie", format!("better-auth.session_token={c}"));
        }
        request.send().await.unwrap()
    }

    /// Row counts of the tables a bad request must not touch.
    pub async fn counts(&self) -> (i64, i64, i64) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&self.db.url).await.unwrap();
        let mut out = [0i64; 3];
        for (i, table) in ["\"user\"", "\"session\"", "\"account\""]
            .iter()
            .enumerate()
        {
            let (n,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            out[i] = n;
        }
        (out[0], out[1], out[2])
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The session cookie value from a response's `Set-Cookie`.
pub fn cookie_of(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.strip_prefix("better-auth.session_token="))
        .map(|v| v.split(';').next().unwrap_or_default().to_owned())
}

pub async fn sign_up(stack: &Stack, email: &str) -> (Value, String) {
    let r = http()
        .post(stack.url("/api/auth/sign-up/email"))
        .json(&serde_json::json!({"name": "Grace Hopper", "email": email, "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = cookie_of(&r).expect("sign-up sets the session cookie");
    (r.json().await.unwrap(), cookie)
}
