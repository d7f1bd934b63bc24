//! The token service (SPEC §3): login (JSON and form; argon2id and bcrypt
//! users), refresh rotation with reuse detection and its grace window,
//! logout and logout-all (honoured even for cached tokens), `/auth/me`,
//! `/auth/verify` for forward-auth proxies, the JWKS and discovery
//! documents, login rate limits, every bad-input row of §4, and the proxy's
//! latency while logins hash passwords. All through a real gateway on
//! 127.0.0.1 in front of a real upstream.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use support::*;

/// Every test user's password.
const PW: &str = "correct horse battery staple";

const REALM: &str = r#"Bearer realm="gatehouse""#;

/// One argon2id hash of [`PW`] (slow in debug builds: made once per binary).
fn argon2_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gatehouse::auth::password::hash(PW.as_bytes()).unwrap())
}

/// `alice` (subject "42", roles user+dev, an email claim), `root` (admin),
/// `bob` (argon2id); `carol` ($2b$) and `dave` ($2y$) migrated with bcrypt.
fn users_toml() -> String {
    let argon = argon2_hash();
    let b = bcrypt::hash(PW, 4).unwrap();
    assert!(b.starts_with("$2b$"), "{b}");
    let y = bcrypt::hash(PW, 4).unwrap().replacen("$2b$", "$2y$", 1);
    format!(
        r#"
[[users]]
username = "alice"
password_hash = "{argon}"
subject = "42"
roles = ["user", "dev"]
claims = {{ email = "alice@example.com" }}

[[users]]
username = "root"
password_hash = "{argon}"
subject = "root-sub"
roles = ["admin"]

[[users]]
username = "bob"
password_hash = "{argon}"
roles = ["user"]

[[users]]
username = "carol"
password_hash = "{b}"
subject = "carol-sub"
roles = ["user"]

[[users]]
username = "dave"
password_hash = "{y}"
roles = ["user"]
"#
    )
}

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"

[[routes]]
path_prefix = "/admin/"
upstream = "up"
roles_any = ["admin"]
"#;

/// Limits high enough that no test but the rate-limit one meets them.
const NO_LIMITS: &str = r#"rate_limit_per_ip = "100000/min"
rate_limit_per_user = "100000/min""#;

/// How a test gateway is set up.
struct Setup<'a> {
    /// Lines added to `[tokens]`.
    tokens: &'a str,
    /// `[[keys]]` entries (none: the generated Ed25519 key signs).
    keys: &'a str,
    /// Lines added to `[login]` after `users_file`; `None`: no `[login]`.
    login: Option<&'a str>,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            tokens: "",
            keys: "",
            login: Some(NO_LIMITS),
        }
    }
}

fn config(up: SocketAddr, s: &Setup<'_>) -> String {
    let login = s
        .login
        .map(|l| format!("[login]\nusers_file = \"users.toml\"\n{l}\n"))
        .unwrap_or_default();
    format!(
        r#"
[server]
admin_listen = ""

[tokens]
leeway = "0s"
{tokens}

{keys}

{login}

[[upstreams]]
name = "up"
targets = ["http://{up}"]
timeout = "2s"
{ROUTES}
"#,
        tokens = s.tokens,
        keys = s.keys,
    )
}

/// A gateway with the test users in front of a test upstream.
struct Env {
    _up: TestUpstream,
    gw: TestGateway,
}

impl Env {
    async fn start(setup: Setup<'_>) -> Env {
        let up = TestUpstream::start().await;
        let users = users_toml();
        let gw = TestGateway::start_with_files(&config(up.addr, &setup), &[("users.toml", &users)])
            .await;
        Env { _up: up, gw }
    }

    async fn default() -> Env {
        Env::start(Setup::default()).await
    }

    fn url(&self, path: &str) -> String {
        self.gw.url(path)
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        let creds = json!({ "username": username, "password": password });
        post_json(&self.url("/auth/login"), &[], &creds).await
    }

    /// Logs in with [`PW`]; panics unless it is a 200.
    async fn pair(&self, username: &str) -> Pair {
        Pair::of(&self.login(username, PW).await)
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        let body = json!({ "refresh_token": refresh_token });
        post_json(&self.url("/auth/refresh"), &[], &body).await
    }

    /// `GET /api/x` (auth required, no role needed) with `token`.
    async fn api(&self, token: &str) -> Reply {
        get_with_token(&self.url("/api/x"), token).await
    }

    /// `POST path` with only `Authorization: Bearer token` (empty body).
    async fn post_bearer(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        send(
            Method::POST,
            &self.url(path),
            &[("authorization", &auth)],
            "",
        )
        .await
    }

    async fn assert_api_ok(&self, token: &str, what: &str) {
        let r = self.api(token).await;
        assert_eq!(r.status, 200, "{what}: {}", body(&r));
    }

