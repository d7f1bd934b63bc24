//! What upstreams receive (SPEC §4 step 5): hop-by-hop headers dropped, `Via`
//! and `X-Forwarded-*` set, identity headers only from a verified token,
//! round-robin with ejection, the built-in echo, h2c and WebSocket upgrades.
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One public route (`/public/`) and one protected route (`/`) to the upstream.
const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/"
upstream = "up"
"#;

fn hs_token(claims: &Value) -> String {
    sign(Algorithm::HS256, Some("hs"), claims)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Every value of request header `name` as the upstream echo saw it.
fn seen(r: &Reply, name: &str) -> Vec<String> {
    r.json()["headers"][name]
        .as_array()
        .map(|vs| vs.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Adds `lines` to the `[server]` table of a config made by [`config_with`].
fn with_server(config: String, lines: &str) -> String {
    assert!(config.contains("[server]\n"));
    config.replacen("[server]\n", &format!("[server]\n{lines}\n"), 1)
}

// === hop-by-hop and forwarding headers ===

#[tokio::test]
async fn hop_by_hop_headers_and_those_named_in_connection_are_not_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let hop = [
        ("connection", "close, X-Secret"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("trailer", "X-Checksum"),
        ("proxy-authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
        ("proxy-connection", "keep-alive"),
        // Without `Connection: upgrade` this is not an upgrade: just a hop-by-hop header.
        ("upgrade", "h2c"),
        ("x-secret", "for-the-next-hop-only"),
        ("x-kept", "end-to-end"),
    ];
    // The client really sends them: the upstream sees them when asked directly.
    let direct = send(
        Method::GET,
        &format!("http://{}/public/x", up.addr),
        &hop,
        "",
    )
    .await;
    for (name, _) in hop {
        assert!(
            !seen(&direct, name).is_empty(),
            "the test client did not send {name}"
        );
    }

    let r = send(Method::GET, &gw.url("/public/x"), &hop, "").await;
    assert_eq!(r.status, 200);
    for (name, _) in &hop[..hop.len() - 1] {
        assert_eq!(seen(&r, name), Vec::<String>::new(), "{name} was forwarded");
    }
    assert_eq!(seen(&r, "x-kept"), ["end-to-end"]);
}

#[tokio::test]
async fn a_header_named_in_a_keep_alive_connection_header_is_not_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let r = send(
        Method::GET,
        &gw.url("/public/x"),
        &[
            ("connection", "keep-alive"),
            ("connection", "X-Debug-Hop , x-other-hop"),
            ("x-debug-hop", "1"),
            ("x-other-hop", "2"),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    for name in ["connection", "x-debug-hop", "x-other-hop"] {
        assert_eq!(seen(&r, name), Vec::<String>::new(), "{name} was forwarded");
    }
}

/// An upstream whose every answer carries hop-by-hop headers.
async fn hop_by_hop_upstream() -> std::net::SocketAddr {
    serve_upstream(|_req: Request<Incoming>| async {
        let rsp = Response::builder()
            .header("connection", "X-Internal")
            .header("x-internal", "upstream-secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"internal\"")
            .header("upgrade", "h2c")
            .header("x-kept", "end-to-end")
            .body(Full::new(Bytes::from_static(b"ok")))
            .unwrap();
        Ok::<_, std::convert::Infallible>(rsp)
    })
    .await
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_upstream_response_are_not_passed_back() {
    let gw = TestGateway::start(&config_with(hop_by_hop_upstream().await, ROUTES)).await;
    let r = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok");
    for name in ["x-internal", "keep-alive", "proxy-authenticate", "upgrade"] {
        assert!(r.headers.get(name).is_none(), "{name} was passed back");
    }
    // hyper may add its own `connection` for the client hop, but never the upstream's token.
    let connection: Vec<_> = r.headers.get_all("connection").iter().collect();
    assert!(
        connection
            .iter()
            .all(|v| !v.as_bytes().eq_ignore_ascii_case(b"x-internal")),
        "{connection:?}"
    );
    assert_eq!(r.headers["x-kept"], "end-to-end");
}

#[tokio::test]
async fn via_is_added_after_any_via_the_client_sent() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let r = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(seen(&r, "via"), ["1.1 gatehouse"]);
    let r = get(&gw.url("/public/x"), &[("via", "1.0 corp-proxy")]).await;
    let via = seen(&r, "via").join(", ");
    assert_eq!(via, "1.0 corp-proxy, 1.1 gatehouse");
}

#[tokio::test]
async fn an_untrusted_peer_has_its_forwarding_headers_replaced() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let r = get(
        &gw.url("/public/x"),
        &[
            ("host", "app.example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&r, "forwarded"), Vec::<String>::new());
    assert_eq!(seen(&r, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&r, "x-forwarded-host"), ["app.example.com"]);

    // Without any from the client, they are set all the same.
    let r = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(seen(&r, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen(&r, "x-forwarded-proto"), ["http"]);
    assert_eq!(seen(&r, "x-forwarded-host"), [gw.addr.to_string()]);
}

#[tokio::test]
async fn a_trusted_peer_has_x_forwarded_for_appended_to_and_forwarded_kept() {
    let up = TestUpstream::start().await;
    let config = with_server(
        config_with(up.addr, ROUTES),
        r#"trusted_proxies = ["127.0.0.1/32"]"#,
    );
    let gw = TestGateway::start(&config).await;
    let r = get(
        &gw.url("/public/x"),
        &[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(seen(&r, "forwarded"), ["for=1.2.3.4"]);

    // A chain from several proxies (and several header lines) stays in order.
    let r = get(
        &gw.url("/public/x"),
        &[
            ("x-forwarded-for", "1.2.3.4, 10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
        ],
    )
    .await;
    assert_eq!(
        seen(&r, "x-forwarded-for"),
        ["1.2.3.4, 10.0.0.1, 10.0.0.2, 127.0.0.1"]
    );

    let r = get(&gw.url("/public/x"), &[]).await;
    assert_eq!(seen(&r, "x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn a_request_with_both_content_length_and_transfer_encoding_is_400_and_not_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    for head in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 5",
    ] {
        let req = format!(
            "POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{head}\r\nConnection: close\r\n\r\n0\r\n\r\n"
        );
        let rsp = raw(gw.addr, req.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 400 "), "{head}:\n{rsp}");
    }
    assert_eq!(up.hits(), 0);
}

/// Whatever the answer to a request framed both ways, the bytes after the
/// chunked body must never be read as a second request (CL.TE / TE.CL smuggling).
#[tokio::test]
async fn a_request_framed_by_both_content_length_and_chunked_smuggles_nothing() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let smuggled = "GET /public/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    for (framing, body) in [
        // Content-Length covers only the chunked terminator.
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked",
            format!("0\r\n\r\n{smuggled}"),
        ),
        // Content-Length covers everything, the chunked body ends early.
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 200",
            format!("0\r\n\r\n{smuggled}"),
        ),
    ] {
        let before = up.hits();
        let req = format!("POST /public/x HTTP/1.1\r\nHost: gw.test\r\n{framing}\r\n\r\n{body}");
        let rsp = raw(gw.addr, req.as_bytes()).await;
        let answers = rsp.matches("HTTP/1.1 ").count();
        assert!(answers <= 1, "{framing}: {answers} answers:\n{rsp}");
        assert!(
            up.hits() - before <= 1,
            "{framing}: a second request reached the upstream"
        );
    }
}

// === identity headers ===

const SPOOFED: [(&str, &str); 4] = [
    ("x-auth-subject", "admin"),
    ("X-Auth-Roles", "admin,root"),
    ("x-auth-claims", "eyJzdWIiOiJhZG1pbiJ9"),
    ("X-AUTH-EMAIL", "admin@example.com"),
];

#[tokio::test]
async fn identity_headers_a_client_sends_to_a_public_route_never_reach_the_upstream() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let r = get(&gw.url("/public/x"), &SPOOFED).await;
    assert_eq!(r.status, 200);
    for (name, _) in SPOOFED {
        let name = name.to_ascii_lowercase();
        assert_eq!(
            seen(&r, &name),
            Vec::<String>::new(),
            "{name} was forwarded"
        );
    }
    // Also when the client adds a valid token: a public route verifies nothing.
    let token = hs_token(&claims("alice"));
    let mut headers = SPOOFED.to_vec();
    let auth = bearer(&token);
    headers.push(("authorization", &auth));
    let r = get(&gw.url("/public/x"), &headers).await;
    for (name, _) in SPOOFED {
        let name = name.to_ascii_lowercase();
        assert_eq!(
            seen(&r, &name),
            Vec::<String>::new(),
            "{name} was forwarded"
        );
    }
}

#[tokio::test]
async fn identity_headers_on_a_protected_route_come_only_from_the_verified_token() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let token_claims = json!({
        "sub": "alice",
        "exp": now() + 600,
        "iat": now(),
        "roles": ["user", "billing"],
        "email": "alice@example.com",
        "tenant": "acme",
    });
    let auth = bearer(&hs_token(&token_claims));
    let mut headers = SPOOFED.to_vec();
    headers.push(("authorization", &auth));
    let r = get(&gw.url("/api/x"), &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "x-auth-subject"), ["alice"]);
    assert_eq!(seen(&r, "x-auth-roles"), ["user,billing"]);
    assert_eq!(seen(&r, "x-auth-email"), ["alice@example.com"]);
    let claims_b64 = seen(&r, "x-auth-claims");
    assert_eq!(claims_b64.len(), 1, "{claims_b64:?}");
    let decoded = URL_SAFE_NO_PAD
        .decode(&claims_b64[0])
        .expect("X-Auth-Claims is base64url without padding");
    let decoded: Value = serde_json::from_slice(&decoded).expect("X-Auth-Claims is JSON");
    assert_eq!(decoded, token_claims);
    // forward_authorization defaults to true.
    assert_eq!(seen(&r, "authorization"), [auth.as_str()]);
}

#[tokio::test]
async fn an_identity_header_the_token_has_no_claim_for_is_removed_not_passed_on() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    // No roles, no email.
    let auth = bearer(&hs_token(&claims("bob")));
    let mut headers = SPOOFED.to_vec();
    headers.push(("authorization", &auth));
    let r = get(&gw.url("/api/x"), &headers).await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "x-auth-subject"), ["bob"]);
    assert_eq!(seen(&r, "x-auth-roles"), Vec::<String>::new());
    assert_eq!(seen(&r, "x-auth-email"), Vec::<String>::new());
}

#[tokio::test]
async fn an_optional_route_without_a_token_forwards_no_identity_headers() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"optional\"\n",
    ))
    .await;
    let r = get(&gw.url("/x"), &SPOOFED).await;
    assert_eq!(r.status, 200);
    for (name, _) in SPOOFED {
        let name = name.to_ascii_lowercase();
        assert_eq!(
            seen(&r, &name),
            Vec::<String>::new(),
            "{name} was forwarded"
        );
    }
    let r = get_with_token(&gw.url("/x"), &hs_token(&claims("carol"))).await;
    assert_eq!(seen(&r, "x-auth-subject"), ["carol"]);
}

