//! Better Auth 1.7's request checks and answers, side by side: the same requests go to the real
//! better-auth package (its own HTTP handler, on its own database) and to the gateway, and the
//! answers must agree in status, error code and shape.

use serde_json::{Value, json};

use crate::{PASSWORD, SECRET, Stack, http};

/// One request; `$SELF` (the site's origin), `$VALUE` (the newest session cookie value) and
/// `$DONT` (the newest `dont_remember` cookie value) and `$TOKEN` (the session token in
/// `$VALUE`) are filled in on each side.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Option<String>,
}

fn post_json(path: &'static str, body: Value) -> Req {
    Req {
        method: "POST",
        path,
        headers: vec![("content-type", "application/json")],
        body: Some(body.to_string()),
    }
}

impl Req {
    fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.push((name, value));
        self
    }
}

#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    location: Option<String>,
    set_cookie: Vec<String>,
}

impl Answer {
    /// The names of the cookies set, with whether each has a `Max-Age`.
    fn cookies(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = self
            .set_cookie
            .iter()
            .map(|c| {
                let name = c.split('=').next().unwrap_or_default().to_owned();
                (name, c.to_ascii_lowercase().contains("max-age="))
            })
            .collect();
        out.sort();
        out
    }
}

/// The session token inside a cookie value (`urlencode(token + "." + signature)`).
fn token_of(value: &str) -> String {
    value
        .split(['.', '%'])
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn parse_body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::String(text.to_owned()))
}

/// The requests through Better Auth's own handler at `base_url`, on a fresh database.
async fn better_auth(reqs: &[Req], base_url: &str, trusted: &[&str]) -> Vec<Answer> {
    better_auth_with(reqs, base_url, trusted, json!({})).await
}

/// As [`better_auth`], with more of the script's options (`freshAge`).
async fn better_auth_with(
    reqs: &[Req],
    base_url: &str,
    trusted: &[&str],
    options: Value,
) -> Vec<Answer> {
    let db = edge_testkit::test_database().await;
    let requests: Vec<Value> = reqs
        .iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect();
            json!({"method": r.method, "path": r.path, "headers": headers, "body": r.body})
        })
        .collect();
    let mut args = json!({
        "databaseUrl": db.url, "secret": SECRET, "migrate": true, "baseURL": base_url,
        "trustedOrigins": trusted, "requests": requests,
    });
    for (k, v) in options.as_object().expect("options are an object") {
        args[k] = v.clone();
    }
    let out = edge_testkit::node("better-auth.mjs", &["request".into(), args.to_string()]).await;
    let answers = out.as_array().unwrap_or_else(|| panic!("{out}"));
    answers
        .iter()
        .map(|a| Answer {
            status: a["status"].as_u64().unwrap() as u16,
            body: parse_body(a["body"].as_str().unwrap_or_default()),
            location: a["headers"]["location"].as_str().map(str::to_owned),
            set_cookie: a["setCookie"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_str().unwrap().to_owned())
                .collect(),
        })
        .collect()
}

/// The same requests through the gateway at `base` (`extra` headers on every request); `SQL`
/// steps run on `db_url`.
async fn gateway(db_url: &str, base: &str, reqs: &[Req], extra: &[(&str, &str)]) -> Vec<Answer> {
    let mut value = String::new();
    let mut dont = String::new();
    let mut answers = Vec::new();
    for r in reqs {
        if r.method == "SQL" {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(db_url).await.unwrap();
            let statement = r.body.clone().expect("an SQL step has a statement");
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut conn)
                .await
                .unwrap();
            answers.push(Answer {
                status: 0,
                body: Value::String(String::new()),
                location: None,
                set_cookie: Vec::new(),
            });
            continue;
        }
        let fill = |s: &str| {
            s.replace("$SELF", base)
                .replace("$VALUE", &value)
                .replace("$DONT", &dont)
                .replace("$TOKEN", &token_of(&value))
        };
        let mut request = http().request(r.method.parse().unwrap(), format!("{base}{}", r.path));
        for (k, v) in r.headers.iter().chain(extra) {
            request = request.header(*k, fill(v));
        }
        if let Some(body) = &r.body {
            request = request.body(fill(body));
        }
        let response = request.send().await.unwrap();
        let set_cookie: Vec<String> = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        for c in &set_cookie {
            let c = c.strip_prefix("__Secure-").unwrap_or(c);
            if let Some(v) = c.strip_prefix("better-auth.session_token=") {
                let v = v.split(';').next().unwrap_or_default();
                if !v.is_empty() {
                    value = v.to_owned();
                }
            }
            if let Some(v) = c.strip_prefix("better-auth.dont_remember=") {
                let v = v.split(';').next().unwrap_or_default();
                if !v.is_empty() {
                    dont = v.to_owned();
                }
            }
        }
        let location = response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status().as_u16();
        let body = parse_body(&response.text().await.unwrap());
        answers.push(Answer {
            status,
            body,
            location,
            set_cookie,
        });
    }
    answers
}