    async fn assert_api_refused(&self, token: &str, what: &str) {
        let r = self.api(token).await;
        assert_eq!(r.status, 401, "{what}: {}", body(&r));
        assert_eq!(r.json()["error"], "invalid_token", "{what}");
        let www = r.www_authenticate().unwrap_or_default();
        assert!(www.contains(r#"error="invalid_token""#), "{what}: {www}");
    }

    async fn assert_refresh_refused(&self, refresh_token: &str, what: &str) {
        let r = self.refresh(refresh_token).await;
        assert_invalid_grant(&r, what);
    }
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn header<'r>(r: &'r Reply, name: &str) -> Option<&'r str> {
    r.headers.get(name).and_then(|v| v.to_str().ok())
}

fn assert_invalid_grant(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", body(r));
    assert_eq!(r.json()["error"], "invalid_grant", "{what}");
}

/// Part `i` of a JWT (0: header, 1: claims) as JSON.
fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("a JWT has three parts");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn jwt_header(token: &str) -> Value {
    jwt_part(token, 0)
}

fn jwt_claims(token: &str) -> Value {
    jwt_part(token, 1)
}

fn keys_of(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    k.sort_unstable();
    k
}

/// Status, headers and claims of a token-pair response for alice.
fn assert_alice_pair(r: &Reply) -> Pair {
    let pair = Pair::of(r);
    assert_eq!(header(r, "cache-control"), Some("no-store"));
    assert!(
        header(r, "content-type").is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["expires_in"], 900);
    assert_eq!(j["refresh_expires_in"], 7 * 86_400);

    let h = jwt_header(&pair.access);
    assert_eq!(h["typ"], "at+jwt");
    assert_eq!(h["alg"], "EdDSA", "the generated key signs");
    assert!(h["kid"].as_str().is_some_and(|k| !k.is_empty()), "{h}");
    let c = jwt_claims(&pair.access);
    for name in ["exp", "iat", "nbf"] {
        assert!(c[name].is_u64(), "{name}: {c}");
    }
    let exp = c["exp"].as_u64().unwrap();
    let nbf = c["nbf"].as_u64().unwrap();
    assert!(nbf.abs_diff(now()) <= 5, "{c}");
    assert_eq!(exp - nbf, 900, "{c}");
    assert_eq!(c["iss"], "gatehouse");
    assert_eq!(c["sub"], "42");
    assert_eq!(c["aud"], "api");
    assert_eq!(c["type"], "access");
    assert_eq!(c["roles"], json!(["user", "dev"]));
    assert_eq!(c["email"], "alice@example.com");
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "{c}");

    let rh = jwt_header(&pair.refresh);
    assert_eq!(rh["typ"], "rt+jwt");
    assert_eq!(rh["kid"], h["kid"]);
    let rc = jwt_claims(&pair.refresh);
    assert_eq!(
        keys_of(&rc),
        [
            "auth_time",
            "exp",
            "fam",
            "iat",
            "iss",
            "jti",
            "sub",
            "type"
        ],
        "{rc}"
    );
    assert_eq!(rc["iss"], "gatehouse");
    assert_eq!(rc["sub"], "42");
    assert_eq!(rc["type"], "refresh");
    assert!(rc["fam"].as_str().is_some_and(|f| !f.is_empty()), "{rc}");
    assert_ne!(rc["jti"], c["jti"]);
    assert_eq!(
        rc["exp"].as_u64().unwrap() - rc["iat"].as_u64().unwrap(),
        7 * 86_400
    );
    pair
}

/// The access token is accepted at the proxy, and the upstream hears who alice is.
async fn assert_forwarded_as_alice(env: &Env, access: &str) {
    let r = env.api(access).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("42"));
    assert_eq!(
        r.upstream_header("x-auth-roles").as_deref(),
        Some("user,dev")
    );
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("alice@example.com")
    );
}

// === 1. login ===

#[tokio::test]
async fn login_with_json_issues_a_pair_that_works_at_the_proxy() {
    let env = Env::default().await;
    let r = env.login("alice", PW).await;
    let pair = assert_alice_pair(&r);
    assert_forwarded_as_alice(&env, &pair.access).await;
}

#[tokio::test]
async fn login_with_a_form_issues_a_pair_that_works_at_the_proxy() {
    let env = Env::default().await;
    // What FastAPI's OAuth2PasswordRequestForm / Swagger UI "Authorize" sends.
    let form = format!(
        "grant_type=password&username=alice&password={}&scope=&client_id=x",
        PW.replace(' ', "+")
    );
    let r = post_form(&env.url("/auth/login"), &[], &form).await;
    let pair = assert_alice_pair(&r);
    assert_forwarded_as_alice(&env, &pair.access).await;

    // Percent-encoding and a charset parameter on the content type.
    let form = format!("username=alice&password={}", PW.replace(' ', "%20"));
    let r = send(
        Method::POST,
        &env.url("/auth/login"),
        &[(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )],
        form,
    )
    .await;
    assert_alice_pair(&r);
}

// === 2. one answer for unknown user and wrong password ===

#[tokio::test]
async fn unknown_user_and_wrong_password_get_the_same_answer() {
    let env = Env::default().await;
    let wrong = env.login("alice", "not the password").await;
    let unknown = env.login("mallory", PW).await;
    for r in [&wrong, &unknown] {
        assert_eq!(r.status, 401, "{}", body(r));
        assert_eq!(r.json()["error"], "invalid_credentials");
        assert!(r.www_authenticate().is_none(), "{:?}", r.headers);
    }
    assert_eq!(wrong.body, unknown.body);
    let named = |r: &Reply| {
        let mut h: Vec<(String, String)> = r
            .headers
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(named(&wrong), named(&unknown));
}

// === 3. bcrypt ===

#[tokio::test]
async fn bcrypt_users_log_in() {
    let env = Env::default().await;
    let carol = env.pair("carol").await; // $2b$
    assert_eq!(jwt_claims(&carol.access)["sub"], "carol-sub");
    let r = env.api(&carol.access).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(
        r.upstream_header("x-auth-subject").as_deref(),
        Some("carol-sub")
    );

    let dave = env.pair("dave").await; // $2y$
    assert_eq!(
        jwt_claims(&dave.access)["sub"],
        "dave",
        "subject defaults to the username"
    );
    env.assert_api_ok(&dave.access, "dave").await;

    let r = env.login("carol", "wrong").await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.json()["error"], "invalid_credentials");
}

// === 4. rotation ===

