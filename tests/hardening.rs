//! Review findings turned into tests: ways a client could make an upstream
//! see something other than what the gateway checked.
mod support;

use jsonwebtoken::Algorithm;
use support::*;

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/admin/"
upstream = "up"
roles_any = ["admin"]
"#;

#[tokio::test]
async fn encoded_and_parameterised_paths_are_400_and_never_forwarded() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    for path in [
        "/api/admin%2Fusers",
        "/api/%61dmin/users",
        "/api/admin;x/users",
        "/api/admin%5cusers",
        "/x%00y",
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let rsp = raw(gw.addr, req.as_bytes()).await;
        assert!(rsp.starts_with("HTTP/1.1 400"), "{path}: {rsp}");
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn the_protected_prefix_also_guards_the_path_without_its_slash() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    assert_eq!(get(&gw.url("/api/admin"), &[]).await.status, 401);
    let user = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    assert_eq!(
        get_with_token(&gw.url("/api/admin"), &user).await.status,
        403
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn underscore_spellings_of_managed_headers_are_removed() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let r = get(
        &gw.url("/public"),
        &[
            ("x_auth_subject", "root"),
            ("x_auth_roles", "admin"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_custom", "kept"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let headers = &r.json()["headers"];
    assert!(headers.get("x_auth_subject").is_none(), "{headers}");
    assert!(headers.get("x_auth_roles").is_none(), "{headers}");
    assert!(headers.get("x_forwarded_for").is_none(), "{headers}");
    assert_eq!(r.upstream_header("x_custom").as_deref(), Some("kept"));
}

#[tokio::test]
async fn two_host_headers_are_400() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&config_with(up.addr, ROUTES)).await;
    let rsp = raw(
        gw.addr,
        b"GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(rsp.starts_with("HTTP/1.1 400"), "{rsp}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn access_rules_on_a_route_without_required_auth_are_a_config_error() {
    let up = TestUpstream::start().await;
    let routes = "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"optional\"\nroles_any = [\"admin\"]\n";
    let err = TestGateway::try_start(&config_with(up.addr, routes))
        .await
        .err()
        .expect("refused");
    assert!(err.contains("need auth = \"required\""), "{err}");
}

/// One issuer with an audience, verified by the `hs` key.
fn idp_config(up: std::net::SocketAddr) -> String {
    format!(
        r#"
[server]
admin_listen = ""

[tokens]
leeway = "0s"
{ALL_KEYS}
[[issuers]]
issuer = "idp"
audiences = ["api"]
keys = ["hs"]

[[upstreams]]
name = "up"
targets = ["http://{up}"]

[[routes]]
path_prefix = "/"
upstream = "up"
"#
    )
}

#[tokio::test]
async fn claims_of_the_wrong_type_or_shape_are_401() {
    let up = TestUpstream::start().await;
    let gw = TestGateway::start(&idp_config(up.addr)).await;
    let base = || {
        let mut c = claims("alice");
        c["iss"] = "idp".into();
        c["aud"] = "api".into();
        c
    };
    let expect = |token: String, status: u16, why: &'static str| {
        let url = gw.url("/x");
        async move {
            let r = get_with_token(&url, &token).await;
            assert_eq!(
                r.status,
                status,
                "{why}: {}",
                String::from_utf8_lossy(&r.body)
            );
        }
    };
    let with = |k: &str, v: serde_json::Value| {
        let mut c = base();
        c[k] = v;
        sign(Algorithm::HS256, Some("hs"), &c)
    };
    expect(
        with("aud", serde_json::json!(["other", "api"])),
        200,
        "aud array naming api",
    )
    .await;
    expect(
        with("aud", serde_json::json!(["other"])),
        401,
        "aud array without api",
    )
    .await;
    expect(with("aud", serde_json::json!(5)), 401, "aud not a string").await;
    expect(
        with("exp", serde_json::json!("9999999999")),
        401,
        "exp as a string",
    )
    .await;
    expect(
        with("exp", serde_json::json!(9_999_999_999.5)),
        401,
        "exp as a float",
    )
    .await;
    expect(with("nbf", serde_json::json!("0")), 401, "nbf as a string").await;
    expect(
        with("iss", serde_json::json!(["idp"])),
        401,
        "iss not a string",
    )
    .await;
    let good = sign(Algorithm::HS256, Some("hs"), &base());
    expect(format!("{good}.extra"), 401, "four segments").await;
    expect(good, 200, "control").await;
    assert_eq!(up.hits(), 2);
}
