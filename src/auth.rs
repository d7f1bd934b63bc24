//! Who the caller is: bearer extraction, key sets, signature verification,
//! the verified-claims cache and per-route authorization.
//!
//! `auth` never sees sockets or bodies and never touches the state store:
//! `proxy` composes the steps (verify, then the revocation check, then
//! authorize).

pub mod authorize;
pub mod bearer;
pub mod cache;
pub mod claims;
pub mod issue;
pub mod jwks;
pub mod keygen;
pub mod keys;
pub mod password;
pub mod remote;
pub mod verify;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value};

use crate::config::IdentityConfig;
use claims::Claims;

pub use authorize::{AccessRule, Denied};
pub use bearer::{BearerToken, Malformed};
pub use cache::{ClaimsCache, LastToken};
pub use verify::{RefreshClaims, Rejected, Verifier};

/// The claims of a token whose signature and time/issuer/audience checks
/// passed, with the identity headers for upstreams computed once, so a cache
/// hit parses and formats nothing. Only `auth::verify` builds one.
///
/// It keeps what the request path reads, not the parsed claims: a
/// `serde_json` map costs about a kilobyte an entry, and the cache holds up
/// to `[cache] max_entries` of these. The whole claim set stays available
/// as the token's signed payload segment (which is also what
/// `X-Auth-Claims` carries: base64url of the claims' JSON).
#[derive(Debug)]
pub struct VerifiedClaims {
    /// The token's payload segment: base64url (no padding) of the claims' JSON.
    payload: HeaderValue,
    /// The claims route rules compare (`[[routes]] claims`), by name.
    rule_claims: Box<[(Box<str>, Value)]>,
    /// `exp` in seconds since the epoch: the cache never keeps it longer.
    exp: u64,
    /// Until when (seconds since the epoch) a cache may serve it: `exp`,
    /// or sooner by `[cache] max_ttl` once [`ClaimsCache::seal`] has run.
    cached_until: u64,
    subject: Option<Box<str>>,
    /// `iss` and `sub` as the revocation set names them (`issuer_scoped`).
    subject_key: Option<Box<str>>,
    /// The issuer-qualified `jti` (or, for a token without one, `#` and a
    /// digest of the token), and `iat`: what logout revokes and the proxy
    /// checks after a cache hit.
    jti: Box<str>,
    iat: Option<u64>,
    /// The refresh family an access token of this gateway was issued from
    /// (the part of its `jti` before the `.`).
    family: Option<Box<str>>,
    roles: Box<[Box<str>]>,
    scopes: Box<[Box<str>]>,
    /// What upstreams receive about the caller (`[identity]`).
    headers: Box<[(HeaderName, HeaderValue)]>,
}

