//! An issuer's JWK Set (RFC 7517 §5) as verify-only keys.
//!
//! Each usable JWK becomes one [`Key`] per algorithm it may verify, and
//! each such key verifies with that one algorithm only, as a `[[keys]]`
//! entry does: a token's header picks among them by `kid` and `alg`, never
//! the key type. Which algorithms a JWK gets:
//!
//! - its `alg` member, when it has one (refused if the issuer's
//!   `algorithms` list does not name it, or if it does not fit the key type);
//! - else every algorithm of the issuer's `algorithms` list that fits the
//!   key type (an RSA key and `["RS256", "PS256"]`: both);
//! - else the key type's usual one: RS256 for RSA, ES256 for P-256, ES384
//!   for P-384, EdDSA for Ed25519.
//!
//! A JWK that cannot be used (a symmetric `oct` key, which an identity
//! provider must never publish; another curve; `use` other than `sig`;
//! `key_ops` without `verify`; an RSA modulus under 2048 bits; missing or
//! malformed members) is skipped with its reason, and the others are kept.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::auth::keys::{Key, rsa_pkcs1};

/// One key of the set, with the public material it was built from (which
/// tells a key whose `kid` was reused for new material from the old one).
pub struct Fetched {
    pub key: Arc<Key>,
    pub public: Arc<[u8]>,
}

impl Fetched {
    /// The same key: `kid`, algorithm and material.
    pub fn same(&self, other: &Fetched) -> bool {
        self.key.id == other.key.id
            && self.key.algorithm == other.key.algorithm
            && self.public == other.public
    }
}

/// What a JWK Set document held.
pub struct Parsed {
    pub keys: Vec<Fetched>,
    /// One line per JWK not used: its `kid` and why.
    pub skipped: Vec<String>,
}

/// Largest number of JWKs read from one document (real sets hold a few).
const MAX_KEYS: usize = 64;

