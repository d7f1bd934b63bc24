use std::path::Path;

use super::*;

fn check(src: &str) -> Result<Config, Vec<String>> {
    Config::from_str(src, Path::new("gw.toml"))
        .map_err(|e| e.0.iter().map(|d| d.to_string()).collect())
}

const UPSTREAM: &str = r#"
[[upstreams]]
name = "api"
targets = ["builtin:echo"]

[[routes]]
path_prefix = "/"
upstream = "api"
auth = "none"
"#;

#[test]
fn defaults_apply_to_a_minimal_config() {
    let c = check(UPSTREAM).unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_header_bytes, 16384);
    assert_eq!(c.tokens.leeway, Duration::from_secs(30));
    assert_eq!(c.cache.max_entries, 100_000);
    assert_eq!(c.identity.claim_headers.len(), 1);
}

#[test]
fn unknown_keys_are_errors_with_position() {
    let errs = check(&format!(
        "[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n{UPSTREAM}"
    ))
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with("gw.toml:3:1: unknown field `lisen`"),
        "{errs:?}"
    );
}

#[test]
fn cross_checks_are_all_reported() {
    let src = r#"
[[upstreams]]
name = "api"
targets = ["ftp://x"]

[[routes]]
path_prefix = "/"
upstream = "apii"
"#;
    let errs = check(src).unwrap_err();
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("gw.toml:3:8: upstream `api` is not used"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("gw.toml:4:12: upstream target `ftp://x`"),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("gw.toml:8:12: unknown upstream `apii`"),
        "{errs:?}"
    );
}

#[test]
fn short_secrets_and_missing_env_are_errors() {
    let src = format!(
        "[[keys]]\nid = \"k\"\nalgorithm = \"HS256\"\nsecret_env = \"GATEHOUSE_TEST_UNSET_VAR\"\n{UPSTREAM}"
    );
    let errs = check(&src).unwrap_err();
    assert!(
        errs[0].starts_with("gw.toml:4:14: environment variable"),
        "{errs:?}"
    );
}

#[test]
fn bad_durations_point_at_the_value() {
    let errs = check(&format!("[cache]\nmax_ttl = \"5 minutes\"\n{UPSTREAM}")).unwrap_err();
    assert!(errs[0].starts_with("gw.toml:2:11:"), "{errs:?}");
    assert!(errs[0].contains("unknown unit"), "{errs:?}");
}

#[test]
fn cidrs_match_v4_v6_and_mapped_addresses() {
    let c = Cidr::parse("10.0.0.0/8").unwrap();
    assert!(c.contains("10.1.2.3".parse().unwrap()));
    assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!c.contains("11.0.0.1".parse().unwrap()));
    assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(
        Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap())
    );
    assert!(Cidr::parse("10.0.0.0/33").is_err());
    assert!(Cidr::parse("nope").is_err());
}

