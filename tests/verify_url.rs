//! `[login] verify_url`: the gateway asks an existing API whether the
//! credentials are good (SPEC §2): 200 with an account is a login, 401/403
//! an invalid one, anything else (or no answer) a 503 to the client.
mod support;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::process::{Gatehouse, on_ports, trusting_only};
use support::*;

/// A credentials API: `alice`/`pw` is good (subject 42, role admin);
/// `broken` gets a 500; `garbage` a 200 that is not an account; anyone else
/// a 401. Records every JSON body it receives.
async fn credentials_api() -> (std::net::SocketAddr, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let addr = serve_upstream(move |req: Request<Incoming>| {
        let log = Arc::clone(&log);
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            log.lock().unwrap().push(v.clone());
            let (status, answer) = match (v["username"].as_str(), v["password"].as_str()) {
                (Some("alice"), Some("pw")) => (
                    StatusCode::OK,
                    json!({"subject": "42", "roles": ["admin"], "claims": {"email": "a@example.com"}}),
                ),
                (Some("broken"), _) => (StatusCode::INTERNAL_SERVER_ERROR, json!({})),
                (Some("garbage"), _) => (StatusCode::OK, json!({"nope": true})),
                _ => (StatusCode::UNAUTHORIZED, json!({})),
            };
            let mut rsp = Response::new(Full::new(Bytes::from(answer.to_string())));
            *rsp.status_mut() = status;
            Ok::<_, Infallible>(rsp)
        }
    })
    .await;
    (addr, seen)
}

async fn login(gw: &TestGateway, username: &str, password: &str) -> Reply {
    let creds = json!({ "username": username, "password": password });
    post_json(&gw.url("/auth/login"), &[], &creds).await
}

fn config(up: std::net::SocketAddr, verify: &str) -> String {
    config_with(
        up,
        &format!(
            r#"
[login]
verify_url = "{verify}"
rate_limit_per_ip = "1000/min"
rate_limit_per_user = "1000/min"

[[routes]]
path_prefix = "/"
upstream = "up"
"#
        ),
    )
}

#[tokio::test]
async fn a_200_from_verify_url_is_a_login_with_its_subject_roles_and_claims() {
    let up = TestUpstream::start().await;
    let (api, seen) = credentials_api().await;
    let gw = TestGateway::start(&config(up.addr, &format!("http://{api}/verify"))).await;
    let r = login(&gw, "alice", "pw").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(
        seen.lock().unwrap()[0],
        json!({"username": "alice", "password": "pw"})
    );
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let r = get_with_token(&gw.url("/x"), &access).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some("42"));
    assert_eq!(r.upstream_header("x-auth-roles").as_deref(), Some("admin"));
    assert_eq!(
        r.upstream_header("x-auth-email").as_deref(),
        Some("a@example.com")
    );
}

#[tokio::test]
async fn a_401_from_verify_url_is_invalid_credentials() {
    let up = TestUpstream::start().await;
    let (api, _) = credentials_api().await;
    let gw = TestGateway::start(&config(up.addr, &format!("http://{api}/verify"))).await;
    let r = login(&gw, "alice", "wrong").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_credentials");
}

