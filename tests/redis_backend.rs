//! `[state] backend = "redis"`: the shared store, against a real
//! `redis-server` (SPEC §3: several instances see one another's logins,
//! rotations and revocations, a revocation within one second).
mod support;

use std::time::{Duration, Instant};

use gatehouse::store::redis::RedisStore;
use gatehouse::store::{Family, Revocation, RotateRequest, Rotation, Store};
use serde_json::json;
use support::redis::RedisServer;
use support::*;

fn now() -> u64 {
    gatehouse::auth::issue::now()
}

fn family(id: &str, current: &str) -> Family {
    Family {
        id: id.to_owned(),
        subject: "alice".to_owned(),
        roles: vec!["admin".to_owned()],
        claims: serde_json::json!({ "tenant": "acme", "groups": [] })
            .as_object()
            .unwrap()
            .clone(),
        current: current.to_owned(),
        previous: None,
        rotated_at: now(),
        exp: now() + 3600,
        revoked: false,
    }
}

fn req<'a>(family: &'a str, presented: &'a str, next: &'a str) -> RotateRequest<'a> {
    RotateRequest {
        family,
        presented,
        next,
        now: now(),
        exp: now() + 7200,
        grace: 0,
    }
}

async fn store() -> (RedisServer, RedisStore) {
    let server = RedisServer::start().await;
    let store = RedisStore::connect(&server.url, &Default::default())
        .await
        .unwrap();
    (server, store)
}

#[tokio::test]
async fn families_insert_once_and_rotate_by_the_rules() {
    let (_server, store) = store().await;
    let f = family("f1", "r1");
    store.insert_family(&f).await.unwrap();
    assert!(store.insert_family(&f).await.is_err(), "a duplicate id");
    let Rotation::Rotated(after) = store.rotate(req("f1", "r1", "r2")).await.unwrap() else {
        panic!("the current token rotates");
    };
    assert_eq!(after.current, "r2");
    assert_eq!(after.previous.as_deref(), Some("r1"));
    assert_eq!(
        (after.roles, after.claims),
        (f.roles.clone(), f.claims.clone())
    );
    // The previous token within grace: refused, nothing changes.
    let grace = RotateRequest {
        grace: 60,
        ..req("f1", "r1", "r3")
    };
    assert_eq!(store.rotate(grace).await.unwrap(), Rotation::Grace);
    // Without grace: a replay. The family is revoked, and logged.
    let reused = store.rotate(req("f1", "r1", "r3")).await.unwrap();
    assert_eq!(
        reused,
        Rotation::Reused {
            subject: "alice".into()
        }
    );
    assert_eq!(
        store.rotate(req("f1", "r2", "r3")).await.unwrap(),
        Rotation::Revoked
    );
    assert_eq!(
        store.rotate(req("nope", "r1", "r2")).await.unwrap(),
        Rotation::Unknown
    );
    let live = store.live_revocations(now()).await.unwrap();
    assert!(
        live.iter()
            .any(|r| matches!(r, Revocation::Family { id, .. } if id == "f1"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rotations_have_one_winner() {
    let (_server, store) = store().await;
    store.insert_family(&family("f1", "r1")).await.unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let next = format!("next-{i}");
                store.rotate(req("f1", "r1", &next)).await.unwrap()
            })
        })
        .collect();
    let mut rotated = 0;
    for t in tasks {
        rotated += usize::from(matches!(t.await.unwrap(), Rotation::Rotated(_)));
    }
    assert_eq!(rotated, 1);
}

#[tokio::test]
async fn revocations_keep_the_later_until_and_cutoff_and_are_logged() {
    let (_server, store) = store().await;
    let start = store.log_position().await.unwrap();
    let t = now();
    store.revoke_jti("j1", t + 100).await.unwrap();
    store.revoke_jti("j1", t + 50).await.unwrap();
    store.insert_family(&family("f1", "r1")).await.unwrap();
    store.revoke_family("f1", t + 200).await.unwrap();
    store
        .revoke_subject("2:idalice", t - 10, t + 300)
        .await
        .unwrap();
    store
        .revoke_subject("2:idalice", t - 20, t + 100)
        .await
        .unwrap();
    store.revoke_jti("gone", t - 1).await.unwrap();
    let mut live = store.live_revocations(t).await.unwrap();
    live.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(
        live,
        [
            Revocation::Family {
                id: "f1".into(),
                until: t + 200
            },
            Revocation::Jti {
                jti: "j1".into(),
                until: t + 100
            },
            Revocation::Subject {
                subject: "2:idalice".into(),
                cutoff: t - 10,
                until: t + 300
            },
        ]
    );
    assert_eq!(
        store.rotate(req("f1", "r1", "r2")).await.unwrap(),
        Rotation::Revoked
    );
    // The log holds each, in order, with what was kept.
    let (logged, end) = store.revocations_since(&start).await.unwrap();
    assert_eq!(logged.len(), 6, "{logged:?}");
    assert_eq!(
        logged[1],
        Revocation::Jti {
            jti: "j1".into(),
            until: t + 100
        }
    );
    assert_eq!(
        logged[3],
        Revocation::Subject {
            subject: "2:idalice".into(),
            cutoff: t - 10,
            until: t + 300
        }
    );
    let (none, same) = store.revocations_since(&end).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(same, end);
    assert_eq!(store.log_position().await.unwrap(), end);
}

