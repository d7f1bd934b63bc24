//! raw -> [`Config`]: every cross-check, every diagnostic collected before failing.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::Path;

use http::{HeaderName, Method};
use jsonwebtoken::Algorithm;
use toml::Spanned;

use super::diag::{Diag, Diags};
use super::raw::{
    RawConfig, RawCors, RawHealthCheck, RawIdentity, RawKey, RawLogin, RawRoute, RawServer,
    RawUpstream,
};
use super::units::Dur;
use super::*;
use crate::auth::remote::discovery;
use crate::client_tls;
use crate::ratelimit::LimitBy;

/// Shortest HMAC secret accepted (RFC 7518 §3.2: at least the hash size; 32 bytes for HS256).
const MIN_SECRET_BYTES: usize = 32;

/// Headers `request_id` may not name, their values meaning something else;
/// nor any the request rewrite drops or sets (`proxy::headers::rewritten`).
const RESERVED: [&str; 6] = [
    "host",
    "authorization",
    "cookie",
    "content-length",
    "content-type",
    "upgrade",
];

/// hyper cannot read a request head with a smaller buffer than this.
const MIN_HEADER_BYTES: usize = 8192;

pub(super) fn validate(src: &str, path: &Path) -> Result<Config, Vec<Diag>> {
    let mut d = Diags::new(path, src);
    let raw: RawConfig = match toml::from_str(src) {
        Ok(raw) => raw,
        Err(e) => {
            d.at(e.span().as_ref(), e.message().trim_end().to_string());
            return Err(d.into_sorted());
        }
    };

    let server = server(&raw.server, path, &mut d);
    let keys = keys(&raw.keys, path, &mut d);
    let issuers = issuers(&raw, &keys, path, &mut d);
    let upstreams = upstreams(&raw.upstreams, path, &mut d);
    let routes = routes(
        &raw.routes,
        &raw.upstreams,
        raw.server.max_body_bytes,
        &mut d,
    );
    let identity = identity(&raw.identity, &mut d);
    if let Some(name) = server.as_ref().and_then(|s| s.request_id.as_ref())
        && identity.names().any(|h| h == name)
    {
        d.at(
            Some(&raw.server.request_id.span()),
            format!("request_id `{name}` is an [identity] header: upstreams would get the caller's, not the id"),
        );
    }
    let cors = raw.cors.as_ref().and_then(|c| cors(c, &mut d));
    let login = raw.login.as_ref().and_then(|l| login(l, path, &mut d));
    let redis_url = state_backend(&raw.state, &raw.keys, &mut d);
    let redis_tls = redis_tls(&raw.state, redis_url.as_deref(), path, &mut d);
    if raw
        .tokens
        .session_max
        .is_some_and(|d| d.0 < std::time::Duration::from_secs(1))
    {
        d.at(None, "[tokens] session_max must be at least 1s");
    }
    if raw.cache.max_entries == 0 {
        d.at(None, "[cache] max_entries must be at least 1");
    }

    if !d.is_empty() {
        return Err(d.into_sorted());
    }
    let t = &raw.tokens;
    Ok(Config {
        path: path.to_path_buf(),
        server: server.expect("no diagnostics means the server section parsed"),
        state: StateConfig {
            path: resolve_against(path, &raw.state.path),
            redis_url,
            redis_tls: redis_tls.unwrap_or_default(),
        },
        tokens: TokensConfig {
            issuer: t.issuer.clone(),
            audience: t.audience.clone(),
            access_ttl: t.access_ttl.0,
            refresh_ttl: t.refresh_ttl.0,
            leeway: t.leeway.0,
            refresh_reuse_grace: t.refresh_reuse_grace.0,
            session_max: t.session_max.map(|d| d.0),
        },
        keys,
        issuers,
        cache: CacheConfig {
            max_entries: raw.cache.max_entries,
            max_ttl: raw.cache.max_ttl.0,
        },
        login,
        identity,
        upstreams,
        routes,
        cors,
    })
}

fn login(raw: &Spanned<RawLogin>, path: &Path, d: &mut Diags<'_>) -> Option<LoginConfig> {
    let l = raw.get_ref();
    let credentials = match (&l.users_file, &l.verify_url) {
        (Some(file), None) => Some(Credentials::UsersFile(resolve_against(
            path,
            file.get_ref(),
        ))),
        (None, Some(url)) => verify_url(url, l.ca_file.as_ref(), path, d),
        (Some(_), Some(url)) => {
            d.at(
                Some(&url.span()),
                "[login] takes users_file or verify_url, not both",
            );
            None
        }
        (None, None) => {
            d.at(
                Some(&raw.span()),
                "[login] needs users_file or verify_url (remove [login] for a verify-only gateway)",
            );
            None
        }
    };
    if let (Some(ca), false) = (
        &l.ca_file,
        l.verify_url
            .as_ref()
            .is_some_and(|u| u.get_ref().starts_with("https://")),
    ) {
        d.at(Some(&ca.span()), "ca_file needs an https:// verify_url");
    }
    let mut rate = |r: &Spanned<String>| match Rate::parse(r.get_ref()) {
        Ok(rate) => Some(rate),
        Err(e) => {
            d.at(Some(&r.span()), e);
            None
        }
    };
    let per_ip = rate(&l.rate_limit_per_ip);
    let per_user = rate(&l.rate_limit_per_user);
    Some(LoginConfig {
        credentials: credentials?,
        rate_limit_per_ip: per_ip?,
        rate_limit_per_user: per_user?,
    })
}