/// Reads a JWK Set document. `allowed` is the issuer's `algorithms`.
///
/// # Errors
/// When the document is not a JWK Set (not JSON, no `keys` array), or
/// holds no usable key (the caller then keeps the keys it has).
pub fn parse(body: &[u8], allowed: Option<&[Algorithm]>) -> Result<Parsed, String> {
    let set: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let Some(list) = set.get("keys").and_then(Value::as_array) else {
        return Err("the answer is not a JWK Set (no `keys` array)".into());
    };
    let mut out = Parsed {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for jwk in list.iter().take(MAX_KEYS) {
        let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or("");
        match keys_of(jwk, allowed) {
            Ok(keys) => {
                for k in keys {
                    // Keys without a kid are told apart by their material.
                    let dup = out.keys.iter().any(|o| {
                        o.key.id == k.key.id
                            && o.key.algorithm == k.key.algorithm
                            && (!kid.is_empty() || o.public == k.public)
                    });
                    if dup {
                        out.skipped
                            .push(format!("kid {kid:?}: a second key with this kid and alg"));
                    } else {
                        out.keys.push(k);
                    }
                }
            }
            Err(why) => out.skipped.push(format!("kid {kid:?}: {why}")),
        }
    }
    if list.len() > MAX_KEYS {
        out.skipped.push(format!(
            "{} keys past the first {MAX_KEYS}",
            list.len() - MAX_KEYS
        ));
    }
    if out.keys.is_empty() {
        let why = match out.skipped.first() {
            Some(first) => format!("no usable key in the JWK Set (first skipped: {first})"),
            None => "the JWK Set is empty".to_string(),
        };
        return Err(why);
    }
    Ok(out)
}

/// The keys one JWK makes (see the module docs for which algorithms).
fn keys_of(jwk: &Value, allowed: Option<&[Algorithm]>) -> Result<Vec<Fetched>, String> {
    use Algorithm::*;
    let jwk = jwk.as_object().ok_or("not a JSON object")?;
    let kid = match jwk.get("kid") {
        None => "",
        Some(Value::String(kid)) => kid,
        Some(_) => return Err("`kid` is not a string".into()),
    };
    if let Some(u) = jwk.get("use")
        && u != "sig"
    {
        return Err(format!("`use` is {u}, not \"sig\""));
    }
    if let Some(ops) = jwk.get("key_ops")
        && !ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"))
    {
        return Err("`key_ops` does not name \"verify\"".into());
    }
    let (public, fits): (Vec<u8>, &[Algorithm]) = match text(jwk, "kty")? {
        "RSA" => (
            rsa_pkcs1(&bytes(jwk, "n")?, &bytes(jwk, "e")?),
            &[RS256, RS384, RS512, PS256, PS384, PS512],
        ),
        "EC" => {
            let (fits, size): (&[Algorithm], usize) = match text(jwk, "crv")? {
                "P-256" => (&[ES256], 32),
                "P-384" => (&[ES384], 48),
                crv => return Err(format!("curve `{crv}` is not supported")),
            };
            let (x, y) = (bytes(jwk, "x")?, bytes(jwk, "y")?);
            if x.len() != size || y.len() != size {
                return Err(format!("`x` and `y` must be {size} bytes each"));
            }
            // The uncompressed point aws-lc takes: 0x04 || x || y.
            let mut point = vec![0x04];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (point, fits)
        }
        "OKP" => match text(jwk, "crv")? {
            "Ed25519" => (bytes(jwk, "x")?, &[EdDSA]),
            crv => return Err(format!("curve `{crv}` is not supported")),
        },
        "oct" => return Err("a symmetric key (kty oct) is never taken from a JWK Set".into()),
        kty => return Err(format!("kty `{kty}` is not supported")),
    };
    let algorithms = match jwk.get("alg") {
        None => match allowed {
            Some(list) => list.iter().filter(|a| fits.contains(a)).copied().collect(),
            None => vec![fits[0]],
        },
        Some(Value::String(name)) => {
            let alg: Algorithm = name
                .parse()
                .map_err(|_| format!("alg `{name}` is not supported"))?;
            if !fits.contains(&alg) {
                return Err(format!("alg `{name}` does not fit the key type"));
            }
            if allowed.is_some_and(|list| !list.contains(&alg)) {
                return Err(format!("alg `{name}` is not in the issuer's algorithms"));
            }
            vec![alg]
        }
        Some(_) => return Err("`alg` is not a string".into()),
    };
    if algorithms.is_empty() {
        return Err("none of the issuer's algorithms fits the key type".into());
    }
    let public: Arc<[u8]> = public.into();
    algorithms
        .into_iter()
        .map(|alg| {
            Ok(Fetched {
                key: Arc::new(Key::fetched(kid, alg, &public)?),
                public: Arc::clone(&public),
            })
        })
        .collect()
}

fn text<'j>(jwk: &'j Map<String, Value>, name: &str) -> Result<&'j str, String> {
    jwk.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no `{name}`"))
}

