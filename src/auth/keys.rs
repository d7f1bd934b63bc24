//! Key material -> verification keys, by `kid`.
//!
//! Each key has exactly one algorithm (its `[[keys]] algorithm`): a token can
//! only be checked with the algorithm its key was configured for, whatever
//! its header says. That alone defeats the RS256 -> HS256 confusion attack
//! (an RSA public key is never used as an HMAC secret).

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

use crate::config::{Diag, KeyMaterial, KeySpec};

/// The signing key generated when no `[[keys]]` entry has `sign = true`,
/// under `[state] path`.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

/// One key: verifies, and signs when it has private material.
pub struct Key {
    pub id: String,
    pub algorithm: Algorithm,
    pub decoding: DecodingKey,
    /// `None` for verify-only (public) keys.
    pub encoding: Option<EncodingKey>,
    /// `sign = true` in config, or the generated key.
    pub sign: bool,
}

/// Every key, in config order (the first signing key signs). Cloning a key
/// out is an `Arc` bump.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Arc<Key>>,
}

impl KeySet {
    /// Parses every key's material.
    ///
    /// # Errors
    /// One diagnostic per key whose PEM or secret cannot be used with its algorithm.
    pub fn build(specs: &[KeySpec], file: &Path) -> Result<KeySet, Vec<Diag>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        for spec in specs {
            match parse(spec) {
                Ok((decoding, encoding)) => keys.push(Arc::new(Key {
                    id: spec.id.clone(),
                    algorithm: spec.algorithm,
                    decoding,
                    encoding,
                    sign: spec.sign,
                })),
                Err(message) => errors.push(Diag {
                    file: file.to_path_buf(),
                    loc: spec.loc,
                    message: format!("key `{}`: {message}", spec.id),
                }),
            }
        }
        if errors.is_empty() {
            Ok(KeySet { keys })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| k.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.keys.iter()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that signs issued tokens: the first with `sign = true`.
    pub fn signer(&self) -> Option<&Arc<Key>> {
        self.keys.iter().find(|k| k.sign && k.encoding.is_some())
    }

    /// Adds the generated key (see [`load_or_generate`]).
    pub fn push(&mut self, key: Key) {
        self.keys.push(Arc::new(key));
    }
}

/// The Ed25519 signing key in `dir`, created (0600, directory 0700) when
/// absent and `persist`; with `persist = false` (`check`), a missing key is
/// made in memory only. Its `kid` is derived from the public key, so it is
/// stable across restarts.
///
/// # Errors
/// When the file exists but cannot be read or parsed, or cannot be written.
pub fn load_or_generate(dir: &Path, persist: bool) -> io::Result<(Key, PathBuf)> {
    let path = dir.join(GENERATED_KEY_FILE);
    let pkcs8 = match std::fs::read(&path) {
        Ok(bytes) => pem::parse(&bytes)
            .map_err(|e| bad_data(&path, &e))?
            .into_contents(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| bad_data(&path, &e))?;
            let der = doc.as_ref().to_vec();
            match persist.then(|| write_new_key(dir, &path, &der)) {
                // Another process (`gatehouse token` beside `serve`) won the race: use its key.
                Some(Err(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return load_or_generate(dir, persist);
                }
                Some(Err(e)) => return Err(e),
                _ => der,
            }
        }
        Err(e) => return Err(e),
    };
    let pair =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| bad_data(&path, &e))?;
    let public = pair.public_key().as_ref();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public);
    let key = Key {
        id: format!("gh-{}", &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]),
        algorithm: Algorithm::EdDSA,
        decoding: DecodingKey::from_ed_der(public),
        encoding: Some(EncodingKey::from_ed_der(&pkcs8)),
        sign: true,
    };
    Ok((key, path))
}

fn write_new_key(dir: &Path, path: &Path, der: &[u8]) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", der.to_vec()));
    write_private(path, text.as_bytes())
}

/// Writes key material to a new file readable by its owner only (0600),
/// durably; an existing file is never replaced (`AlreadyExists`).
///
/// # Errors
/// When `path` exists or cannot be written.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn bad_data(path: &Path, e: &dyn std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {e}", path.display()),
    )
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

/// The verifying key and, for secrets and private keys, the signing key.
fn parse(spec: &KeySpec) -> Result<(DecodingKey, Option<EncodingKey>), String> {
    let alg = spec.algorithm;
    match (&spec.material, family(alg)) {
        (KeyMaterial::Secret(secret), Family::Hmac) => Ok((
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
        )),
        (KeyMaterial::PublicPem(pem), fam) => {
            public_pem(pem, fam).map(|d| (d, None)).map_err(|e| {
                format!("public_key is not a {alg:?} public key in PEM (SubjectPublicKeyInfo): {e}")
            })
        }
        (KeyMaterial::PrivatePem(pem), fam) => {
            let decoding = private_pem(pem, alg, &fam)?;
            let encoding = match fam {
                Family::Rsa => EncodingKey::from_rsa_pem(pem),
                Family::Ec => EncodingKey::from_ec_pem(pem),
                _ => EncodingKey::from_ed_pem(pem),
            }
            .map_err(|e| format!("private_key cannot sign {alg:?}: {e}"))?;
            Ok((decoding, Some(encoding)))
        }
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
fn private_pem(pem: &[u8], alg: Algorithm, fam: &Family) -> Result<DecodingKey, String> {
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