#[tokio::test]
async fn refresh_rotates_and_every_new_token_works() {
    let env = Env::default().await;
    let first = env.pair("alice").await;

    let r = env.refresh(&first.refresh).await;
    assert_eq!(header(&r, "cache-control"), Some("no-store"));
    let second = assert_alice_pair(&r);
    assert_ne!(second.refresh, first.refresh);
    assert_ne!(second.access, first.access);
    let fam = |t: &str| jwt_claims(t)["fam"].clone();
    assert_eq!(fam(&second.refresh), fam(&first.refresh), "same family");
    assert_ne!(
        jwt_claims(&second.refresh)["jti"],
        jwt_claims(&first.refresh)["jti"]
    );

    assert_forwarded_as_alice(&env, &first.access).await; // the old access token lives on
    assert_forwarded_as_alice(&env, &second.access).await;

    // The form flavour, with grant_type=refresh_token.
    let form = format!("grant_type=refresh_token&refresh_token={}", second.refresh);
    let r = post_form(&env.url("/auth/refresh"), &[], &form).await;
    let third = assert_alice_pair(&r);
    assert_eq!(fam(&third.refresh), fam(&first.refresh));
    env.assert_api_ok(&third.access, "third access token").await;
}

// === 5. reuse ===

#[tokio::test]
async fn reusing_a_spent_refresh_token_revokes_the_whole_family() {
    let env = Env::default().await;
    let first = env.pair("alice").await;
    let second = Pair::of(&env.refresh(&first.refresh).await);
    // Both access tokens are in the verified-claims cache.
    env.assert_api_ok(&first.access, "first access").await;
    env.assert_api_ok(&second.access, "second access").await;

    env.assert_refresh_refused(&first.refresh, "a spent token")
        .await;
    env.assert_refresh_refused(&second.refresh, "the newest token of a revoked family")
        .await;
    env.assert_api_refused(&first.access, "first access of the revoked family")
        .await;
    env.assert_api_refused(&second.access, "second access of the revoked family")
        .await;

    // Another login of the same user is a new family and unaffected.
    let other = env.pair("alice").await;
    env.assert_api_ok(&other.access, "a new family").await;
    Pair::of(&env.refresh(&other.refresh).await);
}

// === 6. concurrent refreshes ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_refreshes_with_one_token_exactly_one_wins() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    let url = env.url("/auth/refresh");
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (url, barrier) = (url.clone(), barrier.clone());
        let body = json!({ "refresh_token": pair.refresh });
        tasks.spawn(async move {
            barrier.wait().await;
            post_json(&url, &[], &body).await // one connection each
        });
    }
    let replies = tasks.join_all().await;
    let ok: Vec<&Reply> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        ok.len(),
        1,
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in replies.iter().filter(|r| r.status != 200) {
        assert_invalid_grant(r, "a losing refresh");
    }
}

// === 7. grace window ===

#[tokio::test]
async fn within_the_grace_window_a_replayed_token_does_not_revoke_the_family() {
    let env = Env::start(Setup {
        tokens: r#"refresh_reuse_grace = "30s""#,
        ..Setup::default()
    })
    .await;
    let first = env.pair("alice").await;
    let second = Pair::of(&env.refresh(&first.refresh).await);
    env.assert_refresh_refused(&first.refresh, "replayed within the grace window")
        .await;
    env.assert_api_ok(&second.access, "the family's access token")
        .await;
    let third = Pair::of(&env.refresh(&second.refresh).await);
    env.assert_api_ok(&third.access, "after the grace replay")
        .await;
}

#[tokio::test]
async fn session_max_ends_a_login_however_often_it_refreshes() {
    let env = Env::start(Setup {
        tokens: r#"session_max = "4s""#,
        ..Setup::default()
    })
    .await;
    let login = env.login("alice", PW).await;
    let mut pair = Pair::of(&login);
    let first = jwt_claims(&pair.refresh);
    let auth_time = first["auth_time"].as_u64().unwrap();
    let end = auth_time + 4;
    assert_eq!(first["exp"].as_u64(), Some(end));
    assert!(login.json()["refresh_expires_in"].as_u64().unwrap() <= 4);
    // Each refresh, a second apart, keeps the login's time and its end:
    // neither the refresh nor the access token slides past it.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = env.refresh(&pair.refresh).await;
        let left = r.json()["refresh_expires_in"].as_u64().unwrap();
        assert!(left < 4, "{left}");
        pair = Pair::of(&r);
        let claims = jwt_claims(&pair.refresh);
        assert_eq!(claims["auth_time"].as_u64(), Some(auth_time));
        assert_eq!(claims["exp"].as_u64(), Some(end));
        let access = jwt_claims(&pair.access);
        assert!(access["exp"].as_u64().unwrap() <= end, "{access}");
        assert_eq!(
            r.json()["expires_in"].as_u64(),
            Some(end - access["nbf"].as_u64().unwrap())
        );
    }
    while now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_refresh_refused(&pair.refresh, "past session_max")
        .await;
    // A new login starts a new session.
    let again = env.pair("alice").await;
    assert_eq!(env.refresh(&again.refresh).await.status, 200);
}

