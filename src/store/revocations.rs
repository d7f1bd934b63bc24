//! The in-memory revocation set the proxy path checks after every cache
//! hit: revoked access-token `jti`s, revoked families (access tokens carry
//! their family in the `jti`), and per-subject cutoffs (logout-all).
//!
//! It is loaded from the store at start-up and updated only after the store
//! has committed a revocation, so it never knows less than the store. With
//! nothing revoked the check is one atomic load; otherwise a read lock and
//! up to three hash lookups.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use super::Revocation;

#[derive(Default)]
pub struct Revocations {
    /// False while every map is empty: the common case costs no lock.
    any: AtomicBool,
    sets: RwLock<Sets>,
}

#[derive(Default)]
struct Sets {
    /// jti -> until
    jtis: HashMap<Box<str>, u64>,
    /// family id -> until
    families: HashMap<Box<str>, u64>,
    /// subject -> (cutoff, until)
    subjects: HashMap<Box<str>, (u64, u64)>,
}

/// The name a revocation is kept under: a `sub` (logout-all) or `jti` of
/// one issuer, so a token of another issuer that happens to carry the same
/// value can neither set nor trip it. (`{len(iss)}:{iss}{value}`.)
pub fn issuer_scoped(issuer: Option<&str>, value: &str) -> String {
    use std::fmt::Write;
    let issuer = issuer.unwrap_or("");
    // Built by hand: `format!` cost about 1k instructions a call, twice per
    // verified token.
    let mut scoped = String::with_capacity(4 + issuer.len() + value.len());
    let _ = write!(scoped, "{}", issuer.len());
    scoped.push(':');
    scoped.push_str(issuer);
    scoped.push_str(value);
    scoped
}

/// What the check needs to know about a token.
#[derive(Clone, Copy, Debug)]
pub struct TokenRef<'a> {
    pub jti: Option<&'a str>,
    pub family: Option<&'a str>,
    /// See [`issuer_scoped`].
    pub subject: Option<&'a str>,
    pub iat: Option<u64>,
}

impl Revocations {
    /// Why the token is refused, if it is (the proxy path, after the cache).
    pub fn check(&self, t: TokenRef<'_>) -> Result<(), &'static str> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_at(t, crate::auth::issue::now())
    }

    /// Like [`Revocations::check`], at `now` (seconds since the epoch).
    pub fn check_at(&self, t: TokenRef<'_>, now: u64) -> Result<(), &'static str> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        let live = |until: Option<&u64>| until.is_some_and(|u| *u > now);
        if t.jti.is_some_and(|j| live(sets.jtis.get(j))) {
            return Err("token revoked");
        }
        if t.family.is_some_and(|f| live(sets.families.get(f))) {
            return Err("token revoked");
        }
        if let Some(&(cutoff, until)) = t.subject.and_then(|s| sets.subjects.get(s)) {
            // A token without `iat` cannot show it came after the cutoff.
            if until > now && t.iat.is_none_or(|iat| iat <= cutoff) {
                return Err("token revoked (logged out everywhere)");
            }
        }
        Ok(())
    }

    /// The logout-all cutoff of a [`issuer_scoped`], if one is in force.
    pub fn subject_cutoff(&self, subject: &str, now: u64) -> Option<u64> {
        let sets = self.sets.read().unwrap_or_else(|p| p.into_inner());
        sets.subjects
            .get(subject)
            .filter(|(_, until)| *until > now)
            .map(|(cutoff, _)| *cutoff)
    }

    /// Adds a revocation the store has committed.
    pub fn add(&self, r: Revocation) {
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let later = |slot: &mut u64, until: u64| *slot = (*slot).max(until);
        match r {
            Revocation::Jti { jti, until } => {
                later(sets.jtis.entry(jti.into()).or_default(), until);
            }
            Revocation::Family { id, until } => {
                later(sets.families.entry(id.into()).or_default(), until);
            }
            Revocation::Subject {
                subject,
                cutoff,
                until,
            } => {
                let slot = sets.subjects.entry(subject.into()).or_default();
                *slot = (slot.0.max(cutoff), slot.1.max(until));
            }
        }
        self.any.store(true, Ordering::Release);
    }

    /// Forgets revocations whose tokens have all expired; returns how many.
    pub fn prune(&self, now: u64) -> usize {
        let mut sets = self.sets.write().unwrap_or_else(|p| p.into_inner());
        let before = sets.len();
        sets.jtis.retain(|_, until| *until > now);
        sets.families.retain(|_, until| *until > now);
        sets.subjects.retain(|_, (_, until)| *until > now);
        let after = sets.len();
        self.any.store(after > 0, Ordering::Release);
        before - after
    }

    pub fn len(&self) -> usize {
        self.sets.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sets {
    fn len(&self) -> usize {
        self.jtis.len() + self.families.len() + self.subjects.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token<'a>(jti: &'a str, fam: Option<&'a str>, sub: &'a str, iat: u64) -> TokenRef<'a> {
        TokenRef {
            jti: Some(jti),
            family: fam,
            subject: Some(sub),
            iat: Some(iat),
        }
    }

    #[test]
    fn issuer_scoped_names_keep_their_stored_spelling() {
        // Stored durably: the spelling must never change.
        assert_eq!(issuer_scoped(Some("https://idp"), "42"), "11:https://idp42");
        assert_eq!(issuer_scoped(None, "j"), "0:j");
        // The length prefix keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            issuer_scoped(Some("ab"), "c"),
            issuer_scoped(Some("a"), "bc")
        );
    }

    #[test]
    fn jti_family_and_subject_revocations_refuse_until_they_expire() {
        let r = Revocations::default();
        assert!(r.check_at(token("a", None, "s", 10), 100).is_ok());
        r.add(Revocation::Jti {
            jti: "a".into(),
            until: 200,
        });
        r.add(Revocation::Family {
            id: "f".into(),
            until: 200,
        });
        assert!(r.check_at(token("a", None, "s", 10), 100).is_err());
        assert!(r.check_at(token("b", Some("f"), "s", 10), 100).is_err());
        assert!(r.check_at(token("b", Some("g"), "s", 10), 100).is_ok());
        assert!(
            r.check_at(token("a", None, "s", 10), 200).is_ok(),
            "expired"
        );
        assert_eq!(r.prune(200), 2);
        assert!(r.is_empty());
    }

    #[test]
    fn a_subject_cutoff_refuses_tokens_issued_at_or_before_it() {
        let r = Revocations::default();
        r.add(Revocation::Subject {
            subject: "s".into(),
            cutoff: 50,
            until: 500,
        });
        assert!(r.check_at(token("x", None, "s", 50), 100).is_err());
        assert!(r.check_at(token("x", None, "s", 51), 100).is_ok());
        assert!(r.check_at(token("x", None, "t", 10), 100).is_ok());
        let no_iat = TokenRef {
            iat: None,
            ..token("x", None, "s", 0)
        };
        assert!(r.check_at(no_iat, 100).is_err());
        // A later cutoff wins; an earlier one never lowers it.
        r.add(Revocation::Subject {
            subject: "s".into(),
            cutoff: 40,
            until: 500,
        });
        assert_eq!(r.subject_cutoff("s", 100), Some(50));
    }
}
