//! A route's `rate_limit` through the real server: 429 with `Retry-After`
//! past the rate, counted per client address (before the token is checked)
//! or per token subject, each route apart.
mod support;

use http::Method;
use jsonwebtoken::Algorithm;
use support::*;

fn token(sub: &str) -> String {
    sign(Algorithm::HS256, Some("hs"), &claims(sub))
}

async fn gateway(upstream: &TestUpstream, routes: &str) -> TestGateway {
    TestGateway::start(&config_with(upstream.addr, routes)).await
}

const BY_IP: &str = r#"
[[routes]]
path_prefix = "/limited/"
upstream = "up"
rate_limit = { rate = "3/min", per = "ip" }

[[routes]]
path_prefix = "/"
upstream = "up"
"#;

#[tokio::test]
async fn past_the_rate_a_client_gets_429_with_retry_after() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, BY_IP).await;
    let t = token("alice");
    for i in 0..3 {
        let r = get_with_token(&gw.url("/limited/x"), &t).await;
        assert_eq!(r.status, 200, "request {i}");
    }
    let r = get_with_token(&gw.url("/limited/x"), &t).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    // One request's allowance comes back every 20 s at 3/min.
    assert!((1..=20).contains(&wait), "Retry-After: {wait}");
    assert_eq!(up.hits(), 3);

    // Another route counts apart (here: not at all).
    let r = get_with_token(&gw.url("/other"), &t).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn per_ip_counts_before_the_token_is_checked() {
    let up = TestUpstream::start().await;
    let gw = gateway(&up, BY_IP).await;
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/limited/x"), "not.a.token").await;
        assert_eq!(r.status, 401);
    }
    let checks = gw.signature_checks();
    // A client flooding bad tokens is stopped before any is checked.
    let r = get_with_token(&gw.url("/limited/x"), &token("alice")).await;
    assert_eq!(r.status, 429);
    assert_eq!(gw.signature_checks(), checks);
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn per_subject_counts_each_caller_apart() {
    let up = TestUpstream::start().await;
    let gw = gateway(
        &up,
        r#"
[[routes]]
path_prefix = "/"
upstream = "up"
auth = "optional"
rate_limit = { rate = "2/min", per = "subject" }
"#,
    )
    .await;
    let (alice, bob) = (token("alice"), token("bob"));
    for _ in 0..2 {
        assert_eq!(get_with_token(&gw.url("/a"), &alice).await.status, 200);
    }
    assert_eq!(get_with_token(&gw.url("/a"), &alice).await.status, 429);
    // Bob, from the same address, has his own count.
    for _ in 0..2 {
        assert_eq!(get_with_token(&gw.url("/a"), &bob).await.status, 200);
    }
    assert_eq!(get_with_token(&gw.url("/a"), &bob).await.status, 429);
    // Without a token, the address is counted.
    for _ in 0..2 {
        assert_eq!(get(&gw.url("/a"), &[]).await.status, 200);
    }
    let r = get(&gw.url("/a"), &[]).await;
    assert_eq!(r.status, 429);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(up.hits(), 6);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_counts_apart() {
    let up = TestUpstream::start().await;
    let config = config_with(
        up.addr,
        r#"
[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"
rate_limit = { rate = "1/min", per = "ip" }
"#,
    )
    .replace(
        "admin_listen = \"\"",
        "admin_listen = \"\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let gw = TestGateway::start(&config).await;
    let from = |ip: &'static str| [("x-forwarded-for", ip)];
    assert_eq!(get(&gw.url("/"), &from("198.51.100.1")).await.status, 200);
    assert_eq!(get(&gw.url("/"), &from("198.51.100.1")).await.status, 429);
    assert_eq!(get(&gw.url("/"), &from("198.51.100.2")).await.status, 200);
    // IPv6 clients count by /64.
    assert_eq!(get(&gw.url("/"), &from("2001:db8::1")).await.status, 200);
    assert_eq!(get(&gw.url("/"), &from("2001:db8::2")).await.status, 429);
}

#[tokio::test]
async fn a_bad_rate_limit_is_a_config_error() {
    let up = TestUpstream::start().await;
    for (limit, auth, why) in [
        (
            r#"{ rate = "3/day", per = "ip" }"#,
            "required",
            "unknown unit `day`",
        ),
        (r#"{ rate = "0/s", per = "ip" }"#, "required", "at least 1"),
        (
            r#"{ rate = "3/s", per = "user" }"#,
            "required",
            "unknown variant `user`",
        ),
        (r#"{ rate = "3/s" }"#, "required", "missing field `per`"),
        (
            r#"{ rate = "3/s", per = "subject" }"#,
            "none",
            "no token to count by",
        ),
    ] {
        let routes = format!(
            "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"{auth}\"\nrate_limit = {limit}\n"
        );
        let err = TestGateway::try_start(&config_with(up.addr, &routes))
            .await
            .err()
            .unwrap_or_else(|| panic!("{limit} was accepted"));
        assert!(err.contains(why), "{limit}: {err}");
    }
    // The limit also applies to HEAD and other methods of the route.
    let gw = gateway(&up, BY_IP).await;
    let t = format!("Bearer {}", token("alice"));
    for method in [Method::HEAD, Method::POST, Method::DELETE] {
        let r = send(method, &gw.url("/limited/x"), &[("authorization", &t)], "").await;
        assert_eq!(r.status, 200);
    }
    let r = send(
        Method::GET,
        &gw.url("/limited/x"),
        &[("authorization", &t)],
        "",
    )
    .await;
    assert_eq!(r.status, 429);
}
