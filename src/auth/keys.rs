//! Key material -> verification keys, by `kid`.
//!
//! Each key has exactly one algorithm (its `[[keys]] algorithm`): a token can
//! only be checked with the algorithm its key was configured for, whatever
//! its header says. That alone defeats the RS256 -> HS256 confusion attack
//! (an RSA public key is never used as an HMAC secret).
//!
//! Each asymmetric key also carries its public JWK (RFC 7517), computed once
//! here from the same parameters that verify, for `/.well-known/jwks.json`.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    ParsedPublicKey, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde_json::{Map, Value};

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
    /// The public JWK (`kty`, `kid`, `alg`, `use` and the public parameters)
    /// for `/.well-known/jwks.json`; `None` for HS* secrets, which are never
    /// published.
    pub jwk: Option<Map<String, Value>>,
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
                Ok((decoding, encoding, jwk)) => keys.push(Arc::new(Key {
                    id: spec.id.clone(),
                    algorithm: spec.algorithm,
                    decoding,
                    encoding,
                    sign: spec.sign,
                    jwk,
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
    let id = format!("gh-{}", &URL_SAFE_NO_PAD.encode(digest.as_ref())[..16]);
    let key = Key {
        jwk: Some(jwk(&id, Algorithm::EdDSA, Public::Ed25519(public))),
        id,
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

/// What one key's material parses into: the verifying key, the signing key
/// (secrets and private keys) and the public JWK (asymmetric keys).
type Parsed = (DecodingKey, Option<EncodingKey>, Option<Map<String, Value>>);

/// Parses `spec`'s material for its algorithm.
fn parse(spec: &KeySpec) -> Result<Parsed, String> {
    let (id, alg) = (spec.id.as_str(), spec.algorithm);
    match (&spec.material, family(alg)) {
        (KeyMaterial::Secret(secret), Family::Hmac) => Ok((
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
            None,
        )),
        (KeyMaterial::PublicPem(pem), fam) => {
            let (decoding, jwk) = public_pem(id, pem, alg, &fam).map_err(|e| {
                format!("public_key is not a {alg:?} public key in PEM (SubjectPublicKeyInfo): {e}")
            })?;
            Ok((decoding, None, Some(jwk)))
        }
        (KeyMaterial::PrivatePem(pem), fam) => {
            let (decoding, jwk) = private_pem(id, pem, alg, &fam)?;
            let encoding = match fam {
                Family::Rsa => EncodingKey::from_rsa_pem(pem),
                Family::Ec => EncodingKey::from_ec_pem(pem),
                _ => EncodingKey::from_ed_pem(pem),
            }
            .map_err(|e| format!("private_key cannot sign {alg:?}: {e}"))?;
            Ok((decoding, Some(encoding), Some(jwk)))
        }
        _ => Err(format!("the key material does not fit algorithm {alg:?}")),
    }
}

/// A public key, checked by aws-lc, as the `DecodingKey` that verifies with
/// it and its JWK: both come from the same public parameters, so what is
/// published is exactly what verifies.
///
/// RSA takes SubjectPublicKeyInfo or PKCS#1 (`RSA PUBLIC KEY`); EC and Ed25519
/// take SubjectPublicKeyInfo, EC with an uncompressed point (JWK needs `x` and `y`).
fn public_pem(
    id: &str,
    pem: &[u8],
    alg: Algorithm,
    fam: &Family,
) -> Result<(DecodingKey, Map<String, Value>), String> {
    let parsed = pem::parse(pem).map_err(|e| e.to_string())?;
    let (tag, der) = (parsed.tag(), parsed.contents());
    if !(tag == "PUBLIC KEY" || (tag == "RSA PUBLIC KEY" && matches!(fam, Family::Rsa))) {
        return Err(format!("a `{tag}` PEM is not a public key"));
    }
    match fam {
        Family::Rsa => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|e| e.to_string())?;
            let jwk = jwk(id, alg, rsa_public(&key));
            Ok((DecodingKey::from_rsa_der(key.as_ref()), jwk))
        }
        Family::Ec => {
            let verify = match alg {
                Algorithm::ES256 => &ECDSA_P256_SHA256_FIXED,
                _ => &ECDSA_P384_SHA384_FIXED,
            };
            // Checks the key type, the curve and that the point is on it.
            ParsedPublicKey::new(verify, der).map_err(|e| e.to_string())?;
            let point = spki_public_key(der).ok_or("malformed SubjectPublicKeyInfo")?;
            let public = ec_public(alg, point).ok_or(
                "the EC point is compressed: write it uncompressed \
                 (`openssl ec -pubin -conv_form uncompressed`)",
            )?;
            Ok((DecodingKey::from_ec_der(point), jwk(id, alg, public)))
        }
        Family::Ed => {
            ParsedPublicKey::new(&ED25519, der).map_err(|e| e.to_string())?;
            let x = spki_public_key(der).ok_or("malformed SubjectPublicKeyInfo")?;
            Ok((
                DecodingKey::from_ed_der(x),
                jwk(id, alg, Public::Ed25519(x)),
            ))
        }
        Family::Hmac => Err(format!("{alg:?} takes a secret, not a public_key")),
    }
}

/// The public half of a private PEM, as the `DecodingKey` that verifies its
/// signatures and its JWK.
fn private_pem(
    id: &str,
    pem: &[u8],
    alg: Algorithm,
    fam: &Family,
) -> Result<(DecodingKey, Map<String, Value>), String> {
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
            let key = pair.public_key();
            let jwk = jwk(id, alg, rsa_public(key));
            Ok((DecodingKey::from_rsa_der(key.as_ref()), jwk))
        }
        Family::Ec => {
            let curve = if alg == Algorithm::ES256 {
                &ECDSA_P256_SHA256_FIXED_SIGNING
            } else {
                &ECDSA_P384_SHA384_FIXED_SIGNING
            };
            let pair = EcdsaKeyPair::from_pkcs8(curve, der).map_err(|e| wrong(&e))?;
            // aws-lc gives the uncompressed point.
            let point = pair.public_key().as_ref();
            let public = ec_public(alg, point).ok_or_else(|| wrong(&"unexpected point"))?;
            Ok((DecodingKey::from_ec_der(point), jwk(id, alg, public)))
        }
        Family::Ed => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| wrong(&e))?;
            let x = pair.public_key().as_ref();
            Ok((
                DecodingKey::from_ed_der(x),
                jwk(id, alg, Public::Ed25519(x)),
            ))
        }
        Family::Hmac => Err(format!("{alg:?} takes a secret, not a private_key")),
    }
}

