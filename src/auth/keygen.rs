//! `gatehouse keygen`: new signing keys as files for `[[keys]]`, mode 0600,
//! never overwriting an existing file.

use std::io;
use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};

/// What `keygen --alg` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeygenAlg {
    #[value(name = "EdDSA")]
    EdDSA,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "HS256")]
    Hs256,
}

/// Writes a new key into `dir` and returns the `[[keys]]` entry that uses it.
///
/// # Errors
/// When a file already exists or cannot be written, or key generation fails.
pub fn generate(alg: KeygenAlg, dir: &Path) -> io::Result<String> {
    std::fs::create_dir_all(dir)?;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let fail =
        |e: aws_lc_rs::error::Unspecified| io::Error::other(format!("key generation failed: {e}"));
    let (name, algorithm, private, public) = match alg {
        KeygenAlg::EdDSA => {
            let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(fail)?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|e| io::Error::other(e.to_string()))?;
            let public = pair.public_key().as_der().map_err(fail)?;
            (
                "ed25519",
                "EdDSA",
                doc.as_ref().to_vec(),
                public.as_ref().to_vec(),
            )
        }
        KeygenAlg::Es256 => {
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(fail)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref())
                .map_err(|e| io::Error::other(e.to_string()))?;
            let public = pair.public_key().as_der().map_err(fail)?;
            (
                "es256",
                "ES256",
                doc.as_ref().to_vec(),
                public.as_ref().to_vec(),
            )
        }
        KeygenAlg::Rs256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(fail)?;
            let private = pair.as_der().map_err(fail)?;
            let public = pair.public_key().as_der().map_err(fail)?;
            (
                "rs256",
                "RS256",
                private.as_ref().to_vec(),
                public.as_ref().to_vec(),
            )
        }
        KeygenAlg::Hs256 => {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).map_err(fail)?;
            let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
            let path = write_new(&dir.join("hs256.secret"), format!("{hex}\n").as_bytes())?;
            return Ok(format!(
                "[[keys]]\nid = \"hs256\"\nalgorithm = \"HS256\"\nsecret_file = \"{}\"\nsign = true\n",
                path.display()
            ));
        }
    };
    let private_path = write_new(
        &dir.join(format!("{name}.pem")),
        pem::encode(&pem::Pem::new("PRIVATE KEY", private)).as_bytes(),
    )?;
    let public_path = write_new(
        &dir.join(format!("{name}.pub.pem")),
        pem::encode(&pem::Pem::new("PUBLIC KEY", public)).as_bytes(),
    )?;
    Ok(format!(
        "[[keys]]\nid = \"{name}\"\nalgorithm = \"{algorithm}\"\nprivate_key = \"{}\"\nsign = true\n# verify-only elsewhere: public_key = \"{}\"\n",
        private_path.display(),
        public_path.display()
    ))
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    super::keys::write_private(path, bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    Ok(path.to_path_buf())
}