impl VerifiedClaims {
    /// Reads roles, scopes and identity headers out of verified `claims`.
    ///
    /// # Errors
    /// When a value that must become a header holds characters no header may
    /// carry (the token is then refused rather than forwarded without identity).
    fn build(
        token: &str,
        payload_b64: &str,
        claims: &Claims<'_>,
        exp: u64,
        own: bool,
        ids: &Identity,
    ) -> Result<Self, &'static str> {
        let get = |name: &str| claims.get(name).map_err(|_| "malformed token");
        let subject: Option<Box<str>> = match claims.str("sub") {
            Some(Ok(s)) => Some(s.into()),
            None => None,
            // Not a string (or unreadable): a number is taken as its text.
            Some(Err(())) => match get("sub")? {
                Some(Value::Number(n)) => Some(n.to_string().into()),
                _ => None,
            },
        };
        // A list claim: one string to split, or an array of strings. The
        // string is read in place, the array parsed.
        let list = |name: &str, split: fn(&str) -> Vec<Box<str>>| -> Result<_, &'static str> {
            Ok(match claims.str(name) {
                Some(Ok(s)) => split(&s),
                None => Vec::new(),
                Some(Err(())) => match get(name)? {
                    Some(Value::Array(items)) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .map(Into::into)
                        .collect(),
                    _ => Vec::new(),
                },
            })
        };
        let by_comma = |s: &str| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(Into::into)
                .collect()
        };
        let by_space = |s: &str| s.split_ascii_whitespace().map(Into::into).collect();
        let roles = list(&ids.roles_claim, by_comma)?;
        let mut scopes = list("scope", by_space)?;
        if scopes.is_empty() {
            // Okta and Azure AD put scopes in an `scp` array.
            scopes = list("scp", by_space)?;
        }
        let mut headers = Vec::new();
        let bad = "a claim cannot be forwarded in a header";
        if let (Some(name), Some(sub)) = (&ids.subject_header, &subject) {
            let v = HeaderValue::from_str(sub).map_err(|_| bad)?;
            headers.push((name.clone(), v));
        }
        if let (Some(name), false) = (&ids.roles_header, roles.is_empty()) {
            let joined = HeaderValue::from_str(&roles.join(",")).map_err(|_| bad)?;
            headers.push((name.clone(), joined));
        }
        // base64url is always a valid header value.
        let payload = HeaderValue::from_str(payload_b64).map_err(|_| bad)?;
        if let Some(name) = &ids.claims_header {
            headers.push((name.clone(), payload.clone()));
        }
        for (claim, name) in &ids.claim_headers {
            let value = match get(claim)? {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
            };
            headers.push((
                name.clone(),
                HeaderValue::from_str(&value).map_err(|_| bad)?,
            ));
        }
        // `signed` refused an `iss` that is not a string.
        let iss = claims.str("iss").and_then(Result::ok);
        let iss = iss.as_deref();
        let raw_jti = match claims.str("jti") {
            Some(Ok(j)) if !j.is_empty() => Some(j),
            _ => None,
        };
        // An access token of this gateway names its family: `{family}.{random}`.
        let family = raw_jti
            .as_deref()
            .filter(|_| own)
            .and_then(|j| j.split_once('.'))
            .map(|(fam, _)| fam.into());
        // Revocations are kept per issuer, so another issuer's token cannot
        // name (and revoke) one of ours. PyJWT-style tokens often carry no
        // jti: logout still needs a name for them, a digest of the token.
        let jti = match &raw_jti {
            Some(j) => crate::store::revocations::issuer_scoped(iss, j),
            None => {
                let digest =
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
                let name = format!("#{}", URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]));
                crate::store::revocations::issuer_scoped(iss, &name)
            }
        };
        let jti = jti.into_boxed_str();
        let subject_key = subject
            .as_deref()
            .map(|sub| crate::store::revocations::issuer_scoped(iss, sub).into());
        let mut rule_claims = Vec::new();
        for name in &ids.rule_claims {
            if let Some(v) = get(name)? {
                rule_claims.push((name.as_str().into(), v));
            }
        }
        Ok(VerifiedClaims {
            payload,
            rule_claims: rule_claims.into_boxed_slice(),
            subject_key,
            iat: claims.u64("iat").and_then(Result::ok),
            jti,
            family,
            exp,
            cached_until: exp,
            subject,
            roles: roles.into_boxed_slice(),
            scopes: scopes.into_boxed_slice(),
            headers: headers.into_boxed_slice(),
        })
    }

    pub fn exp(&self) -> u64 {
        self.exp
    }

    pub fn subject(&self) -> Option<&str> {
        self.subject.as_deref()
    }

    /// The subject, qualified by its issuer: what logout-all revokes.
    pub fn subject_key(&self) -> Option<&str> {
        self.subject_key.as_deref()
    }

    /// Every verified token has one (see the field).
    pub fn jti(&self) -> &str {
        &self.jti
    }

    pub fn iat(&self) -> Option<u64> {
        self.iat
    }

    /// The refresh family this gateway issued the token from, if any.
    pub fn family(&self) -> Option<&str> {
        self.family.as_deref()
    }

    /// What the revocation set looks at.
    pub fn revocation_ref(&self) -> crate::store::revocations::TokenRef<'_> {
        crate::store::revocations::TokenRef {
            jti: Some(self.jti()),
            family: self.family(),
            subject: self.subject_key(),
            iat: self.iat,
        }
    }

    pub fn roles(&self) -> &[Box<str>] {
        &self.roles
    }

    pub fn scopes(&self) -> &[Box<str>] {
        &self.scopes
    }

    /// A claim a route rule names (others are not kept: see [`Self::claims`]).
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.rule_claims
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| v)
    }

    /// Every claim, decoded again from the signed payload (for `/auth/me`;
    /// not on the proxy path).
    pub fn claims(&self) -> Map<String, Value> {
        URL_SAFE_NO_PAD
            .decode(self.payload.as_bytes())
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .unwrap_or_default()
    }

    /// The identity headers to set on the upstream request.
    pub fn identity_headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }
}

