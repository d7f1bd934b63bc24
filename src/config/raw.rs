//! The serde mirror of `gateway.toml`.
//!
//! Every struct denies unknown fields (a typo must not silently disable a
//! check) and none uses `#[serde(flatten)]`, which would quietly turn that off
//! (serde-rs/serde#2283). Values that a later cross-check points at keep their
//! span (`Spanned<T>`) so `check` can print `FILE:LINE:COL`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::units::Dur;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub tokens: RawTokens,
    #[serde(default)]
    pub keys: Vec<Spanned<RawKey>>,
    #[serde(default)]
    pub issuers: Vec<Spanned<RawIssuer>>,
    #[serde(default)]
    pub cache: RawCache,
    pub login: Option<Spanned<RawLogin>>,
    #[serde(default)]
    pub identity: RawIdentity,
    pub cors: Option<Spanned<RawCors>>,
    #[serde(default)]
    pub upstreams: Vec<Spanned<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: Spanned<String>,
    pub admin_listen: Spanned<String>,
    pub tls: Option<Spanned<RawServerTls>>,
    pub request_timeout: Dur,
    pub header_read_timeout: Dur,
    pub max_header_bytes: Spanned<usize>,
    pub max_connections: Spanned<usize>,
    pub shutdown_grace: Dur,
    pub log_format: LogFormat,
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Every route's `max_body_bytes` unless it sets its own.
    pub max_body_bytes: Option<u64>,
    /// The request-id header; "" for none.
    pub request_id: Spanned<String>,
}

/// `[server] tls = { cert = "cert.pem", key = "key.pem" }`, and an
/// upstream's `client_cert` in the same form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[server] tls = { cert, key }`, with `client_ca` (and `client_auth`) to
/// ask clients for a certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub client_ca: Option<Spanned<String>>,
    pub client_auth: Option<Spanned<ClientAuth>>,
}

/// Whether a client without a certificate is served (`client_ca` given).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            listen: Spanned::new(0..0, "127.0.0.1:8080".into()),
            admin_listen: Spanned::new(0..0, "127.0.0.1:9901".into()),
            tls: None,
            request_timeout: Dur::secs(30),
            header_read_timeout: Dur::secs(10),
            max_header_bytes: Spanned::new(0..0, 16_384),
            max_connections: Spanned::new(0..0, 10_000),
            shutdown_grace: Dur::secs(10),
            log_format: LogFormat::Pretty,
            trusted_proxies: Vec::new(),
            max_body_bytes: None,
            request_id: Spanned::new(0..0, String::new()),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawState {
    pub backend: Spanned<String>,
    pub path: String,
    pub url: Option<String>,
    /// `rediss://`: PEM certificates trusted instead of the system's.
    pub ca_file: Option<Spanned<String>>,
    /// `rediss://`: the certificate and key Redis gets (`tls-auth-clients`).
    pub client_cert: Option<Spanned<RawTls>>,
}

