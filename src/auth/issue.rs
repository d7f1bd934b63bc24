//! Minting tokens with the signing key: `kid` and `typ` in the header
//! (RFC 9068: `at+jwt` for access tokens), the registered claims, then the
//! caller's roles and claims (which cannot override a registered claim).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Header;
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

/// A 128-bit random id, base64url (`jti`).
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system RNG is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs an access token for `grant` with `key`.
///
/// # Errors
/// When `key` cannot sign (a verify-only key) or signing fails.
pub fn access_token(
    key: &Key,
    tokens: &TokensConfig,
    grant: &Grant<'_>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let encoding = key
        .encoding
        .as_ref()
        .ok_or(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = grant.claims.clone();
    let registered = json!({
        "iss": tokens.issuer,
        "sub": grant.subject,
        "aud": tokens.audience,
        "iat": now,
        "nbf": now,
        "exp": now + grant.ttl.as_secs(),
        "jti": random_id(),
        "type": "access",
        "roles": grant.roles,
    });
    if let Value::Object(reg) = registered {
        claims.extend(reg);
    }
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.id.clone());
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, &claims, encoding)
}
