//! Rate limits shared by `[login]` (`login::ratelimit`) and the routes'
//! `rate_limit`: [`Rate`] (`"20/min"` in `gateway.toml`), and [`Keyed`], a
//! keyed GCRA limiter (`governor`) with a cap on its keys.
//!
//! `"5/min"` allows a burst of 5 and brings one cell back every 12 s.
//!
//! Keys: an IPv6 client is keyed by its /64 (anyone with one address owns
//! the whole /64); IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on
//! dual-stack listeners) are keyed as the IPv4 address ([`IpKey`]).
//!
//! Memory bound: governor's keyed limiters grow by one entry per key. A
//! [`Keyed`] holds at most `max_keys` keys ([`MAX_KEYS`] = 100,000 by
//! default, plus at most one per request racing at the cap). At the cap,
//! keys idle long enough to be indistinguishable from fresh ones are swept
//! (at most once a second). If the limiter is still full, a warning is
//! logged and either every request is refused with `Retry-After` = the
//! rate's period (logins: fail closed), or a key it does not hold is served
//! uncounted while the keys it holds stay limited (routes: the limit is per
//! key, and an attacker with that many addresses is not slowed by it
//! anyway; see [`CappedStore`]).
//! About 30-55 bytes per key (a 16-byte key, an 8-byte state and hash-table
//! slack, measured with a counting allocator): at most about 5 MB a limiter.
//! [`Keyed::sweep`] (every minute, from the server's housekeeping) gives the
//! memory of idle keys back.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroU64};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Default cap on the keys each limiter holds (see the module doc).
pub const MAX_KEYS: usize = 100_000;

/// At the key cap, sweep idle keys at most this often: a sweep walks every
/// key, and an attacker holding the limiter full must not make each request
/// pay for one.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Longest period honoured: governor panics on durations over ~584 years.
const MAX_PERIOD: Duration = Duration::from_secs(365 * 86_400);

/// `count` events per `per`, written `"20/min"` in `gateway.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

/// Refused: retry after this long. The `Retry-After` header is [`RetryAfter::secs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

/// Rate-limit key for a client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6Net(u64),
}

/// Rate-limit key for a name (a username, a token's subject): a 128-bit
/// keyed hash of it, so every key is 16 bytes however long the name, and
/// nobody can pick a name that collides with someone else's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct NameKey(u64, u64);

impl NameKey {
    /// `hasher` is random per limiter (`RandomState::new()`).
    pub(crate) fn of(hasher: &RandomState, name: &str) -> NameKey {
        let half = |tag: u8| {
            let mut h = hasher.build_hasher();
            h.write_u8(tag);
            h.write(name.as_bytes());
            h.finish()
        };
        NameKey(half(0), half(1))
    }
}

/// One keyed governor limiter with a cap on its keys.
pub(crate) struct Keyed<K: Hash + Eq + Clone, C: Clock> {
    pub(crate) limiter: RateLimiter<K, CappedStore<K>, C, StateInformationMiddleware>,
    /// One cell comes back every `interval`.
    pub(crate) interval: Duration,
    /// A full burst comes back in `period`: the `Retry-After` when full.
    pub(crate) period: Duration,
    max_keys: usize,
    /// Earliest next sweep at the cap, in nanoseconds since `epoch`.
    next_sweep: AtomicU64,
    /// Which limiter, for the log.
    name: String,
    /// At the key cap (after a sweep): `true` refuses every request, `false`
    /// serves a key it does not hold uncounted (see [`CappedStore`]).
    refuse_when_full: bool,
}

/// governor's DashMap state store with a cap on its keys. At `max` keys,
/// a key it does not hold is measured as a new one (allowed: a burst is at
/// least one) and not kept, while the keys it holds stay limited.
/// (governor's own store adds every key, and its states are opaque
/// outside the crate, hence this copy of its compare-and-swap loop.)
pub(crate) struct CappedStore<K> {
    /// Each key's theoretical arrival time (GCRA), in nanoseconds since the
    /// limiter's start; 0 for none.
    map: DashMap<K, AtomicU64>,
    max: usize,
    /// The keys in `map`, kept here: `DashMap::len` locks every shard, and
    /// every check asks.
    len: AtomicUsize,
}