#[tokio::test]
async fn edges_match_the_embedded_store() {
    let (_server, store) = store().await;
    // A family lives through its `exp` second.
    let t = now();
    let f = Family {
        exp: t,
        ..family("f1", "r1")
    };
    store.insert_family(&f).await.unwrap();
    let r = RotateRequest {
        now: t,
        ..req("f1", "r1", "r2")
    };
    assert!(matches!(
        store.rotate(r).await.unwrap(),
        Rotation::Rotated(_)
    ));
    // A token of another issuer may claim any `exp`: its logout still works.
    store
        .revoke_jti("far", 10_000_000_000_000_000)
        .await
        .unwrap();
    let live = store.live_revocations(now()).await.unwrap();
    assert!(
        live.iter()
            .any(|r| matches!(r, Revocation::Jti { jti, .. } if jti == "far"))
    );
}

#[tokio::test]
async fn a_unix_socket_url_reaches_the_same_server() {
    let server = RedisServer::start().await;
    let tcp = RedisStore::connect(&server.url, &Default::default())
        .await
        .unwrap();
    tcp.revoke_jti("j1", now() + 60).await.unwrap();
    // The socket appears a moment after the TCP port.
    let mut unix = RedisStore::connect(&server.unix_url, &Default::default()).await;
    for _ in 0..50 {
        if unix.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        unix = RedisStore::connect(&server.unix_url, &Default::default()).await;
    }
    let live = unix.unwrap().live_revocations(now()).await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
}

#[tokio::test]
async fn an_unreachable_redis_is_an_error_not_a_hang() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}/0", closed.local_addr().unwrap());
    drop(closed);
    assert!(
        RedisStore::connect(&url, &Default::default())
            .await
            .is_err()
    );
    assert!(
        RedisStore::connect("http://x", &Default::default())
            .await
            .is_err()
    );
}

// === two gateways sharing one Redis ===

/// `alice`, bcrypt (fast in debug builds).
fn users_toml() -> String {
    let hash = bcrypt::hash("pw", 4).unwrap();
    format!("[[users]]\nusername = \"alice\"\npassword_hash = \"{hash}\"\nroles = [\"user\"]\n")
}

/// A gateway on the Redis at `url`, signing with the HS256 secret every
/// test gateway's directory holds (`hs.secret`): the same key everywhere.
fn config(up: std::net::SocketAddr, url: &str) -> String {
    format!(
        r#"
[server]
admin_listen = ""

[state]
backend = "redis"
url = "{url}"

[tokens]
leeway = "0s"

[[keys]]
id = "shared"
algorithm = "HS256"
secret_file = "hs.secret"
sign = true

[login]
users_file = "users.toml"
rate_limit_per_ip = "100000/min"
rate_limit_per_user = "100000/min"

[[upstreams]]
name = "up"
targets = ["http://{up}"]

[[routes]]
path_prefix = "/api/"
upstream = "up"
"#
    )
}

async fn gateway(up: &TestUpstream, redis: &RedisServer) -> TestGateway {
    let users = users_toml();
    TestGateway::start_with_files(&config(up.addr, &redis.url), &[("users.toml", &users)]).await
}

async fn login(gw: &TestGateway) -> Pair {
    let creds = json!({ "username": "alice", "password": "pw" });
    Pair::of(&post_json(&gw.url("/auth/login"), &[], &creds).await)
}

async fn refresh(gw: &TestGateway, token: &str) -> Reply {
    let body = json!({ "refresh_token": token });
    post_json(&gw.url("/auth/refresh"), &[], &body).await
}

