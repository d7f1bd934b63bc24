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

use aws_lc_rs::hmac;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
    ECDSA_P384_SHA384_FIXED_SIGNING, ED25519, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
    ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_2048_8192_SHA384,
    RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256, RSA_PSS_2048_8192_SHA384,
    RSA_PSS_2048_8192_SHA512, RsaKeyPair, VerificationAlgorithm,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

use crate::config::{Diag, KeyMaterial, KeySpec};

/// The signing key generated when no `[[keys]]` entry has `sign = true`,
/// under `[state] path`.
pub const GENERATED_KEY_FILE: &str = "signing-key.pem";

/// One key: verifies, and signs when it has private material.
pub struct Key {
    pub id: String,
    pub algorithm: Algorithm,
    /// Checks signatures, with `algorithm` only.
    pub verifying: VerifyingKey,
    /// `None` for verify-only (public) keys.
    pub encoding: Option<EncodingKey>,
    /// `sign = true` in config, or the generated key.
    pub sign: bool,
    /// The public JWK (`kty`, `kid`, `alg`, `use` and the public parameters)
    /// for `/.well-known/jwks.json`; `None` for HS* secrets, which are never
    /// published.
    pub jwk: Option<Map<String, Value>>,
}

impl Key {
    /// A verify-only key from an issuer's JWK Set (`jwks_url`): `public` as
    /// [`VerifyingKey::public`] takes it (RSA as PKCS#1, see [`rsa_pkcs1`]).
    /// It never signs and is never republished in gatehouse's own JWK Set.
    ///
    /// # Errors
    /// Material aws-lc refuses for `alg`, or an RSA modulus under 2048 bits.
    pub fn fetched(id: &str, alg: Algorithm, public: &[u8]) -> Result<Key, String> {
        if let Family::Rsa = family(alg) {
            let key = aws_lc_rs::rsa::PublicKey::from_der(public).map_err(|e| e.to_string())?;
            // RFC 7518 §3.3: 2048 bits or more (aws-lc would refuse each signature).
            let n = key.modulus().big_endian_without_leading_zero();
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if bits < 2048 {
                return Err("RSA modulus shorter than 2048 bits".into());
            }
        }
        Ok(Key {
            id: id.to_string(),
            algorithm: alg,
            verifying: VerifyingKey::public(alg, public)?,
            encoding: None,
            sign: false,
            jwk: None,
        })
    }
}

