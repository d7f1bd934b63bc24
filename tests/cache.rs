//! The verified-claims cache: a hit provably skips the signature check
//! (`signature_checks()` counts every token that reached one), only
//! successes are stored, an entry dies at its token's `exp` (and at
//! `max_ttl`), and a tiny cache still answers every request correctly.
mod support;

use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde_json::json;
use support::*;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/api/"
upstream = "up"

[[routes]]
path_prefix = "/admin/"
upstream = "up"
roles_any = ["admin"]
"#;

async fn gateway(extra: &str) -> (TestUpstream, TestGateway) {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, &format!("{extra}\n{ROUTES}"))).await;
    (up, gw)
}

fn token(sub: &str, roles: &[&str]) -> String {
    let mut c = claims(sub);
    c["roles"] = json!(roles);
    sign(Algorithm::RS256, Some("rs"), &c)
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// 200, forwarded as `sub`.
async fn assert_serves(gw: &TestGateway, path: &str, token: &str, sub: &str) {
    let r = get_with_token(&gw.url(path), token).await;
    assert_eq!(r.status, 200, "{sub} {path}: {}", body(&r));
    assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some(sub));
}

/// Sleeps until the wall clock (which `exp` counts in) is past `t` seconds.
async fn sleep_until_after(t: u64) {
    while now() <= t {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn cache_hit_skips_the_signature_check() {
    let (up, gw) = gateway("").await;
    let alice = token("alice", &["user"]);
    let start = gw.signature_checks();
    assert_serves(&gw, "/api/x", &alice, "alice").await;
    assert_eq!(gw.signature_checks(), start + 1, "first use is verified");
    for _ in 0..20 {
        assert_serves(&gw, "/api/x", &alice, "alice").await;
    }
    assert_eq!(
        gw.signature_checks(),
        start + 1,
        "later uses are cache hits"
    );
    // A different token is verified once too.
    let bob = token("bob", &["user"]);
    assert_serves(&gw, "/api/x", &bob, "bob").await;
    assert_serves(&gw, "/api/x", &bob, "bob").await;
    assert_eq!(gw.signature_checks(), start + 2);
    assert_serves(&gw, "/api/x", &alice, "alice").await;
    assert_eq!(gw.signature_checks(), start + 2);
    assert_eq!(up.hits(), 24);
}

#[tokio::test]
async fn cache_hit_skips_verification_for_every_algorithm() {
    let (_up, gw) = gateway("").await;
    for (i, (alg, kid)) in [
        (Algorithm::HS256, "hs"),
        (Algorithm::RS256, "rs"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ]
    .into_iter()
    .enumerate()
    {
        let t = sign(alg, Some(kid), &claims("alice"));
        let before = gw.signature_checks();
        for _ in 0..5 {
            assert_serves(&gw, "/api/x", &t, "alice").await;
        }
        assert_eq!(gw.signature_checks(), before + 1, "{alg:?} (#{i})");
    }
}

#[tokio::test]
async fn cached_claims_are_still_authorized_per_route() {
    let (up, gw) = gateway("").await;
    let alice = token("alice", &["user"]);
    assert_serves(&gw, "/api/x", &alice, "alice").await;
    let checks = gw.signature_checks();
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/admin/x"), &alice).await;
        assert_eq!(r.status, 403, "body: {}", body(&r));
    }
    assert_eq!(
        gw.signature_checks(),
        checks,
        "the 403s came from the cache"
    );
    let admin = token("root", &["admin"]);
    assert_serves(&gw, "/admin/x", &admin, "root").await;
    assert_serves(&gw, "/admin/x", &admin, "root").await;
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn invalid_token_is_never_cached() {
    let (up, gw) = gateway("").await;
    // Signed by the RSA key, but the payload was changed afterwards.
    let good = token("alice", &["user"]);
    let parts: Vec<&str> = good.split('.').collect();
    let payload = {
        use base64::Engine;
        let mut c = claims("alice");
        c["roles"] = json!(["admin"]);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
    };
    let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
    let expired = {
        let c = json!({ "sub": "alice", "exp": now() - 10 });
        sign(Algorithm::RS256, Some("rs"), &c)
    };
    for (bad, why) in [(&forged, "bad signature"), (&expired, "token expired")] {
        for attempt in 1..=5 {
            let before = gw.signature_checks();
            let r = get_with_token(&gw.url("/api/x"), bad).await;
            assert_eq!(r.status, 401, "attempt {attempt}: {}", body(&r));
            assert_eq!(r.json()["error_description"], why);
            assert_eq!(
                gw.signature_checks(),
                before + 1,
                "attempt {attempt}: a refused token must be checked again"
            );
        }
    }
    assert_eq!(gw.shared.load().cache.entry_count(), 0);
    // The good token is unaffected by the forged one sharing its signature.
    assert_serves(&gw, "/api/x", &good, "alice").await;
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn cached_token_stops_working_at_its_exp() {
    // config_with sets `[tokens] leeway = "0s"`.
    let (_up, gw) = gateway("").await;
    let exp = now() + 3;
    let c = json!({ "sub": "alice", "exp": exp, "iat": now() });
    let t = sign(Algorithm::EdDSA, Some("ed"), &c);
    let start = gw.signature_checks();
    assert_serves(&gw, "/api/x", &t, "alice").await;
    assert_serves(&gw, "/api/x", &t, "alice").await;
    assert_eq!(gw.signature_checks(), start + 1, "served from the cache");

    sleep_until_after(exp).await;
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/api/x"), &t).await;
        assert_eq!(r.status, 401, "body: {}", body(&r));
        assert_eq!(r.json()["error_description"], "token expired");
        assert_eq!(
            r.www_authenticate(),
            Some(
                r#"Bearer realm="gatehouse", error="invalid_token", error_description="token expired""#
            )
        );
    }
    // Each attempt was checked again: the entry did not outlive `exp`.
    assert_eq!(gw.signature_checks(), start + 4);
}

#[tokio::test]
async fn cache_entry_does_not_outlive_max_ttl() {
    let (_up, gw) = gateway("[cache]\nmax_ttl = \"3s\"\n").await;
    let t = token("alice", &["user"]);
    let start = gw.signature_checks();
    assert_serves(&gw, "/api/x", &t, "alice").await;
    assert_serves(&gw, "/api/x", &t, "alice").await;
    assert_eq!(gw.signature_checks(), start + 1, "cached");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Still a valid token: verified again, then cached again.
    assert_serves(&gw, "/api/x", &t, "alice").await;
    assert_eq!(
        gw.signature_checks(),
        start + 2,
        "max_ttl expired the entry"
    );
}

#[tokio::test]
async fn tiny_cache_still_answers_correctly() {
    let (up, gw) = gateway("[cache]\nmax_entries = 1\n").await;
    let users: Vec<(String, &str, bool)> = vec![
        (token("alice", &["user"]), "alice", false),
        (token("bob", &["admin"]), "bob", true),
        (token("carol", &[]), "carol", false),
        (token("dave", &["user", "admin"]), "dave", true),
    ];
    let expired = sign(
        Algorithm::HS256,
        Some("hs"),
        &json!({ "sub": "eve", "exp": now() - 10 }),
    );
    let mut forwarded = 0;
    for round in 0..5 {
        for (t, sub, admin) in &users {
            assert_serves(&gw, "/api/x", t, sub).await;
            forwarded += 1;
            let r = get_with_token(&gw.url("/admin/x"), t).await;
            if *admin {
                assert_eq!(r.status, 200, "round {round} {sub}: {}", body(&r));
                assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some(*sub));
                forwarded += 1;
            } else {
                assert_eq!(r.status, 403, "round {round} {sub}: {}", body(&r));
            }
            let r = get_with_token(&gw.url("/api/x"), &expired).await;
            assert_eq!(r.status, 401, "round {round}: {}", body(&r));
        }
    }
    assert_eq!(up.hits(), forwarded);
}

/// Several tokens for one subject are separate entries, each with its own claims.
#[tokio::test]
async fn each_token_keeps_its_own_claims() {
    let (_up, gw) = gateway("").await;
    let user = token("alice", &["user"]);
    let admin = token("alice", &["admin"]);
    let roles = |r: &Reply| r.upstream_header("x-auth-roles");
    for _ in 0..3 {
        let r = get_with_token(&gw.url("/api/x"), &user).await;
        assert_eq!(roles(&r).as_deref(), Some("user"));
        let r = get_with_token(&gw.url("/api/x"), &admin).await;
        assert_eq!(roles(&r).as_deref(), Some("admin"));
        assert_eq!(get_with_token(&gw.url("/admin/x"), &user).await.status, 403);
    }
}

// === the last token of a connection ===

/// One connection, tokens taking turns: each request is answered for its
/// own token, never for the one before it.
#[tokio::test]
async fn one_connection_switching_tokens_keeps_each_callers_claims() {
    let (up, gw) = gateway("").await;
    let alice = token("alice", &["user"]);
    let bob = token("bob", &["admin"]);
    let mut tampered = alice.clone();
    tampered.pop();
    tampered.push(if alice.ends_with('A') { 'B' } else { 'A' });
    let expired = sign(
        Algorithm::HS256,
        Some("hs"),
        &json!({ "sub": "alice", "exp": now() - 10 }),
    );
    let mut conn = Conn::open(gw.addr).await;
    let start = gw.signature_checks();
    let mut forwarded = 0;
    for round in 0..3 {
        for (t, sub) in [(&alice, "alice"), (&alice, "alice"), (&bob, "bob")] {
            let r = conn.get_with_token("/api/x", t).await;
            assert_eq!(r.status, 200, "round {round} {sub}: {}", body(&r));
            assert_eq!(r.upstream_header("x-auth-subject").as_deref(), Some(sub));
            forwarded += 1;
        }
        // Right after bob, the admin route is his alone.
        let r = conn.get_with_token("/admin/x", &bob).await;
        assert_eq!(r.status, 200, "round {round}: {}", body(&r));
        forwarded += 1;
        let r = conn.get_with_token("/admin/x", &alice).await;
        assert_eq!(r.status, 403, "round {round}: {}", body(&r));
        for (bad, what) in [
            (&tampered, "tampered"),
            (&expired, "expired"),
            (&String::new(), "none"),
        ] {
            let r = conn.get_with_token("/api/x", bad).await;
            assert_eq!(r.status, 401, "round {round}, {what}: {}", body(&r));
        }
    }
    assert_eq!(up.hits(), forwarded);
    // alice and bob once each; the tampered and expired tokens every time.
    assert_eq!(gw.signature_checks(), start + 2 + 3 * 2);
}

/// A reload that takes a key away refuses the tokens of that key on a
/// connection that presented one just before.
#[tokio::test]
async fn a_reload_refuses_a_token_its_connection_presented_before() {
    let up = TestUpstream::start().await;
    let config = config_with(up.addr, ROUTES);
    let gw = TestGateway::start(&config).await;
    let hs = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    let mut conn = Conn::open(gw.addr).await;
    for _ in 0..2 {
        assert_eq!(conn.get_with_token("/api/x", &hs).await.status, 200);
    }
    let without_hs = config.replace(
        r#"keys = ["hs", "rs", "es", "ed"]"#,
        r#"keys = ["rs", "es", "ed"]"#,
    );
    assert_ne!(without_hs, config);
    let path = write_config(gw.dir.path(), &without_hs);
    let snap = gatehouse::state::Snapshot::load(&path).expect("valid config");
    gw.shared.store_snapshot(snap);
    let r = conn.get_with_token("/api/x", &hs).await;
    assert_eq!(r.status, 401, "{}", body(&r));
}

/// `max_ttl` bounds what a connection remembers as it bounds the cache.
#[tokio::test]
async fn max_ttl_holds_on_one_connection() {
    let (_up, gw) = gateway("[cache]\nmax_ttl = \"2s\"\n").await;
    let t = token("alice", &["user"]);
    let mut conn = Conn::open(gw.addr).await;
    let start = gw.signature_checks();
    for _ in 0..3 {
        assert_eq!(conn.get_with_token("/api/x", &t).await.status, 200);
    }
    assert_eq!(gw.signature_checks(), start + 1, "remembered");
    // Past max_ttl (whole seconds, rounded down at the start: up to 3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(conn.get_with_token("/api/x", &t).await.status, 200);
    assert_eq!(gw.signature_checks(), start + 2, "verified again");
}

/// A token stops working at its `exp` on the connection that presented it.
#[tokio::test]
async fn a_remembered_token_stops_working_at_its_exp() {
    let (_up, gw) = gateway("").await;
    let exp = now() + 2;
    let t = sign(
        Algorithm::HS256,
        Some("hs"),
        &json!({ "sub": "alice", "exp": exp }),
    );
    let mut conn = Conn::open(gw.addr).await;
    for _ in 0..2 {
        assert_eq!(conn.get_with_token("/api/x", &t).await.status, 200);
    }
    sleep_until_after(exp).await;
    let r = conn.get_with_token("/api/x", &t).await;
    assert_eq!(r.status, 401, "{}", body(&r));
    assert_eq!(r.json()["error_description"], "token expired");
}