/// The members of an object, recursively one level (`user`, `session`), for shape checks.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let inner = match v {
                        Value::Object(_) => shape(v),
                        Value::Null => json!("null"),
                        _ => json!("value"),
                    };
                    (k.clone(), inner)
                })
                .collect(),
        ),
        Value::Null => Value::Null,
        _ => json!("value"),
    }
}

/// Both answers agree: status, error code, the body's shape, and the fixed values named.
fn agree(ours: &Answer, theirs: &Answer, what: &str) {
    assert_eq!(
        ours.status, theirs.status,
        "{what}: status; ours {ours:?}, Better Auth {theirs:?}"
    );
    assert_eq!(
        ours.body.get("code"),
        theirs.body.get("code"),
        "{what}: code; ours {ours:?}, Better Auth {theirs:?}"
    );
    if ours.status < 400 {
        assert_eq!(
            shape(&ours.body),
            shape(&theirs.body),
            "{what}: shape; ours {ours:?}, Better Auth {theirs:?}"
        );
        for fixed in ["redirect", "url", "success"] {
            assert_eq!(
                ours.body.get(fixed),
                theirs.body.get(fixed),
                "{what}: {fixed}"
            );
        }
        if let (Some(a), Some(b)) = (ours.body.get("user"), theirs.body.get("user")) {
            assert_eq!(a["image"], b["image"], "{what}: user.image");
        }
        assert_eq!(ours.location, theirs.location, "{what}: Location");
        assert_eq!(ours.cookies(), theirs.cookies(), "{what}: cookies set");
    } else {
        assert_eq!(
            ours.body.get("message"),
            theirs.body.get("message"),
            "{what}: message; ours {ours:?}, Better Auth {theirs:?}"
        );
    }
}

fn side_by_side(ours: &[Answer], theirs: &[Answer], reqs: &[Req]) {
    for ((o, t), r) in ours.iter().zip(theirs).zip(reqs) {
        agree(o, t, &format!("{} {} {:?}", r.method, r.path, r.body));
    }
}

fn sign_up_body(email: &str) -> Value {
    json!({"name": "Ada", "email": email, "password": PASSWORD})
}

#[tokio::test]
async fn origin_and_csrf_checks_match_better_auth() {
    let reqs = vec![
        post_json("/api/auth/sign-up/email", sign_up_body("o@example.com")),
        // A cookie-bearing POST with no Origin, a foreign Referer, a foreign Origin.
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", "better-auth.session_token=$VALUE"),
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("referer", "https://evil.example/page"),
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("origin", "https://evil.example"),
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", "a=1")
            .header("origin", "null"),
        // First logins: a foreign Origin, a cross-site navigation, a trusted origin.
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "o@example.com", "password": PASSWORD}),
        )
        .header("origin", "https://evil.example"),
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "o@example.com", "password": PASSWORD}),
        )
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "navigate"),
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "o@example.com", "password": PASSWORD}),
        )
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "cors")
        .header("origin", "http://trusted.example"),
        // The site's own Referer is enough.
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("referer", "$SELF/account"),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &["http://trusted.example"]).await;
    let mut stack = Stack::start().await;
    let base = stack
        .gateway_with(|c| c.trusted_origins = vec!["http://trusted.example".into()])
        .await;
    let ours = gateway(&stack.db.url, &base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    assert_eq!(ours[1].body["code"], "MISSING_OR_NULL_ORIGIN");
    assert_eq!(ours[2].body["code"], "INVALID_ORIGIN");
    assert_eq!(ours[6].body["code"], "CROSS_SITE_NAVIGATION_LOGIN_BLOCKED");
    assert_eq!(ours[8].status, 200);
}

