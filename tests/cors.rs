//! `[cors]` through the real server: preflights answered before routing and
//! authentication, `Access-Control-*` on proxied answers and on the
//! gateway's own (a 401 included), the upstream's CORS headers replaced,
//! and a reload that turns it on.
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use gatehouse::state::Snapshot;
use http::{Method, Response};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use support::process::Gatehouse;
use support::*;

const APP: &str = "https://app.example.com";

const CORS: &str = r#"
[cors]
allow_origins = ["https://app.example.com", "https://*.preview.example.com"]
expose_headers = ["WWW-Authenticate", "X-Request-Id"]
max_age = "1h"
"#;

/// A protected route and a public one, in front of an upstream that sets
/// its own (wrong) CORS headers and counts what reaches it.
struct Setup {
    gw: TestGateway,
    hits: Arc<AtomicUsize>,
}

async fn setup(cors: &str) -> Setup {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&hits);
    let upstream = serve_upstream(move |_req| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            let rsp = Response::builder()
                .header("access-control-allow-origin", "*")
                .header("access-control-allow-credentials", "true")
                .header("vary", "Accept-Encoding")
                .header("x-request-id", "r-1")
                .body(Full::new(Bytes::from_static(b"ok")))
                .unwrap();
            Ok::<_, Infallible>(rsp)
        }
    })
    .await;
    let routes = r#"
[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
upstream = "up"
methods = ["GET", "POST"]
"#;
    let gw = TestGateway::start(&config_with(upstream, &format!("{routes}{cors}"))).await;
    Setup { gw, hits }
}

fn token() -> String {
    sign(Algorithm::HS256, Some("hs"), &claims("alice"))
}

