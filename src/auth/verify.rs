//! Signature and claim verification (RFC 8725).
//!
//! The key is chosen by the token's `iss` (which issuer) and `kid` (which of
//! its keys); the algorithm is the key's own, pinned in a `Validation` built
//! once per issuer key. The token's header never chooses a key type, and
//! `jku`/`x5u`/`jwk` are never followed: a token carrying them is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::keys::{Key, KeySet};
use super::{Identity, VerifiedClaims};
use crate::config::{IssuerSpec, TokensConfig};

/// Longer tokens are refused before any decoding (no real access token is near this).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Why a token was refused: the `error_description` of a 401 `invalid_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected(pub &'static str);

/// Verifies tokens for every configured issuer.
pub struct Verifier {
    issuers: Vec<Issuer>,
    identity: Identity,
    /// How many tokens reached a signature check (a cache hit never does).
    signature_checks: AtomicU64,
}

struct Issuer {
    /// `None`: tokens without `iss`.
    iss: Option<String>,
    keys: Vec<IssuerKey>,
}

struct IssuerKey {
    key: Arc<Key>,
    /// Pinned to `key.algorithm`, with this issuer's iss/aud/leeway.
    validation: Validation,
}

/// The header fields this gateway looks at; anything it would have to follow
/// or understand (`jku`, `x5u`, `jwk`, `crit`) makes the token unacceptable.
fn check_header(h: &Header) -> Result<(), Rejected> {
    if h.jku.is_some() || h.x5u.is_some() || h.jwk.is_some() {
        return Err(Rejected("jku, x5u and jwk headers are not accepted"));
    }
    if h.crit.is_some() {
        // RFC 7515 §4.1.11: a recipient must reject a `crit` it does not understand; we understand none.
        return Err(Rejected("unsupported crit header"));
    }
    if let Some(typ) = &h.typ {
        // RFC 7515 §4.1.9: `typ` may carry the `application/` prefix, in any case.
        let typ = match typ.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ.as_str(),
        };
        if typ.eq_ignore_ascii_case("rt+jwt") {
            return Err(Rejected("refresh tokens are not accepted here"));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct PeekIss {
    iss: Option<Value>,
}

/// Reads `iss` before verification, only to pick the issuer whose keys and
/// rules then verify the token.
fn peek_iss(token: &str) -> Result<Option<String>, Rejected> {
    let malformed = Rejected("malformed token");
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed);
    };
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| malformed)?;
    let peek: PeekIss = serde_json::from_slice(&json).map_err(|_| malformed)?;
    match peek.iss {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejected("wrong issuer")),
    }
}

impl Verifier {
    /// Builds the issuers: the gateway's own (`[tokens] issuer`, verified by
    /// every signing key and every key no `[[issuers]]` entry claims) and each
    /// `[[issuers]]` entry.
    pub fn new(
        keys: &KeySet,
        issuers: &[IssuerSpec],
        tokens: &TokensConfig,
        identity: Identity,
    ) -> Self {
        let leeway = tokens.leeway.as_secs();
        let claimed = |id: &str| issuers.iter().any(|i| i.keys.iter().any(|k| k == id));
        let own_keys = keys
            .iter()
            .filter(|k| k.sign || !claimed(&k.id))
            .map(|k| {
                IssuerKey::new(
                    k,
                    Some(&tokens.issuer),
                    Some(std::slice::from_ref(&tokens.audience)),
                    leeway,
                )
            })
            .collect::<Vec<_>>();
        let mut out = Vec::new();
        if !own_keys.is_empty() {
            out.push(Issuer {
                iss: Some(tokens.issuer.clone()),
                keys: own_keys,
            });
        }
        for spec in issuers {
            let keys = spec
                .keys
                .iter()
                .filter_map(|id| keys.get(id))
                .filter(|k| {
                    spec.algorithms
                        .as_ref()
                        .is_none_or(|a| a.contains(&k.algorithm))
                })
                .map(|k| {
                    IssuerKey::new(k, spec.issuer.as_deref(), spec.audiences.as_deref(), leeway)
                })
                .collect();
            out.push(Issuer {
                iss: spec.issuer.clone(),
                keys,
            });
        }
        Verifier {
            issuers: out,
            identity,
            signature_checks: AtomicU64::new(0),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Signature checks so far: tests and metrics use it to see cache hits.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// Verifies `token` completely (no cache).
    ///
    /// # Errors
    /// [`Rejected`] with the reason for the `error_description`.
    pub fn verify(&self, token: &str) -> Result<VerifiedClaims, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejected("token too large"));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithmName => Rejected("algorithm not allowed"),
            _ => Rejected("malformed token"),
        })?;
        check_header(&header)?;
        let iss = peek_iss(token)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.iss == iss)
            .ok_or(Rejected("unknown issuer"))?;
        let key = issuer.key_for(&header)?;
        self.signature_checks.fetch_add(1, Ordering::Relaxed);
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, &key.key.decoding, &key.validation)
                .map_err(|e| reason(e.kind()))?;
        let claims = data.claims;
        if claims
            .get("type")
            .is_some_and(|t| t.as_str() != Some("access"))
        {
            return Err(Rejected("not an access token"));
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(Rejected("missing exp"))?;
        VerifiedClaims::build(claims, exp, &self.identity).map_err(Rejected)
    }
}

impl Issuer {
    /// The key for `header`: by `kid` when the token names one, else the
    /// issuer's key for the header's algorithm (PyJWT-style tokens carry no kid).
    fn key_for(&self, header: &Header) -> Result<&IssuerKey, Rejected> {
        let key = match &header.kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| &k.key.id == kid)
                .ok_or(Rejected("unknown kid"))?,
            None => self
                .keys
                .iter()
                .find(|k| k.key.algorithm == header.alg)
                .ok_or(Rejected("algorithm not allowed"))?,
        };
        if key.key.algorithm != header.alg {
            return Err(Rejected("algorithm not allowed"));
        }
        Ok(key)
    }
}

impl IssuerKey {
    fn new(key: &Arc<Key>, iss: Option<&str>, auds: Option<&[String]>, leeway: u64) -> Self {
        let mut v = Validation::new(key.algorithm);
        v.leeway = leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        if let Some(iss) = iss {
            v.set_issuer(&[iss]);
        }
        match auds {
            Some(auds) => {
                v.set_audience(auds);
                // jsonwebtoken compares `aud` only when the token carries one:
                // without this, leaving `aud` out would skip the audience check.
                v.set_required_spec_claims(&["exp", "aud"]);
            }
            None => v.validate_aud = false,
        }
        IssuerKey {
            key: Arc::clone(key),
            validation: v,
        }
    }
}

fn reason(kind: &ErrorKind) -> Rejected {
    Rejected(match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::ExpiredSignature => "token expired",
        ErrorKind::ImmatureSignature => "token not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => "missing aud",
        ErrorKind::MissingRequiredClaim(_) => "missing exp",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not allowed",
        _ => "malformed token",
    })
}
