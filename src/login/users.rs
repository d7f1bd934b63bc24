//! `users.toml`: usernames, password hashes, and what tokens say about each
//! user. Every hash is parsed when the file is loaded, so `check` catches a
//! truncated or foreign hash before a user cannot log in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use argon2::{Argon2, PasswordVerifier};
use serde::Deserialize;
use serde_json::{Map, Value};
use toml::Spanned;

use super::Account;
use crate::config::{Diag, Loc};

/// A verified password hash.
#[derive(Debug)]
pub enum PasswordHash {
    /// An argon2 PHC string (argon2id; its own parameters are used).
    Argon2(String),
    /// A bcrypt hash (`$2a$`, `$2b$`, `$2y$`), for users migrated from
    /// existing apps (passlib, Django, Laravel).
    Bcrypt(String),
}

impl PasswordHash {
    /// Parses `s`, or says why it cannot be used.
    pub fn parse(s: &str) -> Result<PasswordHash, String> {
        if s.starts_with("$2a$") || s.starts_with("$2b$") || s.starts_with("$2y$") {
            // bcrypt::verify parses the same way; a bad hash fails here, not at login.
            return s
                .parse::<bcrypt::HashParts>()
                .map(|_| PasswordHash::Bcrypt(s.to_string()))
                .map_err(|e| format!("not a valid bcrypt hash: {e}"));
        }
        let parsed = argon2::PasswordHash::new(s)
            .map_err(|e| format!("not an argon2id PHC string or a bcrypt hash: {e}"))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(format!(
                "`{}` hashes are not accepted: use argon2id (`gatehouse hash-password`) or bcrypt",
                parsed.algorithm
            ));
        }
        if parsed.salt.is_none() || parsed.hash.is_none() {
            return Err("an argon2id PHC string without its salt or hash".into());
        }
        argon2::Params::try_from(&parsed)
            .map(|_| PasswordHash::Argon2(s.to_string()))
            .map_err(|e| format!("an argon2id hash with unusable parameters: {e}"))
    }

    /// The hash an unknown username is checked against: argon2id with the
    /// parameters `gatehouse hash-password` uses, of a random password.
    pub fn dummy() -> PasswordHash {
        let mut secret = [0u8; 24];
        // If the RNG failed, an all-zero "password" still costs the same time.
        let _ = aws_lc_rs::rand::fill(&mut secret);
        let phc = crate::auth::password::hash(&secret).unwrap_or_default();
        PasswordHash::Argon2(phc)
    }

    /// What decides how long a check takes: the algorithm and its cost
    /// parameters (`argon2id$v=19$m=19456,t=2,p=1`, `$2b$12`).
    pub fn cost_class(&self) -> &str {
        match self {
            // `$argon2id$v=19$m=...,t=...,p=...$salt$hash`: up to the salt.
            PasswordHash::Argon2(phc) => phc
                .match_indices('$')
                .nth(3)
                .map_or(phc, |(i, _)| &phc[..i]),
            // `$2b$12$...`: prefix and cost.
            PasswordHash::Bcrypt(h) => h.get(..6).unwrap_or(h),
        }
    }

    /// Whether `password` matches. Slow on purpose: call it off the async workers.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2(phc) => argon2::PasswordHash::new(phc)
                .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok()),
            PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        }
    }
}

/// One `[[users]]` entry.
#[derive(Debug)]
pub struct User {
    pub password_hash: Arc<PasswordHash>,
    pub subject: String,
    pub roles: Vec<String>,
    pub claims: Map<String, Value>,
}

impl User {
    pub fn account(&self) -> Account {
        Account {
            subject: self.subject.clone(),
            roles: self.roles.clone(),
            claims: self.claims.clone(),
        }
    }
}

/// Every user, by username.
#[derive(Debug, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// subject -> username, for refresh (tokens carry the subject).
    by_subject: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUsers {
    #[serde(default)]
    users: Vec<Spanned<RawUser>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: Spanned<String>,
    password_hash: Spanned<String>,
    subject: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    claims: toml::Table,
}

