//! Durability of the embedded state store and the generated key (SPEC §2
//! `[state]`, §3 "All of it survives a restart"), against the real binary:
//! graceful restarts, `kill -9`, SIGHUP reloads of the users file, `check`
//! on a bad users file, and a second instance on the same state directory.
mod support;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::json;
use support::process::{BIN, Gatehouse, free_addrs, status_of};
use support::{Reply, get, get_with_token, send};

/// The one password every test user has.
const PASSWORD: &str = "pw";

/// `PASSWORD` hashed once per test binary (argon2 is slow in debug builds).
fn pw_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| gatehouse::auth::password::hash(PASSWORD.as_bytes()).unwrap())
}

/// A `[[users]]` entry for `name` with [`PASSWORD`].
fn user(name: &str) -> String {
    format!(
        "[[users]]\nusername = \"{name}\"\npassword_hash = \"{}\"\nroles = [\"user\"]\n\n",
        pw_hash()
    )
}

/// The gateway config used throughout: state in `state/` beside the
/// config, no `[[keys]]` (so the Ed25519 key is generated there), login from
/// `users.toml`, the built-in echo upstream behind `/api/` (auth required).
/// Rate limits are generous: these tests log in repeatedly from one IP.
fn config(listen: SocketAddr, admin: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "{listen}"
admin_listen = "{admin}"

[state]
path = "state"

[login]
users_file = "users.toml"
rate_limit_per_ip = "1000/min"
rate_limit_per_user = "1000/min"

[[upstreams]]
name = "echo"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/api/"
upstream = "echo"
auth = "required"

[[routes]]
path_prefix = "/public/"
upstream = "echo"
auth = "none"
"#
    )
}

/// A temp dir holding `users.toml` with `users`; the config is written by
/// [`Gatehouse::start`] on every start (fresh ports, same state directory).
fn site(users: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_users(dir.path(), users);
    dir
}

fn write_users(dir: &Path, users: &[&str]) {
    let text: String = users.iter().map(|u| user(u)).collect();
    std::fs::write(dir.join("users.toml"), text).unwrap();
}

// === the endpoints (on the shared process harness) ===

impl Gatehouse {
    async fn post_json(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Reply {
        let mut h = vec![("content-type", "application/json")];
        h.extend_from_slice(headers);
        send(Method::POST, &self.url(path), &h, body.to_string()).await
    }

    async fn login(&self, username: &str, password: &str) -> Reply {
        self.post_json(
            "/auth/login",
            &[],
            &json!({ "username": username, "password": password }),
        )
        .await
    }

    /// Logs in, expecting a 200 token pair.
    async fn pair(&self, username: &str) -> Pair {
        let r = self.login(username, PASSWORD).await;
        assert_eq!(
            r.status,
            200,
            "login as {username}: {:?}\n{}",
            r.body,
            self.log()
        );
        Pair::of(&r)
    }

    async fn refresh(&self, refresh_token: &str) -> Reply {
        self.post_json(
            "/auth/refresh",
            &[],
            &json!({ "refresh_token": refresh_token }),
        )
        .await
    }

    /// Refreshes, expecting a 200 and the new pair.
    async fn rotate(&self, refresh_token: &str) -> Pair {
        let r = self.refresh(refresh_token).await;
        assert_eq!(r.status, 200, "refresh: {:?}\n{}", r.body, self.log());
        Pair::of(&r)
    }

    /// `POST path` with `Authorization: Bearer access` and no body.
    async fn post_bearer(&self, path: &str, access: &str) -> StatusCode {
        let auth = format!("Bearer {access}");
        send(
            Method::POST,
            &self.url(path),
            &[("authorization", &auth)],
            Bytes::new(),
        )
        .await
        .status
    }

    /// The status `/api/x` answers with `access`.
    async fn api(&self, access: &str) -> StatusCode {
        get_with_token(&self.url("/api/x"), access).await.status
    }

    /// The `kid` of every key in `/.well-known/jwks.json`.
    async fn jwks_kids(&self) -> Vec<String> {
        let r = get(&self.url("/.well-known/jwks.json"), &[]).await;
        assert_eq!(r.status, 200);
        r.json()["keys"]
            .as_array()
            .expect("`keys` is an array")
            .iter()
            .map(|k| k["kid"].as_str().expect("every key has a kid").to_string())
            .collect()
    }
}

/// An access + refresh token pair from /auth/login or /auth/refresh.
struct Pair {
    access: String,
    refresh: String,
}

impl Pair {
    fn of(r: &Reply) -> Pair {
        let v = r.json();
        Pair {
            access: v["access_token"].as_str().expect("access_token").into(),
            refresh: v["refresh_token"].as_str().expect("refresh_token").into(),
        }
    }
}

// === restarts ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_refresh_token_survives_a_restart_and_works_once() {
    let dir = site(&["alice"]);
    let gw = Gatehouse::start(dir.path(), config).await;
    let pair = gw.pair("alice").await;
    gw.stop().await;

