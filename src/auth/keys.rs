//! Key material -> verification keys, by `kid`.
//!
//! Each key has exactly one algorithm (its `[[keys]] algorithm`): a token can
//! only be checked with the algorithm its key was configured for, whatever
//! its header says. That alone defeats the RS256 -> HS256 confusion attack
//! (an RSA public key is never used as an HMAC secret).

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RsaKeyPair,
};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{Diag, KeyMaterial, KeySpec};

/// One verification key.
pub struct Key {
    pub id: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
}

/// Every configured key, by id. Cloning is an `Arc` bump per key.
#[derive(Default)]
pub struct KeySet {
    by_id: HashMap<String, Arc<Key>>,
}

impl KeySet {
    /// Parses every key's material.
    ///
    /// # Errors
    /// One diagnostic per key whose PEM or secret cannot be used with its algorithm.
    pub fn build(specs: &[KeySpec], file: &std::path::Path) -> Result<KeySet, Vec<Diag>> {
        let mut by_id = HashMap::new();
        let mut errors = Vec::new();
        for spec in specs {
            match decoding_key(spec) {
                Ok(decoding) => {
                    let key = Key {
                        id: spec.id.clone(),
                        algorithm: spec.algorithm,
                        decoding,
                    };
                    by_id.insert(spec.id.clone(), Arc::new(key));
                }
                Err(message) => errors.push(Diag {
                    file: file.to_path_buf(),
                    loc: spec.loc,
                    message: format!("key `{}`: {message}", spec.id),
                }),
            }
        }
        if errors.is_empty() {
            Ok(KeySet { by_id })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Key>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.by_id.values()
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

fn decoding_key(spec: &KeySpec) -> Result<DecodingKey, String> {
    let alg = spec.algorithm;
    match (&spec.material, family(alg)) {
        (KeyMaterial::Secret(secret), Family::Hmac) => Ok(DecodingKey::from_secret(secret)),
        (KeyMaterial::PublicPem(pem), fam) => public_pem(pem, fam).map_err(|e| {
            format!("public_key is not a {alg:?} public key in PEM (SubjectPublicKeyInfo): {e}")
        }),
        (KeyMaterial::PrivatePem(pem), fam) => private_pem(pem, alg, fam),
        _ => Err(format!("the key material does not fit algorithm {alg:?}")),
    }
}

fn public_pem(pem: &[u8], fam: Family) -> jsonwebtoken::errors::Result<DecodingKey> {
    match fam {
        Family::Rsa => DecodingKey::from_rsa_pem(pem),
        Family::Ec => DecodingKey::from_ec_pem(pem),
        Family::Ed => DecodingKey::from_ed_pem(pem),
        Family::Hmac => Err(jsonwebtoken::errors::ErrorKind::InvalidKeyFormat.into()),
    }
}

/// The public half of a private PEM, as the `DecodingKey` that verifies its signatures.
fn private_pem(pem: &[u8], alg: Algorithm, fam: Family) -> Result<DecodingKey, String> {
    let parsed = pem::parse(pem).map_err(|e| format!("private_key is not PEM: {e}"))?;
    let der = parsed.contents();
    let tag = parsed.tag();
    let wrong = |e: &dyn std::fmt::Display| {
        format!("private_key ({tag}) is not a usable {alg:?} private key: {e}")
    };
    match fam {
        Family::Rsa => {
            let pair = match tag {
                "RSA PRIVATE KEY" => RsaKeyPair::from_der(der),
                _ => RsaKeyPair::from_pkcs8(der),
            }
            .map_err(|e| wrong(&e))?;
            Ok(DecodingKey::from_rsa_der(pair.public_key().as_ref()))
        }
        Family::Ec => {
            let curve = if alg == Algorithm::ES256 {
                &ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = EcdsaKeyPair::from_pkcs8(curve, der).map_err(|e| wrong(&e))?;
            Ok(DecodingKey::from_ec_der(pair.public_key().as_ref()))
        }
        Family::Ed => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| wrong(&e))?;
            Ok(DecodingKey::from_ed_der(pair.public_key().as_ref()))
        }
        Family::Hmac => Err(format!("{alg:?} takes a secret, not a private_key")),
    }
}