// === JWK ===

/// The public parameters of an asymmetric key.
enum Public<'a> {
    /// Modulus and exponent, big-endian without leading zero bytes.
    Rsa { n: &'a [u8], e: &'a [u8] },
    /// The coordinates of a point on curve `crv`, each the field's length.
    Ec {
        crv: &'static str,
        x: &'a [u8],
        y: &'a [u8],
    },
    /// The 32-byte public key.
    Ed25519(&'a [u8]),
}

fn rsa_public(key: &aws_lc_rs::rsa::PublicKey) -> Public<'_> {
    Public::Rsa {
        n: key.modulus().big_endian_without_leading_zero(),
        e: key.exponent().big_endian_without_leading_zero(),
    }
}

/// An uncompressed point `0x04 || x || y` on `alg`'s curve, split into
/// coordinates of the field's length (RFC 7518 §6.2.1.2); `None` for any
/// other encoding.
fn ec_public(alg: Algorithm, point: &[u8]) -> Option<Public<'_>> {
    let (crv, size) = match alg {
        Algorithm::ES256 => ("P-256", 32),
        _ => ("P-384", 48),
    };
    match point.split_first()? {
        (0x04, xy) if xy.len() == 2 * size => {
            let (x, y) = xy.split_at(size);
            Some(Public::Ec { crv, x, y })
        }
        _ => None,
    }
}