/// How long until `token` is refused at `gw` (polled every 20 ms, up to 5 s).
async fn refused_after(gw: &TestGateway, token: &str) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if get_with_token(&gw.url("/api/x"), token).await.status == 401 {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test]
async fn a_logout_at_one_instance_is_seen_by_the_other_within_a_second() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start().await;
    let (a, b) = (gateway(&up, &redis).await, gateway(&up, &redis).await);
    let pair = login(&a).await;
    // Issued at A, good at B (and cached there).
    assert_eq!(
        get_with_token(&b.url("/api/x"), &pair.access).await.status,
        200
    );

    let bearer = format!("Bearer {}", pair.access);
    let r = post_json(
        &a.url("/auth/logout"),
        &[("authorization", &bearer)],
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 204);
    let seen = refused_after(&b, &pair.access).await;
    assert!(
        seen.is_some_and(|d| d < Duration::from_secs(1)),
        "B refused the logged-out token after {seen:?}"
    );
    let r = get_with_token(&b.url("/api/x"), &pair.access).await;
    assert!(r.www_authenticate().unwrap().contains("revoked"));
    // Its refresh family too, at B.
    let r = refresh(&b, &pair.refresh).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_grant");

    // A gateway started afterwards loads it from Redis.
    let c = gateway(&up, &redis).await;
    assert_eq!(
        get_with_token(&c.url("/api/x"), &pair.access).await.status,
        401
    );
}

#[tokio::test]
async fn a_burst_of_revocations_is_followed_to_its_end_within_a_second() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start().await;
    let b = gateway(&up, &redis).await;
    let other = RedisStore::connect(&redis.url, &Default::default())
        .await
        .unwrap();
    let before = b.shared.revocations.len();
    for i in 0..2500 {
        other
            .revoke_jti(&format!("j{i}"), now() + 600)
            .await
            .unwrap();
    }
    let start = Instant::now();
    while b.shared.revocations.len() < before + 2500 && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    assert_eq!(b.shared.revocations.len(), before + 2500);
    assert!(took < Duration::from_secs(1), "{took:?}");
}

#[tokio::test]
async fn a_refresh_token_replayed_at_another_instance_ends_the_session_everywhere() {
    let redis = RedisServer::start().await;
    let up = TestUpstream::start().await;
    let (a, b) = (gateway(&up, &redis).await, gateway(&up, &redis).await);
    let first = login(&a).await;
    // Rotated at B: the family lives in Redis, not in A.
    let second = Pair::of(&refresh(&b, &first.refresh).await);
    assert_eq!(
        get_with_token(&a.url("/api/x"), &second.access)
            .await
            .status,
        200
    );
    // The spent token again, at A: a replay. The whole family goes.
    let r = refresh(&a, &first.refresh).await;
    assert_eq!(r.status, 401);
    assert_eq!(refresh(&b, &second.refresh).await.status, 401);
    assert!(refused_after(&b, &second.access).await.is_some());
    assert!(refused_after(&a, &second.access).await.is_some());
}

#[tokio::test]
async fn when_redis_goes_away_readiness_drops_and_logins_fail_fast() {
    let mut redis = RedisServer::start().await;
    let up = TestUpstream::start().await;
    let gw = gateway(&up, &redis).await;
    let pair = login(&gw).await;
    assert!(gw.shared.store_ready());
    redis.stop();
    let start = Instant::now();
    while gw.shared.store_ready() && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!gw.shared.store_ready(), "still ready without redis");
    // What needs the store: 503 within its timeout, not a hang.
    let creds = json!({ "username": "alice", "password": "pw" });
    let asked = Instant::now();
    let r = post_json(&gw.url("/auth/login"), &[], &creds).await;
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert_eq!(refresh(&gw, &pair.refresh).await.status, 503);
    // What does not: a verified token still passes.
    assert_eq!(
        get_with_token(&gw.url("/api/x"), &pair.access).await.status,
        200
    );
}

#[tokio::test]
async fn check_wants_a_url_and_a_shared_signing_key() {
    let redis_without_key = r#"
[state]
backend = "redis"
url = "redis://127.0.0.1:6379/0"

[[upstreams]]
name = "up"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/"
upstream = "up"
"#;
    let err = TestGateway::try_start(redis_without_key)
        .await
        .err()
        .unwrap();
    assert!(err.contains("sign = true"), "{err}");
    let no_url = redis_without_key.replace("url = \"redis://127.0.0.1:6379/0\"\n", "");
    let err = TestGateway::try_start(&no_url).await.err().unwrap();
    assert!(err.contains("needs `url"), "{err}");
    let insecure = redis_without_key
        .replace("/0\"", "/0#insecure\"")
        .replace("redis://", "rediss://");
    let err = TestGateway::try_start(&insecure).await.err().unwrap();
    assert!(err.contains("#insecure"), "{err}");
    let http = redis_without_key.replace("redis://", "http://");
    let err = TestGateway::try_start(&http).await.err().unwrap();
    assert!(err.contains("not a redis://"), "{err}");
}