#[tokio::test]
async fn within_the_leeway_a_refresh_past_session_max_is_refused() {
    let up = TestUpstream::start().await;
    let users = users_toml();
    let config = config(
        up.addr,
        &Setup {
            tokens: r#"session_max = "1s""#,
            ..Setup::default()
        },
    )
    .replace(r#"leeway = "0s""#, r#"leeway = "30s""#);
    let gw = TestGateway::start_with_files(&config, &[("users.toml", &users)]).await;
    let creds = json!({ "username": "alice", "password": PW });
    let pair = Pair::of(&post_json(&gw.url("/auth/login"), &[], &creds).await);
    let end = jwt_claims(&pair.refresh)["auth_time"].as_u64().unwrap() + 1;
    while now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its exp has passed, but within the leeway it still verifies: the
    // session's end refuses it.
    let body = json!({ "refresh_token": pair.refresh });
    let r = post_json(&gw.url("/auth/refresh"), &[], &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_grant");
    let why = r.json()["error_description"].to_string();
    assert!(why.contains("session expired"), "{why}");
}

#[tokio::test]
async fn after_the_grace_window_a_replayed_token_revokes_the_family() {
    let env = Env::start(Setup {
        tokens: r#"refresh_reuse_grace = "1s""#,
        ..Setup::default()
    })
    .await;
    let first = env.pair("alice").await;
    let second = Pair::of(&env.refresh(&first.refresh).await);
    let rotated = jwt_claims(&second.refresh)["iat"].as_u64().unwrap();
    while now() <= rotated + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.assert_refresh_refused(&first.refresh, "replayed after the grace window")
        .await;
    env.assert_refresh_refused(&second.refresh, "the newest token of the revoked family")
        .await;
    env.assert_api_refused(&second.access, "an access token of the revoked family")
        .await;
}

// === 8. logout ===

#[tokio::test]
async fn logout_revokes_a_cached_access_token_and_its_refresh_family() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    env.assert_api_ok(&pair.access, "first use").await;
    let checks = env.gw.signature_checks();
    env.assert_api_ok(&pair.access, "second use").await;
    assert_eq!(
        env.gw.signature_checks(),
        checks,
        "the token is served from the cache"
    );

    let r = env.post_bearer("/auth/logout", &pair.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));
    assert!(r.body.is_empty());

    env.assert_api_refused(&pair.access, "a logged-out cached token")
        .await;
    env.assert_refresh_refused(&pair.refresh, "the logged-out login's refresh token")
        .await;
    let r = get_with_token(&env.url("/auth/me"), &pair.access).await;
    assert_eq!(r.status, 401, "{}", body(&r));

    // Logging out again is harmless.
    let r = env.post_bearer("/auth/logout", &pair.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));

    // Other sessions of the same user are unaffected.
    let other = env.pair("alice").await;
    env.assert_api_ok(&other.access, "another session").await;
}

/// Logout holds on the connection that kept presenting the token.
#[tokio::test]
async fn logout_revokes_a_token_its_connection_presented_before() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    let mut conn = Conn::open(env.gw.addr).await;
    for _ in 0..2 {
        let r = conn.get_with_token("/api/x", &pair.access).await;
        assert_eq!(r.status, 200, "{}", body(&r));
    }
    let r = env.post_bearer("/auth/logout", &pair.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));
    let r = conn.get_with_token("/api/x", &pair.access).await;
    assert_eq!(r.status, 401, "{}", body(&r));
}

#[tokio::test]
async fn logout_with_only_a_refresh_token_revokes_its_family() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    env.assert_api_ok(&pair.access, "before logout").await;
    let body_json = json!({ "refresh_token": pair.refresh });
    let r = post_json(&env.url("/auth/logout"), &[], &body_json).await;
    assert_eq!(r.status, 204, "{}", body(&r));
    env.assert_refresh_refused(&pair.refresh, "after logout")
        .await;
    env.assert_api_refused(&pair.access, "an access token of the logged-out family")
        .await;

    // Logout with nothing to revoke is a client error, not a 204.
    let r = send(Method::POST, &env.url("/auth/logout"), &[], "").await;
    assert!(r.status.is_client_error(), "{}: {}", r.status, body(&r));
}

// === 9. logout everywhere ===

#[tokio::test]
async fn logout_all_refuses_every_earlier_token_of_the_subject() {
    let env = Env::default().await;
    let one = env.pair("alice").await;
    let two = env.pair("alice").await;
    let bob = env.pair("bob").await;
    for t in [&one.access, &two.access, &bob.access] {
        env.assert_api_ok(t, "before logout-all").await; // cached
    }

    let r = env.post_bearer("/auth/logout-all", &one.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));

    env.assert_api_refused(&one.access, "the caller's token")
        .await;
    env.assert_api_refused(&two.access, "another session's token")
        .await;
    env.assert_refresh_refused(&one.refresh, "the caller's refresh token")
        .await;
    env.assert_refresh_refused(&two.refresh, "another session's refresh token")
        .await;
    env.assert_api_ok(&bob.access, "another subject").await;

    // Logging in again, in the same second, works.
    let three = env.pair("alice").await;
    assert_forwarded_as_alice(&env, &three.access).await;
    let four = Pair::of(&env.refresh(&three.refresh).await);
    env.assert_api_ok(&four.access, "refreshed after logout-all")
        .await;

    // Without a token: 401.
    let r = send(Method::POST, &env.url("/auth/logout-all"), &[], "").await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.www_authenticate(), Some(REALM));
}

// === 10. /auth/me ===

#[tokio::test]
async fn me_returns_the_verified_claims() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    let r = get_with_token(&env.url("/auth/me"), &pair.access).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.json(), jwt_claims(&pair.access));

    let r = get(&env.url("/auth/me"), &[]).await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.www_authenticate(), Some(REALM));

    let r = get_with_token(&env.url("/auth/me"), &pair.refresh).await;
    assert_eq!(r.status, 401, "a refresh token: {}", body(&r));
}

// === 11. JWKS ===

/// The JWK Set, checked for private members.
async fn jwks(env: &Env) -> Value {
    let r = get(&env.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let doc = r.json();
    for jwk in doc["keys"].as_array().expect("a keys array") {
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(jwk.get(private).is_none(), "`{private}` published: {jwk}");
        }
        assert_eq!(jwk["use"], "sig", "{jwk}");
    }
    doc
}

