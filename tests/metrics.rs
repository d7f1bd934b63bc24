//! `/metrics` on the admin listener: responses by status code, the
//! verified-claims cache's hits and misses, connections, in Prometheus
//! text format. (Reload counts: `tests/cli.rs`, through the binary.)
mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use support::*;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"

[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/public/"
methods = ["POST"]
upstream = "up"
"#;

/// The gateway, and the address of an admin listener serving its metrics.
async fn gateway() -> (TestUpstream, TestGateway, std::net::SocketAddr) {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let admin = gw.admin().await;
    (up, gw, admin)
}

/// The content type Prometheus expects of a scrape.
#[tokio::test]
async fn metrics_are_served_as_prometheus_text() {
    let (_up, gw, admin) = gateway().await;
    let r = get(&format!("http://{admin}/metrics"), &[]).await;
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    drop(gw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_and_cache_lookups_are_counted() {
    let (up, gw, admin) = gateway().await;
    let before = scrape(admin).await;
    assert_eq!(
        metric(&before, "gatehouse_responses_total{code=\"200\"}"),
        None
    );
    assert_eq!(
        metric(
            &before,
            "gatehouse_token_cache_requests_total{result=\"miss\"}"
        ),
        Some(0)
    );

    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    // One connection: a miss, then a hit (the connection's last token).
    let mut conn = Conn::open(gw.addr).await;
    assert_eq!(conn.get_with_token("/api/x", &token).await.status, 200);
    assert_eq!(conn.get_with_token("/api/x", &token).await.status, 200);
    // Another connection: a hit in the shared cache.
    assert_eq!(get_with_token(&gw.url("/api/x"), &token).await.status, 200);
    // No token: 401 without a lookup. A bad signature: a miss, then 401.
    assert_eq!(get(&gw.url("/api/x"), &[]).await.status, 401);
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(get_with_token(&gw.url("/api/x"), &forged).await.status, 401);
    // No route: 404; a public route: 200, no lookup.
    assert_eq!(get(&gw.url("/nowhere"), &[]).await.status, 404);
    assert_eq!(get(&gw.url("/public/x"), &[]).await.status, 200);

    let text = scrape(admin).await;
    assert_eq!(
        metric(&text, "gatehouse_responses_total{code=\"200\"}"),
        Some(4)
    );
    assert_eq!(
        metric(&text, "gatehouse_responses_total{code=\"401\"}"),
        Some(2)
    );
    assert_eq!(
        metric(&text, "gatehouse_responses_total{code=\"404\"}"),
        Some(1)
    );
    assert_eq!(
        metric(
            &text,
            "gatehouse_token_cache_requests_total{result=\"hit\"}"
        ),
        Some(2)
    );
    assert_eq!(
        metric(
            &text,
            "gatehouse_token_cache_requests_total{result=\"miss\"}"
        ),
        Some(2)
    );
    assert!(metric(&text, "gatehouse_token_cache_entries").is_some());
    // A route with methods is named with them: it shares its prefix.
    assert_eq!(get(&gw.url("/public/y"), &[]).await.status, 200);
    let r = post_json(&gw.url("/public/y"), &[], &serde_json::json!({})).await;
    assert_eq!(r.status, 401);
    // No [login] here: a login's 404 is not a login.
    let r = post_json(&gw.url("/auth/login"), &[], &serde_json::json!({})).await;
    assert_eq!(r.status, 404);
    let text = scrape(admin).await;
    // By route and status class; "" when no route matched.
    let route = |r: &str, class: &str| {
        metric(
            &text,
            &format!("gatehouse_route_requests_total{{route=\"{r}\",class=\"{class}\"}}"),
        )
    };
    assert_eq!(route("/api/", "2xx"), Some(3), "{text}");
    assert_eq!(route("/api/", "4xx"), Some(2), "{text}");
    assert_eq!(route("/public/", "2xx"), Some(2), "{text}");
    assert_eq!(route("/public/ [POST]", "4xx"), Some(1), "{text}");
    assert_eq!(
        metric(&text, "gatehouse_logins_total{outcome=\"error\"}"),
        Some(0),
        "{text}"
    );
    assert_eq!(route("", "4xx"), Some(1), "{text}");
    // Bearer-token checks by outcome and reason.
    let auth = |outcome: &str, reason: &str| {
        metric(
            &text,
            &format!("gatehouse_auth_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(auth("ok", ""), Some(3), "{text}");
    assert_eq!(auth("missing_token", ""), Some(2), "{text}");
    assert_eq!(auth("invalid_token", "bad signature"), Some(1), "{text}");
    // The upstream's response times: every proxied request that got a head.
    assert_eq!(
        metric(
            &text,
            "gatehouse_upstream_response_seconds_count{upstream=\"up\"}"
        ),
        Some(5),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gatehouse_upstream_response_seconds_bucket{upstream=\"up\",le=\"+Inf\"}"
        ),
        Some(5)
    );
    let target = format!(
        "gatehouse_upstream_target_up{{upstream=\"up\",target=\"{}\"}}",
        up.addr
    );
    assert_eq!(metric(&text, &target), Some(1), "{text}");
    // Nine connections: `conn`, and one per `get` and `post_json`.
    assert_eq!(
        metric(&text, "gatehouse_connections_accepted_total"),
        Some(9)
    );
    assert!(
        metric(&text, "gatehouse_connections_open").unwrap() >= 1,
        "{text}"
    );
    drop(conn);
    let mut open = None;
    for _ in 0..50 {
        open = metric(&scrape(admin).await, "gatehouse_connections_open");
        if open == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        open,
        Some(0),
        "connections still counted open after they closed"
    );
    assert!(metric(&text, "process_start_time_seconds").unwrap() > 1_700_000_000);
}

/// A response the gateway makes itself before any route (Content-Length
/// with Transfer-Encoding: 400) is counted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_refusals_are_counted() {
    let (_up, gw, admin) = gateway().await;
    let reply = raw(
        gw.addr,
        b"POST /public/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    let text = scrape(admin).await;
    assert_eq!(
        metric(&text, "gatehouse_responses_total{code=\"400\"}"),
        Some(1)
    );
}
