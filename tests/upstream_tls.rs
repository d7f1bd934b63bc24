//! `https://` upstream targets: requests go over TLS, the target's
//! certificate is checked against the upstream's `ca_file` (or the system's
//! roots) and must name the target's host; connections are kept alive as
//! plain ones are; a target whose certificate fails is a 502, as one that
//! refuses connections is; health checks probe over TLS too.
mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use support::process::{Gatehouse, on_ports, trusting_only};
use support::*;

/// `pool_config` for `targets` trusting the test certificate `ca` only.
fn tls_config(targets: &[String], ca: &str, extra: &str) -> String {
    let ca = tls_dir().join(format!("{ca}.cert.pem"));
    pool_config(targets, &format!("ca_file = \"{}\"\n{extra}", ca.display()))
}

#[tokio::test]
async fn https_targets_are_proxied_over_tls_on_kept_alive_connections() {
    let up = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let target = format!("https://localhost:{}", up.addr.port());
    let gw = TestGateway::start(&tls_config(&[target], "a", "")).await;

    for i in 0..5 {
        let r = get(&gw.url(&format!("/items/{i}?q=1")), &[("x-trace", "t")]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let echo = r.json();
        assert_eq!(echo["path"], format!("/items/{i}"));
        assert_eq!(echo["query"], "q=1");
        // The client's Host is passed on, as for plain targets.
        assert_eq!(r.upstream_header("host").unwrap(), gw.addr.to_string());
        assert_eq!(r.upstream_header("x-trace").unwrap(), "t");
    }
    // A body goes through too.
    let r = post_json(&gw.url("/upload"), &[], &json!({"k": "v".repeat(10_000)})).await;
    assert_eq!(r.status, 200);
    assert!(r.json()["bytes"].as_u64().unwrap() > 10_000);

    assert_eq!(up.hits(), 6);
    assert_eq!(
        up.connections.load(Ordering::SeqCst),
        1,
        "one TLS connection, kept alive across the requests"
    );
}

#[tokio::test]
async fn an_ip_address_target_is_checked_against_the_certificates_ip() {
    let up = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let target = format!("https://{}", up.addr);
    let gw = TestGateway::start(&tls_config(&[target], "a", "")).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

/// An untrusted certificate, or one for another name, never reaches the
/// upstream with a request: 502, and the log says why.
#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_a_502() {
    // `b` is self-signed by another key than the `a` the gateway trusts.
    let untrusted = TestUpstream::start_tls("127.0.0.1:0", "b").await;
    // `a`, but on an address its certificate does not name.
    let misnamed = TestUpstream::start_tls("127.0.0.2:0", "a").await;
    for (up, why) in [
        (&untrusted, "invalid peer certificate"),
        (&misnamed, "not valid for name \"127.0.0.2\""),
    ] {
        let (log, _capture) = capture_logs();
        let target = format!("https://{}", up.addr);
        let gw = TestGateway::start(&tls_config(&[target], "a", "")).await;
        let r = get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(up.hits(), 0);
        let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
        assert!(log.contains("upstream request failed"), "{log}");
        assert!(log.contains(why), "{log}");
    }
}

/// `server_name`: asked for (SNI) and checked in place of the target's
/// host, as nginx's `proxy_ssl_name` and Envoy's `sni` do; the `Host` the
/// upstream gets does not change.
#[tokio::test]
async fn server_name_is_the_name_asked_for_and_checked() {
    // `a` on an address its certificate does not name, reached by its name.
    let up = TestUpstream::start_tls("127.0.0.2:0", "a").await;
    let target = format!("https://{}", up.addr);
    let gw = TestGateway::start(&tls_config(
        &[target],
        "a",
        "server_name = \"localhost\"\npreserve_host = false",
    ))
    .await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.upstream_header("host").unwrap(), up.addr.to_string());
    assert_eq!(*up.server_names.lock().unwrap(), ["localhost"]);

    // A name the certificate does not carry: 502, and no request arrives.
    let (log, _capture) = capture_logs();
    let target = format!("https://localhost:{}", up.addr.port());
    let gw = TestGateway::start(&tls_config(
        &[target.replace("localhost", "127.0.0.2")],
        "a",
        "server_name = \"api.internal\"",
    ))
    .await;
    let hits = up.hits();
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 502);
    assert_eq!(up.hits(), hits);
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(log.contains("not valid for name \"api.internal\""), "{log}");

    for (extra, targets, why) in [
        (
            "server_name = \"localhost\"",
            vec!["http://127.0.0.1:9".to_string()],
            "server_name needs an https:// target",
        ),
        (
            "server_name = \"not a name\"",
            vec![target],
            "is not a DNS name or IP address",
        ),
    ] {
        let config = pool_config(&targets, extra);
        let err = TestGateway::try_start(&config).await.err().unwrap();
        assert!(err.contains(why), "{extra}: {err}");
    }
}