/// Verifies `access` with nothing but the published JWK named by its `kid`.
fn verify_with_jwks(doc: &Value, access: &str, alg: Algorithm) -> Value {
    let set: JwkSet = serde_json::from_value(doc.clone()).unwrap();
    let kid = jwt_header(access)["kid"].as_str().unwrap().to_string();
    let jwk = set
        .find(&kid)
        .unwrap_or_else(|| panic!("kid {kid} not in {doc}"));
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut v = Validation::new(alg);
    v.set_audience(&["api"]);
    v.set_issuer(&["gatehouse"]);
    jsonwebtoken::decode::<Value>(access, &key, &v)
        .unwrap_or_else(|e| panic!("{alg:?}: {e}"))
        .claims
}

#[tokio::test]
async fn issued_tokens_verify_with_the_published_jwks_for_each_algorithm() {
    for (alg, name, file, kty) in [
        (Algorithm::EdDSA, "EdDSA", "ed.pem", "OKP"),
        (Algorithm::ES256, "ES256", "es.pem", "EC"),
        (Algorithm::RS256, "RS256", "rs.pem", "RSA"),
    ] {
        let keys = format!(
            "[[keys]]\nid = \"signer\"\nalgorithm = \"{name}\"\nprivate_key = \"{file}\"\nsign = true\n"
        );
        let env = Env::start(Setup {
            keys: &keys,
            ..Setup::default()
        })
        .await;
        let pair = env.pair("alice").await;
        let h = jwt_header(&pair.access);
        assert_eq!((&h["alg"], &h["kid"]), (&json!(name), &json!("signer")));
        let doc = jwks(&env).await;
        let jwk = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == "signer")
            .unwrap();
        assert_eq!(
            (&jwk["kty"], &jwk["alg"]),
            (&json!(kty), &json!(name)),
            "{jwk}"
        );
        let claims = verify_with_jwks(&doc, &pair.access, alg);
        assert_eq!(claims["sub"], "42", "{name}");
        env.assert_api_ok(&pair.access, name).await;
        // A refresh signs again (RS256 on the blocking pool, the others in place).
        let next = env.refresh(&pair.refresh).await;
        assert_eq!(next.status, 200, "{name}: {:?}", next.body);
        let next = Pair::of(&next);
        assert_eq!(verify_with_jwks(&doc, &next.access, alg)["sub"], "42");
        assert_eq!(jwt_header(&next.refresh)["alg"], json!(name));
        env.assert_api_ok(&next.access, name).await;
        env.assert_refresh_refused(&pair.refresh, name).await;
    }
}

#[tokio::test]
async fn the_generated_key_is_published_as_okp() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    let doc = jwks(&env).await;
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{doc}");
    assert_eq!(keys[0]["kty"], "OKP");
    assert_eq!(keys[0]["crv"], "Ed25519");
    assert_eq!(keys[0]["alg"], "EdDSA");
    assert_eq!(keys[0]["kid"], jwt_header(&pair.access)["kid"]);
    verify_with_jwks(&doc, &pair.access, Algorithm::EdDSA);
}

#[tokio::test]
async fn an_hmac_key_is_never_published() {
    let keys = r#"
[[keys]]
id = "hs"
algorithm = "HS256"
secret_file = "hs.secret"
sign = true

[[keys]]
id = "rs"
algorithm = "RS256"
public_key = "rs.pub.pem"
"#;
    let env = Env::start(Setup {
        keys,
        ..Setup::default()
    })
    .await;
    let pair = env.pair("alice").await;
    assert_eq!(jwt_header(&pair.access)["alg"], "HS256");
    env.assert_api_ok(&pair.access, "an HS256 token").await;
    let doc = jwks(&env).await;
    let kids: Vec<&Value> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["kid"])
        .collect();
    assert_eq!(kids, [&json!("rs")], "{doc}");
    let text = doc.to_string();
    assert!(!text.contains("\"k\""), "{text}");
    assert!(!text.contains("oct") && !text.contains("HS256"), "{text}");
    assert!(!text.contains(&URL_SAFE_NO_PAD.encode(HS_SECRET)), "{text}");
}

// === 12. discovery ===

#[tokio::test]
async fn openid_configuration_names_issuer_jwks_and_token_endpoint() {
    let env = Env::default().await;
    let r = get(&env.url("/.well-known/openid-configuration"), &[]).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let doc = r.json();
    assert_eq!(doc["issuer"], "gatehouse");
    let jwks_uri = doc["jwks_uri"].as_str().unwrap();
    assert!(jwks_uri.ends_with("/.well-known/jwks.json"), "{doc}");
    let token_endpoint = doc["token_endpoint"].as_str().unwrap();
    assert!(token_endpoint.ends_with("/auth/login"), "{doc}");
    // Built from the request's Host, so a client can follow it.
    let r = get(jwks_uri, &[]).await;
    assert_eq!(r.status, 200, "{jwks_uri}: {}", body(&r));
    assert!(r.json()["keys"].is_array());
}

// === 13. rate limits ===

