//! Revocation against every writer, race and fault: sessions ended by the real better-auth,
//! by SQL and by our routes; user changes; hundreds of concurrent sign-outs seen by another
//! gateway; Redis partitioned while sessions end; token requests racing sign-outs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::{PASSWORD, SECRET, Stack, http, sign_up};

/// The longest any check below waits for a gateway to apply what it must.
const DEADLINE: Duration = Duration::from_secs(10);

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// The status of a token request on `base`, and the token's claims when there is one.
pub async fn token_on(base: &str, cookie: &str) -> (u16, Option<Value>) {
    let r = http()
        .get(format!("{base}/api/auth/convex/token"))
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status != 200 {
        return (status, None);
    }
    let body: Value = r.json().await.unwrap();
    (status, Some(claims(body["token"].as_str().unwrap())))
}

pub async fn sign_out(base: &str, cookie: &str) -> u16 {
    http()
        .post(format!("{base}/api/auth/sign-out"))
        .header("origin", base)
        .header("cookie", format!("better-auth.session_token={cookie}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits, within the deadline, until `base` refuses `cookie` a token.
pub async fn until_refused(base: &str, cookie: &str, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match token_on(base, cookie).await.0 {
            401 => return,
            200 => {}
            other => panic!("{what}: unexpected status {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {base} still serves a token for an ended session"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits, within the deadline, until the token's claims satisfy `check`.
async fn until_claims(base: &str, cookie: &str, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, claims) = token_on(base, cookie).await;
        assert_eq!(status, 200, "{what}");
        if check(claims.as_ref().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {base} still serves stale claims {claims:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `base` is ready (auth answers, the session log's backlog is read).
pub async fn wait_ready(base: &str) {
    let deadline = Instant::now() + DEADLINE;
    while http()
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One session as another writer made it: the cookie a browser sends and the raw token.
struct Session {
    cookie: String,
    token: String,
}

/// `n` sessions of `user_id`, inserted with SQL (as the Better Auth app would).
async fn insert_sessions(db_url: &str, user_id: &str, n: usize) -> Vec<Session> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    let secret = edge_keys::Secret::new(SECRET);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let token = edge_keys::SessionToken::generate();
        sqlx::query(r#"INSERT INTO "session" ("id", "expiresAt", "token", "createdAt", "updatedAt", "userId") VALUES ($1, now() + interval '7 days', $2, now(), now(), $3)"#)
            .bind(edge_keys::generate_id())
            .bind(token.as_str())
            .bind(user_id)
            .execute(&mut conn)
            .await
            .unwrap();
        out.push(Session {
            cookie: edge_keys::cookie::sign(&secret, &token),
            token: token.as_str().to_owned(),
        });
    }
    out
}

async fn sql(db_url: &str, statement: &str, bind: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
        .bind(bind)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Runs a command of the real better-auth on the stack's database.
async fn better_auth(stack: &Stack, command: &str, mut args: Value) {
    args["databaseUrl"] = json!(stack.db.url);
    args["secret"] = json!(SECRET);
    let out = edge_testkit::node("better-auth.mjs", &[command.into(), args.to_string()]).await;
    assert!(out.get("error").is_none(), "better-auth {command}: {out}");
}

/// Caches a token for every cookie on every gateway (twice, so the second is a hit).
async fn warm(bases: &[&str], cookies: &[&str]) {
    for base in bases {
        futures_util::stream::iter(cookies.iter().flat_map(|c| [*c, *c]))
            .for_each_concurrent(16, |cookie| async move {
                assert_eq!(token_on(base, cookie).await.0, 200, "warm-up");
            })
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ended_by_any_writer_get_no_token() {
    let stack = Stack::start().await;
    let base = stack.base.clone();
    wait_ready(&base).await;
    let (body, owner) = sign_up(&stack, "writers@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();
    let s = insert_sessions(&stack.db.url, &user_id, 5).await;
    let mut cookies: Vec<&str> = s.iter().map(|s| s.cookie.as_str()).collect();
    cookies.push(&owner);
    warm(&[&base], &cookies).await;

    // The Better Auth app ends one session.
    better_auth(
        &stack,
        "revoke-session",
        json!({"cookie": owner, "token": s[0].token}),
    )
    .await;
    until_refused(&base, &s[0].cookie, "better-auth revokeSession").await;
    // An admin deletes one; another's expiry is moved into the past.
    sql(
        &stack.db.url,
        r#"DELETE FROM "session" WHERE "token" = $1"#,
        &s[1].token,
    )
    .await;
    until_refused(&base, &s[1].cookie, "SQL delete").await;
    sql(
        &stack.db.url,
        r#"UPDATE "session" SET "expiresAt" = now() - interval '1 second' WHERE "token" = $1"#,
        &s[2].token,
    )
    .await;
    until_refused(&base, &s[2].cookie, "expiry moved into the past").await;
    // Better Auth revokes the other sessions, then changes the password revoking them again.
    better_auth(&stack, "revoke-other-sessions", json!({"cookie": owner})).await;
    until_refused(&base, &s[3].cookie, "better-auth revokeOtherSessions").await;
    let later = insert_sessions(&stack.db.url, &user_id, 1).await;
    warm(&[&base], &[&later[0].cookie]).await;
    better_auth(
        &stack,
        "change-password",
        json!({"cookie": owner, "currentPassword": PASSWORD, "newPassword": "a whole new password"}),
    )
    .await;
    until_refused(
        &base,
        &later[0].cookie,
        "better-auth changePassword with revokeOtherSessions",
    )
    .await;
    for session in &s {
        let r = stack
            .get("/api/auth/get-session", Some(&session.cookie))
            .await;
        assert_eq!(r.json::<Value>().await.unwrap(), Value::Null);
    }

    // Better Auth deletes a user.
    let (_, doomed) = sign_up(&stack, "deleted@example.com").await;
    warm(&[&base], &[&doomed]).await;
    better_auth(
        &stack,
        "delete-user",
        json!({"cookie": doomed, "password": PASSWORD}),
    )
    .await;
    until_refused(&base, &doomed, "better-auth deleteUser").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_change_reaches_the_next_token() {
    let stack = Stack::start().await;
    wait_ready(&stack.base).await;
    let (body, cookie) = sign_up(&stack, "claims@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();
    warm(&[&stack.base], &[&cookie]).await;
    let (_, first) = token_on(&stack.base, &cookie).await;
    assert_eq!(first.unwrap()["name"], "Grace Hopper");

    sql(
        &stack.db.url,
        r#"UPDATE "user" SET "name" = 'Ada Lovelace' WHERE "id" = $1"#,
        &user_id,
    )
    .await;
    until_claims(&stack.base, &cookie, "name changed by SQL", |c| {
        c["name"] == "Ada Lovelace"
    })
    .await;
    sql(
        &stack.db.url,
        r#"UPDATE "user" SET "emailVerified" = true, "email" = 'verified@example.com' WHERE "id" = $1"#,
        &user_id,
    )
    .await;
    until_claims(&stack.base, &cookie, "email verified by SQL", |c| {
        c["emailVerified"] == true && c["email"] == "verified@example.com"
    })
    .await;
    better_auth(
        &stack,
        "update-user",
        json!({"cookie": cookie, "name": "Barbara Liskov"}),
    )
    .await;
    until_claims(&stack.base, &cookie, "name changed by better-auth", |c| {
        c["name"] == "Barbara Liskov"
    })
    .await;
    // The session itself goes on.
    assert_eq!(token_on(&stack.base, &cookie).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundreds_of_concurrent_sign_outs_reach_another_gateway() {
    let mut stack = Stack::start().await;
    let base = stack.base.clone();
    let other = stack.gateway_with(|c| c.workers = 2).await;
    wait_ready(&base).await;
    wait_ready(&other).await;
    let (body, _) = sign_up(&stack, "many@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();
    let sessions = insert_sessions(&stack.db.url, &user_id, 300).await;
    let cookies: Vec<&str> = sessions.iter().map(|s| s.cookie.as_str()).collect();
    warm(&[&base, &other], &cookies).await;

    // 300 sign-outs, 16 at a time, through one gateway; each is applied there before it answers.
    futures_util::stream::iter(cookies.iter().map(|c| c.to_string()))
        .for_each_concurrent(16, |cookie| {
            let base = base.clone();
            async move {
                let task = tokio::spawn(async move {
                    assert_eq!(sign_out(&base, &cookie).await, 200);
                    assert_eq!(token_on(&base, &cookie).await.0, 401);
                });
                task.await.unwrap();
            }
        })
        .await;
    // Every one of them reaches the other gateway.
    futures_util::stream::iter(cookies.iter().copied())
        .for_each_concurrent(16, |cookie| {
            let other = other.clone();
            async move { until_refused(&other, cookie, "concurrent sign-out").await }
        })
        .await;
}

/// `EXISTS key` on Redis at `addr`, over a plain connection.
async fn redis_exists(addr: SocketAddr, key: &str) -> bool {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("EXISTS {key}\r\n").as_bytes())
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).await.unwrap();
    line.trim() != ":0"
}

fn redis_addr() -> SocketAddr {
    let url = edge_testkit::redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split(['/', '?'])
        .next()
        .unwrap()
        .to_owned();
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .unwrap()
        .next()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_partition_never_brings_a_revoked_token_back() {
    let redis = redis_addr();
    let relay = edge_testkit::Relay::start(redis).await;
    let via = format!("redis://{}", relay.addr());
    let mut stack = Stack::start().await;
    let g1 = stack.extra_gateway(&via).await;
    let g2 = stack.extra_gateway(&via).await;
    wait_ready(&g1).await;
    wait_ready(&g2).await;
    let (body, _) = sign_up(&stack, "partition@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();
    let s = insert_sessions(&stack.db.url, &user_id, 10).await;
    let cookies: Vec<&str> = s.iter().map(|s| s.cookie.as_str()).collect();
    // Cached by the first gateway in Redis, read from there by the second.
    warm(&[&g1, &g2], &cookies).await;
    let keys: Vec<String> = cookies
        .iter()
        .map(|c| {
            edge_keys::CacheKey::for_cookie(c)
                .unwrap()
                .as_str()
                .to_owned()
        })
        .collect();
    for key in &keys {
        assert!(redis_exists(redis, key).await, "cached in Redis");
    }

    // Redis stops answering (traffic swallowed, connections open) while sessions end: five
    // signed out through a gateway (its Redis delete is lost), three deleted by SQL.
    relay.partition();
    for session in &s[..5] {
        assert_eq!(sign_out(&g1, &session.cookie).await, 200);
    }
    for session in &s[5..8] {
        sql(
            &stack.db.url,
            r#"DELETE FROM "session" WHERE "token" = $1"#,
            &session.token,
        )
        .await;
    }
    for (i, cookie) in cookies[..8].iter().enumerate() {
        until_refused(&g1, cookie, &format!("partitioned, session {i} on g1")).await;
        until_refused(&g2, cookie, &format!("partitioned, session {i} on g2")).await;
    }
    // Live sessions are still served meanwhile.
    for cookie in &cookies[8..] {
        assert_eq!(token_on(&g1, cookie).await.0, 200);
        assert_eq!(token_on(&g2, cookie).await.0, 200);
    }

    // Healed: the lost deletes are retried until Redis confirms them.
    relay.heal();
    let deadline = Instant::now() + DEADLINE;
    for key in &keys[..5] {
        while redis_exists(redis, key).await {
            assert!(
                Instant::now() < deadline,
                "a signed-out session's entry is still in Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The sessions deleted by SQL never had their key named: their entries are still in
    // Redis, and a gateway that never saw them cached takes none of them back.
    for key in &keys[5..8] {
        assert!(redis_exists(redis, key).await, "still in Redis");
    }
    let g3 = stack.extra_gateway(&via).await;
    wait_ready(&g3).await;
    for (i, cookie) in cookies[..8].iter().enumerate() {
        assert_eq!(token_on(&g3, cookie).await.0, 401, "healed, session {i}");
    }
    // Refusing them, it deleted them.
    for key in &keys[5..8] {
        while redis_exists(redis, key).await {
            assert!(
                Instant::now() < deadline,
                "a refused entry is still in Redis"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for (i, cookie) in cookies[..8].iter().enumerate() {
        for gateway in [&g1, &g2] {
            assert_eq!(
                token_on(gateway, cookie).await.0,
                401,
                "healed, session {i} on {gateway}"
            );
        }
    }
    // Live sessions come from Redis on the new gateway.
    for cookie in &cookies[8..] {
        assert_eq!(token_on(&g3, cookie).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_issued_while_its_session_ends_is_never_served() {
    let mut stack = Stack::start().await;
    let base = stack.base.clone();
    let other = stack.gateway_with(|c| c.workers = 2).await;
    wait_ready(&base).await;
    wait_ready(&other).await;
    let (body, _) = sign_up(&stack, "race@example.com").await;
    let user_id = body["user"]["id"].as_str().unwrap().to_owned();
    let sessions = insert_sessions(&stack.db.url, &user_id, 80).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, session) in sessions.iter().enumerate() {
        assert!(Instant::now() < deadline, "the race loop ran out of time");
        let cookie = session.cookie.clone();
        // Token requests on both gateways race the sign-out.
        let racers: Vec<_> = (0..6)
            .map(|n| {
                let gateway = if n % 2 == 0 {
                    base.clone()
                } else {
                    other.clone()
                };
                let cookie = cookie.clone();
                tokio::spawn(async move { token_on(&gateway, &cookie).await.0 })
            })
            .collect();
        let out = {
            let (base, cookie) = (base.clone(), cookie.clone());
            tokio::spawn(async move { sign_out(&base, &cookie).await })
        };
        assert_eq!(out.await.unwrap(), 200);
        for racer in racers {
            let status = racer.await.unwrap();
            assert!(status == 200 || status == 401, "race {i}: {status}");
        }
        // Once the sign-out has answered, its gateway never serves the session again; the
        // other stops within the deadline.
        assert_eq!(token_on(&base, &cookie).await.0, 401, "race {i}");
        until_refused(&other, &cookie, &format!("race {i}")).await;
    }
}
