//! The verified-claims cache: token -> `Arc<VerifiedClaims>`.
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
    inner: Cache<Box<str>, Arc<VerifiedClaims>>,
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

impl Expiry<Box<str>, Arc<VerifiedClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _token: &Box<str>,
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
        let hit = self.inner.get(token)?;
        // moka expires entries on its own clock; never serve one past `exp`.
        (left(hit.exp()) > Duration::ZERO).then_some(hit)
    }

    /// Remembers a token that passed verification.
    pub fn insert(&self, token: &str, claims: Arc<VerifiedClaims>) {
        if left(claims.exp()) > Duration::ZERO {
            self.inner.insert(token.into(), claims);
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}