/// Addresses zod's `z.email()` refuses (Better Auth runs it on sign-up's body and in
/// sign-in): the same code from both, and nothing written here. They used to be accepted here
/// and then refused by the mailer, leaving a user no mail could ever verify.
#[tokio::test]
async fn malformed_addresses_are_refused_as_better_auth_refuses_them() {
    const BAD: [&str; 12] = [
        ".q@example.com",
        "q..r@example.com",
        "q.@example.com",
        "ü@example.com",
        "a@b.c",
        "a@[127.0.0.1]",
        " a@example.com",
        "a@exa_mple.com",
        "a@-example.com",
        "a@example.c0m",
        "\"a\"@example.com",
        "not-an-email",
    ];
    let mut reqs = Vec::new();
    for email in BAD {
        reqs.push(post_json("/api/auth/sign-up/email", sign_up_body(email)));
        reqs.push(post_json(
            "/api/auth/sign-in/email",
            json!({"email": email, "password": PASSWORD}),
        ));
    }
    // A well-formed address with every allowed character still signs up.
    reqs.push(post_json(
        "/api/auth/sign-up/email",
        sign_up_body("o'neil+x_y-z@mail-1.example.co"),
    ));
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let stack = Stack::start().await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    for (i, answer) in ours[..2 * BAD.len()].iter().enumerate() {
        let code = if i % 2 == 0 {
            "VALIDATION_ERROR"
        } else {
            "INVALID_EMAIL"
        };
        assert_eq!(answer.status, 400, "{:?}: {answer:?}", BAD[i / 2]);
        assert_eq!(answer.body["code"], code, "{:?}", BAD[i / 2]);
    }
    assert_eq!(ours[2 * BAD.len()].status, 200);
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&stack.db.url).await.unwrap();
    let (users,): (i64,) = sqlx::query_as(r#"SELECT COUNT(*) FROM "user""#)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(users, 1, "only the well-formed address made a user");
}

