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
//!
//! In front of it, each client connection remembers the last token it
//! presented and what that verified to ([`LastToken`]). A connection
//! nearly always carries one caller's token, request after request; the
//! token compared in constant time with the one remembered answers those
//! requests without the digest (SipHash over the whole token) or moka:
//! a cache hit went from 1.7k to about 0.3k instructions (callgrind). A
//! connection whose tokens change (a proxy in front multiplexing callers)
//! pays one comparison and a copy of the token per request on top of the
//! cache lookup.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::sync::Cache;
use siphasher::sip128::SipHasher13;

use super::VerifiedClaims;

pub struct ClaimsCache {
    inner: Cache<Key, Arc<VerifiedClaims>, KeyHash>,
    /// The keyed hash behind [`Key`] (its key is secret, drawn at start).
    digest: SipHasher13,
    /// Tells this cache (so this snapshot's keys and rules) from every
    /// other, and from itself before [`ClaimsCache::clear`]: a
    /// [`LastToken`] remembered under another id is not used.
    id: AtomicU64,
    max_ttl: Duration,
}

/// The last token one client connection presented, with its verified
/// claims (see the module docs).
#[derive(Default)]
pub struct LastToken(Mutex<Option<Last>>);

struct Last {
    /// The [`ClaimsCache::id`] it was verified under.
    cache: u64,
    token: Vec<u8>,
    claims: Arc<VerifiedClaims>,
}

/// Longer tokens are not remembered: each connection would hold a copy.
const LAST_TOKEN_MAX: usize = 4096;

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

/// Whether a cache may still serve `claims`: before `exp`, and before
/// `max_ttl` once sealed. Asked on every way in and out of the cache.
fn servable(claims: &VerifiedClaims) -> bool {
    left(claims.cached_until) > Duration::ZERO
}

impl Expiry<Key, Arc<VerifiedClaims>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Key,
        claims: &Arc<VerifiedClaims>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(left(claims.cached_until).min(self.max_ttl))
    }
}

