//! The verified-claims cache: keyed digest of the token -> `Arc<VerifiedClaims>`.
//!
//! The key is a 128-bit digest of the token, not the token: 16 bytes an
//! entry instead of the token's 300 to 900 (an RS256 signature alone is 342
//! characters), which is what keeps 20,000 cached RS256 tokens under 64 MiB.
//! The digest is SipHash-1-3 with 128-bit output under a secret key drawn
//! from the system RNG at start and never revealed: SipHash is a PRF, so a forged
//! token matches a cached entry's key with probability about 2^-128 per
//! entry, and an attacker cannot see digests to search for one. SHA-256
//! would also do, but it cost about 10k instructions a request more
//! (39.3k -> 49.7k Ir/req on a hit, under callgrind, whose virtual CPU
//! lacks the SHA extensions this one has: less in real time, still more
//! than SipHash); this costs under 1k.
//!
//! A hit skips the signature check and all JSON work. Only successfully
//! verified tokens are inserted; each entry expires at its token's `exp` or
//! after `[cache] max_ttl`, whichever comes first (moka's per-entry expiry),
//! and the whole cache holds at most `max_entries`.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;
use siphasher::sip128::SipHasher13;

use super::VerifiedClaims;

/// Cloning is an `Arc` bump (moka caches are shared handles).
#[derive(Clone)]
pub struct ClaimsCache {
    inner: Cache<Key, Arc<VerifiedClaims>, KeyHash>,
    /// The keyed hash behind [`Key`] (its key is secret, drawn at start).
    digest: SipHasher13,
}

/// A cache key: a 128-bit keyed digest of a token (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(u64, u64);

/// A key is its own hash: its words are already the output of a keyed PRF,
/// uniform and unknown to clients (so no one can aim tokens at one bucket).
/// Hashing them again with moka's default SipHash cost about 200
/// instructions a lookup.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0);
    }
}

/// The hasher moka's map uses for [`Key`]s: see `impl Hash for Key`.
#[derive(Clone, Copy, Default)]
struct KeyHash;

impl BuildHasher for KeyHash {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}

struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, word: u64) {
        self.0 ^= word;
    }

    /// Only `write_u64` is used for a `Key`; anything else is folded in
    /// (FNV-1a) rather than dropped.
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
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
            .build_with_hasher(KeyHash);
        let mut secret = [0u8; 16];
        aws_lc_rs::rand::fill(&mut secret).expect("the system RNG is available");
        let (k0, k1) = secret.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        ClaimsCache {
            inner,
            digest: SipHasher13::new_with_keys(word(k0), word(k1)),
        }
    }

    /// The key `token` is cached under.
    pub fn key(&self, token: &[u8]) -> Key {
        let h = self.digest.hash(token);
        Key(h.h1, h.h2)
    }

    /// The cached claims of `token`, if it was verified and has not expired.
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedClaims>> {
        self.get_key(&self.key(token.as_bytes()))
    }

    /// Like [`ClaimsCache::get`], with the digest computed once by the caller.
    pub fn get_key(&self, key: &Key) -> Option<Arc<VerifiedClaims>> {
        let hit = self.inner.get(key)?;
        // moka expires entries on its own clock; never serve one past `exp`.
        (left(hit.exp()) > Duration::ZERO).then_some(hit)
    }

    /// Remembers a token that passed verification.
    pub fn insert(&self, token: &str, claims: Arc<VerifiedClaims>) {
        self.insert_key(self.key(token.as_bytes()), claims);
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