#[tokio::test]
async fn over_https_only_the_secure_cookie_name_is_read() {
    let reqs = vec![
        post_json("/api/auth/sign-up/email", sign_up_body("s@example.com")),
        Req {
            method: "GET",
            path: "/api/auth/get-session",
            headers: vec![("cookie", "better-auth.session_token=$VALUE")],
            body: None,
        },
        Req {
            method: "GET",
            path: "/api/auth/get-session",
            headers: vec![("cookie", "__Secure-better-auth.session_token=$VALUE")],
            body: None,
        },
    ];
    let theirs = better_auth(&reqs, "https://localhost:8080", &[]).await;
    let mut stack = Stack::start().await;
    // The site is https behind a trusted proxy that says so.
    let base = stack
        .gateway_with(|c| c.trusted_proxies = "127.0.0.0/8".parse().unwrap())
        .await;
    let ours = gateway(
        &stack.db.url,
        &base,
        &reqs,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    side_by_side(&ours, &theirs, &reqs);
    assert!(ours[0].set_cookie[0].starts_with("__Secure-better-auth.session_token="));
    assert_eq!(
        ours[1].body,
        Value::Null,
        "the plain name is not read over https"
    );
    assert!(ours[2].body["session"].is_object());
    // Without a trusted proxy the header is the client's word: plain http.
    let plain = [post_json(
        "/api/auth/sign-up/email",
        sign_up_body("p@example.com"),
    )];
    let ours = gateway(
        &stack.db.url,
        &stack.base,
        &plain,
        &[("x-forwarded-proto", "https")],
    )
    .await;
    assert!(ours[0].set_cookie[0].starts_with("better-auth.session_token="));
}

#[tokio::test]
async fn bodies_and_answers_match_better_auth() {
    let form = |path: &'static str, body: &str| Req {
        method: "POST",
        path,
        headers: vec![("content-type", "application/x-www-form-urlencoded")],
        body: Some(body.to_owned()),
    };
    let reqs = vec![
        // A NUL in the name: a clear 4xx.
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "a\u{0}b", "email": "nul@example.com", "password": PASSWORD}),
        ),
        // Other control characters are a name like any other.
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "a\u{1}\tb", "email": "ctl@example.com", "password": PASSWORD}),
        ),
        // Lengths in UTF-16 units: four astral characters are eight.
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "E", "email": "emoji@example.com", "password": "😀😀😀😀"}),
        ),
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "E", "email": "long@example.com", "password": "😀".repeat(65)}),
        ),
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "E", "email": "empty@example.com", "password": ""}),
        ),
        // No image: `image: null` in the user object; `image: null` in the body is refused.
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "I", "email": "img@example.com", "password": PASSWORD}),
        ),
        post_json(
            "/api/auth/sign-up/email",
            json!({"name": "I", "email": "img2@example.com", "password": PASSWORD, "image": null}),
        ),
        post_json(
            "/api/auth/sign-up/email",
            json!({"email": "noname@example.com", "password": PASSWORD}),
        ),
        form(
            "/api/auth/sign-up/email",
            "name=Form&email=form%40example.com&password=correct+horse+battery+staple",
        ),
        form(
            "/api/auth/sign-in/email",
            "email=form%40example.com&password=correct+horse+battery+staple",
        ),
        // callbackURL: `{redirect: true, url}` and `Location`; a foreign one is refused.
        form(
            "/api/auth/sign-in/email",
            "email=form%40example.com&password=correct+horse+battery+staple&callbackURL=%2Fdashboard",
        ),
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "form@example.com", "password": PASSWORD, "callbackURL": "https://evil.example/x"}),
        ),
        // Empty and wrong passwords on sign-in.
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "form@example.com", "password": ""}),
        ),
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "form@example.com", "password": "wrong password"}),
        ),
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "form@example.com", "password": "😀".repeat(65)}),
        ),
        // Sign-out without a cookie.
        post_json("/api/auth/sign-out", json!({})),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let stack = Stack::start().await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    assert_eq!(ours[2].status, 200, "eight UTF-16 units are long enough");
    assert_eq!(ours[5].body["user"]["image"], Value::Null);
    assert_eq!(ours[6].body["code"], "VALIDATION_ERROR");
    assert_eq!(ours[10].body["url"], "/dashboard");
    assert_eq!(ours[13].body["code"], "INVALID_EMAIL_OR_PASSWORD");
    assert_eq!(ours[15].body, json!({"success": true}));
}

