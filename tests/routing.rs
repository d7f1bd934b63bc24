//! Route matching (SPEC §4 step 1): longest `path_prefix`, then `host`, then
//! `methods`; `strip_prefix`; 404 when nothing matches; and requests whose
//! path could be read differently by the upstream are refused before routing.
mod support;

use http::Method;
use jsonwebtoken::Algorithm;
use support::*;

/// Three upstreams: `up` (from [`config_with`]), `b` and `c`, so a test can
/// tell which route a request took by which upstream it reached.
struct Upstreams {
    up: TestUpstream,
    b: TestUpstream,
    c: TestUpstream,
}

impl Upstreams {
    async fn start() -> Upstreams {
        Upstreams {
            up: TestUpstream::start().await,
            b: TestUpstream::start().await,
            c: TestUpstream::start().await,
        }
    }

    /// A gateway with `routes`; upstreams `b` and `c` are declared only when
    /// a route names them (an unused upstream is a config error).
    async fn gateway(&self, routes: &str) -> TestGateway {
        let mut extra = String::new();
        for (name, up) in [("b", &self.b), ("c", &self.c)] {
            if routes.contains(&format!("upstream = \"{name}\"")) {
                extra.push_str(&format!(
                    "[[upstreams]]\nname = \"{name}\"\ntargets = [\"http://{}\"]\n\n",
                    up.addr
                ));
            }
        }
        extra.push_str(routes);
        TestGateway::start(&config_with(self.up.addr, &extra)).await
    }

    fn hits(&self) -> [usize; 3] {
        [self.up.hits(), self.b.hits(), self.c.hits()]
    }

    /// Sends one request and names the upstream it reached (`None`: none did).
    async fn reached(
        &self,
        gw: &TestGateway,
        method: Method,
        host: Option<&str>,
        path: &str,
    ) -> (u16, Option<&'static str>) {
        let before = self.hits();
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let r = send(method, &gw.url(path), &headers, "").await;
        let after = self.hits();
        let moved: Vec<&'static str> = ["up", "b", "c"]
            .into_iter()
            .zip(before.iter().zip(after))
            .filter(|(_, (b, a))| *a != **b)
            .map(|(name, _)| name)
            .collect();
        assert!(moved.len() <= 1, "one request reached {moved:?}");
        (r.status.as_u16(), moved.first().copied())
    }
}

#[tokio::test]
async fn the_longest_path_prefix_wins_whatever_the_config_order() {
    let ups = Upstreams::start().await;
    // Deliberately not sorted by length: the table sorts, not the author.
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
upstream = "b"
auth = "none"

[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/admin/"
upstream = "c"
auth = "none"
"#,
        )
        .await;
    let cases = [
        ("/", "up"),
        ("/other", "up"),
        // A prefix ending in `/` also matches the path without it, so that
        // `/api/admin` cannot fall through to a less protected route.
        ("/api", "b"),
        ("/api/", "b"),
        ("/api/admin", "c"),
        ("/api/users/7", "b"),
        ("/api/adminx", "b"),
        ("/api/admin/", "c"),
        ("/api/admin/users", "c"),
    ];
    for (path, want) in cases {
        let got = ups.reached(&gw, Method::GET, None, path).await;
        assert_eq!(got, (200, Some(want)), "GET {path}");
    }
}

#[tokio::test]
async fn a_route_with_a_host_beats_one_without_for_the_same_prefix() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
host = "Api.Example.com"
upstream = "b"
auth = "none"
"#,
        )
        .await;
    let cases = [
        (Some("api.example.com"), "b"),
        // The port is not part of the match, and host names are case-insensitive.
        (Some("api.example.com:8443"), "b"),
        (Some("API.EXAMPLE.COM"), "b"),
        (Some("Api.Example.Com:80"), "b"),
        (Some("other.example.com"), "up"),
        (Some("api.example.com.evil.test"), "up"),
        // The client's default Host: 127.0.0.1:<port>.
        (None, "up"),
    ];
    for (host, want) in cases {
        let got = ups.reached(&gw, Method::GET, host, "/api/x").await;
        assert_eq!(got, (200, Some(want)), "Host: {host:?}");
    }
}

#[tokio::test]
async fn a_longer_prefix_beats_a_host_match_on_a_shorter_one() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
host = "api.example.com"
upstream = "b"
auth = "none"

[[routes]]
path_prefix = "/api/admin/"
upstream = "up"
auth = "none"
"#,
        )
        .await;
    let host = Some("api.example.com");
    assert_eq!(
        ups.reached(&gw, Method::GET, host, "/api/admin/x").await,
        (200, Some("up"))
    );
    assert_eq!(
        ups.reached(&gw, Method::GET, host, "/api/x").await,
        (200, Some("b"))
    );
}

#[tokio::test]
async fn a_route_with_methods_beats_one_without_for_the_same_prefix() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
methods = ["POST", "delete"]
upstream = "b"
auth = "none"
"#,
        )
        .await;
    let cases = [
        (Method::POST, "b"),
        // Configured in lower case; methods are matched as upper case.
        (Method::DELETE, "b"),
        (Method::GET, "up"),
        (Method::PUT, "up"),
    ];
    for (method, want) in cases {
        let got = ups.reached(&gw, method.clone(), None, "/api/x").await;
        assert_eq!(got, (200, Some(want)), "{method}");
    }
}