/// A cache id no cache has had.
fn next_id() -> u64 {
    static IDS: AtomicU64 = AtomicU64::new(0);
    IDS.fetch_add(1, Ordering::Relaxed)
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
            id: AtomicU64::new(next_id()),
            max_ttl,
        }
    }

    /// Freshly verified claims, to be served from a cache until `exp` or
    /// `max_ttl` from now, whichever comes first.
    pub fn seal(&self, mut claims: VerifiedClaims) -> Arc<VerifiedClaims> {
        let ttl = now().saturating_add(self.max_ttl).as_secs();
        claims.cached_until = claims.exp.min(ttl);
        Arc::new(claims)
    }

    /// The claims `last` remembers, if `token` is the token remembered, under
    /// this cache, and still within its time.
    pub fn get_last(&self, last: &LastToken, token: &[u8]) -> Option<Arc<VerifiedClaims>> {
        let last = last.0.lock().unwrap_or_else(PoisonError::into_inner);
        let last = last.as_ref()?;
        let same = last.cache == self.id.load(Ordering::Acquire)
            && aws_lc_rs::constant_time::verify_slices_are_equal(&last.token, token).is_ok();
        (same && servable(&last.claims)).then(|| Arc::clone(&last.claims))
    }

    /// Which state of this cache a lookup saw: read it before verifying,
    /// and hand it to [`ClaimsCache::set_last`] and
    /// [`ClaimsCache::insert_key`] after, so that claims verified before a
    /// [`ClaimsCache::clear`] are not kept past it.
    pub fn epoch(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Empties the cache and makes every connection's [`LastToken`]
    /// stale: the keys behind what it holds have changed.
    pub fn clear(&self) {
        self.id.store(next_id(), Ordering::Release);
        self.inner.invalidate_all();
    }

    /// Remembers `token` and its `claims` in `last`, in place of what it
    /// held, as of `epoch` ([`ClaimsCache::epoch`] before verifying).
    pub fn set_last(
        &self,
        last: &LastToken,
        token: &[u8],
        claims: &Arc<VerifiedClaims>,
        epoch: u64,
    ) {
        if token.len() > LAST_TOKEN_MAX {
            return;
        }
        let mut last = last.0.lock().unwrap_or_else(PoisonError::into_inner);
        match &mut *last {
            // The buffer is reused: no allocation when tokens take turns.
            Some(l) => {
                l.cache = epoch;
                l.token.clear();
                l.token.extend_from_slice(token);
                l.claims = Arc::clone(claims);
            }
            None => {
                *last = Some(Last {
                    cache: epoch,
                    token: token.to_vec(),
                    claims: Arc::clone(claims),
                });
            }
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
        // moka expires entries on its own clock; never serve one past `exp`
        // (or `max_ttl`).
        servable(&hit).then_some(hit)
    }

    /// Remembers a token that passed verification, sealed
    /// ([`ClaimsCache::seal`]) so that `max_ttl` bounds it too.
    pub fn insert(&self, token: &str, claims: VerifiedClaims) -> Arc<VerifiedClaims> {
        let epoch = self.epoch();
        let claims = self.seal(claims);
        self.insert_key(self.key(token.as_bytes()), Arc::clone(&claims), epoch);
        claims
    }

    /// Like [`ClaimsCache::insert`], with the digest computed once by the
    /// caller, for claims verified as of `epoch` ([`ClaimsCache::epoch`]).
    pub fn insert_key(&self, key: Key, claims: Arc<VerifiedClaims>, epoch: u64) {
        if servable(&claims) {
            self.inner.insert(key, claims);
            // A clear since `epoch` may have missed this insert: undo it.
            if self.epoch() != epoch {
                self.inner.invalidate(&key);
            }
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.inner.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn claims(sub: &str, exp: u64) -> VerifiedClaims {
        VerifiedClaims::for_test(sub, exp)
    }

    fn in_an_hour() -> u64 {
        (now() + HOUR).as_secs()
    }

    #[test]
    fn sealing_bounds_the_claims_by_max_ttl() {
        let cache = ClaimsCache::new(10, Duration::from_secs(60));
        let sealed = cache.seal(claims("a", in_an_hour()));
        let ttl = Duration::from_secs(sealed.cached_until).saturating_sub(now());
        assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50));
        // A token expiring sooner keeps its `exp`.
        let soon = (now() + Duration::from_secs(5)).as_secs();
        assert_eq!(cache.seal(claims("b", soon)).cached_until, soon);
    }

    #[test]
    fn insert_seals_what_it_stores() {
        let cache = ClaimsCache::new(10, Duration::from_secs(60));
        let stored = cache.insert("token-a", claims("a", in_an_hour()));
        let ttl = Duration::from_secs(stored.cached_until).saturating_sub(now());
        assert!(ttl <= Duration::from_secs(60) && ttl > Duration::from_secs(50));
        let hit = cache.get("token-a").expect("cached");
        assert!(Arc::ptr_eq(&hit, &stored));
    }

    #[test]
    fn the_last_token_answers_only_for_itself() {
        let cache = ClaimsCache::new(10, HOUR);
        let last = LastToken::default();
        assert!(cache.get_last(&last, b"token-a").is_none());
        let a = cache.seal(claims("a", in_an_hour()));
        cache.set_last(&last, b"token-a", &a, cache.epoch());
        let hit = cache.get_last(&last, b"token-a").expect("remembered");
        assert_eq!(hit.subject(), Some("a"));
        // Same length, one byte off; a prefix; a longer token.
        assert!(cache.get_last(&last, b"token-b").is_none());
        assert!(cache.get_last(&last, b"token-").is_none());
        assert!(cache.get_last(&last, b"token-aa").is_none());
        // A new token takes the place of the old one.
        let b = cache.seal(claims("b", in_an_hour()));
        cache.set_last(&last, b"token-b", &b, cache.epoch());
        assert!(cache.get_last(&last, b"token-a").is_none());
        assert_eq!(
            cache.get_last(&last, b"token-b").unwrap().subject(),
            Some("b")
        );
    }

    #[test]
    fn the_last_token_is_not_served_by_another_cache_or_past_its_time() {
        let old = ClaimsCache::new(10, HOUR);
        let last = LastToken::default();
        let a = old.seal(claims("a", in_an_hour()));
        old.set_last(&last, b"token-a", &a, old.epoch());
        // After a reload: a new snapshot, a new cache, new keys maybe.
        let new = ClaimsCache::new(10, HOUR);
        assert!(new.get_last(&last, b"token-a").is_none());
        assert!(old.get_last(&last, b"token-a").is_some());
        // Expired since it was remembered.
        let gone = Arc::new(claims("g", (now() - Duration::from_secs(1)).as_secs()));
        old.set_last(&last, b"token-g", &gone, old.epoch());
        assert!(old.get_last(&last, b"token-g").is_none());
    }

    #[test]
    fn clear_forgets_entries_remembered_tokens_and_inserts_verified_before_it() {
        let cache = ClaimsCache::new(10, HOUR);
        let last = LastToken::default();
        let a = cache.insert("token-a", claims("a", in_an_hour()));
        cache.set_last(&last, b"token-a", &a, cache.epoch());
        let before = cache.epoch();
        cache.clear();
        assert!(cache.get("token-a").is_none());
        assert!(cache.get_last(&last, b"token-a").is_none());
        // Verified before the clear, stored after it: neither is kept.
        let b = cache.seal(claims("b", in_an_hour()));
        cache.insert_key(cache.key(b"token-b"), Arc::clone(&b), before);
        cache.set_last(&last, b"token-b", &b, before);
        assert!(cache.get("token-b").is_none());
        assert!(cache.get_last(&last, b"token-b").is_none());
        // Verified after it: kept.
        cache.insert_key(cache.key(b"token-b"), Arc::clone(&b), cache.epoch());
        cache.set_last(&last, b"token-b", &b, cache.epoch());
        assert!(cache.get("token-b").is_some());
        assert!(cache.get_last(&last, b"token-b").is_some());
    }

    #[test]
    fn a_token_too_long_to_keep_is_not_remembered() {
        let cache = ClaimsCache::new(10, HOUR);
        let last = LastToken::default();
        let long = vec![b'a'; LAST_TOKEN_MAX + 1];
        cache.set_last(
            &last,
            &long,
            &cache.seal(claims("a", in_an_hour())),
            cache.epoch(),
        );
        assert!(cache.get_last(&last, &long).is_none());
    }
}