#[tokio::test]
async fn forward_authorization_false_keeps_the_token_from_the_upstream() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        &format!("[identity]\nforward_authorization = false\n{ROUTES}"),
    ))
    .await;
    let r = get_with_token(&gw.url("/api/x"), &hs_token(&claims("alice"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "authorization"), Vec::<String>::new());
    assert_eq!(seen(&r, "x-auth-subject"), ["alice"]);
    // On a public route too.
    let r = get(
        &gw.url("/public/x"),
        &[("authorization", "Basic dXNlcjpwdw==")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(seen(&r, "authorization"), Vec::<String>::new());
}

// === targets ===

/// A public catch-all route to an upstream `pool` with `targets`.
async fn pool_gateway(targets: &[String]) -> TestGateway {
    TestGateway::start(&pool_config(targets, "timeout = \"5s\"")).await
}

/// A local address nothing listens on.
async fn dead_addr() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

#[tokio::test]
async fn several_targets_share_requests_round_robin() {
    let a = TestUpstream::start().await;
    let b = TestUpstream::start().await;
    let gw = pool_gateway(&[format!("http://{}", a.addr), format!("http://{}", b.addr)]).await;
    let mut order = Vec::new();
    for _ in 0..10 {
        let before = (a.hits(), b.hits());
        let r = get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200);
        order.push(if a.hits() > before.0 { 'a' } else { 'b' });
        assert_eq!(a.hits() + b.hits(), order.len());
    }
    assert_eq!(order.iter().collect::<String>(), "ababababab");
}

#[tokio::test]
async fn a_target_that_refuses_connections_is_ejected_after_one_502() {
    let dead = dead_addr().await;
    let live = TestUpstream::start().await;
    let gw = pool_gateway(&[format!("http://{dead}"), format!("http://{}", live.addr)]).await;
    let first = get(&gw.url("/x"), &[]).await;
    assert_eq!(first.status, 502);
    assert_eq!(first.json()["error"], "bad_gateway");
    assert_eq!(live.hits(), 0);
    for i in 1..=6 {
        let r = get(&gw.url("/x"), &[]).await;
        assert_eq!(r.status, 200, "request {i} after the ejection");
    }
    assert_eq!(live.hits(), 6);
}

#[tokio::test]
async fn the_builtin_echo_target_answers_with_the_request_it_received() {
    let gw = TestGateway::start(&format!(
        r#"
[server]
admin_listen = ""
{ALL_KEYS}
[[issuers]]
keys = ["hs"]

[[upstreams]]
name = "echo"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/"
upstream = "echo"
"#
    ))
    .await;
    let auth = bearer(&hs_token(&claims("alice")));
    let r = send(
        Method::POST,
        &gw.url("/hello/world?x=1&y=two"),
        &[("authorization", &auth), ("x-test", "yes")],
        "ignored body",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "application/json");
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/hello/world");
    assert_eq!(echo["query"], "x=1&y=two");
    let h = &echo["headers"];
    assert_eq!(h["x-test"], "yes", "{echo}");
    // What an upstream would see: after the gateway's rewriting.
    assert_eq!(h["x-auth-subject"], "alice", "{echo}");
    assert_eq!(h["via"], "1.1 gatehouse", "{echo}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{echo}");

    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 401, "the echo sits behind auth like any upstream");
}