async fn preflight(gw: &TestGateway, path: &str, origin: &str) -> Reply {
    send(
        Method::OPTIONS,
        &gw.url(path),
        &[
            ("origin", origin),
            ("access-control-request-method", "DELETE"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        "",
    )
    .await
}

fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(|v| v.to_str().unwrap())
}

fn all<'a>(r: &'a Reply, name: &str) -> Vec<&'a str> {
    r.headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_preflight_is_answered_without_a_token_and_never_reaches_the_upstream() {
    let s = setup(CORS).await;
    // DELETE is not among the route's methods, and no token is sent: the
    // preflight is answered all the same, before routing and auth.
    let r = preflight(&s.gw, "/api/items/7", APP).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("authorization, content-type")
    );
    assert_eq!(header(&r, "access-control-max-age"), Some("3600"));
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert!(header(&r, "vary").unwrap().starts_with("Origin"));
    assert!(r.body.is_empty());

    // A preview deployment under the wildcard, and a path with no route.
    let r = preflight(&s.gw, "/nowhere", "https://pr-12.preview.example.com").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        header(&r, "access-control-allow-origin"),
        Some("https://pr-12.preview.example.com")
    );
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_preflight_from_another_origin_is_refused() {
    let s = setup(CORS).await;
    for origin in [
        "https://evil.example.net",
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "https://preview.example.com",
        "null",
    ] {
        let r = preflight(&s.gw, "/api/items", origin).await;
        assert_eq!(r.status, 403, "{origin}");
        assert_eq!(r.json()["error"], "origin_not_allowed", "{origin}");
        assert_eq!(header(&r, "access-control-allow-origin"), None, "{origin}");
    }
    assert_eq!(s.hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn cross_origin_answers_carry_the_gateways_headers_not_the_upstreams() {
    let s = setup(CORS).await;
    let auth = format!("Bearer {}", token());
    let r = get(
        &s.gw.url("/api/items"),
        &[("origin", APP), ("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "access-control-allow-origin"), [APP]);
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert_eq!(
        header(&r, "access-control-expose-headers"),
        Some("www-authenticate, x-request-id")
    );
    assert_eq!(all(&r, "vary"), ["Accept-Encoding", "Origin"]);
    assert_eq!(header(&r, "x-request-id"), Some("r-1"));

    // The gateway's own 401: the page can read it (and its challenge).
    let r = get(&s.gw.url("/api/items"), &[("origin", APP)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
    assert!(r.www_authenticate().is_some());
    assert_eq!(all(&r, "vary"), ["Origin"]);

    // The gateway's endpoints too (no [login] here: a 404, marked all the same).
    let r = post_json(&s.gw.url("/auth/login"), &[("origin", APP)], &claims("x")).await;
    assert_eq!(r.status, 404);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn other_origins_are_served_without_cors_headers() {
    let s = setup(CORS).await;
    let r = get(
        &s.gw.url("/public/x"),
        &[("origin", "https://evil.example.net")],
    )
    .await;
    // Browsers enforce CORS: the request is served, the page cannot read it.
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert_eq!(all(&r, "vary"), ["Accept-Encoding", "Origin"]);

    // No Origin at all: the upstream's CORS headers are gone too.
    let r = get(&s.gw.url("/public/x"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(s.hits.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn without_cors_preflights_are_routed_and_upstream_headers_pass() {
    let s = setup("").await;
    let r = preflight(&s.gw, "/api/items", APP).await;
    // OPTIONS is not among the route's methods: no route matches.
    assert_eq!(r.status, 404);
    let r = preflight(&s.gw, "/public/x", APP).await;
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(s.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn any_origin_and_a_fixed_header_list() {
    let s = setup(
        r#"
[cors]
allow_origins = ["*"]
allow_methods = ["get", "POST"]
allow_headers = ["Authorization"]
max_age = "0s"
"#,
    )
    .await;
    let r = preflight(&s.gw, "/api/items", "https://anyone.test").await;
    assert_eq!(r.status, 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some("*"));
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        Some("GET, POST")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers"),
        Some("authorization")
    );
    assert_eq!(header(&r, "access-control-max-age"), None);

    let r = get(&s.gw.url("/public/x"), &[("origin", "https://anyone.test")]).await;
    assert_eq!(all(&r, "access-control-allow-origin"), ["*"]);
    // The upstream's credentials flag is not the gateway's: removed.
    assert_eq!(header(&r, "access-control-allow-credentials"), None);
    assert_eq!(all(&r, "vary"), ["Accept-Encoding"]);

    // Without `Origin` too, so that a cache can hand the answer (here the
    // gateway's own public, cacheable key set) to a CORS request.
    let r = get(&s.gw.url("/.well-known/jwks.json"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(all(&r, "access-control-allow-origin"), ["*"]);
    assert_eq!(header(&r, "vary"), None);
}

#[tokio::test]
async fn credentials_are_allowed_only_to_named_origins() {
    let s = setup(
        r#"
[cors]
allow_origins = ["https://app.example.com"]
allow_credentials = true
"#,
    )
    .await;
    let r = preflight(&s.gw, "/api/items", APP).await;
    assert_eq!(r.status, 204);
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(&r, "access-control-max-age"), Some("600"));
    let r = get(&s.gw.url("/public/x"), &[("origin", APP)]).await;
    assert_eq!(header(&r, "access-control-allow-credentials"), Some("true"));

    let err = TestGateway::try_start(&config_with(
        "127.0.0.1:1".parse().unwrap(),
        "[cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
    ))
    .await
    .err()
    .expect("refused");
    assert!(err.contains("name the origins"), "{err}");
}

#[tokio::test]
async fn a_reload_turns_cors_on() {
    let s = setup("").await;
    assert_eq!(preflight(&s.gw, "/api/items", APP).await.status, 404);
    let path = s.gw.dir.path().join("gateway.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{config}{CORS}")).unwrap();
    s.gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    let r = preflight(&s.gw, "/api/items", APP).await;
    assert_eq!(r.status, 204);
    assert_eq!(header(&r, "access-control-allow-origin"), Some(APP));
}

/// nginx `auth_request` and Traefik ForwardAuth ask `/auth/verify` with GET
/// and the original method in `X-Forwarded-Method`: a browser's preflight
/// must get through without a token, from an allowed origin only.
#[tokio::test]
async fn forward_auth_lets_preflights_from_allowed_origins_through() {
    let s = setup(CORS).await;
    let forwarded = |origin: &'static str| {
        [
            ("x-forwarded-method", "OPTIONS"),
            ("x-forwarded-uri", "/api/items"),
            ("origin", origin),
            ("access-control-request-method", "DELETE"),
        ]
    };
    let r = get(&s.gw.url("/auth/verify"), &forwarded(APP)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(header(&r, "x-auth-subject"), None);
    let r = get(&s.gw.url("/auth/verify"), &forwarded("https://evil.test")).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "origin_not_allowed");
    // Anything else is judged by the route as before: a plain OPTIONS (no
    // preflight headers) finds no route, as OPTIONS is not among its
    // methods; without [cors], a preflight neither.
    let plain = [
        ("x-forwarded-method", "OPTIONS"),
        ("x-forwarded-uri", "/api/items"),
    ];
    assert_eq!(get(&s.gw.url("/auth/verify"), &plain).await.status, 404);
    let without = setup("").await;
    let r = get(&without.gw.url("/auth/verify"), &forwarded(APP)).await;
    assert_eq!(r.status, 404);
    // A GET, with or without preflight headers, needs its token.
    let mut get_preflight = forwarded(APP);
    get_preflight[0].1 = "GET";
    assert_eq!(
        get(&s.gw.url("/auth/verify"), &get_preflight).await.status,
        401
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_get_an_access_log_line() {
    let up = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gatehouse::start(dir.path(), |listen, admin| {
        config_with(
            up.addr,
            &format!("[[routes]]\npath_prefix = \"/api/\"\nupstream = \"up\"\n{CORS}"),
        )
        .replacen(
            "admin_listen = \"\"\n",
            &format!("listen = \"{listen}\"\nadmin_listen = \"{admin}\"\n"),
            1,
        )
    })
    .await;
    let send_preflight = |origin: &'static str| {
        let url = gw.url("/api/items");
        async move {
            send(
                Method::OPTIONS,
                &url,
                &[("origin", origin), ("access-control-request-method", "GET")],
                "",
            )
            .await
        }
    };
    assert_eq!(send_preflight(APP).await.status, 204);
    assert_eq!(send_preflight("https://evil.test").await.status, 403);
    let logged = eventually(std::time::Duration::from_secs(5), || async {
        let log = gw.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("gatehouse::access") && l.contains("preflight=true"))
            .collect();
        lines.len() == 2 && lines[0].contains("status=204") && lines[1].contains("status=403")
    })
    .await;
    assert!(logged, "{}", gw.log());
}