    let gw = Gatehouse::start(dir.path(), config).await;
    let next = gw.rotate(&pair.refresh).await;
    assert_eq!(gw.api(&next.access).await, 200, "{}", gw.log());
    let again = gw.refresh(&pair.refresh).await;
    assert_eq!(again.status, 401, "a spent refresh token worked twice");
    assert_eq!(again.json()["error"], "invalid_grant");
}

/// With `TOKIO_WORKER_THREADS=1` the binary runs tokio's current-thread
/// scheduler (`main.rs`): logins (argon2 on the blocking pool), rotations and
/// logouts (store commits on the blocking pool) work on it, and what they
/// acknowledged survives `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_logs_in_rotates_and_logs_out_durably() {
    const ONE: &[(&str, &str)] = &[("TOKIO_WORKER_THREADS", "1")];
    let dir = site(&["alice"]);
    let gw = Gatehouse::start_with(dir.path(), ONE, config).await;
    assert!(
        gw.log().contains("current-thread"),
        "not the current-thread scheduler:\n{}",
        gw.log()
    );
    let a = gw.pair("alice").await;
    let b = gw.rotate(&gw.pair("alice").await.refresh).await;
    assert_eq!(gw.api(&a.access).await, 200, "{}", gw.log());
    assert_eq!(gw.post_bearer("/auth/logout", &a.access).await, 204);
    assert_eq!(gw.api(&a.access).await, 401);
    gw.kill_9().await;

    let gw = Gatehouse::start_with(dir.path(), ONE, config).await;
    assert_eq!(gw.api(&a.access).await, 401, "{}", gw.log());
    assert_eq!(gw.refresh(&a.refresh).await.status, 401);
    let b2 = gw.rotate(&b.refresh).await;
    assert_eq!(gw.api(&b2.access).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_kill_9() {
    let dir = site(&["alice"]);
    let gw = Gatehouse::start(dir.path(), config).await;
    let a = gw.pair("alice").await;
    let b = gw.pair("alice").await;
    let c = gw.pair("alice").await;
    assert_eq!(gw.post_bearer("/auth/logout", &a.access).await, 204);
    let b2 = gw.rotate(&b.refresh).await;
    let c2 = gw.rotate(&c.refresh).await;
    // No graceful shutdown: what a 2xx promised must already be on disk.
    gw.kill_9().await;

    let gw = Gatehouse::start(dir.path(), config).await;
    // The logout holds: A's access token (by jti and family) and its refresh token.
    assert_eq!(gw.api(&a.access).await, 401, "{}", gw.log());
    assert_eq!(gw.refresh(&a.refresh).await.status, 401);
    // The newest token of a family rotated just before the crash still works once.
    let c3 = gw.rotate(&c2.refresh).await;
    assert_eq!(gw.api(&c3.access).await, 200);
    assert_eq!(
        gw.api(&c2.access).await,
        200,
        "rotation does not revoke access tokens"
    );
    // B's first refresh token was spent before the crash: presenting it again
    // is reuse, which revokes B's whole family, the newest tokens included.
    assert_eq!(gw.api(&b2.access).await, 200, "B2 is live before the reuse");
    let reuse = gw.refresh(&b.refresh).await;
    assert_eq!(
        reuse.status, 401,
        "a spent refresh token worked after a crash"
    );
    assert_eq!(reuse.json()["error"], "invalid_grant");
    assert_eq!(
        gw.refresh(&b2.refresh).await.status,
        401,
        "reuse left B2 alive"
    );
    assert_eq!(
        gw.api(&b2.access).await,
        401,
        "reuse left B2's access token alive"
    );
    assert_eq!(gw.api(&b.access).await, 401);
    // C's family is untouched by B's reuse.
    assert_eq!(gw.api(&c3.access).await, 200);

    // And the reuse revocation itself is durable.
    gw.kill_9().await;
    let gw = Gatehouse::start(dir.path(), config).await;
    assert_eq!(gw.api(&b2.access).await, 401, "{}", gw.log());
    assert_eq!(gw.refresh(&b2.refresh).await.status, 401);
    assert_eq!(gw.api(&c3.access).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_key_survives_a_restart() {
    let dir = site(&["alice"]);
    let gw = Gatehouse::start(dir.path(), config).await;
    let kids = gw.jwks_kids().await;
    assert_eq!(kids.len(), 1, "one generated key: {kids:?}");
    let pair = gw.pair("alice").await;
    let header = jsonwebtoken::decode_header(&pair.access).unwrap();
    assert_eq!(header.kid.as_deref(), Some(kids[0].as_str()));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(gw.api(&pair.access).await, 200);
    gw.stop().await;

    let state = dir.path().join("state");
    let key = state.join("signing-key.pem");
    let mode = std::fs::metadata(&key)
        .unwrap_or_else(|e| panic!("{}: {e}", key.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "signing-key.pem mode {mode:o}");
    let dir_mode = std::fs::metadata(&state).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "state dir mode {dir_mode:o}");
    let pem_before = std::fs::read(&key).unwrap();

    let gw = Gatehouse::start(dir.path(), config).await;
    assert_eq!(
        gw.jwks_kids().await,
        kids,
        "the kid changed across a restart"
    );
    assert_eq!(gw.api(&pair.access).await, 200, "{}", gw.log());
    // And the refresh token, signed by the same key, still verifies.
    gw.rotate(&pair.refresh).await;
    assert_eq!(
        std::fs::read(&key).unwrap(),
        pem_before,
        "the key was rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_all_survives_a_restart() {
    let dir = site(&["alice"]);
    let gw = Gatehouse::start(dir.path(), config).await;
    let old = gw.pair("alice").await;
    assert_eq!(gw.api(&old.access).await, 200);
    assert_eq!(gw.post_bearer("/auth/logout-all", &old.access).await, 204);
    assert_eq!(gw.api(&old.access).await, 401);
    gw.stop().await;

    let gw = Gatehouse::start(dir.path(), config).await;
    assert_eq!(gw.api(&old.access).await, 401, "{}", gw.log());
    assert_eq!(gw.refresh(&old.refresh).await.status, 401);
    // Only tokens issued before the logout-all are refused.
    let new = gw.pair("alice").await;
    assert_eq!(gw.api(&new.access).await, 200, "{}", gw.log());
}

// === reloads ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_users_file() {
    let dir = site(&["alice"]);
    let gw = Gatehouse::start(dir.path(), config).await;
    let bob = gw.login("bob", PASSWORD).await;
    assert_eq!(bob.status, 401);
    assert_eq!(bob.json()["error"], "invalid_credentials");
    let alice = gw.pair("alice").await;
    assert_eq!(gw.post_bearer("/auth/logout", &alice.access).await, 204);
    assert_eq!(gw.api(&alice.access).await, 401);

    write_users(dir.path(), &["alice", "bob"]);
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    let bob = loop {
        let r = gw.login("bob", PASSWORD).await;
        if r.status == 200 {
            break Pair::of(&r);
        }
        assert!(
            Instant::now() < deadline,
            "bob cannot log in 5 s after SIGHUP ({}):\n{}",
            r.status,
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(gw.api(&bob.access).await, 200);

    // Revocations live beside the snapshot, not in it: the reload keeps them.
    assert_eq!(gw.api(&alice.access).await, 401, "{}", gw.log());
    assert_eq!(gw.refresh(&alice.refresh).await.status, 401);
}

// === check ===

#[tokio::test]
async fn check_reports_a_bad_users_file_hash() {
    let dir = tempfile::tempdir().unwrap();
    let users = format!(
        "{}[[users]]\nusername = \"bob\"\npassword_hash = \"$argon2id$v=19$m=19456,t=2,p=1$truncated\"\n",
        user("alice")
    );
    let line = users
        .lines()
        .position(|l| l.contains("$truncated"))
        .unwrap()
        + 1;
    std::fs::write(dir.path().join("users.toml"), users).unwrap();
    let (listen, admin) = free_addrs();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config(listen, admin)).unwrap();

    let mut cmd = Command::new(BIN);
    cmd.args(["check", "-c"]).arg(&path);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    // The column of the value (after `password_hash = `), 1-based.
    let at = format!("{}:{line}:17: ", dir.path().join("users.toml").display());
    let diag = stderr
        .lines()
        .find(|l| l.starts_with(&at))
        .unwrap_or_else(|| panic!("want `{at}...` in:\n{stderr}"));
    assert!(
        diag.contains("bob") && diag.contains("password_hash"),
        "{diag}"
    );
    assert!(
        !dir.path().join("state").exists(),
        "check wrote the state dir"
    );
}

// === one state directory, one process ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_the_same_state_dir_fails_clearly() {
    let dir = site(&["alice"]);
    let first = Gatehouse::start(dir.path(), config).await;

    let (listen, admin) = free_addrs();
    let path = dir.path().join("second.toml");
    std::fs::write(&path, config(listen, admin)).unwrap();
    let mut second = Gatehouse::spawn(&path, listen, admin);
    let status = second
        .exited_within(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("the second instance kept running:\n{}", second.log()));
    let log = second.log();
    assert_eq!(status.code(), Some(1), "{status}:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    let db = dir.path().join("state").join("state.redb");
    assert!(
        log.contains(&format!("{} is already open", db.display())),
        "no clear message naming the state file:\n{log}"
    );
    assert!(log.contains("another gatehouse"), "{log}");
    // It let go of its ports.
    assert!(std::net::TcpStream::connect(listen).is_err());

    // The first one is unaffected.
    let pair = first.pair("alice").await;
    assert_eq!(first.api(&pair.access).await, 200, "{}", first.log());
    assert_eq!(
        status_of(&first.admin_url("/readyz")).await,
        Some(StatusCode::OK)
    );
    first.stop().await;
}