/// A base64url member (RFC 7518 §6: no padding; padding is tolerated).
fn bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let b64 = text(jwk, name)?.trim_end_matches('=');
    URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| format!("`{name}` is not base64url"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::auth::keys::tests::test_keys;

    /// The public JWK gatehouse publishes for test key `id`.
    fn jwk_of(id: &str) -> Value {
        Value::Object(test_keys().set.get(id).unwrap().jwk.clone().unwrap())
    }

    fn set(keys: &[Value]) -> Vec<u8> {
        json!({ "keys": keys }).to_string().into_bytes()
    }

    fn algs(p: &Parsed) -> Vec<(String, Algorithm)> {
        p.keys
            .iter()
            .map(|f| (f.key.id.clone(), f.key.algorithm))
            .collect()
    }

    #[test]
    fn every_key_type_gatehouse_publishes_reads_back() {
        for id in ["RS256", "PS384", "ES256", "ES384", "EdDSA"] {
            let p = parse(&set(&[jwk_of(id)]), None).unwrap();
            let want = test_keys().set.get(id).unwrap().algorithm;
            assert_eq!(algs(&p), [(id.to_string(), want)], "{id}");
            assert!(p.skipped.is_empty());
        }
    }

    #[test]
    fn without_alg_the_allow_list_or_the_key_types_usual_one_decides() {
        let mut rsa = jwk_of("RS256");
        rsa.as_object_mut().unwrap().remove("alg");
        let p = parse(&set(&[rsa.clone()]), None).unwrap();
        assert_eq!(algs(&p), [("RS256".to_string(), Algorithm::RS256)]);
        let allowed = [Algorithm::PS256, Algorithm::ES256, Algorithm::RS512];
        let p = parse(&set(&[rsa.clone()]), Some(&allowed)).unwrap();
        assert_eq!(
            algs(&p),
            [
                ("RS256".to_string(), Algorithm::PS256),
                ("RS256".to_string(), Algorithm::RS512)
            ]
        );
        let err = parse(&set(&[rsa]), Some(&[Algorithm::ES256]))
            .err()
            .unwrap();
        assert!(err.contains("fits the key type"), "{err}");
    }

    #[test]
    fn an_alg_outside_the_allow_list_or_the_key_type_is_skipped() {
        let p = parse(
            &set(&[jwk_of("RS256"), jwk_of("ES256")]),
            Some(&[Algorithm::ES256]),
        )
        .unwrap();
        assert_eq!(algs(&p), [("ES256".to_string(), Algorithm::ES256)]);
        assert!(p.skipped[0].contains("not in the issuer's algorithms"));
        let mut lying = jwk_of("ES256");
        lying["alg"] = json!("RS256");
        let err = parse(&set(&[lying]), None).err().unwrap();
        assert!(err.contains("does not fit"), "{err}");
        let mut hs = jwk_of("ES256");
        hs["alg"] = json!("HS256");
        assert!(parse(&set(&[hs]), None).is_err());
        let mut none = jwk_of("ES256");
        none["alg"] = json!("none");
        assert!(parse(&set(&[none]), None).is_err());
    }

    #[test]
    fn unusable_keys_are_skipped_with_their_reason() {
        let oct = json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"});
        let mut enc = jwk_of("RS256");
        enc["use"] = json!("enc");
        let mut ops = jwk_of("RS256");
        ops["key_ops"] = json!(["encrypt"]);
        let p521 = json!({"kty": "EC", "crv": "P-521", "kid": "p", "x": "AA", "y": "AA"});
        let short = json!({"kty": "RSA", "kid": "short", "n": URL_SAFE_NO_PAD.encode([0xc5; 128]), "e": "AQAB"});
        let mut bent = jwk_of("ES256");
        bent["x"] = json!("AAAA");
        let junk = [
            oct,
            enc,
            ops,
            p521,
            short,
            bent,
            json!("text"),
            json!({"kid": 7}),
        ];
        let p = parse(&set(&[&junk[..], &[jwk_of("EdDSA")]].concat()), None).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert_eq!(p.skipped.len(), junk.len(), "{:?}", p.skipped);
        for (line, why) in p.skipped.iter().zip([
            "symmetric",
            "\"enc\"",
            "verify",
            "P-521",
            "2048",
            "32 bytes",
            "not a JSON object",
            "not a string",
        ]) {
            assert!(line.contains(why), "{line} lacks {why}");
        }
        let err = parse(&set(&junk), None).err().unwrap();
        assert!(err.contains("no usable key"), "{err}");
    }

    #[test]
    fn documents_that_are_not_jwk_sets_are_errors() {
        for body in [
            &b"<html>"[..],
            b"{}",
            b"{\"keys\": 3}",
            b"[]",
            b"{\"keys\": []}",
        ] {
            assert!(
                parse(body, None).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn a_kid_reused_with_the_same_alg_keeps_the_first() {
        let p = parse(&set(&[jwk_of("RS256"), jwk_of("RS256")]), None).unwrap();
        assert_eq!(p.keys.len(), 1);
        assert!(p.skipped[0].contains("second key"));
    }

    #[test]
    fn keys_without_a_kid_are_all_kept_unless_they_repeat() {
        let bare = |id: &str| {
            let mut jwk = jwk_of(id);
            jwk.as_object_mut().unwrap().remove("kid");
            jwk
        };
        let p = parse(&set(&[bare("ES256"), bare("EdDSA"), bare("ES256")]), None).unwrap();
        assert_eq!(p.keys.len(), 2);
        assert_eq!(p.skipped.len(), 1);
    }

    #[test]
    fn same_compares_kid_alg_and_material() {
        let a = parse(&set(&[jwk_of("ES256")]), None).unwrap();
        let b = parse(&set(&[jwk_of("ES256")]), None).unwrap();
        assert!(a.keys[0].same(&b.keys[0]));
        let mut other = jwk_of("ES384");
        other["kid"] = json!("ES256");
        let c = parse(&set(&[other]), None).unwrap();
        assert!(!a.keys[0].same(&c.keys[0]));
    }
}