/// The public JWK of key `id` (RFC 7517 §4, RFC 7518 §6.2–6.3, RFC 8037 §2).
/// Only public members exist here: nothing could add `d`, `p`, `q`, `dp`,
/// `dq`, `qi` or `k`.
fn jwk(id: &str, alg: Algorithm, public: Public<'_>) -> Map<String, Value> {
    let b64 = |bytes: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(bytes));
    let mut jwk = Map::new();
    let mut put = |name: &str, value: Value| jwk.insert(name.into(), value);
    match public {
        Public::Rsa { n, e } => {
            put("kty", "RSA".into());
            put("n", b64(n));
            put("e", b64(e));
        }
        Public::Ec { crv, x, y } => {
            put("kty", "EC".into());
            put("crv", crv.into());
            put("x", b64(x));
            put("y", b64(y));
        }
        Public::Ed25519(x) => {
            put("kty", "OKP".into());
            put("crv", "Ed25519".into());
            put("x", b64(x));
        }
    }
    put("kid", id.into());
    let alg = serde_json::to_value(alg).expect("an Algorithm serializes to its name");
    put("alg", alg);
    put("use", "sig".into());
    jwk
}

/// The `subjectPublicKey` bits of a DER SubjectPublicKeyInfo (RFC 5280
/// §4.1.2.7): `SEQUENCE { algorithm SEQUENCE, subjectPublicKey BIT STRING }`.
/// aws-lc has already checked the key; this only finds its bytes, checking
/// every length against the input.
fn spki_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (body, rest) = der_element(spki, 0x30)?;
    let (_algorithm, body) = der_element(body, 0x30)?;
    let (bits, tail) = der_element(body, 0x03)?;
    match (rest.is_empty() && tail.is_empty(), bits.split_first()?) {
        // No unused bits: a key is whole bytes.
        (true, (0, key)) => Some(key),
        _ => None,
    }
}

/// The contents of the DER element with `tag` at the start of `input`, and
/// what follows it. Definite lengths of up to four bytes only.
fn der_element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&found, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    if found != tag {
        return None;
    }
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let (bytes, rest) = rest.split_at_checked(usize::from(first & 0x7f))?;
            let len = bytes.iter().try_fold(0usize, |len, &b| {
                len.checked_mul(256)?.checked_add(b.into())
            })?;
            (len, rest)
        }
        _ => return None,
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_elements_never_read_past_their_input() {
        assert_eq!(
            der_element(&[0x04, 0x02, 1, 2, 3], 0x04),
            Some((&[1, 2][..], &[3][..]))
        );
        assert_eq!(
            der_element(&[0x04, 0x81, 0x01, 9], 0x04),
            Some((&[9][..], &[][..]))
        );
        assert_eq!(
            der_element(&[0x04, 0x03, 1, 2], 0x04),
            None,
            "short contents"
        );
        assert_eq!(der_element(&[0x04, 0x82, 0x01], 0x04), None, "short length");
        assert_eq!(
            der_element(&[0x04, 0x84, 0xff, 0xff, 0xff, 0xff], 0x04),
            None
        );
        assert_eq!(
            der_element(&[0x04, 0x80, 0, 0], 0x04),
            None,
            "indefinite length"
        );
        assert_eq!(der_element(&[0x30, 0x00], 0x04), None, "other tag");
        assert_eq!(der_element(&[0x04], 0x04), None);
    }

    #[test]
    fn spki_public_key_takes_the_bit_string_and_nothing_else() {
        let spki = [0x30, 0x07, 0x30, 0x00, 0x03, 0x03, 0x00, 0xaa, 0xbb];
        assert_eq!(spki_public_key(&spki), Some(&[0xaa, 0xbb][..]));
        let mut trailing = spki.to_vec();
        trailing.push(0);
        assert_eq!(spki_public_key(&trailing), None);
        let unused_bits = [0x30, 0x07, 0x30, 0x00, 0x03, 0x03, 0x01, 0xaa, 0xbb];
        assert_eq!(spki_public_key(&unused_bits), None);
        assert_eq!(spki_public_key(&spki[..8]), None);
    }
}