/// The DER of a PKCS#1 `RSAPublicKey` (RFC 8017 §A.1.1): `SEQUENCE {
/// modulus INTEGER, publicExponent INTEGER }`, from a JWK's `n` and `e`
/// (unsigned big-endian).
pub fn rsa_pkcs1(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn der_len(out: &mut Vec<u8>, len: usize) {
        match len {
            0..=0x7f => out.push(len as u8),
            _ => {
                let bytes = len.to_be_bytes();
                let skip = bytes.iter().take_while(|&&b| b == 0).count();
                out.push(0x80 | (bytes.len() - skip) as u8);
                out.extend_from_slice(&bytes[skip..]);
            }
        }
    }
    fn integer(out: &mut Vec<u8>, unsigned: &[u8]) {
        let skip = unsigned.iter().take_while(|&&b| b == 0).count();
        let digits = &unsigned[skip..];
        // A leading zero keeps a high first bit from reading as negative.
        let pad = digits.first().is_none_or(|&b| b & 0x80 != 0);
        out.push(0x02);
        der_len(out, digits.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(digits);
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 8);
    out.push(0x30);
    der_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
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
                Ok((verifying, encoding, jwk)) => keys.push(Arc::new(Key {
                    id: spec.id.clone(),
                    algorithm: spec.algorithm,
                    verifying,
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
    let verifying =
        VerifyingKey::public(Algorithm::EdDSA, public).map_err(|e| bad_data(&path, &e))?;
    let key = Key {
        jwk: Some(jwk(&id, Algorithm::EdDSA, Public::Ed25519(public))),
        id,
        algorithm: Algorithm::EdDSA,
        verifying,
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

/// Checks one key's signatures with an aws-lc key object built once, when
/// the key is loaded. `jsonwebtoken::crypto::verify` rebuilt it for every
/// token: the RSA DER parse and Montgomery setup, the EC or Ed25519 point
/// decoding, the HMAC ipad/opad hashing. Measured on a cache miss (the
/// `verify_uncached` bench, whole `Verifier::verify`): HS256 3.3 -> 2.9 µs,
/// RS256 27.6 -> 23.1 µs; ES256 (~75 µs) and EdDSA (~50 µs) gain under 2 µs,
/// lost in the curve arithmetic.
pub struct VerifyingKey {
    check: Check,
    /// The longest signature the key's algorithm makes, in bytes.
    max_len: usize,
}

enum Check {
    /// Compared in constant time. Boxed: the keyed HMAC state is 1.2 KB.
    Hmac(Box<hmac::Key>),
    Public(ParsedPublicKey),
}

/// The longest signature of any algorithm: RSA-8192 (aws-lc verifies RSA
/// keys of 2048 to 8192 bits).
const MAX_SIGNATURE_LEN: usize = 1024;

impl VerifyingKey {
    /// An HS* secret, keyed for `alg`'s hash.
    fn secret(alg: Algorithm, secret: &[u8]) -> VerifyingKey {
        let hash = match alg {
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => hmac::HMAC_SHA256,
        };
        VerifyingKey {
            check: Check::Hmac(Box::new(hmac::Key::new(hash, secret))),
            max_len: hash.tag_len(),
        }
    }

    /// A public key for `alg`: RSA as PKCS#1 `RSAPublicKey` or
    /// SubjectPublicKeyInfo, EC as SubjectPublicKeyInfo or an uncompressed
    /// point, Ed25519 as SubjectPublicKeyInfo or its 32 bytes.
    fn public(alg: Algorithm, public: &[u8]) -> Result<VerifyingKey, String> {
        use Algorithm::*;
        let (verify, max_len): (&'static dyn VerificationAlgorithm, usize) = match alg {
            RS256 => (&RSA_PKCS1_2048_8192_SHA256, MAX_SIGNATURE_LEN),
            RS384 => (&RSA_PKCS1_2048_8192_SHA384, MAX_SIGNATURE_LEN),
            RS512 => (&RSA_PKCS1_2048_8192_SHA512, MAX_SIGNATURE_LEN),
            PS256 => (&RSA_PSS_2048_8192_SHA256, MAX_SIGNATURE_LEN),
            PS384 => (&RSA_PSS_2048_8192_SHA384, MAX_SIGNATURE_LEN),
            PS512 => (&RSA_PSS_2048_8192_SHA512, MAX_SIGNATURE_LEN),
            ES256 => (&ECDSA_P256_SHA256_FIXED, 64),
            ES384 => (&ECDSA_P384_SHA384_FIXED, 96),
            EdDSA => (&ED25519, 64),
            HS256 | HS384 | HS512 => return Err(format!("{alg:?} takes a secret")),
        };
        let key = ParsedPublicKey::new(verify, public).map_err(|e| e.to_string())?;
        Ok(VerifyingKey {
            check: Check::Public(key),
            max_len,
        })
    }

    /// Whether `signature`, a token's third segment (base64url without
    /// padding), is this key's signature of `message`. A segment too long for
    /// the algorithm, padded, or not base64url is no signature.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        if signature.len() > (self.max_len * 4).div_ceil(3) {
            return false;
        }
        let mut bytes = [0u8; MAX_SIGNATURE_LEN];
        let Ok(len) = URL_SAFE_NO_PAD.decode_slice(signature, &mut bytes) else {
            return false;
        };
        let signature = &bytes[..len];
        match &self.check {
            Check::Hmac(key) => hmac::verify(key, message, signature).is_ok(),
            Check::Public(key) => key.verify_sig(message, signature).is_ok(),
        }
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

/// What one key's material parses into: the verifying key, the signing key
/// (secrets and private keys) and the public JWK (asymmetric keys).
type Parsed = (
    VerifyingKey,
    Option<EncodingKey>,
    Option<Map<String, Value>>,
);

/// Parses `spec`'s material for its algorithm.
fn parse(spec: &KeySpec) -> Result<Parsed, String> {
    let (id, alg) = (spec.id.as_str(), spec.algorithm);
    match (&spec.material, family(alg)) {
        (KeyMaterial::Secret(secret), Family::Hmac) => Ok((
            VerifyingKey::secret(alg, secret),
            Some(EncodingKey::from_secret(secret)),
            None,
        )),
        (KeyMaterial::PublicPem(pem), fam) => {
            let (verifying, jwk) = public_pem(id, pem, alg, &fam).map_err(|e| {
                format!("public_key is not a {alg:?} public key in PEM (SubjectPublicKeyInfo): {e}")
            })?;
            Ok((verifying, None, Some(jwk)))
        }
        (KeyMaterial::PrivatePem(pem), fam) => {
            let (verifying, jwk) = private_pem(id, pem, alg, &fam)?;
            let encoding = match fam {
                Family::Rsa => EncodingKey::from_rsa_pem(pem),
                Family::Ec => EncodingKey::from_ec_pem(pem),
                _ => EncodingKey::from_ed_pem(pem),
            }
            .map_err(|e| format!("private_key cannot sign {alg:?}: {e}"))?;
            Ok((verifying, Some(encoding), Some(jwk)))
        }
        _ => Err(format!("the key material does not fit algorithm {alg:?}")),
    }
}

/// A public key, checked by aws-lc, as the [`VerifyingKey`] that verifies
/// with it and its JWK: both come from the same public parameters, so what is
/// published is exactly what verifies.
///
/// RSA takes SubjectPublicKeyInfo or PKCS#1 (`RSA PUBLIC KEY`); EC and Ed25519
/// take SubjectPublicKeyInfo, EC with an uncompressed point (JWK needs `x` and `y`).
fn public_pem(
    id: &str,
    pem: &[u8],
    alg: Algorithm,
    fam: &Family,
) -> Result<(VerifyingKey, Map<String, Value>), String> {
    let parsed = pem::parse(pem).map_err(|e| e.to_string())?;
    let (tag, der) = (parsed.tag(), parsed.contents());
    if !(tag == "PUBLIC KEY" || (tag == "RSA PUBLIC KEY" && matches!(fam, Family::Rsa))) {
        return Err(format!("a `{tag}` PEM is not a public key"));
    }
    match fam {
        Family::Rsa => {
            let key = aws_lc_rs::rsa::PublicKey::from_der(der).map_err(|e| e.to_string())?;
            let verifying = VerifyingKey::public(alg, key.as_ref())?;
            Ok((verifying, jwk(id, alg, rsa_public(&key))))
        }
        Family::Ec => {
            // Checks the key type, the curve and that the point is on it.
            let verifying = VerifyingKey::public(alg, der)?;
            let point = spki_public_key(der).ok_or("malformed SubjectPublicKeyInfo")?;
            let public = ec_public(alg, point).ok_or(
                "the EC point is compressed: write it uncompressed \
                 (`openssl ec -pubin -conv_form uncompressed`)",
            )?;
            Ok((verifying, jwk(id, alg, public)))
        }
        Family::Ed => {
            let verifying = VerifyingKey::public(alg, der)?;
            let x = spki_public_key(der).ok_or("malformed SubjectPublicKeyInfo")?;
            Ok((verifying, jwk(id, alg, Public::Ed25519(x))))
        }
        Family::Hmac => Err(format!("{alg:?} takes a secret, not a public_key")),
    }
}

/// The public half of a private PEM, as the [`VerifyingKey`] that verifies
/// its signatures and its JWK.
fn private_pem(
    id: &str,
    pem: &[u8],
    alg: Algorithm,
    fam: &Family,
) -> Result<(VerifyingKey, Map<String, Value>), String> {
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
            let verifying = VerifyingKey::public(alg, key.as_ref()).map_err(|e| wrong(&e))?;
            Ok((verifying, jwk(id, alg, rsa_public(key))))
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
            let verifying = VerifyingKey::public(alg, point).map_err(|e| wrong(&e))?;
            Ok((verifying, jwk(id, alg, public)))
        }
        Family::Ed => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| wrong(&e))?;
            let x = pair.public_key().as_ref();
            let verifying = VerifyingKey::public(alg, x).map_err(|e| wrong(&e))?;
            Ok((verifying, jwk(id, alg, Public::Ed25519(x))))
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
pub(crate) mod tests {
    use std::sync::OnceLock;

    use aws_lc_rs::encoding::AsDer;
    use base64::engine::general_purpose::STANDARD_NO_PAD;
    use jsonwebtoken::Header;

    use super::*;
    use crate::config::Loc;

    /// A key of every algorithm, from every kind of material that verifies,
    /// and the RSA public key's PEM (for key-confusion tests).
    pub(crate) struct TestKeys {
        /// Ids: each algorithm's name (`HS256`, `RS256`, ...: secrets and
        /// private PEMs, which sign), `<name>.pub` (its public PEM), and
        /// `RS256.pkcs1` (an `RSA PUBLIC KEY` PEM); then the generated key.
        pub set: KeySet,
        pub rsa_public_pem: String,
    }

    pub(crate) fn test_keys() -> &'static TestKeys {
        static KEYS: OnceLock<TestKeys> = OnceLock::new();
        KEYS.get_or_init(|| {
            use Algorithm::*;
            let pem = |tag: &str, der: &[u8]| pem::encode(&pem::Pem::new(tag, der.to_vec()));
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let rsa = (
                pem("PRIVATE KEY", rsa.as_der().unwrap().as_ref()),
                pem("PUBLIC KEY", rsa.public_key().as_der().unwrap().as_ref()),
                pem("RSA PUBLIC KEY", rsa.public_key().as_ref()),
            );
            let ec = |alg| {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref()).unwrap();
                let spki = pair.public_key().as_der().unwrap();
                (
                    pem("PRIVATE KEY", pkcs8.as_ref()),
                    pem("PUBLIC KEY", spki.as_ref()),
                )
            };
            let ed_pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
            let ed_spki = Ed25519KeyPair::from_pkcs8(ed_pkcs8.as_ref())
                .unwrap()
                .public_key()
                .as_der()
                .unwrap();
            let ed = (
                pem("PRIVATE KEY", ed_pkcs8.as_ref()),
                pem("PUBLIC KEY", ed_spki.as_ref()),
            );
            let (p256, p384) = (
                ec(&ECDSA_P256_SHA256_FIXED_SIGNING),
                ec(&ECDSA_P384_SHA384_FIXED_SIGNING),
            );
            let spec = |id: String, algorithm, material| KeySpec {
                id,
                algorithm,
                material,
                sign: false,
                loc: Loc { line: 1, col: 1 },
            };
            let mut specs = Vec::new();
            for alg in [HS256, HS384, HS512] {
                let secret = format!("{alg:?} secret, 32 bytes or more of it").into_bytes();
                specs.push(spec(format!("{alg:?}"), alg, KeyMaterial::Secret(secret)));
            }
            let pairs = [
                (RS256, &rsa.0, &rsa.1),
                (RS384, &rsa.0, &rsa.1),
                (RS512, &rsa.0, &rsa.1),
                (PS256, &rsa.0, &rsa.1),
                (PS384, &rsa.0, &rsa.1),
                (PS512, &rsa.0, &rsa.1),
                (ES256, &p256.0, &p256.1),
                (ES384, &p384.0, &p384.1),
                (EdDSA, &ed.0, &ed.1),
            ];
            for (alg, private, public) in pairs {
                let (private, public) = (private.clone().into(), public.clone().into());
                specs.push(spec(
                    format!("{alg:?}"),
                    alg,
                    KeyMaterial::PrivatePem(private),
                ));
                specs.push(spec(
                    format!("{alg:?}.pub"),
                    alg,
                    KeyMaterial::PublicPem(public),
                ));
            }
            let pkcs1 = KeyMaterial::PublicPem(rsa.2.clone().into());
            specs.push(spec("RS256.pkcs1".into(), RS256, pkcs1));
            let mut set = KeySet::build(&specs, Path::new("gateway.toml")).unwrap();
            let dir = tempfile::tempdir().unwrap();
            set.push(load_or_generate(dir.path(), false).unwrap().0);
            TestKeys {
                set,
                rsa_public_pem: rsa.1,
            }
        })
    }

    /// What signs for `key`: its own private material, else that of the
    /// key its id names before the `.`.
    pub(crate) fn signer(key: &Key) -> &'static EncodingKey {
        let set = &test_keys().set;
        let id = key.id.split('.').next().unwrap();
        let signer = set.get(id).unwrap_or_else(|| set.get(&key.id).unwrap());
        signer.encoding.as_ref().unwrap()
    }

    /// A token's `(header.payload, signature)`, signed for `key`.
    fn signed(key: &Key) -> (String, String) {
        let claims = serde_json::json!({ "sub": "alice" });
        let token =
            jsonwebtoken::encode(&Header::new(key.algorithm), &claims, signer(key)).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        (message.into(), signature.into())
    }

    /// Every key, with a message and the signature it must accept.
    fn every_key_signed() -> impl Iterator<Item = (&'static Key, String, String)> {
        let set = &test_keys().set;
        assert_eq!(set.len(), 3 + 2 * 9 + 1 + 1);
        set.iter().map(|key| {
            let (message, signature) = signed(key);
            (&**key, message, signature)
        })
    }

    /// Asserts `key` refuses each of `signatures` for `message`.
    fn refuses(key: &Key, message: &str, signatures: &[String]) {
        for signature in signatures {
            assert!(
                !key.verifying.verify(message.as_bytes(), signature),
                "key {} took {signature:?}",
                key.id
            );
        }
    }

    #[test]
    fn every_algorithm_verifies_its_signatures() {
        let algorithms: std::collections::HashSet<_> =
            test_keys().set.iter().map(|k| k.algorithm).collect();
        assert_eq!(algorithms.len(), 12, "every jsonwebtoken algorithm");
        for (key, message, signature) in every_key_signed() {
            assert!(
                key.verifying.verify(message.as_bytes(), &signature),
                "key {}",
                key.id
            );
        }
    }

    #[test]
    fn changed_signatures_and_messages_are_refused() {
        for (key, message, signature) in every_key_signed() {
            let bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap();
            let flipped = [0, bytes.len() / 2, bytes.len() - 1].map(|i| {
                let mut b = bytes.clone();
                b[i] ^= 1;
                URL_SAFE_NO_PAD.encode(b)
            });
            refuses(key, &message, &flipped);
            refuses(key, &format!("{message}x"), &[signature]);
        }
    }

    #[test]
    fn signatures_of_the_wrong_length_are_refused() {
        for (key, message, signature) in every_key_signed() {
            let bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap();
            let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
            let wrong = [
                String::new(),
                b64(&bytes[..bytes.len() - 1]),
                b64(&[&bytes[..], &[0]].concat()),
                b64(&[&bytes[..], &bytes[..]].concat()),
                // Longer than any signature (RSA-8192): refused before decoding.
                b64(&[7; MAX_SIGNATURE_LEN + 1]),
                "A".repeat(64 * 1024),
            ];
            refuses(key, &message, &wrong);
        }
    }

    #[test]
    fn signatures_padded_or_not_base64url_are_refused() {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for (key, message, signature) in every_key_signed() {
            let bytes = URL_SAFE_NO_PAD.decode(&signature).unwrap();
            let mut bad = vec![format!("{signature}="), format!("{signature}==")];
            bad.extend(["+", "/", "=", "!", " ", "\n", "é"].map(|c| {
                let mut s = signature.clone();
                s.replace_range(..1, c);
                s
            }));
            bad.push(format!(" {signature}"));
            // Standard base64, when it differs.
            let standard = STANDARD_NO_PAD.encode(&bytes);
            if standard != signature {
                bad.push(standard);
            }
            // The same bytes with the unused low bits of the last character
            // set: base64 that is not canonical.
            if bytes.len() % 3 != 0 {
                let mut chars = signature.clone().into_bytes();
                let last = chars.last_mut().unwrap();
                let value = ALPHABET.iter().position(|c| c == last).unwrap();
                *last = ALPHABET[value ^ 1];
                bad.push(String::from_utf8(chars).unwrap());
            }
            refuses(key, &message, &bad);
        }
    }

    #[test]
    fn an_hmac_made_with_the_rsa_public_key_is_refused_by_every_key() {
        let keys = test_keys();
        let pem = keys.rsa_public_pem.as_bytes();
        let spki = pem::parse(pem).unwrap().into_contents();
        let rsa = keys.set.get("RS256.pub").unwrap();
        let (message, _) = signed(rsa);
        for secret in [pem, keys.rsa_public_pem.trim().as_bytes(), &spki] {
            let tags = [hmac::HMAC_SHA256, hmac::HMAC_SHA384, hmac::HMAC_SHA512].map(|hash| {
                let tag = hmac::sign(&hmac::Key::new(hash, secret), message.as_bytes());
                URL_SAFE_NO_PAD.encode(tag)
            });
            for key in keys.set.iter() {
                refuses(key, &message, &tags);
            }
        }
    }

    #[test]
    fn public_keys_are_refused_for_hmac_algorithms() {
        let der = pem::parse(&test_keys().rsa_public_pem)
            .unwrap()
            .into_contents();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(VerifyingKey::public(alg, &der).is_err());
        }
    }

    #[test]
    fn rsa_pkcs1_rebuilds_the_der_aws_lc_wrote() {
        let key = test_keys().set.get("RS256").unwrap();
        let jwk = key.jwk.as_ref().unwrap();
        let b64 = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
        let der = rsa_pkcs1(&b64("n"), &b64("e"));
        let parsed = aws_lc_rs::rsa::PublicKey::from_der(&der).unwrap();
        assert_eq!(parsed.as_ref(), &der[..]);
        // And it verifies what the configured key signed.
        let fetched = Key::fetched("RS256", Algorithm::RS256, &der).unwrap();
        let (message, signature) = signed(key);
        assert!(fetched.verifying.verify(message.as_bytes(), &signature));
        // Leading zeros of the JWK's integers are not significant.
        let mut padded = vec![0, 0];
        padded.extend(b64("n"));
        assert_eq!(rsa_pkcs1(&padded, &b64("e")), der);
        // Short lengths and high bits.
        assert_eq!(
            rsa_pkcs1(&[0x80], &[1, 0, 1]),
            [0x30, 9, 2, 2, 0, 0x80, 2, 3, 1, 0, 1]
        );
    }

    #[test]
    fn fetched_rsa_keys_under_2048_bits_are_refused() {
        let mut n = vec![0xc5; 256];
        n[0] = 0x7f; // 2047 bits
        let short = rsa_pkcs1(&n, &[1, 0, 1]);
        let err = Key::fetched("k", Algorithm::RS256, &short).err().unwrap();
        assert!(err.contains("2048"), "{err}");
        assert!(Key::fetched("k", Algorithm::RS256, b"not der").is_err());
        assert!(Key::fetched("k", Algorithm::HS256, &[0; 32]).is_err());
    }

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