#[test]
fn health_checks_parse_with_a_default_interval_and_refuse_bad_values() {
    let echo_with =
        |hc: &str| UPSTREAM.replace("targets = [", &format!("health_check = {hc}\ntargets = ["));
    let with = |hc: &str| echo_with(hc).replace("builtin:echo", "http://127.0.0.1:9000");
    let c = check(&with(r#"{ path = "/healthz" }"#)).unwrap();
    let hc = c.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/healthz");
    assert_eq!(hc.interval, Duration::from_secs(5));
    let c = check(&with(r#"{ path = "/up?deep=1", interval = "250ms" }"#)).unwrap();
    let hc = c.upstreams[0].health_check.as_ref().unwrap();
    assert_eq!(hc.path, "/up?deep=1");
    assert_eq!(hc.interval, Duration::from_millis(250));
    assert!(check(UPSTREAM).unwrap().upstreams[0].health_check.is_none());

    for (bad, message) in [
        (r#"{ path = "healthz" }"#, "must be an origin-form path"),
        (
            r#"{ path = "http://x/healthz" }"#,
            "must be an origin-form path",
        ),
        (r#"{ path = "/h", interval = "50ms" }"#, "at least 100ms"),
        (
            r#"{ path = "/h", intervall = "5s" }"#,
            "unknown field `intervall`",
        ),
        (r#"{ interval = "5s" }"#, "missing field `path`"),
    ] {
        let errs = check(&with(bad)).unwrap_err();
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(errs[0].contains(message), "{bad}: {errs:?}");
        assert!(
            errs[0].starts_with("gw.toml:4:"),
            "{bad}: points at the line: {errs:?}"
        );
    }
    // Only builtin:echo: nothing to probe.
    let errs = check(&echo_with(r#"{ path = "/h" }"#)).unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("needs an http:// or https:// target"),
        "{errs:?}"
    );
}

#[test]
fn jwks_urls_are_http_or_https_with_a_refresh_of_a_second_or_more() {
    let issuer = |fields: &str| format!("[[issuers]]\nissuer = \"idp\"\n{fields}\n{UPSTREAM}");
    let c = check(&issuer("jwks_url = \"https://idp.example/jwks.json\"")).unwrap();
    let jwks = c.issuers[0].jwks.as_ref().unwrap();
    assert_eq!(jwks.url, "https://idp.example/jwks.json");
    assert_eq!(jwks.refresh, Duration::from_secs(600));
    let c = check(&issuer(
        "jwks_url = \"http://127.0.0.1:9/k\"\njwks_refresh = \"30s\"\nalgorithms = [\"RS256\"]",
    ))
    .unwrap();
    assert_eq!(
        c.issuers[0].jwks.as_ref().unwrap().refresh,
        Duration::from_secs(30)
    );
    for (fields, why) in [
        (
            "jwks_url = \"ftp://idp/k\"",
            "not an http:// or https:// URL",
        ),
        (
            "jwks_url = \"/jwks.json\"",
            "not an http:// or https:// URL",
        ),
        (
            "jwks_url = \"https://u:p@idp/k\"",
            "must not carry credentials",
        ),
        (
            "jwks_url = \"https://idp/k\"\njwks_refresh = \"10ms\"",
            "jwks_refresh must be at least 1s",
        ),
        (
            "keys = []\njwks_refresh = \"1m\"",
            "jwks_refresh needs a jwks_url",
        ),
        (
            "audiences = [\"api\"]",
            "needs `keys = [...]`, a `jwks_url` or `discovery = true`",
        ),
        (
            "jwks_url = \"https://idp/k\"\nalgorithms = [\"HS256\"]",
            "serves public keys only",
        ),
        (
            "keys = [\"hs\"]\njwks_url = \"https://idp/k\"\nalgorithms = [\"HS256\"]",
            "serves public keys only",
        ),
    ] {
        let errs = check(&issuer(fields)).unwrap_err();
        assert!(errs.iter().any(|e| e.contains(why)), "{fields}: {errs:?}");
    }
}

#[test]
fn session_max_is_a_second_or_more() {
    let c = check(&format!("[tokens]\nsession_max = \"30d\"\n{UPSTREAM}")).unwrap();
    assert_eq!(c.tokens.session_max, Some(Duration::from_secs(30 * 86_400)));
    assert_eq!(check(UPSTREAM).unwrap().tokens.session_max, None);
    for short in ["0s", "500ms"] {
        let errs = check(&format!("[tokens]\nsession_max = \"{short}\"\n{UPSTREAM}")).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("at least 1s")), "{errs:?}");
    }
}

#[test]
fn state_backends_are_embedded_or_redis() {
    let errs = check(&format!("[state]\nbackend = \"memcached\"\n{UPSTREAM}")).unwrap_err();
    assert!(errs.iter().any(|e| e.contains("not one of")), "{errs:?}");
    let c = check(UPSTREAM).unwrap();
    assert!(c.state.redis_url.is_none());
}

#[test]
fn https_targets_take_a_ca_file_or_the_system_roots() {
    let tls_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    let upstream = |targets: &str, extra: &str| {
        format!(
            "[[upstreams]]\nname = \"api\"\ntargets = [{targets}]\n{extra}\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"none\"\n"
        )
    };
    let ca = format!("ca_file = \"{}\"", tls_dir.join("a.cert.pem").display());
    let c = check(&upstream(
        "\"https://localhost:8443\", \"https://[::1]\", \"http://127.0.0.1:9000\"",
        &ca,
    ))
    .unwrap();
    let u = &c.upstreams[0];
    assert!(u.tls.is_some());
    let names: Vec<Option<String>> = u
        .targets
        .iter()
        .map(|t| match t {
            Target::Http { tls, .. } => tls.as_ref().map(|n| n.to_str().into_owned()),
            Target::Echo => None,
        })
        .collect();
    assert_eq!(
        names,
        [Some("localhost".to_string()), Some("::1".to_string()), None]
    );
    // Plain targets only: no TLS settings at all.
    let c = check(&upstream("\"http://127.0.0.1:9000\"", "")).unwrap();
    assert!(c.upstreams[0].tls.is_none());

    for (targets, extra, message) in [
        (
            "\"http://127.0.0.1:9000\"",
            ca.as_str(),
            "ca_file needs an https:// target",
        ),
        (
            "\"https://localhost\"",
            "ca_file = \"no-such.pem\"",
            "cannot read",
        ),
        (
            "\"https://localhost\"",
            &format!("ca_file = \"{}\"", tls_dir.join("a.key.pem").display()),
            "ca_file: no CERTIFICATE",
        ),
        (
            "\"ftp://localhost\"",
            "",
            "must start with http:// or https://",
        ),
    ] {
        let errs = check(&upstream(targets, extra)).unwrap_err();
        assert_eq!(errs.len(), 1, "{targets} {extra}: {errs:?}");
        assert!(errs[0].contains(message), "{targets} {extra}: {errs:?}");
    }
}

#[test]
fn verify_url_may_be_https() {
    let login = |url: &str| format!("[login]\nverify_url = \"{url}\"\n{UPSTREAM}");
    let c = check(&login("https://127.0.0.1:9000/verify")).unwrap();
    let Some(LoginConfig {
        credentials: Credentials::VerifyUrl { uri, dial },
        ..
    }) = &c.login
    else {
        panic!("verify_url: {:?}", c.login);
    };
    assert_eq!(uri.path(), "/verify");
    assert!(format!("{dial:?}").contains("tls: true"), "{dial:?}");
    let errs = check(&login("ftp://127.0.0.1/verify")).unwrap_err();
    assert!(
        errs[0].contains("not an http:// or https:// URL"),
        "{errs:?}"
    );
}

#[test]
fn upstreams_speak_http1_or_http2() {
    let upstream = |extra: &str| {
        format!(
            "[[upstreams]]\nname = \"api\"\ntargets = [\"http://127.0.0.1:50051\"]\n{extra}\n\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nauth = \"none\"\n"
        )
    };
    assert_eq!(
        check(&upstream("")).unwrap().upstreams[0].protocol,
        Protocol::Http1
    );
    let c = check(&upstream("protocol = \"http2\"")).unwrap();
    assert_eq!(c.upstreams[0].protocol, Protocol::Http2);
    let errs = check(&upstream("protocol = \"grpc\"")).unwrap_err();
    assert!(errs[0].contains("unknown variant `grpc`"), "{errs:?}");
}

#[test]
fn cors_is_checked_entry_by_entry() {
    let errs = check(&format!(
        r#"{UPSTREAM}
[cors]
allow_origins = ["https://app.example.com/", "null", "https://ok.example.com"]
allow_methods = ["GET", "NOT A METHOD"]
allow_headers = ["*"]
expose_headers = ["bad header"]
"#
    ))
    .unwrap_err();
    let want = [
        "gw.toml:12:18: `https://app.example.com/`: an origin has no path (browsers send `https://app.example.com`)",
        "gw.toml:12:46: `null` is the origin",
        "gw.toml:13:25: `NOT A METHOD` is not an HTTP method",
        "gw.toml:14:18: [cors] allow_headers: browsers do not count `Authorization` in a `*`",
        "gw.toml:15:19: `bad header` is not a valid header name",
    ];
    assert_eq!(errs.len(), want.len(), "{errs:#?}");
    for (e, w) in errs.iter().zip(want) {
        assert!(e.starts_with(w), "{e}\n  does not start with\n{w}");
    }
}

#[test]
fn cors_origins_star_stands_alone() {
    for (origins, why) in [
        ("[]", "allow_origins is empty"),
        (r#"["*", "https://a.test"]"#, "cannot be listed with others"),
    ] {
        let errs = check(&format!("{UPSTREAM}\n[cors]\nallow_origins = {origins}\n")).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains(why), "{errs:?}");
    }
    let errs = check(&format!(
        "{UPSTREAM}\n[cors]\nallow_origins = [\"https://a.test\"]\nallow_origin = []\n"
    ))
    .unwrap_err();
    assert!(errs[0].contains("unknown field `allow_origin`"), "{errs:?}");
    assert!(check(&format!("{UPSTREAM}\n[cors]\nallow_origins = [\"*\"]\n")).is_ok());
    assert!(check(UPSTREAM).unwrap().cors.is_none());
}

#[test]
fn cors_stars_are_names_with_credentials() {
    for key in ["allow_methods", "expose_headers"] {
        let src = format!(
            "{UPSTREAM}\n[cors]\nallow_origins = [\"https://a.test\"]\nallow_credentials = true\n{key} = [\"*\"]\n"
        );
        let errs = check(&src).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("read `*` as a name"), "{errs:?}");
        let without = src.replace("allow_credentials = true", "allow_credentials = false");
        assert!(check(&without).is_ok(), "{key}");
    }
}

#[test]
fn max_body_bytes_is_the_routes_else_the_servers() {
    let src = format!(
        "[server]\nmax_body_bytes = 1024\n{UPSTREAM}\n[[routes]]\npath_prefix = \"/up/\"\nupstream = \"api\"\nauth = \"none\"\nmax_body_bytes = 0\n"
    );
    let c = check(&src).unwrap();
    let by_prefix = |p: &str| {
        c.routes
            .iter()
            .find(|r| r.path_prefix == p)
            .unwrap()
            .max_body_bytes
    };
    assert_eq!(by_prefix("/"), Some(1024));
    assert_eq!(by_prefix("/up/"), Some(0));
    assert_eq!(check(UPSTREAM).unwrap().routes[0].max_body_bytes, None);
    let errs = check(&src.replace("max_body_bytes = 0", "max_body_bytes = -1")).unwrap_err();
    assert!(
        errs[0].starts_with("gw.toml:17:18: invalid value"),
        "{errs:?}"
    );
}
