//! Signature and claim verification (RFC 8725).
//!
//! The key is chosen by the token's `iss` (which issuer) and `kid` (which of
//! its keys); the algorithm is the key's own, fixed in `[[keys]]`. The
//! token's header never chooses a key type, and
//! `jku`/`x5u`/`jwk` are never followed: a token carrying them is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::Value;

use super::claims::{Claims, JoseHeader};

use super::keys::{Key, KeySet};
use super::remote::RemoteKeys;
use super::{Identity, VerifiedClaims};
use crate::config::{IssuerSpec, TokensConfig};

/// A token without `kid` is checked against at most this many keys of its
/// issuer (those for its algorithm, `[[keys]]` first, then fetched ones).
pub const MAX_KIDLESS_KEYS: usize = 4;

/// Longer tokens are refused before any decoding (no real access token is near this).
pub const MAX_TOKEN_BYTES: usize = 8192;

/// Why a token was refused: the `error_description` of a 401 `invalid_token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected(pub &'static str);

impl Rejected {
    /// The token names a `kid` its issuer does not have.
    pub const UNKNOWN_KID: Rejected = Rejected("unknown kid");
    /// The issuer's `jwks_url` has not been fetched yet.
    pub const KEYS_NOT_FETCHED: Rejected = Rejected("the issuer's keys are not fetched yet");

    /// Whether fetching the issuer's JWK Set again may change the outcome
    /// (see [`Verifier::refetched`]).
    pub fn awaits_keys(why: &str) -> bool {
        why == Self::UNKNOWN_KID.0 || why == Self::KEYS_NOT_FETCHED.0
    }
}

/// Verifies tokens for every configured issuer.
pub struct Verifier {
    issuers: Vec<Issuer>,
    identity: Identity,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    leeway: u64,
    /// How many tokens reached a signature check (a cache hit never does).
    signature_checks: AtomicU64,
    /// The JOSE header last read. The tokens of one issuer and key carry
    /// the same header segment, so most misses find it here and skip its
    /// base64 and JSON: 2.5k instructions of an HS256 miss.
    last_header: ArcSwapOption<KnownHeader>,
}

/// A JOSE header segment that passed [`check_header`], as read.
struct KnownHeader {
    /// The segment itself (base64url), which is all that decides the rest.
    b64: Box<str>,
    alg: Algorithm,
    kid: Option<Box<str>>,
    /// Its `typ` names a refresh token.
    refresh: bool,
}

struct Issuer {
    /// The gateway's own issuer (`[tokens] issuer`): the only one whose
    /// refresh tokens are accepted, and whose `jti`s name a family.
    own: bool,
    /// `None`: tokens without `iss`.
    iss: Option<String>,
    /// `None`: `aud` is not checked; else the token's `aud` must name one.
    audiences: Option<Box<[String]>>,
    /// Each verifies only with its own algorithm.
    keys: Vec<Arc<Key>>,
    /// `jwks_url`: more keys, fetched.
    remote: Option<Arc<RemoteKeys>>,
}

/// The header fields this gateway looks at; anything it would have to follow
/// or understand (`jku`, `x5u`, `jwk`, `crit`) makes the token unacceptable.
fn check_header(h: &JoseHeader<'_>) -> Result<(), Rejected> {
    if h.jku.is_some() || h.x5u.is_some() || h.jwk.is_some() {
        return Err(Rejected("jku, x5u and jwk headers are not accepted"));
    }
    if h.crit.is_some() {
        // RFC 7515 §4.1.11: a recipient must reject a `crit` it does not understand; we understand none.
        return Err(Rejected("unsupported crit header"));
    }
    Ok(())
}

/// Whether the header's `typ` names a refresh token. RFC 7515 §4.1.9: `typ`
/// may carry the `application/` prefix, in any case.
fn is_refresh_typ(h: &JoseHeader<'_>) -> bool {
    h.typ.as_deref().is_some_and(|typ| {
        let typ = match typ.get(..12) {
            Some(p) if p.eq_ignore_ascii_case("application/") => &typ[12..],
            _ => typ,
        };
        typ.eq_ignore_ascii_case("rt+jwt")
    })
}