impl Users {
    /// Reads and checks the users file at `path`.
    ///
    /// # Errors
    /// Every problem found, as `FILE:LINE:COL: message` diagnostics.
    pub fn load(path: &Path) -> Result<Users, Vec<Diag>> {
        let at = |src: &str, offset: usize, message: String| Diag {
            file: path.to_path_buf(),
            loc: Loc::of(src, offset),
            message,
        };
        let src = std::fs::read_to_string(path)
            .map_err(|e| vec![at("", 0, format!("cannot read the users file: {e}"))])?;
        let raw: RawUsers = toml::from_str(&src).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            vec![at(&src, offset, e.message().trim_end().to_string())]
        })?;
        let mut errors = Vec::new();
        let mut by_name = HashMap::new();
        for entry in raw.users {
            let u = entry.into_inner();
            let name = u.username.get_ref().clone();
            if name.is_empty() {
                errors.push(at(&src, u.username.span().start, "empty username".into()));
                continue;
            }
            let hash = match PasswordHash::parse(u.password_hash.get_ref()) {
                Ok(h) => h,
                Err(e) => {
                    let msg = format!("user `{name}`: password_hash is {e}");
                    errors.push(at(&src, u.password_hash.span().start, msg));
                    continue;
                }
            };
            let claims = match serde_json::to_value(&u.claims) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            let user = User {
                password_hash: Arc::new(hash),
                subject: u.subject.unwrap_or_else(|| name.clone()),
                roles: u.roles,
                claims,
            };
            if by_name.insert(name.clone(), user).is_some() {
                errors.push(at(
                    &src,
                    u.username.span().start,
                    format!("duplicate user `{name}`"),
                ));
            }
        }
        let by_subject = by_name
            .iter()
            .map(|(name, u)| (u.subject.clone(), name.clone()))
            .collect();
        if errors.is_empty() {
            Ok(Users {
                by_name,
                by_subject,
            })
        } else {
            Err(errors)
        }
    }

    pub fn get(&self, username: &str) -> Option<&User> {
        self.by_name.get(username)
    }

    /// The user with this `subject` (`sub`).
    pub fn by_subject(&self, subject: &str) -> Option<&User> {
        self.by_subject
            .get(subject)
            .and_then(|name| self.by_name.get(name))
    }

    /// One hash of each cost class in the file (see [`PasswordHash::cost_class`]).
    pub fn cost_classes(&self) -> Vec<Arc<PasswordHash>> {
        let mut seen = HashMap::new();
        for u in self.by_name.values() {
            seen.entry(u.password_hash.cost_class().to_string())
                .or_insert_with(|| Arc::clone(&u.password_hash));
        }
        seen.into_values().collect()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_and_bcrypt_hashes_verify() {
        let phc = crate::auth::password::hash(b"pw").unwrap();
        let h = PasswordHash::parse(&phc).unwrap();
        assert!(h.verify(b"pw"));
        assert!(!h.verify(b"nope"));
        let b = bcrypt::hash("pw", 4).unwrap();
        for prefix in ["$2b$", "$2y$", "$2a$"] {
            let h = PasswordHash::parse(&b.replacen("$2b$", prefix, 1)).unwrap();
            assert!(h.verify(b"pw"), "{prefix}");
            assert!(!h.verify(b"nope"));
        }
    }

    #[test]
    fn cost_classes_name_the_algorithm_and_its_parameters() {
        let a = PasswordHash::parse(&crate::auth::password::hash(b"pw").unwrap()).unwrap();
        assert_eq!(a.cost_class(), "$argon2id$v=19$m=19456,t=2,p=1");
        let b = PasswordHash::parse(&bcrypt::hash("pw", 4).unwrap()).unwrap();
        assert_eq!(b.cost_class(), "$2b$04");
    }

    #[test]
    fn foreign_or_broken_hashes_are_refused() {
        for bad in [
            "plaintext",
            "$2b$04$short",
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
            "$argon2id$v=19$m=19456,t=2,p=1$$",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_users_file_error_points_at_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        std::fs::write(
            &path,
            "[[users]]\nusername = \"a\"\npassword_hash = \"nope\"\n",
        )
        .unwrap();
        let errors = Users::load(&path).unwrap_err();
        assert_eq!(errors[0].loc, Loc { line: 3, col: 17 });
        assert!(errors[0].message.contains("user `a`"));
    }
}
