//! `gateway.toml`: loading, validation, and the validated runtime types.
//!
//! Pure: a string goes in, a [`Config`] or every [`Diag`] found comes out.
//! The only I/O is reading the files and environment variables that the
//! config names (key material), so `check` sees what `serve` would see.

mod diag;
pub mod raw;
mod units;
mod validate;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

pub use diag::{Diag, Loc};
pub use raw::{AuthMode, ClientAuth, LogFormat, Protocol};
pub use units::parse_duration;

pub use crate::login::ratelimit::Rate;

/// A validated configuration. Built only by [`Config::load`] / [`Config::from_str`].
#[derive(Debug)]
pub struct Config {
    /// The file it came from; diagnostics and relative paths use it.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub state: StateConfig,
    pub tokens: TokensConfig,
    pub keys: Vec<KeySpec>,
    pub issuers: Vec<IssuerSpec>,
    pub cache: CacheConfig,
    /// `None`: no `[login]`, so `/auth/login` and `/auth/refresh` answer 404.
    pub login: Option<LoginConfig>,
    pub identity: IdentityConfig,
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// `None` without `[cors]`: preflights are routed like any request.
    pub cors: Option<crate::cors::Cors>,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` when `admin_listen = ""`.
    pub admin_listen: Option<SocketAddr>,
    pub request_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    pub trusted_proxies: Vec<Cidr>,
    /// TLS termination; `None` serves plain HTTP (and h2c).
    pub tls: Option<TlsFiles>,
    /// `request_id`: the header each request's id goes in (`server::request_id`).
    pub request_id: Option<HeaderName>,
}

impl ServerConfig {
    /// `ip` is in `trusted_proxies`: its forwarding headers are believed.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// `[server] tls`: the PEM certificate chain and private key, read at load.
/// Parsed into a `rustls` key when the snapshot is built (`server::tls`).
pub struct TlsFiles {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Where `tls` is written, for errors found when the files are parsed.
    pub loc: Loc,
    /// `client_ca`: the roots a client certificate must chain to, and
    /// whether one is required (`client_auth`).
    pub clients: Option<(Arc<tokio_rustls::rustls::RootCertStore>, ClientAuth)>,
}

impl std::fmt::Debug for TlsFiles {
    /// Never the key's bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field(
                "clients",
                &self
                    .clients
                    .as_ref()
                    .map(|(roots, auth)| (roots.len(), auth)),
            )
            .finish()
    }
}

pub struct StateConfig {
    /// Directory of the embedded state (and of a generated signing key).
    pub path: PathBuf,
    /// `backend = "redis"`: the `url` of the Redis every instance shares.
    /// `None`: the embedded store under `path`.
    pub redis_url: Option<String>,
    /// `rediss://`: the `ca_file` and `client_cert` files, read at load.
    pub redis_tls: RedisTls,
}

/// Without the Redis URL, which may hold a password, or any key.
impl fmt::Debug for StateConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateConfig")
            .field("path", &self.path)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("redis_ca", &self.redis_tls.ca_pem.is_some())
            .field("redis_client_cert", &self.redis_tls.client.is_some())
            .finish()
    }
}

/// PEM contents for a `rediss://` connection (checked to parse at load).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// Trusted instead of the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The client certificate chain and its private key.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

#[derive(Clone, Debug)]
pub struct TokensConfig {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub leeway: Duration,
    pub refresh_reuse_grace: Duration,
    /// A login's refresh tokens stop this long after it, however often they
    /// are refreshed (`None`: each refresh grants a new `refresh_ttl`).
    pub session_max: Option<Duration>,
}

/// One `[[keys]]` entry with its material read from disk or the environment.
#[derive(Debug)]
pub struct KeySpec {
    pub id: String,
    pub algorithm: Algorithm,
    pub material: KeyMaterial,
    pub sign: bool,
    /// Where the entry starts, for errors found when the key is parsed.
    pub loc: Loc,
}

/// Raw key bytes. Parsing into crypto objects happens in `auth::keys`.
pub enum KeyMaterial {
    /// An HMAC secret (HS*), at least 32 bytes.
    Secret(Vec<u8>),
    /// A PEM private key: signs, and its public half verifies.
    PrivatePem(Vec<u8>),
    /// A PEM public key: verifies only.
    PublicPem(Vec<u8>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material, not even in debug output.
        f.write_str(match self {
            KeyMaterial::Secret(_) => "Secret(<redacted>)",
            KeyMaterial::PrivatePem(_) => "PrivatePem(<redacted>)",
            KeyMaterial::PublicPem(_) => "PublicPem(..)",
        })
    }
}

/// One `[[issuers]]` entry.
#[derive(Debug)]
pub struct IssuerSpec {
    /// Matched against `iss`; `None` matches tokens that carry no `iss`.
    pub issuer: Option<String>,
    /// Ids of `[[keys]]` entries.
    pub keys: Vec<String>,
    /// `None`: `aud` is not checked.
    pub audiences: Option<Vec<String>>,
    /// `None`: the algorithms of its keys.
    pub algorithms: Option<Vec<Algorithm>>,
    /// `jwks_url` or `discovery`: keys fetched from the issuer, besides `keys`.
    pub jwks: Option<JwksSpec>,
}