/// Bodies that are not what a route takes, answered as better-call and the route's schema
/// answer them: JSON that does not parse (400 `BAD_REQUEST`, `Invalid JSON in request body`,
/// an empty body too), JSON that is not an object (400 `VALIDATION_ERROR`, `[body] Invalid
/// input: expected object, received array`), and a media type the route does not take (415
/// `UNSUPPORTED_MEDIA_TYPE` naming the type as sent and the route's list: form-encoded only on
/// sign-in and sign-up, no `+json` types). Messages are compared as well as codes.
#[tokio::test]
async fn malformed_bodies_and_media_types_match_better_auth() {
    let raw = |path: &'static str, content_type: &'static str, body: &str| Req {
        method: "POST",
        path,
        headers: vec![("content-type", content_type)],
        body: Some(body.to_owned()),
    };
    let sign_in = "/api/auth/sign-in/email";
    let credentials = r#"{"email":"nobody@example.com","password":"wrong password"}"#;
    let reqs = vec![
        raw(sign_in, "application/json", "{not json"),
        raw("/api/auth/sign-up/email", "application/json", ""),
        raw(
            sign_in,
            "application/json",
            r#"{"email":"a@b.co"} trailing"#,
        ),
        raw(sign_in, "application/json", "[1,2]"),
        raw(sign_in, "application/json", r#""a string""#),
        raw(sign_in, "application/json", "null"),
        raw(sign_in, "application/json", "5"),
        raw("/api/auth/sign-up/email", "application/json", "true"),
        raw(sign_in, "text/plain", credentials),
        raw(sign_in, "Text/Plain; charset=utf-8", credentials),
        raw(sign_in, "application/vnd.api+json", credentials),
        raw(sign_in, "multipart/form-data; boundary=x", "--x--"),
        // The media type's case and parameters do not matter: a wrong password, 401.
        raw(sign_in, "APPLICATION/JSON; charset=utf-8", credentials),
        // Other routes take JSON only.
        raw(
            "/api/auth/request-password-reset",
            "application/x-www-form-urlencoded",
            "email=a%40b.co",
        ),
        raw("/api/auth/update-user", "text/plain", "name=x"),
        // zod names the route's schema: a record here, an object and a record on sign-up.
        raw("/api/auth/update-user", "application/json", "[1]"),
        raw("/api/auth/reset-password", "application/json", "{bad"),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let stack = Stack::start().await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    assert_eq!(
        ours[0].body,
        json!({"code": "BAD_REQUEST", "message": "Invalid JSON in request body"})
    );
    assert_eq!(
        ours[3].body["message"],
        "[body] Invalid input: expected object, received array"
    );
    assert_eq!(ours[8].status, 415);
    assert_eq!(
        ours[8].body["message"],
        "Content-Type \"text/plain\" is not allowed. Allowed types: \
         application/x-www-form-urlencoded, application/json"
    );
    assert_eq!(ours[12].status, 401);
    assert_eq!(
        ours[13].body["message"],
        "Content-Type \"application/x-www-form-urlencoded\" is not allowed. Allowed types: \
         application/json"
    );
    assert_eq!(stack.counts().await.0, 0, "nothing was written");
}

/// The session cookie alone, as most requests send it.
const SESSION: &str = "better-auth.session_token=$VALUE";

fn get(path: &'static str, cookie: &'static str) -> Req {
    Req {
        method: "GET",
        path,
        headers: vec![("cookie", cookie)],
        body: None,
    }
}

/// A get-session answer's `expiresAt` minus `field` (`createdAt`, `updatedAt`), in seconds.
fn lifetime(answer: &Answer, field: &str) -> i64 {
    let at = |name: &str| {
        let s = answer.body["session"][name]
            .as_str()
            .unwrap_or_else(|| panic!("no session.{name} in {answer:?}"));
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_millis()
    };
    (at("expiresAt") - at(field) + 500).div_euclid(1000)
}

/// A sign-up with `rememberMe: false` (a browser-session cookie beside `dont_remember`).
fn sign_up_not_remembered(email: &str) -> Req {
    post_json(
        "/api/auth/sign-up/email",
        json!({"name": "R", "email": email, "password": PASSWORD, "rememberMe": false}),
    )
}

#[tokio::test]
async fn remember_me_false_matches_better_auth() {
    const BOTH: &str = "better-auth.session_token=$VALUE; better-auth.dont_remember=$DONT";
    const FORGED: &str = "better-auth.session_token=$VALUE; \
        better-auth.dont_remember=true.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA%3D";
    let sign_in = |remember: Value| {
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "r@example.com", "password": PASSWORD, "rememberMe": remember}),
        )
    };
    let reqs = vec![
        // 0: a browser-session cookie and the signed `dont_remember` beside it.
        sign_up_not_remembered("r@example.com"),
        // 1-3: a day-long session that neither get-session nor a token refreshes.
        get("/api/auth/get-session", BOTH),
        get("/api/auth/token", BOTH),
        get("/api/auth/get-session", BOTH),
        // 4: without the `dont_remember` cookie it is an ordinary session: refreshed.
        get("/api/auth/get-session", "better-auth.session_token=$VALUE"),
        // 5-6: the same for sign-in; a forged `dont_remember` counts for nothing.
        sign_in(json!(false)),
        get("/api/auth/get-session", FORGED),
        // 7: a remembered sign-in in that browser expires `dont_remember`.
        sign_in(json!(true))
            .header("cookie", "better-auth.dont_remember=$DONT")
            .header("origin", "$SELF"),
        // 8: not a boolean.
        sign_in(json!("no")),
        // 9: sign-out clears both.
        post_json("/api/auth/sign-out", json!({}))
            .header("cookie", BOTH)
            .header("origin", "$SELF"),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let stack = Stack::start().await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    let day = 24 * 3600;
    for answers in [&ours, &theirs] {
        let no_max_age = vec![
            ("better-auth.dont_remember".to_owned(), false),
            ("better-auth.session_token".to_owned(), false),
        ];
        assert_eq!(answers[0].cookies(), no_max_age);
        assert_eq!(answers[5].cookies(), no_max_age);
        assert!(answers[0].set_cookie[1].starts_with("better-auth.dont_remember=true."));
        for i in [1, 3] {
            assert_eq!(
                lifetime(&answers[i], "createdAt"),
                day,
                "{i}: {:?}",
                answers[i]
            );
            assert!(answers[i].set_cookie.is_empty(), "{i}: refreshed");
        }
        assert_eq!(answers[2].status, 200);
        assert_eq!(lifetime(&answers[4], "updatedAt"), 7 * day);
        assert_eq!(lifetime(&answers[6], "updatedAt"), 7 * day);
        assert_eq!(
            answers[7].cookies(),
            vec![
                ("better-auth.dont_remember".to_owned(), true),
                ("better-auth.session_token".to_owned(), true),
            ]
        );
        assert!(
            answers[7]
                .set_cookie
                .iter()
                .any(|c| c.starts_with("better-auth.dont_remember=;"))
        );
        assert_eq!(answers[8].status, 400);
        assert_eq!(answers[9].status, 200);
    }
}