// === protocols ===

/// A client that speaks HTTP/2 without TLS from the first byte (h2c prior knowledge).
fn h2c_client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[tokio::test]
async fn an_h2c_prior_knowledge_request_is_proxied() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let client = h2c_client();
    let token = hs_token(&claims("alice"));

    let req = Request::get(gw.url("/h2/x?q=1"))
        .header("authorization", bearer(&token))
        .header("x-auth-subject", "mallory")
        .body(Full::default())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answered within 30 s")
        .expect("h2c request sent");
    assert_eq!(rsp.version(), Version::HTTP_2);
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let echo: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/h2/x");
    assert_eq!(echo["query"], "q=1");
    let h = &echo["headers"];
    assert_eq!(h["x-auth-subject"], json!(["alice"]), "{echo}");
    assert_eq!(
        h["x-forwarded-host"],
        json!([gw.addr.to_string()]),
        "{echo}"
    );
    let via = h["via"][0].as_str().unwrap_or_default();
    assert!(
        via.starts_with('2') && via.ends_with(" gatehouse"),
        "{echo}"
    );

    // Without a token: the same 401 as over HTTP/1.1.
    let req = Request::get(gw.url("/h2/x")).body(Full::default()).unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 401);

    // A request body over h2 streams to the HTTP/1.1 upstream.
    let req = Request::post(gw.url("/upload"))
        .header("authorization", bearer(&token))
        .body(Full::new(Bytes::from(vec![b'z'; 1 << 20])))
        .unwrap();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let upload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(upload["bytes"], 1 << 20);
}