/// Where an issuer publishes its keys, and how often to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSpec {
    /// The JWK Set's `http://` or `https://` URL; with `discovery`, the
    /// issuer's OpenID configuration's, whose `jwks_uri` names the set.
    pub url: http::Uri,
    /// `discovery = true`: the `issuer` the OpenID configuration must name.
    pub discovery: Option<String>,
    /// `jwks_refresh`: the time between fetches (default 10 minutes).
    pub refresh: Duration,
    /// `ca_file`'s PEM (checked at load): the roots an `https://` URL is
    /// checked against instead of the system's.
    pub ca_pem: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct CacheConfig {
    pub max_entries: u64,
    pub max_ttl: Duration,
}

#[derive(Debug)]
pub struct LoginConfig {
    pub credentials: Credentials,
    pub rate_limit_per_ip: Rate,
    pub rate_limit_per_user: Rate,
}

/// Where `/auth/login` checks a username and password.
#[derive(Debug)]
pub enum Credentials {
    /// A `users.toml` (read, with every hash checked, when the snapshot is built).
    UsersFile(PathBuf),
    /// An existing API that answers for the credentials, and how to reach it.
    VerifyUrl {
        uri: http::Uri,
        dial: crate::proxy::dial::Dial,
    },
}

#[derive(Debug)]
pub struct IdentityConfig {
    /// `None` when configured as `""` (header disabled).
    pub subject_header: Option<HeaderName>,
    pub roles_header: Option<HeaderName>,
    pub claims_header: Option<HeaderName>,
    /// claim name -> header carrying its value.
    pub claim_headers: Vec<(String, HeaderName)>,
    pub roles_claim: String,
    pub forward_authorization: bool,
}

impl IdentityConfig {
    /// Every header the identity is forwarded in.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        let fixed = [
            &self.subject_header,
            &self.roles_header,
            &self.claims_header,
        ];
        fixed
            .into_iter()
            .flatten()
            .chain(self.claim_headers.iter().map(|(_, h)| h))
    }
}

#[derive(Debug)]
pub struct UpstreamSpec {
    pub name: String,
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub health_check: Option<HealthCheck>,
    /// How `https://` targets are checked: the system's roots, or `ca_file`'s
    /// certificates. `None` when no target is `https://`.
    pub tls: Option<Arc<ClientConfig>>,
    /// Pass the client's `Host` on (Envoy's and HAProxy's default); `false`
    /// sends the target's, as Kong's `preserve_host = false` and nginx's
    /// `proxy_pass` do.
    pub preserve_host: bool,
    /// HTTP/1.1 or HTTP/2 to the targets.
    pub protocol: Protocol,
}

/// An upstream's active health check: `GET path` on each target every
/// `interval` (see `proxy::health`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: http::uri::PathAndQuery,
    pub interval: Duration,
}

/// Where an upstream's requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `builtin:echo`: answered in-process with a JSON echo of the request.
    Echo,
    /// `http://host:port`, or `https://host:port` with `tls` the name the
    /// target's certificate must carry (its host).
    Http {
        authority: http::uri::Authority,
        tls: Option<ServerName<'static>>,
    },
}

#[derive(Debug)]
pub struct RouteSpec {
    pub path_prefix: String,
    /// Lower-case host without port.
    pub host: Option<String>,
    pub methods: Option<Vec<Method>>,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub auth: AuthMode,
    pub roles_any: Vec<String>,
    pub scopes_all: Vec<String>,
    pub claims: Vec<(String, serde_json::Value)>,
    pub strip_prefix: bool,
    /// `rate_limit`: requests over the rate, counted by address or subject, are 429.
    pub rate_limit: Option<(Rate, crate::ratelimit::LimitBy)>,
    /// `max_body_bytes` (the route's, else `[server]`'s): a larger request body is 413.
    pub max_body_bytes: Option<u64>,
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

// === impl Config ===

/// Every problem found in a config file, sorted by position.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<Diag>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// Every problem found, each as `FILE:LINE:COL: message`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let src = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![Diag {
                file: path.to_path_buf(),
                loc: Loc { line: 1, col: 1 },
                message: format!("cannot read config: {e}"),
            }])
        })?;
        Config::from_str(&src, path)
    }

    /// Validates `src` as if read from `path` (relative paths resolve against
    /// `path`'s directory).
    ///
    /// # Errors
    /// Every problem found, each as `FILE:LINE:COL: message`.
    pub fn from_str(src: &str, path: &Path) -> Result<Config, ConfigErrors> {
        validate::validate(src, path).map_err(ConfigErrors)
    }

    /// Resolves a path written in the config against the config's directory.
    pub fn resolve(&self, p: &str) -> PathBuf {
        resolve_against(&self.path, p)
    }
}

fn resolve_against(config_path: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match config_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

// === impl Cidr ===

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a host route).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn mask_eq(net: u128, ip: u128, prefix: u8, bits: u32) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    (net >> shift) == (ip >> shift)
}

#[cfg(test)]
mod tests;