/// `[state] backend`: `None` for the embedded store, the Redis URL for
/// `"redis"`. Several instances share a Redis, so they must also share a
/// signing key: a generated one would differ per instance, and tokens one
/// issued would fail at the others.
fn state_backend(
    state: &super::raw::RawState,
    keys: &[Spanned<RawKey>],
    d: &mut Diags<'_>,
) -> Option<String> {
    let span = state.backend.span();
    match state.backend.get_ref().as_str() {
        "embedded" => None,
        "redis" => {
            let Some(url) = &state.url else {
                d.at(
                    Some(&span),
                    "backend = \"redis\" needs `url = \"redis://host:port/db\"`",
                );
                return None;
            };
            let schemes = ["redis://", "rediss://", "redis+unix://"];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                d.at(
                    Some(&span),
                    "[state] url: it is not a redis://, rediss:// or redis+unix:// URL",
                );
                return None;
            }
            if url.starts_with("rediss://") && url.contains("#insecure") {
                d.at(
                    Some(&span),
                    "[state] url: #insecure would skip the check of Redis's certificate",
                );
                return None;
            }
            if !keys.iter().any(|k| k.get_ref().sign) {
                d.at(
                    Some(&span),
                    "backend = \"redis\" is for several instances, which must sign with the same key: \
                     add a [[keys]] entry with sign = true (the generated key would differ per instance)",
                );
            }
            Some(url.clone())
        }
        other => {
            d.at(
                Some(&span),
                format!("[state] backend `{other}` is not one of \"embedded\", \"redis\""),
            );
            None
        }
    }
}

/// `[state] ca_file` and `client_cert`, for a `rediss://` URL only.
fn redis_tls(
    state: &super::raw::RawState,
    url: Option<&str>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<RedisTls> {
    let rediss = url.is_some_and(|u| u.starts_with("rediss://"));
    if !rediss {
        for span in [
            state.ca_file.as_ref().map(|c| c.span()),
            state.client_cert.as_ref().map(|c| c.span()),
        ]
        .into_iter()
        .flatten()
        {
            d.at(
                Some(&span),
                "[state] ca_file and client_cert are for a rediss:// url",
            );
        }
        return None;
    }
    let ca_pem = match &state.ca_file {
        None => None,
        Some(ca) => Some(ca_file(ca, path, d)?.0),
    };
    let client = match &state.client_cert {
        None => None,
        Some(c) => {
            let (cert, key, parsed) = client_cert(c, path, d)?;
            // The redis crate parses them again; this checks the key
            // belongs to the certificate, as an upstream's is checked.
            let roots = tokio_rustls::rustls::RootCertStore::empty();
            if let Err(e) = client_tls::config(roots, Some(parsed), false) {
                d.at(Some(&c.span()), format!("client_cert {e}"));
                return None;
            }
            Some((cert, key))
        }
    };
    Some(RedisTls { ca_pem, client })
}

fn verify_url(
    url: &Spanned<String>,
    ca: Option<&Spanned<String>>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<Credentials> {
    let s = url.get_ref();
    let why = match s.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                "must not carry credentials".to_string()
            } else {
                let roots = match ca {
                    None => None,
                    Some(ca) => Some(ca_file(ca, path, d)?.1),
                };
                match crate::proxy::dial::Dial::for_url(&uri, roots) {
                    Ok(dial) => return Some(Credentials::VerifyUrl { uri, dial }),
                    Err(e) => e,
                }
            }
        }
        _ => "is not an http:// or https:// URL".to_string(),
    };
    d.at(Some(&url.span()), format!("verify_url `{s}` {why}"));
    None
}