/// The `[identity]` rules, with header names parsed once.
#[derive(Debug)]
pub struct Identity {
    subject_header: Option<HeaderName>,
    roles_header: Option<HeaderName>,
    claims_header: Option<HeaderName>,
    claim_headers: Vec<(String, HeaderName)>,
    roles_claim: String,
    /// Claim names that route rules compare: the only claims kept per token.
    rule_claims: Box<[String]>,
    /// Pass the client's `Authorization` header on to upstreams.
    pub forward_authorization: bool,
    /// Every configured identity header: stripped from every client request.
    all: Box<[HeaderName]>,
}

impl Identity {
    /// `rule_claims`: the claim names any route's `claims` rule compares.
    pub fn new(cfg: &IdentityConfig, rule_claims: Vec<String>) -> Self {
        let all = cfg
            .subject_header
            .iter()
            .chain(&cfg.roles_header)
            .chain(&cfg.claims_header)
            .chain(cfg.claim_headers.iter().map(|(_, h)| h))
            .cloned()
            .collect();
        Identity {
            subject_header: cfg.subject_header.clone(),
            roles_header: cfg.roles_header.clone(),
            claims_header: cfg.claims_header.clone(),
            claim_headers: cfg.claim_headers.clone(),
            roles_claim: cfg.roles_claim.clone(),
            rule_claims: rule_claims.into(),
            forward_authorization: cfg.forward_authorization,
            all,
        }
    }

    /// The header names a client must never set itself.
    pub fn header_names(&self) -> &[HeaderName] {
        &self.all
    }
}

#[cfg(test)]
impl VerifiedClaims {
    /// Claims of a token for subject `sub` that expires at `exp`.
    pub(crate) fn for_test(sub: &str, exp: u64) -> Self {
        VerifiedClaims {
            payload: HeaderValue::from_static("e30"),
            rule_claims: Box::default(),
            exp,
            cached_until: exp,
            subject: Some(sub.into()),
            subject_key: None,
            jti: format!("#{sub}").into(),
            iat: None,
            family: None,
            roles: Box::default(),
            scopes: Box::default(),
            headers: Box::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn identity() -> Identity {
        Identity::new(
            &IdentityConfig {
                subject_header: Some(HeaderName::from_static("x-auth-subject")),
                roles_header: Some(HeaderName::from_static("x-auth-roles")),
                claims_header: Some(HeaderName::from_static("x-auth-claims")),
                claim_headers: vec![("email".into(), HeaderName::from_static("x-auth-email"))],
                roles_claim: "roles".into(),
                forward_authorization: true,
            },
            vec!["tenant".into()],
        )
    }

    fn build(v: Value) -> Result<VerifiedClaims, &'static str> {
        let json = serde_json::to_vec(&v).unwrap();
        let payload = URL_SAFE_NO_PAD.encode(&json);
        let claims = Claims::parse(&json).unwrap();
        VerifiedClaims::build("t", &payload, &claims, 1, true, &identity())
    }

    #[test]
    fn roles_from_a_string_or_an_array_and_scopes_from_scope_or_scp() {
        let c = build(json!({"sub": "42", "roles": ["a", "b"], "scope": "read write"})).unwrap();
        assert_eq!(&*c.roles()[1], "b");
        assert_eq!(c.scopes().len(), 2);
        let c = build(json!({"sub": 7, "roles": "admin", "scp": ["x"]})).unwrap();
        assert_eq!(c.subject(), Some("7"));
        assert_eq!(&*c.roles()[0], "admin");
        assert_eq!(&*c.scopes()[0], "x");
    }

    #[test]
    fn identity_headers_are_precomputed() {
        let c = build(json!({"sub": "42", "roles": ["a", "b"], "email": "a@b.c"})).unwrap();
        let h: Vec<_> = c
            .identity_headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert!(h.contains(&("x-auth-subject", "42")));
        assert!(h.contains(&("x-auth-roles", "a,b")));
        assert!(h.contains(&("x-auth-email", "a@b.c")));
        let (_, claims) = h.iter().find(|(n, _)| *n == "x-auth-claims").unwrap();
        let decoded: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(decoded["email"], "a@b.c");
    }

    #[test]
    fn a_subject_with_a_newline_is_refused() {
        assert!(build(json!({"sub": "a\nX-Evil: 1"})).is_err());
    }
}