/// Which token a verification expects, by the header's `typ`.
#[derive(Clone, Copy)]
enum Kind {
    Access,
    Refresh,
}

/// A token whose signature checked out.
struct Signed<'t, 'j, 'v> {
    claims: Claims<'j>,
    issuer: &'v Issuer,
    /// The token's payload segment (base64url).
    payload: &'t str,
}

/// The three segments of a compact JWS (`header.payload.signature`).
/// (`memchr` rather than `str::split` twice: 0.3k instructions instead of
/// 1.4k per verification of a bench token.)
fn segments(token: &str) -> Option<(&str, &str, &str)> {
    let first = memchr::memchr(b'.', token.as_bytes())?;
    let rest = &token[first + 1..];
    let second = memchr::memchr(b'.', rest.as_bytes())?;
    let signature = &rest[second + 1..];
    if memchr::memchr(b'.', signature.as_bytes()).is_some() {
        return None;
    }
    Some((&token[..first], &rest[..second], signature))
}

/// A refresh token this gateway issued, verified (see [`Verifier::verify_refresh`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshClaims {
    pub subject: String,
    pub jti: String,
    pub family: String,
    pub iat: u64,
    pub exp: u64,
    /// When the login it descends from happened (`auth_time`); `iat` for a
    /// token minted before gatehouse wrote it.
    pub auth_time: u64,
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
        let claimed = |id: &str| issuers.iter().any(|i| i.keys.iter().any(|k| k == id));
        let own_keys = keys
            .iter()
            .filter(|k| k.sign || !claimed(&k.id))
            .cloned()
            .collect::<Vec<_>>();
        let mut out = Vec::new();
        if !own_keys.is_empty() {
            out.push(Issuer {
                own: true,
                iss: Some(tokens.issuer.clone()),
                audiences: Some(Box::new([tokens.audience.clone()])),
                keys: own_keys,
                remote: None,
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
                .cloned()
                .collect();
            let remote = spec.jwks.clone().map(|jwks| {
                let name = spec.issuer.as_deref().unwrap_or("(no iss)");
                Arc::new(RemoteKeys::new(name, jwks, spec.algorithms.as_deref()))
            });
            out.push(Issuer {
                own: false,
                iss: spec.issuer.clone(),
                audiences: spec.audiences.clone().map(Into::into),
                keys,
                remote,
            });
        }
        Verifier {
            issuers: out,
            identity,
            leeway: tokens.leeway.as_secs(),
            signature_checks: AtomicU64::new(0),
            last_header: ArcSwapOption::empty(),
        }
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Signature checks so far: tests and metrics use it to see cache hits.
    pub fn signature_checks(&self) -> u64 {
        self.signature_checks.load(Ordering::Relaxed)
    }

    /// The `jwks_url` issuers' fetched keys.
    pub fn remotes(&self) -> impl Iterator<Item = &Arc<RemoteKeys>> {
        self.issuers.iter().filter_map(|i| i.remote.as_ref())
    }

    /// Whether every `jwks_url` issuer has fetched its keys (`/readyz`).
    pub fn keys_ready(&self) -> bool {
        self.remotes().all(|r| r.is_fetched())
    }

    /// After `token` was refused for a reason [`Rejected::awaits_keys`]
    /// names: fetches its issuer's JWK Set again (rate-limited, see
    /// [`RemoteKeys::refetched`]) and says whether verifying it once more
    /// is worth it.
    pub async fn refetched(&self, token: &str) -> bool {
        let Some(remote) = self.remote_for(token) else {
            return false;
        };
        remote.refetched().await
    }

    /// The fetched keys of `token`'s issuer, read from its `iss` (unverified).
    fn remote_for(&self, token: &str) -> Option<&RemoteKeys> {
        let (_, payload, _) = segments(token)?;
        let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let claims = Claims::parse(&json).ok()?;
        self.issuer_of(&claims).ok()?.remote.as_deref()
    }

    /// The issuer `claims` name by `iss` (read before verification only to
    /// choose the keys).
    fn issuer_of(&self, claims: &Claims<'_>) -> Result<&Issuer, Rejected> {
        let iss = match claims.str("iss") {
            None => None,
            Some(Ok(s)) => Some(s),
            Some(Err(())) => return Err(Rejected("wrong issuer")),
        };
        self.issuers
            .iter()
            .find(|i| i.iss.as_deref() == iss.as_deref())
            .ok_or(Rejected("unknown issuer"))
    }

    /// Verifies `token` completely (no cache).
    ///
    /// # Errors
    /// [`Rejected`] with the reason for the `error_description`.
    pub fn verify(&self, token: &str) -> Result<VerifiedClaims, Rejected> {
        let mut json = Vec::new();
        let Signed {
            claims,
            issuer,
            payload,
        } = self.signed(token, &mut json, Kind::Access)?;
        let exp = self.check_claims(&claims, issuer)?;
        VerifiedClaims::build(token, payload, &claims, exp, issuer.own, &self.identity)
            .map_err(Rejected)
    }

    /// Verifies a refresh token: issued by this gateway (`[tokens] issuer`,
    /// one of its keys), `typ` `rt+jwt`, `type` `refresh`, unexpired, with
    /// `sub`, `jti`, `fam` and `iat`. Whether it is still current is the
    /// store's to say.
    ///
    /// # Errors
    /// [`Rejected`] with the reason (for logs; clients get `invalid_grant`).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, Rejected> {
        let mut json = Vec::new();
        let Signed { claims, issuer, .. } = self.signed(token, &mut json, Kind::Refresh)?;
        if !issuer.own {
            return Err(Rejected("not issued by this gateway"));
        }
        let exp = self.check_exp_nbf(&claims)?;
        if !matches!(claims.str("type"), Some(Ok(t)) if t == "refresh") {
            return Err(Rejected("not a refresh token"));
        }
        let text = |name: &str| match claims.str(name) {
            Some(Ok(s)) if !s.is_empty() => Ok(s.into_owned()),
            _ => Err(Rejected("malformed token")),
        };
        let iat = match claims.u64("iat") {
            Some(Ok(iat)) => iat,
            _ => return Err(Rejected("malformed token")),
        };
        Ok(RefreshClaims {
            subject: text("sub")?,
            jti: text("jti")?,
            family: text("fam")?,
            iat,
            exp,
            auth_time: match claims.u64("auth_time") {
                None => iat,
                Some(Ok(t)) => t,
                Some(Err(())) => return Err(Rejected("malformed token")),
            },
        })
    }

    /// Splits and decodes `token`, picks its issuer and key, and checks the
    /// signature; the header's `typ` must name a token of `kind`. The claims
    /// are read in place from `json`, the decoded payload.
    fn signed<'t, 'j>(
        &self,
        token: &'t str,
        json: &'j mut Vec<u8>,
        kind: Kind,
    ) -> Result<Signed<'t, 'j, '_>, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejected("token too large"));
        }
        let malformed = Rejected("malformed token");
        let (header_b64, payload_b64, signature) = segments(token).ok_or(malformed)?;
        let header = self.header(header_b64)?;
        match (kind, header.refresh) {
            (Kind::Access, true) => return Err(Rejected("refresh tokens are not accepted here")),
            (Kind::Refresh, false) => return Err(Rejected("not a refresh token")),
            _ => {}
        }
        // The claims are read before the signature is checked only to pick
        // the issuer whose keys check it.
        URL_SAFE_NO_PAD
            .decode_vec(payload_b64, json)
            .map_err(|_| malformed)?;
        let json: &'j [u8] = json;
        let claims = Claims::parse(json).map_err(|_| malformed)?;
        let issuer = self.issuer_of(&claims)?;
        let fetched = issuer.remote.as_ref().map(|r| r.keys());
        let fetched = fetched.as_deref().map_or(&[][..], |f| &f[..]);
        let keys = issuer.keys.iter().chain(fetched.iter().map(|f| &f.key));
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        let checked = || self.signature_checks.fetch_add(1, Ordering::Relaxed);
        // Each key with `key.algorithm` only (never the header's choice,
        // though they are equal here).
        let ok = match header.kid.as_deref() {
            Some(kid) => {
                let mut named = keys.filter(|k| *k.id == *kid).peekable();
                if named.peek().is_none() {
                    return Err(issuer.missing(Rejected::UNKNOWN_KID, header.alg));
                }
                let key = named
                    .find(|k| k.algorithm == header.alg)
                    .ok_or(Rejected("algorithm not allowed"))?;
                checked();
                key.verifying.verify(signed.as_bytes(), signature)
            }
            // PyJWT-style tokens carry no kid: any key of the issuer for
            // the header's algorithm (an old and a new secret, say), up to
            // a few, so that a forged token costs a few checks, not one per
            // key a provider publishes.
            None => {
                let mut candidates = keys
                    .filter(|k| k.algorithm == header.alg)
                    .take(MAX_KIDLESS_KEYS)
                    .peekable();
                if candidates.peek().is_none() {
                    return Err(issuer.missing(Rejected("algorithm not allowed"), header.alg));
                }
                checked();
                candidates.any(|k| k.verifying.verify(signed.as_bytes(), signature))
            }
        };
        if ok {
            Ok(Signed {
                claims,
                issuer,
                payload: payload_b64,
            })
        } else {
            Err(Rejected("bad signature"))
        }
    }

    /// The header segment `b64`, read and checked: the last one read when it
    /// is the same text.
    fn header(&self, b64: &str) -> Result<Arc<KnownHeader>, Rejected> {
        if let Some(known) = self.last_header.load_full()
            && *known.b64 == *b64
        {
            return Ok(known);
        }
        let malformed = Rejected("malformed token");
        let json = URL_SAFE_NO_PAD.decode(b64).map_err(|_| malformed)?;
        let header: JoseHeader<'_> = serde_json::from_slice(&json).map_err(|_| malformed)?;
        // An algorithm jsonwebtoken does not know (`none` among them) is none of ours.
        let alg: Algorithm = header
            .alg
            .parse()
            .map_err(|_| Rejected("algorithm not allowed"))?;
        check_header(&header)?;
        let known = Arc::new(KnownHeader {
            b64: b64.into(),
            alg,
            kid: header.kid.as_deref().map(Into::into),
            refresh: is_refresh_typ(&header),
        });
        self.last_header.store(Some(Arc::clone(&known)));
        Ok(known)
    }

    /// RFC 7519 §4.1: `exp` (required), `nbf`, `aud`, with `leeway`; and
    /// the `type` claim, when present, must be `access`. Returns `exp`.
    fn check_claims(&self, claims: &Claims<'_>, issuer: &Issuer) -> Result<u64, Rejected> {
        let exp = self.check_exp_nbf(claims)?;
        let malformed = |_| Rejected("malformed token");
        if let Some(want) = &issuer.audiences {
            let named = |a: &str| want.iter().any(|w| w == a);
            // One audience is a string, read in place; a list is parsed.
            let ok = match claims.str("aud") {
                Some(Ok(a)) => named(&a),
                None if !claims.contains("aud") => return Err(Rejected("missing aud")),
                // `null`, an array, a number...
                _ => match claims.get("aud").map_err(malformed)? {
                    Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).any(named),
                    _ => false,
                },
            };
            if !ok {
                return Err(Rejected("wrong audience"));
            }
        }
        match claims.str("type") {
            None if !claims.contains("type") => {}
            Some(Ok(t)) if t == "access" => {}
            // Another string, `null`, something else, or unreadable (malformed).
            _ => {
                claims.get("type").map_err(malformed)?;
                return Err(Rejected("not an access token"));
            }
        }
        Ok(exp)
    }

    /// `exp` (required) and `nbf`, with `leeway`. Returns `exp`.
    fn check_exp_nbf(&self, claims: &Claims<'_>) -> Result<u64, Rejected> {
        let now = jsonwebtoken::get_current_timestamp();
        let exp = match claims.u64("exp") {
            None => return Err(Rejected("missing exp")),
            Some(exp) => exp.map_err(|()| Rejected("malformed token"))?,
        };
        if exp.saturating_add(self.leeway) < now {
            return Err(Rejected("token expired"));
        }
        if let Some(nbf) = claims.u64("nbf") {
            let nbf = nbf.map_err(|()| Rejected("malformed token"))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(Rejected("token not yet valid"));
            }
        }
        Ok(exp)
    }
}