fn retry_after(r: &Reply) -> u64 {
    header(r, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric Retry-After: {:?}", r.headers))
}

fn assert_rate_limited(r: &Reply, what: &str) {
    assert_eq!(r.status, 429, "{what}: {}", body(r));
    assert!(retry_after(r) >= 1, "{what}");
    assert_eq!(r.json()["error"], "rate_limited", "{what}");
}

#[tokio::test]
async fn login_rate_limit_per_ip() {
    let env = Env::start(Setup {
        login: Some("rate_limit_per_ip = \"3/min\"\nrate_limit_per_user = \"100/min\""),
        ..Setup::default()
    })
    .await;
    assert_eq!(env.login("alice", PW).await.status, 200);
    assert_eq!(env.login("alice", "wrong").await.status, 401);
    assert_eq!(env.login("nobody", "wrong").await.status, 401);
    assert_rate_limited(&env.login("bob", PW).await, "the 4th attempt");
    // The proxy path is not rate limited.
    let r = get(&env.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn login_rate_limit_per_user_counts_failures() {
    let env = Env::start(Setup {
        login: Some("rate_limit_per_ip = \"100/min\"\nrate_limit_per_user = \"2/min\""),
        ..Setup::default()
    })
    .await;
    // Successes are not counted.
    for _ in 0..3 {
        env.pair("bob").await;
    }
    for i in 0..2 {
        let r = env.login("alice", "wrong").await;
        assert_eq!(r.status, 401, "failure {i}: {}", body(&r));
    }
    assert_rate_limited(&env.login("alice", PW).await, "even the right password");
    env.pair("bob").await; // another user is unaffected
}

// === 14. bad input ===

/// `POST /auth/login` with `content_type` (if any) and `body`.
async fn post_login(env: &Env, content_type: Option<&str>, body: impl Into<bytes::Bytes>) -> Reply {
    let headers: Vec<(&str, &str)> = content_type
        .map(|c| ("content-type", c))
        .into_iter()
        .collect();
    send(Method::POST, &env.url("/auth/login"), &headers, body).await
}

fn assert_status(r: &Reply, status: u16, error: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", body(r));
    assert_eq!(r.json()["error"], error, "{what}");
}

/// The gateway still logs alice in and proxies her token.
async fn assert_still_serving(env: &Env) {
    let pair = env.pair("alice").await;
    env.assert_api_ok(&pair.access, "after bad input").await;
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let env = Env::default().await;
    let big = json!({ "username": "alice", "password": "x".repeat(17 * 1024) }).to_string();
    // With Content-Length.
    let r = post_login(&env, Some("application/json"), big.clone()).await;
    assert_status(&r, 413, "invalid_request", "Content-Length over 16 KiB");
    // Chunked, without Content-Length.
    let mut req = b"POST /auth/login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        .to_vec();
    for chunk in big.as_bytes().chunks(4096) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(env.gw.addr, &req).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // /auth/refresh too.
    let big = json!({ "refresh_token": "x".repeat(17 * 1024) });
    let r = post_json(&env.url("/auth/refresh"), &[], &big).await;
    assert_status(&r, 413, "invalid_request", "a big refresh body");
    // Exactly 16 KiB is fine (a 401, not a 413).
    let pad = 16 * 1024
        - json!({ "username": "alice", "password": "" })
            .to_string()
            .len();
    let exact = json!({ "username": "alice", "password": "x".repeat(pad) }).to_string();
    assert_eq!(exact.len(), 16 * 1024);
    let r = post_login(&env, Some("application/json"), exact).await;
    assert_status(&r, 401, "invalid_credentials", "exactly 16 KiB");
    assert_still_serving(&env).await;
}

#[tokio::test]
async fn wrong_or_missing_content_type_gets_415() {
    let env = Env::default().await;
    let creds = json!({ "username": "alice", "password": PW }).to_string();
    let r = post_login(&env, Some("text/plain"), creds.clone()).await;
    assert_status(&r, 415, "invalid_request", "text/plain");
    let r = post_login(&env, None, creds.clone()).await;
    assert_status(&r, 415, "invalid_request", "no content type");
    let r = post_login(&env, Some("multipart/form-data; boundary=x"), creds).await;
    assert_status(&r, 415, "invalid_request", "multipart");
    assert_still_serving(&env).await;
}

#[tokio::test]
async fn malformed_bodies_get_400() {
    let env = Env::default().await;
    let json_ct = Some("application/json");
    let form_ct = Some("application/x-www-form-urlencoded");
    for (ct, body_text, what) in [
        (json_ct, r#"{"username": "alice", "#, "bad JSON"),
        (json_ct, r#"["alice", "pw"]"#, "a JSON array"),
        (json_ct, r#""alice""#, "a JSON string"),
        (json_ct, "", "an empty JSON body"),
        (json_ct, r#"{"username": "alice"}"#, "no password"),
        (json_ct, r#"{"password": "pw"}"#, "no username"),
        (
            json_ct,
            r#"{"username": "alice", "password": 5}"#,
            "a numeric password",
        ),
        (
            json_ct,
            r#"{"username": ["alice"], "password": "pw"}"#,
            "an array username",
        ),
        (
            form_ct,
            "username=alice&username=bob&password=pw",
            "a duplicated form field",
        ),
        (form_ct, "username=alice", "a form without password"),
    ] {
        let r = post_login(&env, ct, body_text.to_string()).await;
        assert_status(&r, 400, "invalid_request", what);
    }
    let r = post_json(
        &env.url("/auth/refresh"),
        &[],
        &json!({ "refresh_token": 1 }),
    )
    .await;
    assert_status(&r, 400, "invalid_request", "a numeric refresh_token");
    let r = post_json(&env.url("/auth/refresh"), &[], &json!({})).await;
    assert_status(&r, 400, "invalid_request", "no refresh_token");
    assert_still_serving(&env).await;
}

#[tokio::test]
async fn wrong_methods_get_405_with_allow() {
    let env = Env::default().await;
    for (method, path, allow) in [
        (Method::GET, "/auth/login", "POST"),
        (Method::PUT, "/auth/refresh", "POST"),
        (Method::GET, "/auth/logout", "POST"),
        (Method::GET, "/auth/logout-all", "POST"),
        (Method::POST, "/auth/me", "GET, HEAD"),
        (Method::POST, "/.well-known/jwks.json", "GET, HEAD"),
        (
            Method::DELETE,
            "/.well-known/openid-configuration",
            "GET, HEAD",
        ),
    ] {
        let r = send(method.clone(), &env.url(path), &[], "").await;
        assert_eq!(r.status, 405, "{method} {path}: {}", body(&r));
        assert_eq!(header(&r, "allow"), Some(allow), "{method} {path}");
    }
    assert_still_serving(&env).await;
}

#[tokio::test]
async fn without_a_login_section_login_and_refresh_are_404() {
    let env = Env::start(Setup {
        login: None,
        ..Setup::default()
    })
    .await;
    let creds = json!({ "username": "alice", "password": PW });
    let r = post_json(&env.url("/auth/login"), &[], &creds).await;
    assert_eq!(r.status, 404, "{}", body(&r));
    let r = post_json(
        &env.url("/auth/refresh"),
        &[],
        &json!({ "refresh_token": "x" }),
    )
    .await;
    assert_eq!(r.status, 404, "{}", body(&r));
    // The verify-only gateway still publishes its keys and proxies.
    assert_eq!(
        get(&env.url("/.well-known/jwks.json"), &[]).await.status,
        200
    );
    let r = get(&env.url("/api/x"), &[]).await;
    assert_eq!(r.status, 401, "{}", body(&r));
}

// === 15. token types ===

#[tokio::test]
async fn refresh_and_access_tokens_cannot_pass_for_each_other() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    env.assert_api_refused(&pair.refresh, "a refresh token at the proxy")
        .await;
    env.assert_refresh_refused(&pair.access, "an access token at /auth/refresh")
        .await;
    for garbage in ["garbage", "a.b.c", "", "eyJhbGciOiJub25lIn0.e30."] {
        env.assert_refresh_refused(garbage, garbage).await;
    }
    // A refresh token signed by another issuer's key (not this gateway's).
    let mut c = claims("42");
    c["type"] = json!("refresh");
    c["fam"] = json!("f");
    c["jti"] = json!("j");
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.typ = Some("rt+jwt".into());
    let foreign = sign_with_header(&h, &c);
    env.assert_refresh_refused(&foreign, "a foreign refresh token")
        .await;
    // Nothing above spent the real refresh token.
    Pair::of(&env.refresh(&pair.refresh).await);
}

// === 16. /auth/verify ===

async fn verify(env: &Env, headers: &[(&str, &str)]) -> Reply {
    get(&env.url("/auth/verify"), headers).await
}

/// nginx's `auth_request` keeps one connection to the gateway for every
/// caller: each answer is for the token of that request, never the last.
#[tokio::test]
async fn forward_auth_verify_on_one_connection_answers_for_each_token() {
    let env = Env::default().await;
    let root = env.pair("root").await;
    let alice = env.pair("alice").await;
    let mut tampered = root.access.clone();
    tampered.pop();
    tampered.push(if root.access.ends_with('A') { 'B' } else { 'A' });
    let mut conn = Conn::open(env.gw.addr).await;
    let mut ask = async |token: &str, uri: &str| {
        let auth = format!("Bearer {token}");
        conn.get(
            "/auth/verify",
            &[("authorization", &auth), ("x-original-uri", uri)],
        )
        .await
    };
    for round in 0..2 {
        let r = ask(&root.access, "/admin/panel").await;
        assert_eq!(r.status, 200, "round {round}: {}", body(&r));
        assert_eq!(header(&r, "x-auth-subject"), Some("root-sub"));
        let r = ask(&alice.access, "/admin/panel").await;
        assert_eq!(r.status, 403, "round {round}: {}", body(&r));
        let r = ask(&alice.access, "/api/x").await;
        assert_eq!(r.status, 200, "round {round}: {}", body(&r));
        assert_eq!(header(&r, "x-auth-subject"), Some("42"));
        let r = ask(&tampered, "/api/x").await;
        assert_eq!(r.status, 401, "round {round}: {}", body(&r));
    }
    let r = env.post_bearer("/auth/logout", &alice.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));
    let r = ask(&alice.access, "/api/x").await;
    assert_eq!(r.status, 401, "{}", body(&r));
}

#[tokio::test]
async fn forward_auth_verify_applies_the_rules_of_the_original_route() {
    let env = Env::default().await;
    let root = env.pair("root").await;
    let alice = env.pair("alice").await;
    let root_auth = format!("Bearer {}", root.access);
    let alice_auth = format!("Bearer {}", alice.access);

    let r = verify(
        &env,
        &[
            ("authorization", &root_auth),
            ("x-forwarded-uri", "/admin/panel?x=1"),
            ("x-forwarded-method", "GET"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(header(&r, "x-auth-subject"), Some("root-sub"));
    assert_eq!(header(&r, "x-auth-roles"), Some("admin"));

    // nginx's auth_request header.
    let r = verify(
        &env,
        &[
            ("authorization", &root_auth),
            ("x-original-uri", "/admin/panel"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(header(&r, "x-auth-subject"), Some("root-sub"));

    let r = verify(
        &env,
        &[
            ("authorization", &alice_auth),
            ("x-forwarded-uri", "/admin/panel"),
        ],
    )
    .await;
    assert_eq!(r.status, 403, "{}", body(&r));
    assert_eq!(r.json()["error"], "insufficient_scope");
    assert!(header(&r, "x-auth-subject").is_none());

    // Alice may use /api/.
    let r = verify(
        &env,
        &[
            ("authorization", &alice_auth),
            ("x-forwarded-uri", "/api/things"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(header(&r, "x-auth-subject"), Some("42"));
    assert_eq!(header(&r, "x-auth-email"), Some("alice@example.com"));

    let r = verify(&env, &[("x-forwarded-uri", "/admin/panel")]).await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.www_authenticate(), Some(REALM));

    // A logged-out token.
    let r = env.post_bearer("/auth/logout", &root.access).await;
    assert_eq!(r.status, 204, "{}", body(&r));
    let r = verify(
        &env,
        &[
            ("authorization", &root_auth),
            ("x-forwarded-uri", "/admin/panel"),
        ],
    )
    .await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.json()["error"], "invalid_token");
}

// === 17. proxy latency during a login burst ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_keeps_answering_while_fifty_logins_hash_passwords() {
    let env = Env::default().await;
    let pair = env.pair("alice").await;
    env.assert_api_ok(&pair.access, "warm the cache").await;

    let url = env.url("/auth/login");
    let started = Instant::now();
    let done = Arc::new(AtomicUsize::new(0));
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (url, done) = (url.clone(), Arc::clone(&done));
        logins.spawn(async move {
            let creds = json!({ "username": "alice", "password": PW });
            let status = post_json(&url, &[], &creds).await.status;
            done.fetch_add(1, Ordering::SeqCst);
            status
        });
    }
    // Let the burst reach the hashing pool.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(2), env.api(&pair.access))
            .await
            .unwrap_or_else(|_| panic!("proxy request {i} took over 2 s during the login burst"));
        assert_eq!(r.status, 200, "proxy request {i}: {}", body(&r));
        worst = worst.max(t.elapsed());
    }
    let during = 50 - done.load(Ordering::SeqCst);
    let statuses = logins.join_all().await;
    let burst = started.elapsed();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    eprintln!(
        "worst proxy latency {worst:?}; {during} logins still running after the 20 proxy \
         requests; the burst took {burst:?}; {ok}/50 logins got 200"
    );
    assert!(
        during > 0,
        "the logins finished before the proxy was measured"
    );
    // A login that waits too long for a hashing slot gets a 503; none fails otherwise.
    for s in &statuses {
        assert!(
            *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE,
            "{statuses:?}"
        );
    }
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
}

#[tokio::test]
async fn forward_auth_verify_refuses_paths_an_upstream_could_read_differently() {
    let env = Env::default().await;
    let alice = env.pair("alice").await;
    let alice_auth = format!("Bearer {}", alice.access);
    // nginx sets X-Original-URI to the raw $request_uri and Traefik
    // X-Forwarded-Uri to the raw request URI; the request itself then
    // reaches /admin/ once the dot-segments are resolved.
    for uri in [
        "/api/../admin/panel",
        "/api/%2e%2e/admin/panel",
        "/api/./../admin/panel",
    ] {
        // The proxy path refuses such a request outright...
        let r = get_with_token(&env.url(uri), &alice.access).await;
        assert_eq!(r.status, 400, "proxy {uri}: {}", body(&r));
        // ...and so must the forward-auth check of it.
        for name in ["x-forwarded-uri", "x-original-uri"] {
            let r = verify(&env, &[("authorization", &alice_auth), (name, uri)]).await;
            assert!(
                r.status == 400 || r.status == 403,
                "{name}: {uri} answered {} with subject {:?}",
                r.status,
                header(&r, "x-auth-subject")
            );
        }
    }
}

// === logs ===

#[tokio::test]
async fn reuse_is_logged_with_subject_and_family_and_no_secret_is_logged() {
    let (logs, _guard) = capture_logs();
    let env = Env::default().await;
    assert_eq!(env.login("alice", "hunter2-wrong").await.status, 401);
    let first = env.pair("alice").await;
    let second = Pair::of(&env.refresh(&first.refresh).await);
    env.assert_refresh_refused(&first.refresh, "reuse").await;
    let r = env.post_bearer("/auth/logout", &second.access).await;
    assert_eq!(r.status, 204);
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    let fam = jwt_claims(&first.refresh)["fam"]
        .as_str()
        .unwrap()
        .to_string();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("reuse"))
        .unwrap_or_else(|| panic!("no reuse warning in:\n{text}"));
    assert!(
        warning.contains("42") && warning.contains(&fam),
        "{warning}"
    );
    for secret in [
        PW,
        "hunter2-wrong",
        &first.refresh,
        &first.access,
        &second.refresh,
        &second.access,
    ] {
        assert!(!text.contains(secret), "a secret was logged:\n{text}");
    }
    // Not even a token's signature.
    let sig = first.refresh.rsplit('.').next().unwrap();
    assert!(!text.contains(sig), "{text}");
}

/// `gatehouse_logins_total{outcome}` on `/metrics` counts each login by
/// how it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_counted_by_outcome_on_metrics() {
    let env = Env::default().await;
    let admin = env.gw.admin().await;
    assert_eq!(env.login("alice", PW).await.status, 200);
    assert_eq!(env.login("alice", "wrong").await.status, 401);
    assert_eq!(env.login("nobody", PW).await.status, 401);
    let no_password = json!({ "username": "alice" });
    let r = post_json(&env.url("/auth/login"), &[], &no_password).await;
    assert_eq!(r.status, 400);
    let text = scrape(admin).await;
    let count = |outcome: &str| {
        metric(
            &text,
            &format!("gatehouse_logins_total{{outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(count("success"), Some(1), "{text}");
    assert_eq!(count("invalid_credentials"), Some(2), "{text}");
    assert_eq!(count("bad_request"), Some(1), "{text}");
    assert_eq!(count("rate_limited"), Some(0), "{text}");
}