async fn body_of(rsp: http::Response<Incoming>) -> Bytes {
    rsp.into_body().collect().await.unwrap().to_bytes()
}

/// HEAD over HTTP/2: the gateway's own answers (a 401 here) and a proxied
/// one come without a body, their length in `Content-Length`. hyper's
/// HTTP/2 server sent the gateway's bodies, and the client reset the
/// stream with PROTOCOL_ERROR.
#[tokio::test]
async fn head_over_h2_gets_headers_only() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let client = h2c_client();
    let head = |path: &str, token: Option<&str>| {
        let mut req = Request::head(gw.url(path));
        if let Some(t) = token {
            req = req.header("authorization", bearer(t));
        }
        client.request(req.body(Full::default()).unwrap())
    };
    let rsp = head("/x", None).await.expect("no stream reset");
    assert_eq!(rsp.version(), Version::HTTP_2);
    assert_eq!(rsp.status(), 401);
    let len: usize = rsp.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(len > 0, "the GET's length");
    assert!(body_of(rsp).await.is_empty());

    let token = hs_token(&claims("alice"));
    let rsp = head("/x", Some(&token)).await.expect("no stream reset");
    assert_eq!(rsp.status(), 200);
    assert!(body_of(rsp).await.is_empty());
    assert_eq!(up.hits(), 1);
}

/// An upstream that accepts any upgrade with `101 Switching Protocols` and
/// then echoes bytes back; it records the request heads it received.
struct UpgradeUpstream {
    addr: std::net::SocketAddr,
    heads: Arc<Mutex<Vec<HeaderMap>>>,
}

impl UpgradeUpstream {
    async fn start() -> UpgradeUpstream {
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        let addr = serve_upstream(move |req: Request<Incoming>| {
            seen.lock().unwrap().push(req.headers().clone());
            upgrade_and_echo(req)
        })
        .await;
        UpgradeUpstream { addr, heads }
    }

    fn heads(&self) -> Vec<HeaderMap> {
        self.heads.lock().unwrap().clone()
    }
}

