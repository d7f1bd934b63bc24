//! The verified-claims cache: SHA-256(token) -> `Arc<VerifiedClaims>`.
//!
//! The key is the token's digest, not the token: 32 bytes an entry instead
//! of the token's 300 to 900 (RS256 signatures alone are 342 characters),
//! which is what keeps 20,000 cached RS256 tokens under 64 MiB. SHA-256 is
//! collision resistant, so no forged token can share an entry with a
//! verified one; the digest costs well under a microsecond a request.
//!
//! A hit skips the signature check and all JSON work. Only successfully
//! verified tokens are inserted; each entry expires at its token's `exp` or
//! after `[cache] max_ttl`, whichever comes first (moka's per-entry expiry),
//! and the whole cache holds at most `max_entries`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;

use super::VerifiedClaims;

/// Cloning is an `Arc` bump (moka caches are shared handles).
#[derive(Clone)]
pub struct ClaimsCache {
    inner: Cache<Key, Arc<VerifiedClaims>>,
}

/// A cache key: the SHA-256 digest of a token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub fn of(token: &str) -> Key {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        Key(key)
    }
}

struct UntilExp {
    max_ttl: Duration,
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Time left before `exp` (seconds since the epoch).
fn left(exp: u64) -> Duration {
    Duration::from_secs(exp).saturating_sub(now())
}

impl Expiry<Key, Arc<VerifiedClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Key,
        claims: &Arc<VerifiedClaims>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(left(claims.exp()).min(self.max_ttl))
    }
}

impl ClaimsCache {
    pub fn new(max_entries: u64, max_ttl: Duration) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_entries)
            .expire_after(UntilExp { max_ttl })
            .build();
        ClaimsCache { inner }
    }

    /// The cached claims of `token`, if it was verified and has not expired.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedClaims>> {
        self.get_key(&Key::of(token))
    }

    /// Like [`ClaimsCache::get`], with the digest computed once by the caller.
    pub fn get_key(&self, key: &Key) -> Option<Arc<VerifiedClaims>> {
        let hit = self.inner.get(key)?;
        // moka expires entries on its own clock; never serve one past `exp`.
        (left(hit.exp()) > Duration::ZERO).then_some(hit)
    }

    /// Remembers a token that passed verification.
    pub fn insert(&self, token: &str, claims: Arc<VerifiedClaims>) {
        self.insert_key(Key::of(token), claims);
    }

    /// Like [`ClaimsCache::insert`], with the digest computed once by the caller.
    pub fn insert_key(&self, key: Key, claims: Arc<VerifiedClaims>) {
        if left(claims.exp()) > Duration::ZERO {
            self.inner.insert(key, claims);
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}