impl<K: Hash + Eq + Clone> StateStore for CappedStore<K> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.map.get(key) {
            return measure(&state, f);
        }
        if self.len.load(Ordering::Relaxed) >= self.max {
            return f(None).map(|(outcome, _)| outcome);
        }
        match self.map.entry(key.clone()) {
            Entry::Occupied(held) => measure(held.get(), f),
            Entry::Vacant(new) => {
                self.len.fetch_add(1, Ordering::Relaxed);
                measure(&new.insert(AtomicU64::new(0)), f)
            }
        }
    }
}

/// governor's `InMemoryState::measure_and_replace_one`.
fn measure<T, E>(
    state: &AtomicU64,
    f: impl Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
) -> Result<T, E> {
    let mut prev = state.load(Ordering::Acquire);
    let mut decision = f(NonZeroU64::new(prev).map(|n| n.get().into()));
    while let Ok((outcome, next)) = decision {
        match state.compare_exchange_weak(prev, next.into(), Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Ok(outcome),
            Err(now_there) => prev = now_there,
        }
        decision = f(NonZeroU64::new(prev).map(|n| n.get().into()));
    }
    decision.map(|(outcome, _)| outcome)
}

impl<K: Hash + Eq + Clone> ShrinkableKeyedStateStore<K> for CappedStore<K> {
    fn retain_recent(&self, drop_below: Nanos) {
        let drop_below = drop_below.as_u64();
        let mut dropped = 0;
        self.map.retain(|_, t| {
            let keep = t.load(Ordering::Relaxed) > drop_below;
            dropped += usize::from(!keep);
            keep
        });
        self.len.fetch_sub(dropped, Ordering::Relaxed);
    }

