//! Minting tokens with the signing key: `kid` and `typ` in the header
//! (RFC 9068: `at+jwt` for access tokens, `rt+jwt` for refresh tokens, so
//! neither can pass for the other), the registered claims, then the
//! caller's roles and claims (which cannot override a registered claim).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
use jsonwebtoken::errors::{Error, ErrorKind};
use serde_json::{Map, Value, json};

use super::keys::Key;
use crate::config::TokensConfig;

/// What an access token says about its subject.
pub struct Grant<'a> {
    pub subject: &'a str,
    pub roles: &'a [String],
    pub claims: &'a Map<String, Value>,
    pub ttl: Duration,
}

/// A signed token with the claims the state store keeps about it.
pub struct Minted {
    pub token: String,
    pub jti: String,
    pub exp: u64,
    /// Seconds from signing to `exp` (the token response's `*_expires_in`).
    pub expires_in: u64,
}

/// A 128-bit random id, base64url (`jti`, family ids).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Signs an access token for `grant` with `key`, issued now (`gatehouse token`).
///
/// # Errors
/// When `key` cannot sign (a verify-only key) or signing fails.
pub fn access_token(key: &Key, tokens: &TokensConfig, grant: &Grant<'_>) -> Result<String, Error> {
    sign_access(key, tokens, grant, random_id(), now()).map(|m| m.token)
}

/// Signs an access token with `jti`, issued at `iat` (which may be a second
/// after a logout-all cutoff; `nbf` stays at the real time).
///
/// # Errors
/// When `key` cannot sign (a verify-only key) or signing fails.
pub fn sign_access(
    key: &Key,
    tokens: &TokensConfig,
    grant: &Grant<'_>,
    jti: String,
    iat: u64,
) -> Result<Minted, Error> {
    let now = now();
    let exp = now + grant.ttl.as_secs();
    let mut claims = grant.claims.clone();
    let registered = json!({
        "iss": tokens.issuer,
        "sub": grant.subject,
        "aud": tokens.audience,
        "iat": iat,
        "nbf": now,
        "exp": exp,
        "jti": jti,
        "type": "access",
        "roles": grant.roles,
    });
    if let Value::Object(reg) = registered {
        claims.extend(reg);
    }
    let token = sign(key, "at+jwt", &claims)?;
    let expires_in = grant.ttl.as_secs();
    Ok(Minted {
        token,
        jti,
        exp,
        expires_in,
    })
}

/// Signs a refresh token of `family` for `subject`, whose login was at
/// `auth_time`: it expires `refresh_ttl` from now, or `session_max` after
/// the login if that comes first.
///
/// # Errors
/// When `key` cannot sign (a verify-only key) or signing fails.
pub fn sign_refresh(
    key: &Key,
    tokens: &TokensConfig,
    subject: &str,
    family: &str,
    iat: u64,
    auth_time: u64,
) -> Result<Minted, Error> {
    let jti = random_id();
    let now = now();
    let mut exp = now + tokens.refresh_ttl.as_secs();
    if let Some(max) = tokens.session_max {
        exp = exp.min(auth_time.saturating_add(max.as_secs()));
    }
    let claims = json!({
        "iss": tokens.issuer,
        "sub": subject,
        "iat": iat,
        "exp": exp,
        "jti": jti,
        "type": "refresh",
        "fam": family,
        "auth_time": auth_time,
    });
    let token = sign(key, "rt+jwt", &claims)?;
    Ok(Minted {
        token,
        jti,
        exp,
        expires_in: exp.saturating_sub(now),
    })
}

fn sign(key: &Key, typ: &str, claims: &impl serde::Serialize) -> Result<String, Error> {
    let encoding = key.encoding.as_ref().ok_or(ErrorKind::InvalidKeyFormat)?;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.id.clone());
    header.typ = Some(typ.into());
    jsonwebtoken::encode(&header, claims, encoding)
}