async fn upgrade_and_echo(
    mut req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, std::convert::Infallible> {
    let Some(protocol) = req.headers().get(header::UPGRADE).cloned() else {
        let mut rsp = Response::new(Empty::new());
        *rsp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(rsp);
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    let mut rsp = Response::new(Empty::new());
    *rsp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    rsp.headers_mut().insert(header::UPGRADE, protocol);
    rsp.headers_mut()
        .insert(header::CONNECTION, "Upgrade".parse().unwrap());
    Ok(rsp)
}

/// Reads a response head (through the blank line) from `s`, byte by byte so
/// nothing after it is consumed.
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let read = async {
        while !head.ends_with(b"\r\n\r\n") {
            match s.read_u8().await {
                Ok(b) => head.push(b),
                Err(_) => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("a response head within 10 s");
    String::from_utf8_lossy(&head).into_owned()
}

fn websocket_request(addr: std::net::SocketAddr, auth: Option<&str>) -> String {
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    format!(
        "GET /ws/chat HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_after_auth() {
    let up = UpgradeUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/ws/\"\nupstream = \"up\"\n",
    ))
    .await;
    let auth = bearer(&hs_token(&claims("alice")));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(websocket_request(gw.addr, Some(&auth)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");

    // The tunnel carries bytes both ways, several times.
    for msg in [
        &b"hello through the gateway"[..],
        b"\x00\x01binary\xff",
        b"bye",
    ] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert_eq!(back, msg);
    }

    let heads = up.heads();
    assert_eq!(heads.len(), 1);
    let h = &heads[0];
    assert_eq!(h["upgrade"], "websocket");
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["x-auth-subject"], "alice");
    assert_eq!(h["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
}

/// An upgrade to an `https://` target: the tunnel runs over the TLS
/// connection to the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_reaches_an_https_target() {
    let up = UpgradeUpstream::start().await;
    let tls = tls_front(up.addr, "a").await;
    let ca = tls_dir().join("a.cert.pem");
    let config = config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/ws/\"\nupstream = \"up\"\n",
    )
    .replace(
        &format!("targets = [\"http://{}\"]", up.addr),
        &format!(
            "targets = [\"https://localhost:{}\"]\nca_file = \"{}\"",
            tls.port(),
            ca.display()
        ),
    );
    let gw = TestGateway::start(&config).await;
    let auth = bearer(&hs_token(&claims("alice")));
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(websocket_request(gw.addr, Some(&auth)).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let msg = b"over TLS both ways";
    s.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .expect("echo within 10 s")
        .unwrap();
    assert_eq!(back, msg);
    assert_eq!(up.heads()[0]["x-auth-subject"], "alice");
}

#[tokio::test]
async fn a_websocket_upgrade_without_a_token_is_401_and_never_reaches_the_upstream() {
    let up = UpgradeUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/ws/\"\nupstream = \"up\"\n",
    ))
    .await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(websocket_request(gw.addr, None).as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"gatehouse\""),
        "{head}"
    );
    assert!(up.heads().is_empty());
}

/// An upstream that counts the connections it accepts; with `close_after`,
/// it answers `Connection: close` and hangs up after each response.
async fn counting_upstream(close_after: bool) -> (std::net::SocketAddr, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            *count.lock().unwrap() += 1;
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                let mut rsp = Response::new(Full::new(Bytes::from_static(b"pong")));
                if close_after {
                    rsp.headers_mut()
                        .insert(header::CONNECTION, "close".parse().unwrap());
                }
                Ok::<_, std::convert::Infallible>(rsp)
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .keep_alive(!close_after)
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (up, accepted) = counting_upstream(false).await;
    let gw = TestGateway::start(&config_with(up, ROUTES)).await;
    for _ in 0..10 {
        let r = get(&gw.url("/public/ping"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(&r.body[..], b"pong");
    }
    assert_eq!(
        *accepted.lock().unwrap(),
        1,
        "one pooled connection serves all ten"
    );
}

#[tokio::test]
async fn an_upstream_that_closes_after_each_response_still_gets_every_request() {
    let (up, accepted) = counting_upstream(true).await;
    let gw = TestGateway::start(&config_with(up, ROUTES)).await;
    for _ in 0..5 {
        let r = get(&gw.url("/public/ping"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        // Give the close time to land, so the next request meets a closed connection.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*accepted.lock().unwrap(), 5);
}

#[tokio::test]
async fn a_response_abandoned_half_read_does_not_poison_the_pool() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    // Read only the head of a long chunked response, then drop it.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /public/stream/64 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let _ = s.read(&mut head).await.unwrap();
    drop(s);
    for _ in 0..5 {
        let r = get(&gw.url("/public/after"), &[]).await;
        assert_eq!(r.status, StatusCode::OK);
    }
}