    fn shrink_to_fit(&self) {
        self.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// === impl Rate ===

impl Rate {
    /// Parses `"N/s"`, `"N/sec"`, `"N/second"`, `"N/min"`, `"N/minute"`,
    /// `"N/h"` or `"N/hour"` with N ≥ 1; whitespace around it is ignored.
    ///
    /// # Errors
    /// A message for a config diagnostic, naming the expected form.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let s = s.trim();
        let Some((num, unit)) = s.split_once('/') else {
            return Err(format!("`{s}` is not a rate like \"20/min\""));
        };
        let (num, unit) = (num.trim(), unit.trim());
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "rate `{s}` must start with a whole number (e.g. \"20/min\")"
            ));
        }
        let count = match num.parse::<u32>() {
            Ok(n) => NonZeroU32::new(n).ok_or_else(|| format!("rate `{s}` must be at least 1"))?,
            Err(_) => return Err(format!("rate `{s}` is too large")),
        };
        let per = match unit {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => {
                return Err(format!(
                    "rate `{s}` has unknown unit `{unit}`: use s, min or h (e.g. \"20/min\")"
                ));
            }
        };
        Ok(Rate { count, per })
    }

    /// The time one event's allowance takes to come back: `per / count`.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }

    pub(crate) fn quota(self) -> Quota {
        let interval = (self.per.min(MAX_PERIOD) / self.count.get()).max(Duration::from_nanos(1));
        // `with_period` is `None` only for a zero interval, ruled out above.
        Quota::with_period(interval)
            .unwrap_or(Quota::per_second(self.count))
            .allow_burst(self.count)
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        Rate::parse(s)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match (self.per.as_secs(), self.per.subsec_nanos()) {
            (1, 0) => "s",
            (60, 0) => "min",
            (3600, 0) => "h",
            // Only reachable by building a `Rate` by hand.
            _ => return write!(f, "{}/{:?}", self.count, self.per),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

// === impl RetryAfter ===

impl RetryAfter {
    /// Whole seconds, rounded up, at least 1 (`Retry-After: 0` would invite
    /// an immediate retry).
    pub fn secs(&self) -> u64 {
        let d = self.0;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            // The shift leaves 64 significant bits: the cast is lossless.
            IpAddr::V6(v6) => IpKey::V6Net((u128::from(v6) >> 64) as u64),
        }
    }
}

// === impl Keyed ===

impl<K: Hash + Eq + Clone, C: Clock> Keyed<K, C> {
    pub(crate) fn new(
        name: String,
        quota: Quota,
        max_keys: usize,
        refuse_when_full: bool,
        clock: C,
    ) -> Self {
        let store = CappedStore {
            map: DashMap::new(),
            max: max_keys,
            len: AtomicUsize::new(0),
        };
        Keyed {
            limiter: RateLimiter::new(quota, store, clock),
            interval: quota.replenish_interval(),
            period: quota.burst_size_replenished_in(),
            max_keys,
            next_sweep: AtomicU64::new(0),
            name,
            refuse_when_full,
        }
    }

    /// Consumes one cell for `key`. `now` is the time since the epoch.
    ///
    /// # Errors
    /// `key` is over its rate, or the limiter is full and refuses.
    pub(crate) fn check(&self, key: &K, now: Duration) -> Result<StateSnapshot, RetryAfter> {
        // At the cap, sweeps first.
        if !self.has_room(now) && self.refuse_when_full {
            return Err(RetryAfter(self.period));
        }
        self.limiter
            .check_key(key)
            .map_err(|not| RetryAfter(not.wait_time_from(self.limiter.clock().now())))
    }

    /// Whether a key may be added, sweeping idle keys first at the cap.
    ///
    /// `len` and the insert in `check_key` are not atomic: requests racing
    /// at the cap may each add one key over it.
    pub(crate) fn has_room(&self, now: Duration) -> bool {
        if self.limiter.len() < self.max_keys {
            return true;
        }
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let due = self.next_sweep.load(Ordering::Relaxed);
        let next = now.saturating_add(SWEEP_EVERY.as_nanos() as u64);
        // One caller sweeps; the others see the cap as it is.
        if now >= due
            && self
                .next_sweep
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep();
            let keys = self.limiter.len();
            if keys >= self.max_keys {
                let what = match self.refuse_when_full {
                    true => "refusing every request until keys age out",
                    false => "not counting new keys until they age out",
                };
                tracing::warn!(limiter = %self.name, keys, "rate limiter full of recent keys: {what}");
            }
        }
        self.limiter.len() < self.max_keys
    }

    pub(crate) fn sweep(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

/// What a route's `rate_limit` counts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitBy {
    /// The client address (as `X-Forwarded-For` is read from trusted
    /// proxies; IPv6 by /64), before the token is checked.
    Ip,
    /// The verified token's subject (with its issuer), after the token is
    /// checked; a request without a token counts by its address.
    Subject,
}

/// A route's `rate_limit = { rate, per }`: requests over `rate` are 429.
/// Each route counts apart; a reload starts the counts again.
pub struct RouteLimit {
    pub by: LimitBy,
    ips: Keyed<IpKey, DefaultClock>,
    subjects: Keyed<NameKey, DefaultClock>,
    hasher: RandomState,
    clock: DefaultClock,
    epoch: <DefaultClock as Clock>::Instant,
}

impl RouteLimit {
    /// The limit of the route named `route` (for the log).
    pub fn new(route: &str, rate: Rate, by: LimitBy) -> RouteLimit {
        let clock = DefaultClock::default();
        // Full of recent keys: serve a new one uncounted (see the module doc).
        let (quota, refuse_when_full) = (rate.quota(), false);
        let name = |what: &str| format!("route {route} per {what}");
        RouteLimit {
            by,
            ips: Keyed::new(name("ip"), quota, MAX_KEYS, refuse_when_full, clock.clone()),
            subjects: Keyed::new(
                name("subject"),
                quota,
                MAX_KEYS,
                refuse_when_full,
                clock.clone(),
            ),
            hasher: RandomState::new(),
            epoch: clock.now(),
            clock,
        }
    }

    /// Counts a request from `ip`.
    ///
    /// # Errors
    /// The address (or its IPv6 /64) is over the rate.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.ips.check(&IpKey::from(ip), self.now()).map(drop)
    }

    /// Counts a request with a token of `subject` (issuer-qualified).
    ///
    /// # Errors
    /// The subject is over the rate.
    pub fn check_subject(&self, subject: &str) -> Result<(), RetryAfter> {
        let key = NameKey::of(&self.hasher, subject);
        self.subjects.check(&key, self.now()).map(drop)
    }

    /// Forgets idle keys (the server's housekeeping, every minute).
    pub fn sweep(&self) {
        self.ips.sweep();
        self.subjects.sweep();
    }

    fn now(&self) -> Duration {
        self.clock.now().duration_since(self.epoch).into()
    }
}

