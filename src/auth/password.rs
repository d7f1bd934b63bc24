//! Password hashing for the users file: argon2id with the OWASP-recommended
//! parameters (19 MiB, 2 iterations, 1 lane: the argon2 crate's defaults).
//! Verification arrives with login (issue #4).

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHasher};

/// An argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$...`) for `password`.
///
/// # Errors
/// Only if the hasher rejects its input (e.g. a password over 4 GiB).
pub fn hash(password: &[u8]) -> Result<String, argon2::password_hash::Error> {
    // A 128-bit salt from the system RNG (aws-lc-rs, already in the build).
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| argon2::password_hash::Error::Crypto)?;
    let salt = SaltString::encode_b64(&bytes)?;
    Ok(Argon2::default()
        .hash_password(password, &salt)?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHash, PasswordVerifier};

    #[test]
    fn hashes_are_salted_argon2id_with_owasp_parameters() {
        let a = hash(b"correct horse").unwrap();
        let b = hash(b"correct horse").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{a}");
        let parsed = PasswordHash::new(&a).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }
}