/// The same port spoken to in plain HTTP is no answer either: 502.
#[tokio::test]
async fn plain_http_to_a_tls_port_is_a_502() {
    let up = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let gw = TestGateway::start(&pool_config(&[format!("http://{}", up.addr)], "")).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.hits(), 0);
}

/// Health checks reach `https://` targets over TLS, checked as requests
/// are: the target with an untrusted certificate is taken out.
#[tokio::test]
async fn health_checks_probe_https_targets_over_tls() {
    let good = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let bad = TestUpstream::start_tls("127.0.0.1:0", "b").await;
    let targets = [
        format!("https://localhost:{}", good.addr.port()),
        format!("https://localhost:{}", bad.addr.port()),
    ];
    let hc = r#"health_check = { path = "/healthz", interval = "100ms" }"#;
    let gw = TestGateway::start(&tls_config(&targets, "a", hc)).await;
    let admin = gw.admin().await;
    let series = |port: u16| {
        format!(
            "gatehouse_upstream_target_up{{upstream=\"pool\",target=\"https://localhost:{port}\"}}"
        )
    };
    let settled = eventually(Duration::from_secs(10), || async {
        let text = scrape(admin).await;
        metric(&text, &series(bad.addr.port())) == Some(0)
            && metric(&text, &series(good.addr.port())) == Some(1)
    });
    assert!(settled.await, "{}", scrape(admin).await);
    assert!(good.hits() >= 2, "the good target's probes arrived");
    assert_eq!(bad.hits(), 0, "no probe got past the untrusted certificate");
}