impl Issuer {
    /// `why` no key fits, unless the issuer's `jwks_url` has not been
    /// fetched yet and could serve a key for `alg`: then that is why.
    fn missing(&self, why: Rejected, alg: Algorithm) -> Rejected {
        match &self.remote {
            Some(r) if !r.is_fetched() && r.may_serve(alg) => Rejected::KEYS_NOT_FETCHED,
            _ => why,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::json;

    use super::*;
    use crate::auth::keys::tests::{signer, test_keys};
    use crate::config::IdentityConfig;

    /// One issuer (tokens without `iss`) trusting every test key.
    fn verifier() -> Verifier {
        verifier_for(None)
    }

    /// Same, checking `aud` against `audiences`.
    fn verifier_for(audiences: Option<Vec<String>>) -> Verifier {
        let keys = &test_keys().set;
        let issuer = IssuerSpec {
            issuer: None,
            keys: keys.iter().map(|k| k.id.clone()).collect(),
            audiences,
            algorithms: None,
            jwks: None,
        };
        let tokens = TokensConfig {
            issuer: "https://gatehouse.test".into(),
            audience: "api".into(),
            access_ttl: Duration::from_secs(600),
            refresh_ttl: Duration::from_secs(3600),
            leeway: Duration::ZERO,
            refresh_reuse_grace: Duration::ZERO,
            session_max: None,
        };
        let identity = Identity::new(
            &IdentityConfig {
                subject_header: None,
                roles_header: None,
                claims_header: None,
                claim_headers: Vec::new(),
                roles_claim: "roles".into(),
                forward_authorization: false,
            },
            Vec::new(),
        );
        Verifier::new(keys, &[issuer], &tokens, identity)
    }

    fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = kid.map(Into::into);
        let claims = json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 600 });
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn reason(v: &Verifier, token: &str) -> &'static str {
        v.verify(token).err().unwrap_or(Rejected("accepted")).0
    }

    #[test]
    fn a_token_is_exactly_three_segments() {
        assert_eq!(segments("a.b.c"), Some(("a", "b", "c")));
        assert_eq!(segments(".."), Some(("", "", "")));
        for bad in ["", "abc", "a.b", "a.b.c.d", "a.b.c."] {
            assert_eq!(segments(bad), None, "{bad}");
        }
        let v = verifier();
        let hs = test_keys().set.get("HS256").unwrap();
        let good = token(Algorithm::HS256, Some("HS256"), signer(hs));
        let (header, rest) = good.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        for bad in [
            format!("{good}."),
            format!("{header}.{payload}"),
            format!("{header}.{payload}.{signature}.{signature}"),
            format!("{header}..{signature}"),
            format!("{header}.{payload}!.{signature}"),
            format!(".{payload}.{signature}"),
        ] {
            assert_eq!(reason(&v, &bad), "malformed token", "{bad}");
        }
    }

    /// The last header read is remembered by its text: a different header,
    /// good or bad, is read afresh, and the remembered one still decides.
    #[test]
    fn a_remembered_header_changes_no_outcome() {
        let v = verifier();
        let keys = &test_keys().set;
        let hs = keys.get("HS256").unwrap();
        let rs = keys.get("RS256").unwrap();
        let good = token(Algorithm::HS256, Some("HS256"), signer(hs));
        let other = token(Algorithm::RS256, Some("RS256"), signer(rs));
        let (_, rest) = good.split_once('.').unwrap();
        let with_header =
            |h: serde_json::Value| format!("{}.{rest}", URL_SAFE_NO_PAD.encode(h.to_string()));
        let none = with_header(json!({ "alg": "none" }));
        let jku = with_header(json!({ "alg": "HS256", "kid": "HS256", "jku": "https://x" }));
        let refresh = with_header(json!({ "alg": "HS256", "kid": "HS256", "typ": "rt+jwt" }));
        let wrong_kid = with_header(json!({ "alg": "HS256", "kid": "RS256" }));
        for _ in 0..2 {
            for (t, want) in [
                (&good, "accepted"),
                (&good, "accepted"),
                (&none, "algorithm not allowed"),
                (&good, "accepted"),
                (&other, "accepted"),
                (&jku, "jku, x5u and jwk headers are not accepted"),
                (&good, "accepted"),
                (&refresh, "refresh tokens are not accepted here"),
                (&refresh, "refresh tokens are not accepted here"),
                (&wrong_kid, "algorithm not allowed"),
                (&good, "accepted"),
            ] {
                assert_eq!(reason(&v, t), want, "{t}");
            }
        }
        // Signed by HS256 but with another header: the signature covers the header.
        let forged = with_header(json!({ "alg": "HS256", "kid": "HS256", "typ": "JWT" }));
        assert_eq!(reason(&v, &forged), "bad signature");
    }

    /// An HS256 token over the claims JSON `claims`, as written.
    fn hs256_over(claims: &str) -> String {
        let hs = test_keys().set.get("HS256").unwrap();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"HS256"}"#);
        let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims));
        let sig =
            jsonwebtoken::crypto::sign(signed.as_bytes(), signer(hs), Algorithm::HS256).unwrap();
        format!("{signed}.{sig}")
    }

    /// Claims read in place when they are strings, parsed otherwise: every
    /// shape reads as the parsed claims would.
    #[test]
    fn claim_shapes_read_as_parsed() {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let v = verifier_for(Some(vec!["api".into()]));
        for (extra, want) in [
            (r#""aud":"api""#, "accepted"),
            (r#""aud":"a\u0070i""#, "accepted"),
            (r#""aud":["x","api"]"#, "accepted"),
            (r#""aud":["x"]"#, "wrong audience"),
            (r#""aud":null"#, "wrong audience"),
            (r#""aud":7"#, "wrong audience"),
            (r#""sub":"x""#, "missing aud"),
            (r#""aud":"api","type":"access""#, "accepted"),
            (r#""aud":"api","type":"refresh""#, "not an access token"),
            (r#""aud":"api","type":null"#, "not an access token"),
            (r#""aud":"api","type":1"#, "not an access token"),
            (r#""aud":"api","type":"\ud800""#, "malformed token"),
        ] {
            let t = hs256_over(&format!(r#"{{{extra},"exp":{exp}}}"#));
            assert_eq!(reason(&v, &t), want, "{extra}");
        }
        let v = verifier();
        let read = |extra: &str| {
            v.verify(&hs256_over(&format!(r#"{{{extra},"exp":{exp}}}"#)))
                .unwrap()
        };
        assert_eq!(read(r#""sub":"alice""#).subject(), Some("alice"));
        assert_eq!(read(r#""sub":42"#).subject(), Some("42"));
        for sub in ["null", "[1]", "{}"] {
            assert_eq!(read(&format!(r#""sub":{sub}"#)).subject(), None, "{sub}");
        }
        let c = read(r#""roles":" admin, ,user","scope":"read  write""#);
        assert_eq!(c.roles(), [Box::<str>::from("admin"), "user".into()]);
        assert_eq!(c.scopes(), [Box::<str>::from("read"), "write".into()]);
        let c = read(r#""roles":["admin",5,"user"],"scope":"","scp":["read"]"#);
        assert_eq!(c.roles(), [Box::<str>::from("admin"), "user".into()]);
        assert_eq!(c.scopes(), [Box::<str>::from("read")]);
        let c = read(r#""roles":null,"scope":7"#);
        assert!(c.roles().is_empty() && c.scopes().is_empty());
    }

    /// A validly signed token whose claims are JSON syntax but no value
    /// (a lone surrogate, a number out of range): refused, not read as null.
    #[test]
    fn claims_serde_cannot_read_make_the_token_malformed() {
        let v = verifier();
        let hs = test_keys().set.get("HS256").unwrap();
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"HS256"}"#);
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        for claims in [
            format!(r#"{{"sub":"\ud800","exp":{exp}}}"#),
            format!(r#"{{"sub":1e999,"exp":{exp}}}"#),
            format!(
                r#"{{"sub":"alice","scope":{}1{},"exp":{exp}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
        ] {
            let signed = format!("{header}.{}", URL_SAFE_NO_PAD.encode(&claims));
            let sig = jsonwebtoken::crypto::sign(signed.as_bytes(), signer(hs), Algorithm::HS256)
                .unwrap();
            assert_eq!(
                reason(&v, &format!("{signed}.{sig}")),
                "malformed token",
                "{claims}"
            );
        }
    }

    #[test]
    fn every_key_accepts_its_tokens_and_refuses_bad_signatures() {
        let v = verifier();
        for key in test_keys().set.iter() {
            let good = token(key.algorithm, Some(&key.id), signer(key));
            assert_eq!(reason(&v, &good), "accepted", "key {}", key.id);
            let (signed, signature) = good.rsplit_once('.').unwrap();
            let mut flipped = URL_SAFE_NO_PAD.decode(signature).unwrap();
            flipped[0] ^= 0x80;
            let short = &signature[..signature.len() - 4];
            let flipped = URL_SAFE_NO_PAD.encode(flipped);
            let padded = format!("{signature}=");
            let invalid = format!("+{}", &signature[1..]);
            for bad in [&flipped, short, "", &padded, &invalid] {
                let forged = format!("{signed}.{bad}");
                assert_eq!(reason(&v, &forged), "bad signature", "key {} {bad}", key.id);
            }
        }
    }

    #[test]
    fn the_key_not_the_header_chooses_the_algorithm() {
        let v = verifier();
        let pem = test_keys().rsa_public_pem.as_bytes();
        let rsa_as_secret = EncodingKey::from_secret(pem);
        // HS256 naming an RSA key: that key verifies RS256 only.
        for kid in ["RS256", "RS256.pub", "RS256.pkcs1"] {
            let t = token(Algorithm::HS256, Some(kid), &rsa_as_secret);
            assert_eq!(reason(&v, &t), "algorithm not allowed", "{kid}");
        }
        // Without kid: the HS256 key's own secret checks it.
        let t = token(Algorithm::HS256, None, &rsa_as_secret);
        assert_eq!(reason(&v, &t), "bad signature");
        // `alg: none`, whatever the signature: no key has that algorithm
        // (jsonwebtoken does not even name it).
        let hs = test_keys().set.get("HS256").unwrap();
        let good = token(Algorithm::HS256, Some("HS256"), signer(hs));
        let (_, rest) = good.split_once('.').unwrap();
        for header in [
            json!({ "alg": "none" }),
            json!({ "alg": "none", "kid": "HS256" }),
        ] {
            let header = URL_SAFE_NO_PAD.encode(header.to_string());
            for t in [
                format!("{header}.{rest}"),
                format!("{header}.{}.", rest.split('.').next().unwrap()),
            ] {
                assert_eq!(reason(&v, &t), "algorithm not allowed", "{t}");
            }
        }
        // Only the kid-less HS256 token reached a signature check.
        assert_eq!(v.signature_checks(), 1);
    }
}