#[tokio::test]
async fn a_host_route_beats_a_methods_route_for_the_same_prefix() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
methods = ["POST"]
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
host = "api.example.com"
upstream = "b"
auth = "none"
"#,
        )
        .await;
    let host = Some("api.example.com");
    assert_eq!(
        ups.reached(&gw, Method::POST, host, "/api/x").await,
        (200, Some("b"))
    );
    assert_eq!(
        ups.reached(&gw, Method::POST, Some("other.test"), "/api/x")
            .await,
        (200, Some("up"))
    );
}

#[tokio::test]
async fn a_prefix_match_with_the_wrong_method_or_host_falls_through_to_a_shorter_route() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
host = "api.example.com"
methods = ["POST"]
upstream = "b"
auth = "none"

[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"
"#,
        )
        .await;
    let host = Some("api.example.com");
    assert_eq!(
        ups.reached(&gw, Method::POST, host, "/api/x").await,
        (200, Some("b"))
    );
    assert_eq!(
        ups.reached(&gw, Method::GET, host, "/api/x").await,
        (200, Some("up")),
        "wrong method"
    );
    assert_eq!(
        ups.reached(&gw, Method::POST, Some("other.test"), "/api/x")
            .await,
        (200, Some("up")),
        "wrong host"
    );
}

#[tokio::test]
async fn a_prefix_match_with_the_wrong_method_or_host_and_nothing_else_is_404() {
    let ups = Upstreams::start().await;
    let gw = ups
        .gateway(
            r#"
[[routes]]
path_prefix = "/api/"
methods = ["POST"]
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/web/"
host = "www.example.com"
upstream = "b"
auth = "none"
"#,
        )
        .await;
    assert_eq!(
        ups.reached(&gw, Method::POST, None, "/api/x").await,
        (200, Some("up"))
    );
    assert_eq!(
        ups.reached(&gw, Method::GET, None, "/api/x").await,
        (404, None)
    );
    assert_eq!(
        ups.reached(&gw, Method::GET, Some("www.example.com"), "/web/x")
            .await,
        (200, Some("b"))
    );
    assert_eq!(
        ups.reached(&gw, Method::GET, Some("api.example.com"), "/web/x")
            .await,
        (404, None)
    );
}

#[tokio::test]
async fn a_request_no_route_matches_is_404_not_found_json() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/api/\"\nupstream = \"up\"\n",
    ))
    .await;
    // With and without a token: a missing route is not an auth failure.
    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    for r in [
        get(&gw.url("/nothing/here"), &[]).await,
        get_with_token(&gw.url("/ap"), &token).await,
    ] {
        assert_eq!(r.status, 404);
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.www_authenticate().is_none());
        let body = r.json();
        assert_eq!(body["error"], "not_found", "{body}");
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{body}"
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn strip_prefix_removes_the_prefix_and_keeps_the_query() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        r#"
[[routes]]
path_prefix = "/api"
upstream = "up"
auth = "none"
strip_prefix = true

[[routes]]
path_prefix = "/svc/"
upstream = "up"
auth = "none"
strip_prefix = true

[[routes]]
path_prefix = "/keep/"
upstream = "up"
auth = "none"
"#,
    ))
    .await;
    let cases = [
        ("/api/users?x=1", "/users", Some("x=1")),
        ("/api", "/", None),
        ("/api?a=b&c=d", "/", Some("a=b&c=d")),
        ("/api/", "/", None),
        ("/api/a/b/c", "/a/b/c", None),
        ("/svc/users?x=1", "/users", Some("x=1")),
        ("/svc/", "/", None),
        ("/keep/users?x=1", "/keep/users", Some("x=1")),
    ];
    for (path, want_path, want_query) in cases {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 200, "{path}");
        let echo = r.json();
        assert_eq!(echo["path"], want_path, "{path}");
        assert_eq!(echo["query"].as_str(), want_query, "{path}");
    }
}

/// Requests whose path means something else once the upstream normalizes it:
/// a gateway that routed `/public/../admin` by `/public/` would let a client
/// reach `/admin` past its auth. Sent raw: an HTTP client would normalize them.
#[tokio::test]
async fn paths_with_dot_segments_or_empty_segments_are_400_and_never_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(
        up.addr,
        r#"
[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/admin/"
upstream = "up"

[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"
"#,
    ))
    .await;
    for path in [
        "/public/../admin",
        "/public/../admin/users",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin",
        "/public/.%2e/admin",
        "/public/..%2fadmin",
        "/public/./x",
        "//admin",
        "//admin/users",
        "/public//x",
        "/public/..",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let rsp = raw(gw.addr, head.as_bytes()).await;
        assert!(
            rsp.starts_with("HTTP/1.1 400 "),
            "GET {path} answered:\n{rsp}"
        );
        assert!(rsp.contains("\"invalid_request\""), "GET {path}:\n{rsp}");
    }
    assert_eq!(up.hits(), 0, "a confusing path reached the upstream");

    // Dots inside a segment are ordinary characters.
    for path in ["/public/v1.2/file..txt", "/public/.well-known", "/a..b"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
        let rsp = raw(gw.addr, head.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 200 "), "GET {path}:\n{rsp}");
    }
    assert_eq!(up.hits(), 3);
}