impl fmt::Debug for RouteLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteLimit")
            .field("by", &self.by)
            .field("ip_keys", &self.ips.limiter.len())
            .field("subject_keys", &self.subjects.limiter.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).expect("test rates parse")
    }

    #[test]
    fn parses_every_unit() {
        for (s, count, secs) in [
            ("1/s", 1, 1),
            ("3/sec", 3, 1),
            ("3/second", 3, 1),
            ("20/min", 20, 60),
            ("5/minute", 5, 60),
            ("100/h", 100, 3600),
            ("100/hour", 100, 3600),
            ("  20/min\n", 20, 60),
            ("20 / min", 20, 60),
        ] {
            let want = Rate {
                count: NonZeroU32::new(count).expect("nonzero"),
                per: Duration::from_secs(secs),
            };
            assert_eq!(Rate::parse(s), Ok(want), "{s:?}");
        }
    }

    #[test]
    fn rejects_bad_rates_with_a_diagnostic() {
        assert_eq!(
            Rate::parse("abc"),
            Err("`abc` is not a rate like \"20/min\"".to_string())
        );
        for bad in [
            "",
            "20",
            "/min",
            "20/",
            "0/min",
            "-1/min",
            "+1/min",
            "1.5/s",
            "20/day",
            "20/m",
            "20/MIN",
            "20/min/s",
            "99999999999/s",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} should be refused");
        }
        let unit = Rate::parse("20/day").expect_err("unknown unit");
        assert!(unit.contains("unknown unit `day`"), "{unit}");
        let zero = Rate::parse("0/min").expect_err("zero");
        assert!(zero.contains("at least 1"), "{zero}");
    }

    #[test]
    fn displays_in_the_form_it_parses() {
        for s in ["20/min", "1/s", "3/h"] {
            assert_eq!(rate(s).to_string(), s);
        }
        assert_eq!(rate("5/minute").to_string(), "5/min");
        assert_eq!(rate(" 7/second ").to_string().parse(), Ok(rate("7/s")));
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_secs(2)).secs(), 2);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).secs(), 3);
    }

    #[test]
    fn a_full_limiter_serves_or_refuses_new_keys_as_told() {
        use governor::clock::FakeRelativeClock;
        let now = Duration::ZERO;
        for refuse in [false, true] {
            let clock = FakeRelativeClock::default();
            let k = Keyed::new("test".into(), rate("1/min").quota(), 2, refuse, clock);
            for key in [1u32, 2] {
                assert!(k.check(&key, now).is_ok());
            }
            // Both keys are recent: the sweep cannot make room for a third.
            let third = k.check(&3u32, now);
            match refuse {
                false => assert!(third.is_ok(), "{third:?}"),
                true => assert_eq!(third.err(), Some(RetryAfter(Duration::from_secs(60)))),
            }
            // A known key is still limited either way, and the new one
            // was not kept.
            assert!(k.check(&1u32, now).is_err());
            assert_eq!(k.limiter.len(), 2);
        }
    }
}