#[tokio::test]
async fn anything_else_from_verify_url_is_a_503() {
    let up = TestUpstream::start().await;
    let (api, _) = credentials_api().await;
    let gw = TestGateway::start(&config(up.addr, &format!("http://{api}/verify"))).await;
    for user in ["broken", "garbage"] {
        let r = login(&gw, user, "pw").await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{user}");
        assert_eq!(r.json()["error"], "temporarily_unavailable");
    }
    // Nothing listening: 503 too.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let gw = TestGateway::start(&config(up.addr, &format!("http://{gone}/verify"))).await;
    let r = login(&gw, "alice", "pw").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn refresh_works_for_verify_url_sessions() {
    let up = TestUpstream::start().await;
    let (api, seen) = credentials_api().await;
    let gw = TestGateway::start(&config(up.addr, &format!("http://{api}/verify"))).await;
    let r = login(&gw, "alice", "pw").await;
    let refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = post_json(
        &gw.url("/auth/refresh"),
        &[],
        &json!({ "refresh_token": refresh }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let access = r.json()["access_token"].as_str().unwrap().to_string();
    let r = get_with_token(&gw.url("/x"), &access).await;
    assert_eq!(r.upstream_header("x-auth-roles").as_deref(), Some("admin"));
    // The credentials API was asked once: at login, not at refresh.
    assert_eq!(seen.lock().unwrap().len(), 1);
}

/// An `https://` verify_url: the credentials API's certificate is checked
/// against the system's roots (`SSL_CERT_FILE` here, as a machine's CA
/// bundle would be), through the real binary. An untrusted one is a 503
/// and the credentials are never sent.
#[tokio::test]
async fn an_https_verify_url_is_checked_against_the_systems_roots() {
    let up = TestUpstream::start().await;
    let (api, seen) = credentials_api().await;
    let tls = tls_front(api, "a").await;
    let url = format!("https://localhost:{}/verify", tls.port());
    for (trusted, status) in [("a", 200), ("b", 503)] {
        let dir = tempfile::tempdir().unwrap();
        let env = trusting_only(dir.path(), trusted);
        let gh = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
            // A route that leaves the readiness probe's path a 404.
            on_ports(&config(up.addr, &url), listen, admin)
                .replace("path_prefix = \"/\"", "path_prefix = \"/api/\"")
        })
        .await;
        let creds = json!({ "username": "alice", "password": "pw" });
        let r = post_json(&gh.url("/auth/login"), &[], &creds).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "trusting {trusted}: {}",
            gh.log()
        );
        if status == 503 {
            assert!(
                gh.log().contains("invalid peer certificate"),
                "{}",
                gh.log()
            );
        }
        // The password is in no log line, whether it was sent or not.
        assert!(!gh.log().contains("\"pw\""), "{}", gh.log());
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the trusting gateway sent them"
    );
}

/// `[login] ca_file`: an `https://` verify_url on a private CA, trusted
/// without touching the process's roots; refused beside an `http://` one.
#[tokio::test]
async fn an_https_verify_url_may_name_its_ca_file() {
    let up = TestUpstream::start().await;
    let (api, seen) = credentials_api().await;
    let tls = tls_front(api, "a").await;
    let url = format!("https://localhost:{}/verify", tls.port());
    let with_ca = |url: &str, name: &str| {
        let file = tls_dir().join(format!("{name}.cert.pem"));
        let ca = format!("[login]\nca_file = \"{}\"\n", file.display());
        config(up.addr, url).replace("[login]\n", &ca)
    };
    let gw = TestGateway::start(&with_ca(&url, "a")).await;
    assert_eq!(login(&gw, "alice", "pw").await.status, StatusCode::OK);
    let gw = TestGateway::start(&with_ca(&url, "b")).await;
    assert_eq!(
        login(&gw, "alice", "pw").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let err = TestGateway::try_start(&with_ca(&format!("http://{api}/verify"), "a"))
        .await
        .err()
        .unwrap();
    assert!(
        err.contains("ca_file needs an https:// verify_url"),
        "{err}"
    );
}

/// Connections to verify_url are kept alive, after failed logins too.
#[tokio::test]
async fn verify_url_connections_are_kept_alive() {
    let up = TestUpstream::start().await;
    let (api, _) = credentials_api().await;
    let (relay, connections) = counting_relay(api).await;
    let gw = TestGateway::start(&config(up.addr, &format!("http://{relay}/verify"))).await;
    for password in ["wrong", "pw", "wrong", "pw", "wrong"] {
        login(&gw, "alice", password).await;
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// Relays each connection to `target`, counting them.
async fn counting_relay(
    target: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(mut up) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            });
        }
    });
    (addr, count)
}