/// The session routes behind Better Auth's `sessionMiddleware` read the session as
/// `getSession` does: a `rememberMe: false` session (due for a refresh from its first minute,
/// as it lasts a day) is never extended by them, and `change-password` with
/// `revokeOtherSessions` gives its new session a browser-session cookie again.
#[tokio::test]
async fn account_routes_keep_a_browser_session_as_better_auth_does() {
    const BOTH: &str = "better-auth.session_token=$VALUE; better-auth.dont_remember=$DONT";
    let with_both = |req: Req| req.header("cookie", BOTH).header("origin", "$SELF");
    let reqs = vec![
        // 0: a browser-session sign-up.
        sign_up_not_remembered("b@example.com"),
        // 1-3: session routes that read the session, then get-session: still a day-long one.
        get("/api/auth/list-sessions", BOTH),
        get("/api/auth/list-accounts", BOTH),
        with_both(post_json("/api/auth/update-user", json!({"name": "B2"}))),
        get("/api/auth/get-session", BOTH),
        // 5: a new password that ends every other session opens one for this browser.
        with_both(post_json(
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD, "newPassword": "another long password", "revokeOtherSessions": true}),
        )),
        get("/api/auth/get-session", BOTH),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let stack = Stack::start().await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    let day = 24 * 3600;
    for answers in [&ours, &theirs] {
        for (i, answer) in answers.iter().enumerate().take(4).skip(1) {
            assert_eq!(answer.status, 200, "{i}: {answer:?}");
        }
        assert_eq!(
            answers[1].body[0]["expiresAt"],
            answers[4].body["session"]["expiresAt"]
        );
        assert_eq!(lifetime(&answers[4], "createdAt"), day, "{:?}", answers[4]);
        assert_eq!(
            answers[5].cookies(),
            vec![
                ("better-auth.dont_remember".to_owned(), false),
                ("better-auth.session_token".to_owned(), false),
            ],
            "{:?}",
            answers[5]
        );
        assert_eq!(answers[6].status, 200, "{:?}", answers[6]);
        assert!(answers[6].set_cookie.is_empty(), "{:?}", answers[6]);
    }
}

/// A step that runs `statement` on each side's database between requests.
fn sql(statement: &str) -> Req {
    Req {
        method: "SQL",
        path: "",
        headers: Vec::new(),
        body: Some(statement.to_owned()),
    }
}

