//! The JWK Set (RFC 7517 §5) served at `GET /.well-known/jwks.json`.
//!
//! It lists the public key of every asymmetric `[[keys]]` entry and of the
//! generated signing key, in config order, so that upstreams and partners can
//! verify the tokens gatehouse issues (and the ones it accepts) without
//! sharing any secret. Each JWK carries `kty`, `kid`, `alg`, `use: "sig"` and
//! the public parameters only (RSA `n`/`e`, EC `crv`/`x`/`y`, OKP `crv`/`x`).
//!
//! An HS* secret is never published: with HMAC the verifying key *is* the
//! signing key, so anyone who could read it could mint tokens. Those keys
//! have no JWK at all ([`Key::jwk`] is `None`), so no code path here can leak one.
//!
//! [`Key::jwk`]: super::keys::Key::jwk

use serde_json::{Value, json};

use super::keys::KeySet;

/// `{"keys": [...]}`: the public JWK of each key that has one, in
/// [`KeySet`] order. The JWKs are computed when the keys are parsed; this
/// only copies them.
pub fn jwks(keys: &KeySet) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .filter_map(|key| key.jwk.clone().map(Value::Object))
        .collect();
    json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::{SystemTime, UNIX_EPOCH};

    use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPublicKeyCompressedBin};
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair,
    };
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::jwk::Jwk;
    use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};

    use super::*;
    use crate::auth::keys::{Key, load_or_generate};
    use crate::config::{KeyMaterial, KeySpec, Loc};

    /// `(private, public)` PEMs for each key type, generated once.
    struct Pems {
        rsa: (String, String),
        p256: (String, String),
        p384: (String, String),
        ed: (String, String),
    }

    fn pem(tag: &str, der: &[u8]) -> String {
        pem::encode(&pem::Pem::new(tag, der.to_vec()))
    }

    fn ec(alg: &'static EcdsaSigningAlgorithm) -> (String, String) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        (
            pem("PRIVATE KEY", pkcs8.as_ref()),
            pem("PUBLIC KEY", spki.as_ref()),
        )
    }

    fn pems() -> &'static Pems {
        static PEMS: OnceLock<Pems> = OnceLock::new();
        PEMS.get_or_init(|| {
            let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let rsa_spki = rsa.public_key().as_der().unwrap();
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let ed = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref()).unwrap();
            let ed_spki = ed.public_key().as_der().unwrap();
            Pems {
                rsa: (
                    pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref()),
                    pem("PUBLIC KEY", rsa_spki.as_ref()),
                ),
                p256: ec(&ECDSA_P256_SHA256_FIXED_SIGNING),
                p384: ec(&ECDSA_P384_SHA384_FIXED_SIGNING),
                ed: (
                    pem("PRIVATE KEY", ed_pkcs8.as_ref()),
                    pem("PUBLIC KEY", ed_spki.as_ref()),
                ),
            }
        })
    }

    /// Every asymmetric algorithm with its key pair.
    fn asymmetric() -> [(Algorithm, &'static (String, String)); 9] {
        use Algorithm::*;
        let p = pems();
        [
            (RS256, &p.rsa),
            (RS384, &p.rsa),
            (RS512, &p.rsa),
            (PS256, &p.rsa),
            (PS384, &p.rsa),
            (PS512, &p.rsa),
            (ES256, &p.p256),
            (ES384, &p.p384),
            (EdDSA, &p.ed),
        ]
    }

    fn spec(id: &str, algorithm: Algorithm, material: KeyMaterial) -> KeySpec {
        let loc = Loc { line: 1, col: 1 };
        KeySpec {
            id: id.into(),
            algorithm,
            material,
            sign: false,
            loc,
        }
    }

    fn build(specs: Vec<KeySpec>) -> Result<KeySet, String> {
        KeySet::build(&specs, Path::new("gateway.toml"))
            .map_err(|diags| diags.iter().map(|d| d.message.clone()).collect())
    }

    /// Why the set built from `spec` is refused.
    fn refused(spec: KeySpec) -> String {
        build(vec![spec]).err().expect("the key is refused")
    }

    /// The only JWK in the set built from `spec`.
    fn only_jwk(spec: KeySpec) -> Value {
        let set = jwks(&build(vec![spec]).unwrap());
        assert_eq!(set["keys"].as_array().unwrap().len(), 1, "{set}");
        set["keys"][0].clone()
    }

    /// Signs with `signer` and verifies with nothing but `jwk`.
    fn verifies_with(jwk: &Value, signer: &Key) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let claims = json!({ "sub": "alice", "exp": now.as_secs() + 60 });
        let header = Header::new(signer.algorithm);
        let token = jsonwebtoken::encode(&header, &claims, signer.encoding.as_ref().unwrap());
        let jwk: Jwk = serde_json::from_value(jwk.clone()).unwrap();
        let key = DecodingKey::from_jwk(&jwk).unwrap();
        let validation = Validation::new(signer.algorithm);
        jsonwebtoken::decode::<Value>(token.unwrap(), &key, &validation).is_ok()
    }

    fn private_key(alg: Algorithm, pems: &(String, String)) -> KeySpec {
        spec("k", alg, KeyMaterial::PrivatePem(pems.0.clone().into()))
    }

    fn public_key(alg: Algorithm, pems: &(String, String)) -> KeySpec {
        spec("k", alg, KeyMaterial::PublicPem(pems.1.clone().into()))
    }

    #[test]
    fn tokens_verify_with_the_published_jwk_for_every_asymmetric_algorithm() {
        for (alg, pems) in asymmetric() {
            let set = build(vec![private_key(alg, pems)]).unwrap();
            let jwk = &jwks(&set)["keys"][0];
            assert_eq!(jwk["kid"], "k");
            assert_eq!(jwk["alg"], format!("{alg:?}"));
            assert_eq!(jwk["use"], "sig");
            assert!(verifies_with(jwk, set.get("k").unwrap()), "{alg:?}");
        }
    }

    #[test]
    fn a_verify_only_public_key_is_published_like_its_private_half() {
        for (alg, pems) in asymmetric() {
            let published = only_jwk(public_key(alg, pems));
            assert_eq!(published, only_jwk(private_key(alg, pems)), "{alg:?}");
            let signer = build(vec![private_key(alg, pems)]).unwrap();
            assert!(
                verifies_with(&published, signer.get("k").unwrap()),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn public_parameters_have_their_canonical_lengths() {
        let b64 = |v: &Value| URL_SAFE_NO_PAD.decode(v.as_str().unwrap()).unwrap();
        let rsa = only_jwk(private_key(Algorithm::RS256, &pems().rsa));
        assert_eq!(rsa["kty"], "RSA");
        let n = b64(&rsa["n"]);
        assert_eq!((n.len(), n[0] != 0), (256, true), "no leading zero byte");
        assert_eq!(rsa["e"], "AQAB");
        for (alg, pems, crv, size) in [
            (Algorithm::ES256, &pems().p256, "P-256", 32),
            (Algorithm::ES384, &pems().p384, "P-384", 48),
        ] {
            let ec = only_jwk(public_key(alg, pems));
            assert_eq!((&ec["kty"], &ec["crv"]), (&json!("EC"), &json!(crv)));
            assert_eq!((b64(&ec["x"]).len(), b64(&ec["y"]).len()), (size, size));
        }
        let ed = only_jwk(public_key(Algorithm::EdDSA, &pems().ed));
        assert_eq!((&ed["kty"], &ed["crv"]), (&json!("OKP"), &json!("Ed25519")));
        assert_eq!(b64(&ed["x"]).len(), 32);
    }

    #[test]
    fn no_private_member_is_ever_published() {
        let public = ["kty", "kid", "alg", "use", "n", "e", "crv", "x", "y"];
        for (alg, pems) in asymmetric() {
            for spec in [private_key(alg, pems), public_key(alg, pems)] {
                let jwk = only_jwk(spec);
                for name in jwk.as_object().unwrap().keys() {
                    assert!(public.contains(&name.as_str()), "{alg:?} has `{name}`");
                }
            }
        }
    }

    #[test]
    fn hmac_secrets_are_never_published_and_order_is_kept() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let set = build(vec![
            spec(
                "ed",
                Algorithm::EdDSA,
                KeyMaterial::PrivatePem(pems().ed.0.clone().into()),
            ),
            spec("hs", Algorithm::HS256, KeyMaterial::Secret(secret.clone())),
            spec(
                "es",
                Algorithm::ES256,
                KeyMaterial::PublicPem(pems().p256.1.clone().into()),
            ),
        ])
        .unwrap();
        assert!(set.get("hs").unwrap().jwk.is_none());
        let out = jwks(&set);
        let kids: Vec<_> = out["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| &k["kid"])
            .collect();
        assert_eq!(kids, ["ed", "es"]);
        let text = out.to_string();
        assert!(!text.contains("oct") && !text.contains("HS256"), "{text}");
        assert!(!text.contains(&URL_SAFE_NO_PAD.encode(&secret)), "{text}");
    }

    #[test]
    fn the_generated_signing_key_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = load_or_generate(dir.path(), false).unwrap();
        let jwk = Value::Object(key.jwk.clone().unwrap());
        assert_eq!(
            (&jwk["kid"], &jwk["alg"]),
            (&json!(key.id), &json!("EdDSA"))
        );
        assert!(verifies_with(&jwk, &key));
    }

    #[test]
    fn unusable_public_keys_are_refused_when_loaded() {
        // A P-256 key configured as ES384.
        let err = refused(public_key(Algorithm::ES384, &pems().p256));
        assert!(
            err.contains("public_key is not a ES384 public key"),
            "{err}"
        );
        // The same key with its point compressed: a JWK needs `x` and `y`.
        let pair = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pem::parse(&pems().p256.0).unwrap().contents(),
        )
        .unwrap();
        let spki = pem::parse(&pems().p256.1).unwrap().into_contents();
        let point: EcPublicKeyCompressedBin = pair.public_key().as_be_bytes().unwrap();
        let mut der = vec![0x30, 0x39];
        der.extend_from_slice(&spki[2..23]); // the AlgorithmIdentifier
        der.extend_from_slice(&[0x03, 0x22, 0x00]);
        der.extend_from_slice(point.as_ref());
        let compressed = spec(
            "k",
            Algorithm::ES256,
            KeyMaterial::PublicPem(pem("PUBLIC KEY", &der).into()),
        );
        let err = refused(compressed);
        assert!(err.contains("compressed"), "{err}");
        // A private key where a public one belongs.
        let swapped = spec(
            "k",
            Algorithm::EdDSA,
            KeyMaterial::PublicPem(pems().ed.0.clone().into()),
        );
        assert!(refused(swapped).contains("not a public key"));
    }
}