/// `check` refuses `https://` targets without a `ca_file` when the system
/// has no trusted roots, and says what to do.
#[tokio::test]
async fn check_wants_roots_for_https_targets() {
    let dir = tempfile::tempdir().unwrap();
    let config = pool_config(&["https://localhost:8443".to_string()], "");
    let path = write_config(dir.path(), &config);
    let mut cmd = std::process::Command::new(support::process::BIN);
    cmd.args(["check", "-c"]).arg(&path);
    cmd.env("SSL_CERT_FILE", dir.path().join("none.pem"));
    cmd.env("SSL_CERT_DIR", dir.path().join("no-dir"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no trusted root certificates"), "{stderr}");
    assert!(stderr.contains("give the upstream a ca_file"), "{stderr}");
}

/// `preserve_host = false`: the target's host and port as `Host` (an
/// upstream that routes by its own name behind TLS), the client's in
/// `X-Forwarded-Host`; by default the client's `Host` is passed on.
#[tokio::test]
async fn preserve_host_false_sends_the_targets_host() {
    let up = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let target = format!("https://localhost:{}", up.addr.port());
    for (extra, host) in [
        (
            "preserve_host = false",
            format!("localhost:{}", up.addr.port()),
        ),
        ("", "gateway.example:8080".to_string()),
    ] {
        let gw = TestGateway::start(&tls_config(std::slice::from_ref(&target), "a", extra)).await;
        let r = get(&gw.url("/x"), &[("host", "gateway.example:8080")]).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.upstream_header("host").unwrap(), host, "{extra}");
        assert_eq!(
            r.upstream_header("x-forwarded-host").unwrap(),
            "gateway.example:8080"
        );
    }
}

/// `client_cert`: an upstream that requires a client certificate (mTLS)
/// takes the gateway's; without one configured, the handshake fails: 502.
#[tokio::test]
async fn client_cert_is_presented_to_upstreams_that_ask() {
    let up = TestUpstream::start_mtls("127.0.0.1:0", "a").await;
    let target = vec![format!("https://localhost:{}", up.addr.port())];
    let dir = tls_dir();
    let client = format!(
        "client_cert = {{ cert = \"{}\", key = \"{}\" }}",
        dir.join("client.cert.pem").display(),
        dir.join("client.key.pem").display()
    );
    let gw = TestGateway::start(&tls_config(&target, "a", &client)).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(up.hits(), 1);

    let (log, _capture) = capture_logs();
    let gw = TestGateway::start(&tls_config(&target, "a", "")).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(up.hits(), 1, "no request without the certificate");
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(log.contains("upstream request failed"), "{log}");
}

/// `client_cert` files are checked at load: each problem at its line.
#[tokio::test]
async fn bad_client_certs_are_refused_at_load() {
    let dir = tls_dir();
    let target = vec!["https://localhost:8443".to_string()];
    let file = |f: &str| dir.join(f).display().to_string();
    for (cert, key, message) in [
        (file("a.key.pem"), file("client.key.pem"), "no CERTIFICATE"),
        (
            file("client.cert.pem"),
            file("client.cert.pem"),
            "no PEM private key",
        ),
        (
            file("client.cert.pem"),
            file("encrypted.key.pem"),
            "encrypted",
        ),
        (
            file("client.cert.pem"),
            file("a.key.pem"),
            "does not belong to the certificate",
        ),
        (file("client.cert.pem"), "missing.pem".into(), "cannot read"),
    ] {
        let extra = format!("client_cert = {{ cert = \"{cert}\", key = \"{key}\" }}");
        let err = TestGateway::try_start(&tls_config(&target, "a", &extra))
            .await
            .err()
            .unwrap_or_else(|| panic!("{cert} {key}: accepted"));
        assert!(err.contains(message), "{cert} {key}: {err}");
    }
    // On an upstream without https:// targets.
    let extra = format!(
        "client_cert = {{ cert = \"{}\", key = \"{}\" }}",
        file("client.cert.pem"),
        file("client.key.pem")
    );
    let config = pool_config(&["http://127.0.0.1:9".to_string()], &extra);
    let err = TestGateway::try_start(&config).await.err().unwrap();
    assert!(
        err.contains("client_cert needs an https:// target"),
        "{err}"
    );
}

/// `http://` and `https://` to the same host and port are two targets in
/// `/metrics` (the TLS one named with its scheme), not one series twice.
#[tokio::test]
async fn plain_and_tls_targets_have_their_own_metrics_series() {
    let targets = [
        "http://localhost:9".to_string(),
        "https://localhost:9".to_string(),
    ];
    let gw = TestGateway::start(&tls_config(&targets, "a", "")).await;
    let text = scrape(gw.admin().await).await;
    let series =
        |t: &str| format!("gatehouse_upstream_target_up{{upstream=\"pool\",target=\"{t}\"}}");
    assert_eq!(metric(&text, &series("localhost:9")), Some(1), "{text}");
    assert_eq!(
        metric(&text, &series("https://localhost:9")),
        Some(1),
        "{text}"
    );
}

/// Without a `ca_file`, an `https://` target is checked against the
/// system's roots: here `SSL_CERT_FILE`, through the real binary.
#[tokio::test]
async fn without_a_ca_file_the_systems_roots_decide() {
    let up = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let target = format!("https://localhost:{}", up.addr.port());
    for (trusted, status) in [("a", 200), ("b", 502)] {
        let dir = tempfile::tempdir().unwrap();
        let env = trusting_only(dir.path(), trusted);
        let gh = Gatehouse::start_with(dir.path(), &env, |listen, admin| {
            on_ports(
                &pool_config(std::slice::from_ref(&target), ""),
                listen,
                admin,
            )
            // The readiness probe's path stays a 404.
            .replace("path_prefix = \"/\"", "path_prefix = \"/api/\"")
        })
        .await;
        let r = get(&gh.url("/api/x"), &[]).await;
        assert_eq!(
            r.status.as_u16(),
            status,
            "trusting {trusted}: {}",
            gh.log()
        );
    }
    assert_eq!(up.hits(), 1);
}