/// `freshAge` (`AUTH_FRESH_AGE_SECONDS`): a session older than it may not list sessions
/// (403 `SESSION_NOT_FRESH`) nor delete its user without the password (400
/// `SESSION_EXPIRED`); the password still does, and the session itself goes on.
#[tokio::test]
async fn fresh_age_checks_match_better_auth() {
    const FRESH_AGE: u64 = 60;
    let cookie_post = |path: &'static str, body: Value| {
        post_json(path, body)
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("origin", "$SELF")
    };
    // Sessions made older than freshAge, or just younger.
    let age = |seconds: u64| {
        sql(&format!(
            r#"UPDATE "session" SET "createdAt" = now() - interval '{seconds} seconds'"#
        ))
    };
    let reqs = vec![
        post_json("/api/auth/sign-up/email", sign_up_body("f@example.com")),
        get("/api/auth/list-sessions", SESSION),
        age(FRESH_AGE - 20),
        get("/api/auth/list-sessions", SESSION),
        age(FRESH_AGE + 1),
        get("/api/auth/list-sessions", SESSION),
        cookie_post("/api/auth/delete-user", json!({})),
        cookie_post(
            "/api/auth/delete-user",
            json!({"password": "not the password"}),
        ),
        get("/api/auth/get-session", SESSION),
        // A new sign-in is fresh again.
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "f@example.com", "password": PASSWORD}),
        ),
        get("/api/auth/list-sessions", SESSION),
        // With the password, a session that is not fresh deletes its user.
        age(FRESH_AGE * 2),
        cookie_post("/api/auth/delete-user", json!({"password": PASSWORD})),
        // (Not get-session: for a cookie whose session is gone, Better Auth's also clears the
        // cookies, which the gateway does not yet do.)
        get("/api/auth/list-sessions", SESSION),
    ];
    let theirs = better_auth_with(
        &reqs,
        "http://localhost:8080",
        &[],
        json!({"freshAge": FRESH_AGE}),
    )
    .await;
    let db = edge_testkit::test_database().await;
    let stack = Stack::start_on(db, |c| {
        c.account.fresh_age = std::time::Duration::from_secs(FRESH_AGE);
        c.account.delete_user_enabled = true;
    })
    .await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    assert_eq!(ours[1].status, 200);
    assert_eq!(ours[3].status, 200, "younger than freshAge");
    assert_eq!(
        (ours[5].status, &ours[5].body["code"]),
        (403, &json!("SESSION_NOT_FRESH"))
    );
    assert_eq!(
        (ours[6].status, &ours[6].body["code"]),
        (400, &json!("SESSION_EXPIRED"))
    );
    assert_eq!(ours[7].body["code"], "INVALID_PASSWORD");
    assert!(ours[8].body["session"].is_object(), "{:?}", ours[8]);
    assert_eq!(ours[10].body.as_array().map(Vec::len), Some(2));
    assert_eq!(ours[12].body["success"], true);
    assert_eq!(ours[13].status, 401, "the user and its sessions are gone");
}

/// Bad input on the account, session, reset and verification routes: the same status, code
/// and message as Better Auth 1.7 (its own handler, with a mail sender and `deleteUser` on).
#[tokio::test]
async fn bad_input_on_the_account_routes_matches_better_auth() {
    let with_cookie = |path: &'static str, body: Value| {
        post_json(path, body)
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("origin", "$SELF")
    };
    let bare = |path: &'static str| Req {
        method: "GET",
        path,
        headers: Vec::new(),
        body: None,
    };
    let reqs = vec![
        post_json("/api/auth/sign-up/email", sign_up_body("bad@example.com")),
        with_cookie("/api/auth/revoke-session", json!({})),
        with_cookie("/api/auth/revoke-session", json!({"token": 5})),
        with_cookie("/api/auth/update-user", json!({})),
        // (`{"name": 1}` is refused here with VALIDATION_ERROR; Better Auth stores "1".)
        with_cookie("/api/auth/update-user", json!({"email": "n@example.com"})),
        with_cookie(
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD}),
        ),
        with_cookie(
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD, "newPassword": "short"}),
        ),
        with_cookie(
            "/api/auth/change-password",
            json!({"currentPassword": "wrong one!", "newPassword": "long enough 1"}),
        ),
        with_cookie(
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD, "newPassword": "long enough 1", "revokeOtherSessions": "yes"}),
        ),
        with_cookie(
            "/api/auth/change-password",
            json!({"currentPassword": PASSWORD, "newPassword": "long enough 1", "revokeOtherSessions": null}),
        ),
        with_cookie(
            "/api/auth/change-email",
            json!({"newEmail": "n@example.com"}),
        ),
        with_cookie("/api/auth/delete-user", json!({"password": "wrong one!"})),
        with_cookie("/api/auth/delete-user", json!({"password": 5})),
        post_json(
            "/api/auth/request-password-reset",
            json!({"email": "not-an-email"}),
        ),
        post_json(
            "/api/auth/request-password-reset",
            json!({"email": "bad@example.com", "redirectTo": "https://evil.example/x"}),
        ),
        post_json("/api/auth/request-password-reset", json!({})),
        post_json(
            "/api/auth/reset-password",
            json!({"newPassword": "long enough 1"}),
        ),
        post_json(
            "/api/auth/reset-password",
            json!({"newPassword": "long enough 1", "token": "nope"}),
        ),
        post_json("/api/auth/reset-password", json!({"token": "nope"})),
        with_cookie(
            "/api/auth/send-verification-email",
            json!({"email": "other@example.com"}),
        ),
        with_cookie("/api/auth/send-verification-email", json!({})),
        with_cookie(
            "/api/auth/send-verification-email",
            json!({"email": "bad@example.com", "callbackURL": "https://evil.example"}),
        ),
        bare("/api/auth/verify-email"),
        bare("/api/auth/verify-email?token=garbage"),
        bare("/api/auth/verify-email?token=garbage&callbackURL=%2Fdone"),
        // (A refused reset link redirects to `callbackURL?error=INVALID_TOKEN`: Better Auth
        // makes it absolute on its baseURL, the gateway leaves it relative; account.rs checks it.)
        bare("/api/auth/reset-password/abc?callbackURL=https%3A%2F%2Fevil.example"),
        bare("/api/auth/list-sessions"),
        bare("/api/auth/list-accounts"),
        post_json("/api/auth/revoke-sessions", json!({})).header("origin", "$SELF"),
        post_json("/api/auth/revoke-other-sessions", json!({})).header("origin", "$SELF"),
        // The session is untouched by all of it.
        get("/api/auth/get-session", SESSION),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let smtp = crate::account::Smtp::start().await;
    let db = edge_testkit::test_database().await;
    let url = smtp.url();
    let stack = Stack::start_on(db, move |c| {
        c.mail.mode = edge_auth::mail::MailMode::Smtp(url.parse().unwrap());
        c.account.delete_user_enabled = true;
    })
    .await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    for (i, answer) in ours.iter().enumerate().skip(1).take(reqs.len() - 2) {
        assert!(
            (300..500).contains(&answer.status),
            "request {i}: {answer:?}"
        );
    }
    assert_eq!(
        ours.last().unwrap().body["user"]["email"],
        "bad@example.com"
    );
    assert!(smtp.messages().is_empty(), "{:?}", smtp.messages());
}