impl Default for RawState {
    fn default() -> Self {
        RawState {
            backend: Spanned::new(0..0, "embedded".into()),
            path: "data/state".into(),
            url: None,
            ca_file: None,
            client_cert: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokens {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Dur,
    pub refresh_ttl: Dur,
    pub leeway: Dur,
    pub refresh_reuse_grace: Dur,
    pub session_max: Option<Dur>,
}

impl Default for RawTokens {
    fn default() -> Self {
        RawTokens {
            issuer: "gatehouse".into(),
            audience: "api".into(),
            access_ttl: Dur::secs(15 * 60),
            refresh_ttl: Dur::secs(7 * 86_400),
            leeway: Dur::secs(30),
            refresh_reuse_grace: Dur::secs(0),
            session_max: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub id: Spanned<String>,
    pub algorithm: Spanned<String>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    #[serde(default)]
    pub sign: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    pub issuer: Option<String>,
    pub jwks_url: Option<Spanned<String>>,
    #[serde(default)]
    pub keys: Vec<Spanned<String>>,
    pub audiences: Option<Vec<String>>,
    pub algorithms: Option<Vec<Spanned<String>>>,
    pub jwks_refresh: Option<Spanned<Dur>>,
    /// Read the `jwks_url` from `<issuer>/.well-known/openid-configuration`.
    pub discovery: Option<Spanned<bool>>,
    /// An `https://` jwks_url: PEM certificates trusted instead of the system's.
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    pub max_entries: u64,
    pub max_ttl: Dur,
}

impl Default for RawCache {
    fn default() -> Self {
        RawCache {
            max_entries: 100_000,
            max_ttl: Dur::secs(300),
        }
    }
}

/// `[cors]`: see `crate::cors`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    pub allow_origins: Vec<Spanned<String>>,
    pub allow_methods: Option<Vec<Spanned<String>>>,
    pub allow_headers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub expose_headers: Vec<Spanned<String>>,
    pub max_age: Option<Spanned<Dur>>,
    #[serde(default)]
    pub allow_credentials: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    pub users_file: Option<Spanned<String>>,
    pub verify_url: Option<Spanned<String>>,
    /// An `https://` verify_url: PEM certificates trusted instead of the system's.
    pub ca_file: Option<Spanned<String>>,
    #[serde(default = "default_rate_per_ip")]
    pub rate_limit_per_ip: Spanned<String>,
    #[serde(default = "default_rate_per_user")]
    pub rate_limit_per_user: Spanned<String>,
}

fn default_rate_per_ip() -> Spanned<String> {
    Spanned::new(0..0, "20/min".into())
}

fn default_rate_per_user() -> Spanned<String> {
    Spanned::new(0..0, "5/min".into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawIdentity {
    pub subject_header: Spanned<String>,
    pub roles_header: Spanned<String>,
    pub claims_header: Spanned<String>,
    pub claim_headers: BTreeMap<String, Spanned<String>>,
    pub roles_claim: String,
    pub forward_authorization: bool,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            subject_header: Spanned::new(0..0, "X-Auth-Subject".into()),
            roles_header: Spanned::new(0..0, "X-Auth-Roles".into()),
            claims_header: Spanned::new(0..0, "X-Auth-Claims".into()),
            claim_headers: BTreeMap::from([(
                "email".to_string(),
                Spanned::new(0..0, "X-Auth-Email".to_string()),
            )]),
            roles_claim: "roles".into(),
            forward_authorization: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Dur,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: Dur,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// PEM certificates trusted for `https://` targets instead of the system's.
    pub ca_file: Option<Spanned<String>>,
    /// The certificate and key `https://` targets get asked for (mTLS).
    pub client_cert: Option<Spanned<RawTls>>,
    /// The name `https://` targets are asked for (SNI) and checked against,
    /// instead of each target's host.
    pub server_name: Option<Spanned<String>>,
    /// `false`: the target's host and port as `Host`, not the client's.
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    #[serde(default)]
    pub protocol: Protocol,
}

/// `health_check = { path = "/healthz", interval = "5s" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Spanned<String>,
    #[serde(default = "default_health_interval")]
    pub interval: Spanned<Dur>,
}

fn default_health_interval() -> Spanned<Dur> {
    Spanned::new(0..0, Dur::secs(5))
}

fn default_true() -> bool {
    true
}

fn default_connect_timeout() -> Dur {
    Dur::secs(2)
}

fn default_upstream_timeout() -> Dur {
    Dur::secs(30)
}

/// What an upstream's targets speak: `protocol = "http1"` (the default) or
/// `"http2"` (h2c for `http://` targets, h2 by ALPN for `https://`: gRPC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path_prefix: Spanned<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<Spanned<String>>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub auth: AuthMode,
    #[serde(default)]
    pub roles_any: Vec<String>,
    #[serde(default)]
    pub scopes_all: Vec<String>,
    #[serde(default)]
    pub claims: toml::Table,
    #[serde(default)]
    pub strip_prefix: bool,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub max_body_bytes: Option<u64>,
}

/// A route's `rate_limit = { rate = "100/s", per = "ip" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub rate: Spanned<String>,
    pub per: crate::ratelimit::LimitBy,
}