fn server(s: &RawServer, path: &Path, d: &mut Diags<'_>) -> Option<ServerConfig> {
    let listen = socket_addr(&s.listen, d);
    let admin_listen = if s.admin_listen.get_ref().is_empty() {
        Some(None)
    } else {
        socket_addr(&s.admin_listen, d).map(Some)
    };
    let tls = s.tls.as_ref().map(|tls| {
        let files = tls.get_ref();
        let cert = read_file(&files.cert, path, d);
        let key = read_file(&files.key, path, d);
        let clients = match (&files.client_ca, &files.client_auth) {
            (Some(ca), auth) => {
                let auth = auth.as_ref().map_or(ClientAuth::Required, |a| *a.get_ref());
                trusted_roots(ca, "client_ca", path, d).map(|(_, roots)| Some((roots.into(), auth)))
            }
            (None, Some(auth)) => {
                d.at(Some(&auth.span()), "client_auth needs a client_ca");
                None
            }
            (None, None) => Some(None),
        };
        Some(TlsFiles {
            cert_pem: cert?,
            key_pem: key?,
            loc: d.loc(&tls.span()),
            clients: clients?,
        })
    });
    if *s.max_header_bytes.get_ref() < MIN_HEADER_BYTES {
        d.at(
            Some(&s.max_header_bytes.span()),
            format!("max_header_bytes must be at least {MIN_HEADER_BYTES}"),
        );
    }
    if *s.max_connections.get_ref() == 0 {
        d.at(
            Some(&s.max_connections.span()),
            "max_connections must be at least 1",
        );
    }
    let mut trusted = Vec::new();
    for p in &s.trusted_proxies {
        match Cidr::parse(p.get_ref()) {
            Ok(c) => trusted.push(c),
            Err(e) => d.at(Some(&p.span()), e),
        }
    }
    let request_id = match s.request_id.get_ref().as_str() {
        "" => None,
        name => match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) if RESERVED.contains(&h.as_str()) || crate::proxy::headers::rewritten(&h) => {
                d.at(
                    Some(&s.request_id.span()),
                    format!("request_id `{name}`: that header has a meaning of its own; use `X-Request-Id`"),
                );
                None
            }
            Ok(h) => Some(h),
            Err(_) => {
                d.at(
                    Some(&s.request_id.span()),
                    format!("request_id `{name}` is not a valid header name"),
                );
                None
            }
        },
    };
    Some(ServerConfig {
        listen: listen?,
        admin_listen: admin_listen?,
        request_timeout: s.request_timeout.0,
        header_read_timeout: s.header_read_timeout.0,
        max_header_bytes: *s.max_header_bytes.get_ref(),
        max_connections: *s.max_connections.get_ref(),
        shutdown_grace: s.shutdown_grace.0,
        log_format: s.log_format,
        trusted_proxies: trusted,
        request_id,
        tls: match tls {
            None => None,
            Some(files) => Some(files?),
        },
    })
}

