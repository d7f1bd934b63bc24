//! `[server] request_id`: every request gets an id, in the header the
//! upstream and the client see; a trusted proxy's id is kept, a client's is
//! not.
mod support;

use jsonwebtoken::Algorithm;
use support::*;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/"
upstream = "up"
"#;

fn bearer() -> String {
    format!(
        "Bearer {}",
        sign(Algorithm::HS256, Some("hs"), &claims("alice"))
    )
}

async fn gateway(up: &TestUpstream, server: &str) -> TestGateway {
    let config =
        config_with(up.addr, ROUTES).replacen("[server]\n", &format!("[server]\n{server}\n"), 1);
    TestGateway::start(&config).await
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '4',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        })
}

#[tokio::test]
async fn each_request_gets_an_id_the_upstream_and_the_client_see() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, "request_id = \"X-Request-Id\"").await;
    let auth = bearer();
    let a = get(&gw.url("/a"), &[("authorization", &auth)]).await;
    let b = get(&gw.url("/a"), &[("authorization", &auth)]).await;
    assert_eq!(a.status, 200);
    let id = a.headers["x-request-id"].to_str().unwrap();
    assert!(is_uuid(id), "{id}");
    assert_eq!(a.upstream_header("x-request-id").as_deref(), Some(id));
    assert_ne!(b.headers["x-request-id"], a.headers["x-request-id"]);

    // A client's own id is replaced (it is not a trusted proxy).
    let r = get(
        &gw.url("/a"),
        &[("authorization", &auth), ("x-request-id", "mine")],
    )
    .await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert!(is_uuid(id), "{id}");
    assert_eq!(r.upstream_header("x-request-id").as_deref(), Some(id));

    // The gateway's own answers carry one too.
    let r = get(&gw.url("/a"), &[]).await;
    assert_eq!(r.status, 401);
    assert!(is_uuid(r.headers["x-request-id"].to_str().unwrap()));
}

#[tokio::test]
async fn a_trusted_proxys_id_is_kept() {
    let up = TestUpstream::start().await;
    let gw = gateway(
        &up,
        "request_id = \"X-Request-Id\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    )
    .await;
    let r = get(
        &gw.url("/a"),
        &[("authorization", &bearer()), ("x-request-id", "lb-7f3a")],
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "lb-7f3a");
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("lb-7f3a")
    );
}

#[tokio::test]
async fn off_by_default_and_checked() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, "").await;
    let r = get(
        &gw.url("/a"),
        &[("authorization", &bearer()), ("x-request-id", "mine")],
    )
    .await;
    // Without the setting the header is just another header.
    assert_eq!(r.upstream_header("x-request-id").as_deref(), Some("mine"));
    assert!(!r.headers.contains_key("x-request-id"));

    for (value, why) in [
        ("Authorization", "has a meaning of its own"),
        ("bad name", "not a valid header name"),
        // Dropped (hop-by-hop) or set by the gateway on the way up.
        ("Keep-Alive", "has a meaning of its own"),
        ("Proxy-Connection", "has a meaning of its own"),
        ("Trailer", "has a meaning of its own"),
        ("Proxy-Authorization", "has a meaning of its own"),
        ("X-Forwarded-Proto", "has a meaning of its own"),
        ("X-Auth-Subject", "is an [identity] header"),
    ] {
        let config = config_with(up.addr, ROUTES).replacen(
            "[server]\n",
            &format!("[server]\nrequest_id = \"{value}\"\n"),
            1,
        );
        let err = TestGateway::try_start(&config)
            .await
            .err()
            .expect("refused");
        assert!(err.contains(why), "{value}: {err}");
    }
}

/// A client can name any header in `Connection`, and the gateway drops
/// what it names: not the id, which the upstream must get all the same.
#[tokio::test]
async fn the_id_reaches_the_upstream_even_if_connection_names_it() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, "request_id = \"X-Request-Id\"").await;
    let r = get(
        &gw.url("/a"),
        &[("authorization", &bearer()), ("connection", "x-request-id")],
    )
    .await;
    assert_eq!(r.status, 200);
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(r.upstream_header("x-request-id").as_deref(), Some(id));
}

/// The 400 for `Content-Length` with `Transfer-Encoding` is made before
/// the request is dispatched; it carries an id too.
#[tokio::test]
async fn the_framing_400_carries_an_id() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, "request_id = \"X-Request-Id\"").await;
    let reply = raw(
        gw.addr,
        b"POST /a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 400"), "{reply}");
    assert!(reply.contains("x-request-id: "), "{reply}");
}