#[tokio::test]
async fn no_redis_at_start_is_an_error_that_names_no_password() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://:hunter2@{}/0", closed.local_addr().unwrap());
    drop(closed);
    let up = TestUpstream::start().await;
    let users = users_toml();
    let err = TestGateway::try_start_with_files(&config(up.addr, &url), &[("users.toml", &users)])
        .await
        .err()
        .unwrap();
    assert!(err.contains("redis"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// The real binary on `rediss://`: Redis's certificate is checked against
/// the system's roots, or `SSL_CERT_FILE`'s, as the JWKS fetch's is.
#[tokio::test]
async fn rediss_urls_check_the_servers_certificate() {
    use support::process::{Gatehouse, on_ports, trusting_only};
    let redis = RedisServer::start().await;
    let up = TestUpstream::start().await;
    let users =
        |dir: &std::path::Path| std::fs::write(dir.join("users.toml"), users_toml()).unwrap();
    let with_ports = |listen, admin| on_ports(&config(up.addr, &redis.tls_url), listen, admin);

    let dir = tempfile::tempdir().unwrap();
    users(dir.path());
    let env = trusting_only(dir.path(), "a");
    let gh = Gatehouse::start_with(dir.path(), &env, with_ports).await;
    // Over TLS: the plain port sees what the gateway wrote.
    logout_reaches(|p| gh.url(p), &redis).await;

    // Trusting another certificate only: the gateway does not start.
    let dir = tempfile::tempdir().unwrap();
    users(dir.path());
    let env = trusting_only(dir.path(), "b");
    let (listen, admin) = (
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    );
    let path = write_config(dir.path(), &with_ports(listen, admin));
    let mut gh = Gatehouse::spawn_with(&path, listen, admin, &env);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = gh.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still running:\n{}",
            gh.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!status.success());
    let log = gh.log();
    assert!(
        log.contains("connect to redis: invalid peer certificate"),
        "{log}"
    );
}

/// `[state] ca_file` and `client_cert` for a Redis whose TLS port requires
/// client certificates (`tls-auth-clients yes`, redis-server's default):
/// with both, logins and logouts reach it; without the certificate the
/// gateway does not start. Neither file is needed for a plain URL.
#[tokio::test]
async fn rediss_with_a_ca_file_and_a_client_certificate() {
    let redis = RedisServer::start_with(true).await;
    let up = TestUpstream::start().await;
    let certs = tls_dir();
    let tls = format!(
        "url = \"{}\"\nca_file = \"{}\"",
        redis.tls_url,
        certs.join("a.cert.pem").display()
    );
    let client = format!(
        "client_cert = {{ cert = \"{}\", key = \"{}\" }}",
        certs.join("client.cert.pem").display(),
        certs.join("client.key.pem").display()
    );
    let with = |extra: &str| {
        config(up.addr, &redis.tls_url).replace(
            &format!("url = \"{}\"", redis.tls_url),
            &format!("{tls}\n{extra}"),
        )
    };
    let users = users_toml();
    let gw = TestGateway::start_with_files(&with(&client), &[("users.toml", &users)]).await;
    logout_reaches(|p| gw.url(p), &redis).await;

    let err = TestGateway::try_start_with_files(&with(""), &[("users.toml", &users)])
        .await
        .err()
        .expect("no client certificate: Redis refuses the handshake");
    assert!(err.contains("redis"), "{err}");

    let plain_url = config(up.addr, &redis.url).replace(
        &format!("url = \"{}\"", redis.url),
        &format!("url = \"{}\"\n{client}", redis.url),
    );
    let err = TestGateway::try_start_with_files(&plain_url, &[("users.toml", &users)])
        .await
        .err()
        .unwrap();
    assert!(err.contains("are for a rediss:// url"), "{err}");
}

/// Logs alice in at `gw_url` and out again (204), then checks through
/// Redis's plain port that the logout reached the server.
async fn logout_reaches(gw_url: impl Fn(&str) -> String, redis: &RedisServer) {
    let creds = json!({ "username": "alice", "password": "pw" });
    let pair = Pair::of(&post_json(&gw_url("/auth/login"), &[], &creds).await);
    let bearer = format!("Bearer {}", pair.access);
    let r = post_json(
        &gw_url("/auth/logout"),
        &[("authorization", &bearer)],
        &json!({}),
    )
    .await;
    assert_eq!(r.status, 204);
    let plain = RedisStore::connect(&redis.url, &Default::default())
        .await
        .unwrap();
    let live = plain.live_revocations(now()).await.unwrap();
    assert!(
        live.iter().any(|r| matches!(r, Revocation::Family { .. })),
        "{live:?}"
    );
}