fn socket_addr(s: &Spanned<String>, d: &mut Diags<'_>) -> Option<std::net::SocketAddr> {
    match s.get_ref().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            d.at(
                Some(&s.span()),
                format!(
                    "`{}` is not an IP:port address (e.g. \"127.0.0.1:8080\")",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

fn keys(raw: &[Spanned<RawKey>], path: &Path, d: &mut Diags<'_>) -> Vec<KeySpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for k in raw {
        let span = k.span();
        let k = k.get_ref();
        if !seen.insert(k.id.get_ref().as_str()) {
            d.at(
                Some(&k.id.span()),
                format!("duplicate key id `{}`", k.id.get_ref()),
            );
        }
        let Some(algorithm) = algorithm(&k.algorithm, d) else {
            continue;
        };
        if let Some(material) = key_material(k, algorithm, &span, path, d) {
            if k.sign && matches!(material, KeyMaterial::PublicPem(_)) {
                d.at(
                    Some(&span),
                    format!(
                        "key `{}` has `sign = true` but only a public_key: signing needs private_key",
                        k.id.get_ref()
                    ),
                );
            }
            out.push(KeySpec {
                id: k.id.get_ref().clone(),
                algorithm,
                material,
                sign: k.sign,
                loc: d.loc(&span),
            });
        }
    }
    out
}

fn algorithm(a: &Spanned<String>, d: &mut Diags<'_>) -> Option<Algorithm> {
    match a.get_ref().parse::<Algorithm>() {
        Ok(alg) => Some(alg),
        Err(_) => {
            d.at(
                Some(&a.span()),
                format!(
                    "unknown algorithm `{}`: use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA",
                    a.get_ref()
                ),
            );
            None
        }
    }
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

fn key_material(
    k: &RawKey,
    alg: Algorithm,
    span: &Range<usize>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<KeyMaterial> {
    let id = k.id.get_ref();
    let sources = [&k.secret_env, &k.secret_file, &k.private_key, &k.public_key];
    if sources.iter().filter(|s| s.is_some()).count() != 1 {
        let want = if is_hmac(alg) {
            "secret_env or secret_file"
        } else {
            "private_key or public_key"
        };
        d.at(
            Some(span),
            format!("key `{id}` needs exactly one of {want}"),
        );
        return None;
    }
    if is_hmac(alg) {
        let secret = if let Some(var) = &k.secret_env {
            match std::env::var_os(var.get_ref()) {
                Some(v) => v.into_encoded_bytes(),
                None => {
                    d.at(
                        Some(&var.span()),
                        format!("environment variable `{}` is not set", var.get_ref()),
                    );
                    return None;
                }
            }
        } else if let Some(file) = &k.secret_file {
            let mut bytes = read_file(file, path, d)?;
            // `openssl rand -hex 32 > secret.key` leaves a newline: not part of the secret.
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            bytes
        } else {
            d.at(
                Some(span),
                format!("key `{id}` is {alg:?}: it takes secret_env or secret_file, not a PEM"),
            );
            return None;
        };
        if secret.len() < MIN_SECRET_BYTES {
            let at = k.secret_env.as_ref().or(k.secret_file.as_ref());
            d.at(
                at.map(|s| s.span()).as_ref(),
                format!(
                    "key `{id}`: the secret is {} bytes; HMAC keys need at least {MIN_SECRET_BYTES}",
                    secret.len()
                ),
            );
            return None;
        }
        return Some(KeyMaterial::Secret(secret));
    }
    if let Some(file) = &k.private_key {
        return read_file(file, path, d).map(KeyMaterial::PrivatePem);
    }
    if let Some(file) = &k.public_key {
        return read_file(file, path, d).map(KeyMaterial::PublicPem);
    }
    d.at(
        Some(span),
        format!("key `{id}` is {alg:?}: it takes private_key or public_key, not a secret"),
    );
    None
}

fn read_file(file: &Spanned<String>, path: &Path, d: &mut Diags<'_>) -> Option<Vec<u8>> {
    let full = resolve_against(path, file.get_ref());
    match std::fs::read(&full) {
        Ok(b) => Some(b),
        Err(e) => {
            d.at(
                Some(&file.span()),
                format!("cannot read `{}`: {e}", full.display()),
            );
            None
        }
    }
}

fn issuers(raw: &RawConfig, keys: &[KeySpec], path: &Path, d: &mut Diags<'_>) -> Vec<IssuerSpec> {
    let known: HashSet<&str> = raw
        .keys
        .iter()
        .map(|k| k.get_ref().id.get_ref().as_str())
        .collect();
    let mut seen: HashSet<Option<&str>> = HashSet::from([Some(raw.tokens.issuer.as_str())]);
    let mut out = Vec::new();
    for i in &raw.issuers {
        let span = i.span();
        let i = i.get_ref();
        let discovery = i.discovery.as_ref().filter(|on| *on.get_ref());
        let source = match (&i.jwks_url, discovery, &i.issuer) {
            (Some(url), None, _) => Some(JwksSource {
                url: url.get_ref().clone(),
                span: url.span(),
                discovery: None,
            }),
            (None, Some(on), Some(issuer)) => Some(JwksSource {
                url: discovery::configuration_url(issuer),
                span: on.span(),
                discovery: Some(issuer.clone()),
            }),
            (None, Some(on), None) => {
                d.at(
                    Some(&on.span()),
                    "discovery needs an `issuer`: its OpenID configuration is read from \
                     <issuer>/.well-known/openid-configuration",
                );
                None
            }
            (Some(url), Some(_), _) => {
                d.at(
                    Some(&url.span()),
                    "give a jwks_url or `discovery = true`, not both",
                );
                None
            }
            (None, None, _) => None,
        };
        let jwks = match (source, &i.jwks_refresh) {
            (Some(source), refresh) => jwks(source, refresh.as_ref(), i.ca_file.as_ref(), path, d),
            (None, Some(refresh)) if i.jwks_url.is_none() && discovery.is_none() => {
                d.at(
                    Some(&refresh.span()),
                    "jwks_refresh needs a jwks_url or `discovery = true`",
                );
                None
            }
            (None, _) => None,
        };
        if !seen.insert(i.issuer.as_deref()) {
            let what = i.issuer.as_deref().map_or_else(
                || "an issuer without `issuer`".to_string(),
                |s| format!("issuer `{s}`"),
            );
            d.at(
                Some(&span),
                format!("{what} is configured twice (the [tokens] issuer counts too)"),
            );
        }
        let https = match (&i.jwks_url, discovery, &i.issuer) {
            (Some(url), _, _) => url.get_ref().starts_with("https://"),
            (None, Some(_), Some(issuer)) => issuer.starts_with("https://"),
            _ => false,
        };
        if let (Some(ca), false) = (&i.ca_file, https) {
            d.at(
                Some(&ca.span()),
                "ca_file needs an https:// jwks_url (or an https:// issuer with discovery)",
            );
        }
        if i.keys.is_empty() && i.jwks_url.is_none() && discovery.is_none() {
            d.at(
                Some(&span),
                "an issuer needs `keys = [...]`, a `jwks_url` or `discovery = true`",
            );
        }
        for k in &i.keys {
            if !known.contains(k.get_ref().as_str()) {
                d.at(
                    Some(&k.span()),
                    format!(
                        "unknown key `{}`: no [[keys]] entry has this id",
                        k.get_ref()
                    ),
                );
            }
        }
        let algorithms = i.algorithms.as_ref().map(|list| {
            list.iter()
                .filter_map(|a| algorithm(a, d))
                .collect::<Vec<_>>()
        });
        if let (Some(algs), Some(_)) = (&algorithms, &jwks)
            && algs
                .iter()
                .all(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            d.at(
                Some(&span),
                "a jwks_url serves public keys only: `algorithms` names no RS*, PS*, ES* or EdDSA",
            );
        }
        if let Some(algs) = &algorithms {
            let usable = i.keys.iter().any(|k| {
                keys.iter()
                    .any(|spec| &spec.id == k.get_ref() && algs.contains(&spec.algorithm))
            });
            if !usable && !keys.is_empty() && !i.keys.is_empty() {
                d.at(
                    Some(&span),
                    "none of this issuer's keys has an algorithm in its `algorithms` list",
                );
            }
        }
        out.push(IssuerSpec {
            issuer: i.issuer.clone(),
            keys: i.keys.iter().map(|k| k.get_ref().clone()).collect(),
            audiences: i.audiences.clone(),
            algorithms,
            jwks,
        });
    }
    out
}

/// The default `jwks_refresh` (SPEC §2's example).
const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(600);
/// The shortest `jwks_refresh`: an identity provider is someone else's server.
const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// Where an issuer's keys are fetched from, before it is checked.
struct JwksSource {
    /// `jwks_url`, or the OpenID configuration's URL.
    url: String,
    /// Of `jwks_url`, or of `discovery`.
    span: Range<usize>,
    /// With `discovery`: the issuer.
    discovery: Option<String>,
}

fn jwks(
    source: JwksSource,
    refresh: Option<&Spanned<Dur>>,
    ca: Option<&Spanned<String>>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<JwksSpec> {
    let s = &source.url;
    // What the URL comes from, for the messages.
    let what = match &source.discovery {
        None => format!("jwks_url `{s}`"),
        Some(issuer) => format!("issuer `{issuer}` (discovery reads `{s}`)"),
    };
    let uri = match s.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some_and(|a| !a.host().is_empty())
                && source
                    .discovery
                    .as_ref()
                    .is_none_or(|issuer| !issuer.contains(['?', '#'])) =>
        {
            uri
        }
        _ => {
            d.at(
                Some(&source.span),
                format!("{what} is not an http:// or https:// URL"),
            );
            return None;
        }
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        d.at(
            Some(&source.span),
            format!("{what} must not carry credentials"),
        );
        return None;
    }
    let refresh = match refresh {
        None => DEFAULT_JWKS_REFRESH,
        Some(r) if r.get_ref().0 < MIN_JWKS_REFRESH => {
            d.at(Some(&r.span()), "jwks_refresh must be at least 1s");
            return None;
        }
        Some(r) => r.get_ref().0,
    };
    let ca_pem = match ca {
        None => None,
        Some(ca) => Some(ca_file(ca, path, d)?.0),
    };
    Some(JwksSpec {
        url: uri,
        discovery: source.discovery,
        refresh,
        ca_pem,
    })
}

fn upstreams(raw: &[Spanned<RawUpstream>], path: &Path, d: &mut Diags<'_>) -> Vec<UpstreamSpec> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for u in raw {
        let u = u.get_ref();
        if !seen.insert(u.name.get_ref().as_str()) {
            d.at(
                Some(&u.name.span()),
                format!("duplicate upstream `{}`", u.name.get_ref()),
            );
        }
        if u.targets.get_ref().is_empty() {
            d.at(
                Some(&u.targets.span()),
                "an upstream needs at least one target",
            );
        }
        let health_check = u.health_check.as_ref().and_then(|hc| health_check(hc, d));
        let mut targets: Vec<Target> = u
            .targets
            .get_ref()
            .iter()
            .filter_map(|t| target(t, d))
            .collect();
        let probed = u
            .targets
            .get_ref()
            .iter()
            .any(|t| t.get_ref() != "builtin:echo");
        if let (Some(hc), false) = (&u.health_check, probed) {
            d.at(
                Some(&hc.span()),
                "health_check needs an http:// or https:// target to probe (builtin:echo is never probed)",
            );
        }
        let https = targets
            .iter()
            .any(|t| matches!(t, Target::Http { tls: Some(_), .. }));
        if let Some(name) = &u.server_name {
            server_name(name, https, &mut targets, d);
        }
        let tls = upstream_tls(u, https, path, d);
        out.push(UpstreamSpec {
            name: u.name.get_ref().clone(),
            targets,
            connect_timeout: u.connect_timeout.0,
            timeout: u.timeout.0,
            health_check,
            tls,
            preserve_host: u.preserve_host,
            protocol: u.protocol,
        });
    }
    out
}

/// `server_name`: the name every `https://` target of the upstream is
/// asked for and checked against, in place of its host.
fn server_name(name: &Spanned<String>, https: bool, targets: &mut [Target], d: &mut Diags<'_>) {
    if !https {
        d.at(Some(&name.span()), "server_name needs an https:// target");
        return;
    }
    let s = name.get_ref();
    let parsed = tokio_rustls::rustls::pki_types::ServerName::try_from(s.clone());
    let Ok(parsed) = parsed else {
        d.at(
            Some(&name.span()),
            format!("server_name `{s}` is not a DNS name or IP address"),
        );
        return;
    };
    for t in targets {
        if let Target::Http { tls: Some(tls), .. } = t {
            *tls = parsed.clone();
        }
    }
}

/// How an upstream's `https://` targets are checked (`ca_file`, else the
/// system's roots) and which certificate it presents (`client_cert`);
/// `None` without `https://` targets, where both are refused.
fn upstream_tls(
    u: &RawUpstream,
    https: bool,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<Arc<tokio_rustls::rustls::ClientConfig>> {
    if !https {
        if let Some(ca) = &u.ca_file {
            d.at(Some(&ca.span()), "ca_file needs an https:// target");
        }
        if let Some(c) = &u.client_cert {
            d.at(Some(&c.span()), "client_cert needs an https:// target");
        }
        return None;
    }
    let roots = match &u.ca_file {
        Some(ca) => ca_file(ca, path, d).map(|(_, roots)| roots),
        None => client_tls::system_roots()
            .map_err(|e| {
                d.at(
                    Some(&u.targets.span()),
                    format!("https:// targets: {e}, or give the upstream a ca_file"),
                )
            })
            .ok(),
    };
    let client = match &u.client_cert {
        None => Some(None),
        Some(c) => client_cert(c, path, d).map(|(_, _, parsed)| Some(parsed)),
    };
    match client_tls::config(roots?, client?, u.protocol == Protocol::Http2) {
        Ok(config) => Some(config),
        Err(e) => {
            let at = u.client_cert.as_ref().map(|c| c.span());
            d.at(at.as_ref(), format!("client_cert {e}"));
            None
        }
    }
}

/// A `ca_file`: its PEM, and the certificates in it as trusted roots.
fn ca_file(
    ca: &Spanned<String>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<(Vec<u8>, tokio_rustls::rustls::RootCertStore)> {
    trusted_roots(ca, "ca_file", path, d)
}

/// A file of PEM certificates (the setting `what`): its PEM, and the
/// certificates as trusted roots.
fn trusted_roots(
    file: &Spanned<String>,
    what: &str,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<(Vec<u8>, tokio_rustls::rustls::RootCertStore)> {
    let pem = read_file(file, path, d)?;
    match client_tls::roots_from_pem(&pem) {
        Ok(roots) => Some((pem, roots)),
        Err(e) => {
            d.at(Some(&file.span()), format!("{what}: {e}"));
            None
        }
    }
}

/// A `client_cert = { cert, key }`: both files' PEM, and both parsed.
fn client_cert(
    c: &Spanned<super::raw::RawTls>,
    path: &Path,
    d: &mut Diags<'_>,
) -> Option<(Vec<u8>, Vec<u8>, client_tls::ClientCert)> {
    let files = c.get_ref();
    let cert = read_file(&files.cert, path, d);
    let key = read_file(&files.key, path, d);
    let (cert, key) = (cert?, key?);
    match client_tls::ClientCert::from_pem(&cert, &key) {
        Ok(parsed) => Some((cert, key, parsed)),
        Err(e) => {
            d.at(Some(&c.span()), format!("client_cert {e}"));
            None
        }
    }
}

/// The shortest `health_check` interval: probes more often than this would
/// load the upstream more than they tell.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

fn health_check(hc: &Spanned<RawHealthCheck>, d: &mut Diags<'_>) -> Option<HealthCheck> {
    let hc = hc.get_ref();
    let path = hc.path.get_ref();
    let parsed = match path.parse::<http::uri::PathAndQuery>() {
        Ok(p) if path.starts_with('/') => Some(p),
        _ => {
            d.at(
                Some(&hc.path.span()),
                format!(
                    "health_check path `{path}` must be an origin-form path such as \"/healthz\""
                ),
            );
            None
        }
    };
    let interval = hc.interval.get_ref().0;
    if interval < MIN_HEALTH_INTERVAL {
        d.at(
            Some(&hc.interval.span()),
            "health_check interval must be at least 100ms",
        );
        return None;
    }
    Some(HealthCheck {
        path: parsed?,
        interval,
    })
}

fn target(t: &Spanned<String>, d: &mut Diags<'_>) -> Option<Target> {
    let s = t.get_ref();
    if s == "builtin:echo" {
        return Some(Target::Echo);
    }
    let bad = |d: &mut Diags<'_>, why: &str| {
        d.at(
            Some(&t.span()),
            format!(
                "upstream target `{s}` {why} (e.g. \"http://127.0.0.1:9000\" or \"builtin:echo\")"
            ),
        );
        None
    };
    let Ok(uri) = s.parse::<http::Uri>() else {
        return bad(d, "is not a URL");
    };
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return bad(d, "must start with http:// or https://"),
    };
    let Some(authority) = uri.authority().cloned() else {
        return bad(d, "has no host");
    };
    if authority.as_str().contains('@') {
        return bad(d, "must not carry credentials");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return bad(d, "must not have a path or query");
    }
    let tls = if https {
        match crate::proxy::dial::server_name(&authority) {
            Ok(name) => Some(name),
            Err(_) => return bad(d, "has a host TLS cannot check a certificate against"),
        }
    } else {
        None
    };
    Some(Target::Http { authority, tls })
}

fn routes(
    raw: &[Spanned<RawRoute>],
    ups: &[Spanned<RawUpstream>],
    max_body_bytes: Option<u64>,
    d: &mut Diags<'_>,
) -> Vec<RouteSpec> {
    let index: HashMap<&str, usize> = ups
        .iter()
        .enumerate()
        .map(|(i, u)| (u.get_ref().name.get_ref().as_str(), i))
        .collect();
    let mut used = vec![false; ups.len()];
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in raw {
        let span = r.span();
        let r = r.get_ref();
        let prefix = r.path_prefix.get_ref();
        if !prefix.starts_with('/') {
            d.at(
                Some(&r.path_prefix.span()),
                format!("path_prefix `{prefix}` must start with `/`"),
            );
        }
        let methods = r.methods.as_ref().map(|ms| methods(ms, d));
        let host = r.host.as_ref().map(|h| {
            let h = h.to_ascii_lowercase();
            h.strip_suffix('.').map(str::to_string).unwrap_or(h)
        });
        if host
            .as_ref()
            .is_some_and(|h| h.contains(':') && !h.starts_with('['))
        {
            d.at(
                Some(&span),
                "route `host` must not carry a port (the port is ignored when matching)",
            );
        }
        let has_rules = !r.roles_any.is_empty() || !r.scopes_all.is_empty() || !r.claims.is_empty();
        if has_rules && r.auth != AuthMode::Required {
            d.at(
                Some(&span),
                "roles_any, scopes_all and claims need auth = \"required\": a request without a token would skip them",
            );
        }
        let rate_limit = r.rate_limit.as_ref().and_then(|l| {
            let l = l.get_ref();
            if l.per == LimitBy::Subject && r.auth == AuthMode::None {
                d.at(
                    Some(&span),
                    "rate_limit per = \"subject\" on a route with auth = \"none\": there is no token to count by; use per = \"ip\"",
                );
            }
            match Rate::parse(l.rate.get_ref()) {
                Ok(rate) => Some((rate, l.per)),
                Err(why) => {
                    d.at(Some(&l.rate.span()), why);
                    None
                }
            }
        });
        let mut key_methods: Vec<String> =
            methods.iter().flatten().map(|m| m.to_string()).collect();
        key_methods.sort();
        if !seen.insert((prefix.clone(), host.clone(), key_methods)) {
            d.at(
                Some(&span),
                "another route has the same path_prefix, host and methods: one of them could never match",
            );
        }
        let upstream = match index.get(r.upstream.get_ref().as_str()) {
            Some(&i) => {
                used[i] = true;
                i
            }
            None => {
                d.at(
                    Some(&r.upstream.span()),
                    format!(
                        "unknown upstream `{}`: no [[upstreams]] entry has this name",
                        r.upstream.get_ref()
                    ),
                );
                0
            }
        };
        let claims = r
            .claims
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect();
        out.push(RouteSpec {
            path_prefix: prefix.clone(),
            host,
            methods,
            upstream,
            auth: r.auth,
            roles_any: r.roles_any.clone(),
            scopes_all: r.scopes_all.clone(),
            claims,
            strip_prefix: r.strip_prefix,
            rate_limit,
            max_body_bytes: r.max_body_bytes.or(max_body_bytes),
        });
    }
    for (u, used) in ups.iter().zip(used) {
        if !used {
            let name = &u.get_ref().name;
            d.at(
                Some(&name.span()),
                format!("upstream `{}` is not used by any route", name.get_ref()),
            );
        }
    }
    out
}

fn identity(raw: &RawIdentity, d: &mut Diags<'_>) -> IdentityConfig {
    let mut header = |h: &Spanned<String>| -> Option<HeaderName> {
        if h.get_ref().is_empty() {
            return None;
        }
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                d.at(
                    Some(&h.span()),
                    format!("`{}` is not a valid header name", h.get_ref()),
                );
                None
            }
        }
    };
    let subject_header = header(&raw.subject_header);
    let roles_header = header(&raw.roles_header);
    let claims_header = header(&raw.claims_header);
    let claim_headers = raw
        .claim_headers
        .iter()
        .filter_map(|(claim, h)| header(h).map(|name| (claim.clone(), name)))
        .collect();
    IdentityConfig {
        subject_header,
        roles_header,
        claims_header,
        claim_headers,
        roles_claim: raw.roles_claim.clone(),
        forward_authorization: raw.forward_authorization,
    }
}

/// Each entry of `list` read by `parse`; each one it refuses reported as
/// "`entry` is not `what`".
fn each<T>(
    list: &[Spanned<String>],
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
    d: &mut Diags<'_>,
) -> Vec<T> {
    list.iter()
        .filter_map(|entry| {
            let parsed = parse(entry.get_ref());
            if parsed.is_none() {
                d.at(
                    Some(&entry.span()),
                    format!("`{}` is not {what}", entry.get_ref()),
                );
            }
            parsed
        })
        .collect()
}

/// HTTP methods, upper-cased.
fn methods(ms: &[Spanned<String>], d: &mut Diags<'_>) -> Vec<Method> {
    let method = |m: &str| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok();
    each(ms, "an HTTP method", method, d)
}

/// `[cors]`.
fn cors(raw: &Spanned<RawCors>, d: &mut Diags<'_>) -> Option<crate::cors::Cors> {
    use crate::cors::{DEFAULT_METHODS, Origin, Settings};
    let c = raw.get_ref();
    let before = d.len();
    let any = c.allow_origins.iter().any(|o| o.get_ref() == "*");
    if c.allow_origins.is_empty() {
        d.at(
            Some(&raw.span()),
            "[cors] allow_origins is empty: name the origins of the pages that call the API, \
             as `https://app.example.com`, or leave [cors] out",
        );
    } else if any && c.allow_origins.len() > 1 {
        d.at(
            Some(&raw.span()),
            "[cors] allow_origins: `*` allows every origin; it cannot be listed with others",
        );
    } else if any && c.allow_credentials {
        d.at(
            Some(&raw.span()),
            "[cors] allow_credentials = true with allow_origins = [\"*\"] would let every site \
             read answers sent with the user's cookies: name the origins",
        );
    }
    let origins: Vec<Origin> = c
        .allow_origins
        .iter()
        .filter(|o| o.get_ref() != "*")
        .filter_map(|o| match Origin::parse(o.get_ref()) {
            Ok(origin) => Some(origin),
            Err(why) => {
                d.at(Some(&o.span()), why);
                None
            }
        })
        .collect();
    let methods = match &c.allow_methods {
        Some(ms) => methods(ms, d),
        None => DEFAULT_METHODS.to_vec(),
    };
    let name = |h: &str| HeaderName::from_bytes(h.as_bytes()).ok();
    let headers = c
        .allow_headers
        .as_ref()
        .map(|h| each(h, "a valid header name", name, d));
    let expose = each(&c.expose_headers, "a valid header name", name, d);
    // With credentials, browsers read a `*` as a method or header named `*`.
    let literal_star = c
        .allow_methods
        .iter()
        .flatten()
        .chain(&c.expose_headers)
        .find(|h| h.get_ref() == "*")
        .filter(|_| c.allow_credentials);
    if let Some(star) = literal_star {
        d.at(
            Some(&star.span()),
            "[cors] with allow_credentials = true, browsers read `*` as a name, not a wildcard: \
             list the methods and headers",
        );
    }
    // A `*` here is a wildcard that leaves out `Authorization` (Fetch
    // standard), so the calls it was meant to allow are refused.
    if let Some(star) = c
        .allow_headers
        .iter()
        .flatten()
        .find(|h| h.get_ref() == "*")
    {
        d.at(
            Some(&star.span()),
            "[cors] allow_headers: browsers do not count `Authorization` in a `*`; name the \
             headers, or leave allow_headers out to allow what each preflight asks for",
        );
    }
    let max_age = c
        .max_age
        .as_ref()
        .map_or(std::time::Duration::from_secs(600), |a| a.get_ref().0);
    if d.len() != before {
        return None;
    }
    Some(crate::cors::Cors::new(Settings {
        origins: (!any).then_some(origins),
        methods,
        headers,
        expose,
        max_age,
        credentials: c.allow_credentials,
    }))
}