/// Every route that ends the caller's own session clears the session cookies as Better Auth's
/// `deleteSessionCookie` does (token, data cache, `dont_remember`); one that ends only others
/// sets none.
#[tokio::test]
async fn ending_the_callers_session_clears_its_cookies_as_better_auth_does() {
    let with_cookie = |path: &'static str, body: Value| {
        post_json(path, body)
            .header("cookie", "better-auth.session_token=$VALUE")
            .header("origin", "$SELF")
    };
    let sign_in = || {
        post_json(
            "/api/auth/sign-in/email",
            json!({"email": "c@example.com", "password": PASSWORD}),
        )
    };
    let reqs = vec![
        post_json("/api/auth/sign-up/email", sign_up_body("c@example.com")),
        sign_in(),
        // Another session's token: the caller's cookies stay.
        with_cookie(
            "/api/auth/revoke-session",
            json!({"token": "not-a-session"}),
        ),
        with_cookie("/api/auth/revoke-other-sessions", json!({})),
        with_cookie("/api/auth/revoke-session", json!({"token": "$TOKEN"})),
        get("/api/auth/list-sessions", SESSION),
        sign_in(),
        with_cookie("/api/auth/revoke-sessions", json!({})),
        get("/api/auth/list-sessions", SESSION),
        sign_in(),
        with_cookie("/api/auth/delete-user", json!({"password": PASSWORD})),
        get("/api/auth/list-sessions", SESSION),
    ];
    let theirs = better_auth(&reqs, "http://localhost:8080", &[]).await;
    let db = edge_testkit::test_database().await;
    let stack = Stack::start_on(db, |c| c.account.delete_user_enabled = true).await;
    let ours = gateway(&stack.db.url, &stack.base, &reqs, &[]).await;
    side_by_side(&ours, &theirs, &reqs);
    for i in [4, 7, 10] {
        assert_eq!(ours[i].cookies().len(), 3, "request {i}: {:?}", ours[i]);
        assert_eq!(ours[i + 1].status, 401, "request {i}: the session ended");
    }
    assert!(ours[2].set_cookie.is_empty() && ours[3].set_cookie.is_empty());
}
