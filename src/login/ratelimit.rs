//! The `[login]` rate limits: `rate_limit_per_ip` counts every login attempt
//! per client address, `rate_limit_per_user` counts *failed* attempts per
//! username. Over either limit the answer is 429 with `Retry-After`.
//!
//! # Use in the login handler
//! 1. [`LoginLimits::check_ip`]: consumes one cell for the client address.
//! 2. [`LoginLimits::check_user`]: consumes nothing; refuses while the user is
//!    blocked, so a blocked user costs no password hashing.
//! 3. Check the password; on failure call [`LoginLimits::record_failure`].
//!
//! # Semantics
//! Both limits are GCRA buckets (`governor`): `"5/min"` allows a burst of 5
//! and brings one cell back every 12s. A failure consumes a cell; when that
//! leaves no burst capacity (or the cell was refused because concurrent
//! attempts got there first), the user is blocked. With `"5/min"`, exactly 5
//! failures are checked and the 6th attempt is refused unchecked; after the
//! block one more attempt is checked, and if it fails the user is blocked
//! again, so the steady state is the configured rate.
//!
//! A block lasts one replenish interval (12s at `"5/min"`). governor keeps
//! the exact time the next cell returns private after an *allowed* cell, so
//! the interval is an upper bound: a block may outlast the bucket by up to
//! one interval, never undercut it. When the cell was *refused*, governor
//! says exactly when to retry and the block uses that.
//!
//! Keys: an IPv6 client is keyed by its /64 (anyone with one address owns
//! the whole /64); IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, seen on
//! dual-stack listeners) are keyed as the IPv4 address. A username is keyed
//! by a 128-bit SipHash under a random per-instance key: every key is 16
//! bytes however long the name, and nobody can pick a name that collides
//! with someone else's to lock them out.
//!
//! # Memory bound
//! governor's keyed limiters grow by one entry per key. Each limiter holds at
//! most `max_keys` keys ([`MAX_KEYS`] = 100,000 by default, plus at most one
//! per request racing at the cap). At the cap, keys idle long enough to be
//! indistinguishable from fresh ones are swept (at most once a second); if
//! the limiter is still full, every login is refused with `Retry-After` =
//! the rate's period (fail closed) and a warning is logged. Blocked users
//! live in a `moka` cache capped at `max_keys` entries with a time-to-live of
//! the period. Blocked users are among the per-user limiter's keys (bar the
//! few failures recorded while that limiter was full), so the cache does not
//! reach its cap before the limiter does.
//!
//! Measured with a counting allocator: 30-55 bytes per key in each limiter
//! (a 16-byte key, an 8-byte state, and hash-table slack) and about 270
//! bytes per blocked user in moka. At the default cap that is at most about
//! 5 MB per limiter and 27 MB of blocked users (34 MB measured with all
//! three full), however many addresses or usernames an attacker tries.
//! [`LoginLimits::housekeeping`] (called every minute) sweeps idle keys and
//! gives their memory back.

use std::fmt;
use std::hash::RandomState;
use std::net::IpAddr;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use moka::policy::EvictionPolicy;

use crate::ratelimit::{IpKey, Keyed, NameKey};
pub use crate::ratelimit::{MAX_KEYS, Rate, RetryAfter};

/// The per-IP and per-user login limits. Shared by reference; every method
/// takes `&self`.
///
/// `C` is the clock; production uses governor's default (quanta), tests a
/// `FakeRelativeClock`.
pub struct LoginLimits<C: Clock = DefaultClock> {
    /// Every attempt, per client address (IPv6: per /64).
    per_ip: Keyed<IpKey, C>,
    /// Failed attempts, per username.
    per_user: Keyed<NameKey, C>,
    /// Blocked users -> blocked until (time since `epoch` on `clock`).
    /// Time-to-live = the per-user period, so entries go away on their own.
    blocked: moka::sync::Cache<NameKey, Duration>,
    /// Keys the username hash, so colliding names cannot be chosen.
    hasher: RandomState,
    clock: C,
    /// When this instance was built; times are kept as offsets from it.
    epoch: C::Instant,
}

// === impl LoginLimits ===

impl LoginLimits {
    /// Limits on the real clock, each limiter capped at [`MAX_KEYS`].
    pub fn new(per_ip: Rate, per_user: Rate) -> LoginLimits {
        LoginLimits::with_clock(per_ip, per_user, MAX_KEYS, DefaultClock::default())
    }
}

impl<C: Clock + Clone> LoginLimits<C> {
    /// Limits on `clock`, each limiter capped at `max_keys` keys.
    pub fn with_clock(per_ip: Rate, per_user: Rate, max_keys: usize, clock: C) -> Self {
        let max_keys = max_keys.max(1);
        let per_user_quota = per_user.quota();
        let blocked = moka::sync::Cache::builder()
            .max_capacity(u64::try_from(max_keys).unwrap_or(u64::MAX))
            .time_to_live(per_user_quota.burst_size_replenished_in())
            // LRU always admits new entries; TinyLFU could turn a block away.
            .eviction_policy(EvictionPolicy::lru())
            .build();
        LoginLimits {
            per_ip: Keyed::new(
                "login per_ip".into(),
                per_ip.quota(),
                max_keys,
                true,
                clock.clone(),
            ),
            per_user: Keyed::new(
                "login per_user".into(),
                per_user_quota,
                max_keys,
                true,
                clock.clone(),
            ),
            blocked,
            hasher: RandomState::new(),
            epoch: clock.now(),
            clock,
        }
    }

    /// Counts a login attempt from `ip`.
    ///
    /// # Errors
    /// The address (or its IPv6 /64) is over `rate_limit_per_ip`, or the
    /// limiter is full of other addresses.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        self.per_ip.check(&IpKey::from(ip), self.now()).map(drop)
    }

    /// Whether `username` may try a password now. Consumes nothing: call it
    /// before checking the password, and
    /// [`record_failure`](Self::record_failure) after a wrong one.
    ///
    /// # Errors
    /// The user is blocked after too many failures, or the per-user limiter
    /// is full (failures could not be counted, so none are checked).
    pub fn check_user(&self, username: &str) -> Result<(), RetryAfter> {
        let key = self.user_key(username);
        let now = self.now();
        if let Some(until) = self.blocked.get(&key)
            && now < until
        {
            return Err(RetryAfter(until - now));
        }
        if !self.per_user.has_room(now) {
            return Err(RetryAfter(self.per_user.period));
        }
        Ok(())
    }

    /// Counts a failed attempt for `username`, blocking the user once the
    /// failures reach `rate_limit_per_user`.
    pub fn record_failure(&self, username: &str) {
        let key = self.user_key(username);
        let now = self.now();
        let block = match self.per_user.check(&key, now) {
            Ok(state) if state.remaining_burst_capacity() > 0 => return,
            Ok(_) => self.per_user.interval,
            Err(RetryAfter(wait)) => wait,
        };
        let until = now.saturating_add(block);
        // Never shorten a block set by a concurrent failure.
        self.blocked
            .entry(key)
            .and_upsert_with(|old| old.map_or(until, |e| until.max(*e.value())));
    }

    /// Forgets keys that are idle long enough to be as good as new, and
    /// returns their memory. The server calls this every minute.
    pub fn housekeeping(&self) {
        self.per_ip.sweep();
        self.per_user.sweep();
        self.blocked.run_pending_tasks();
    }

    fn now(&self) -> Duration {
        self.clock.now().duration_since(self.epoch).into()
    }

    fn user_key(&self, username: &str) -> NameKey {
        NameKey::of(&self.hasher, username)
    }
}

impl<C: Clock> fmt::Debug for LoginLimits<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginLimits")
            .field("per_ip_keys", &self.per_ip.limiter.len())
            .field("per_user_keys", &self.per_user.limiter.len())
            .field("blocked_users", &self.blocked.entry_count())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use governor::clock::FakeRelativeClock;

    use super::*;

    fn rate(s: &str) -> Rate {
        Rate::parse(s).expect("test rates parse")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test addresses parse")
    }

    fn limits(per_ip: &str, per_user: &str) -> (LoginLimits<FakeRelativeClock>, FakeRelativeClock) {
        capped(per_ip, per_user, MAX_KEYS)
    }

    fn capped(
        per_ip: &str,
        per_user: &str,
        max_keys: usize,
    ) -> (LoginLimits<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limits = LoginLimits::with_clock(rate(per_ip), rate(per_user), max_keys, clock.clone());
        (limits, clock)
    }

    #[test]
    fn per_ip_allows_the_burst_then_refuses_with_retry_after() {
        let (l, clock) = limits("3/min", "5/min");
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(l.check_ip(a), Ok(()));
        }
        let refused = l.check_ip(a).expect_err("a 4th attempt is over 3/min");
        assert!(refused.0 > Duration::ZERO);
        assert_eq!(refused.secs(), 20, "one cell comes back every 20s");
        assert_eq!(l.check_ip(ip("192.0.2.2")), Ok(()), "another address");
        clock.advance(Duration::from_secs(20));
        assert_eq!(l.check_ip(a), Ok(()));
        assert!(l.check_ip(a).is_err());
    }

    #[test]
    fn ipv6_addresses_in_one_64_share_a_bucket() {
        let (l, _clock) = limits("2/min", "5/min");
        assert_eq!(l.check_ip(ip("2001:db8:1:2::1")), Ok(()));
        assert_eq!(l.check_ip(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), Ok(()));
        assert!(l.check_ip(ip("2001:db8:1:2:dead:beef::7")).is_err());
        assert_eq!(l.check_ip(ip("2001:db8:1:3::1")), Ok(()), "the next /64");
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_address() {
        let (l, _clock) = limits("1/min", "5/min");
        assert_eq!(l.check_ip(ip("::ffff:192.0.2.1")), Ok(()));
        assert!(l.check_ip(ip("192.0.2.1")).is_err());
        // Keyed by /64, every mapped address would share ::ffff:0:0/64.
        assert_eq!(l.check_ip(ip("::ffff:192.0.2.2")), Ok(()));
    }

    #[test]
    fn per_user_blocks_after_the_allowed_failures() {
        let (l, clock) = limits("20/min", "2/min");
        for _ in 0..2 {
            assert_eq!(l.check_user("alice"), Ok(()));
            l.record_failure("alice");
        }
        let refused = l.check_user("alice").expect_err("2 failures reach 2/min");
        assert_eq!(refused, RetryAfter(Duration::from_secs(30)));
        assert_eq!(l.check_user("bob"), Ok(()), "another user is unaffected");

        clock.advance(Duration::from_secs(30));
        assert_eq!(l.check_user("alice"), Ok(()), "one attempt per interval");
        l.record_failure("alice");
        assert!(
            l.check_user("alice").is_err(),
            "and its failure blocks again"
        );
    }

    #[test]
    fn five_per_minute_checks_five_failures_and_refuses_the_sixth() {
        let (l, _clock) = limits("20/min", "5/min");
        for attempt in 1..=5 {
            assert_eq!(l.check_user("alice"), Ok(()), "attempt {attempt}");
            l.record_failure("alice");
        }
        assert_eq!(
            l.check_user("alice"),
            Err(RetryAfter(Duration::from_secs(12)))
        );
    }

    #[test]
    fn check_user_alone_never_consumes() {
        let (l, _clock) = limits("20/min", "2/min");
        for _ in 0..100 {
            assert_eq!(l.check_user("alice"), Ok(()));
        }
        l.record_failure("alice");
        assert_eq!(l.check_user("alice"), Ok(()), "one failure of two");
    }

    #[test]
    fn a_failure_while_blocked_never_shortens_the_block() {
        // Concurrent attempts can all pass check_user before one fails.
        let (l, clock) = limits("20/min", "2/min");
        l.record_failure("alice");
        l.record_failure("alice");
        clock.advance(Duration::from_secs(10));
        l.record_failure("alice");
        assert_eq!(
            l.check_user("alice"),
            Err(RetryAfter(Duration::from_secs(20)))
        );
    }

    #[test]
    fn a_full_ip_limiter_fails_closed_until_keys_age_out() {
        let (l, clock) = capped("3/min", "5/min", 2);
        assert_eq!(l.check_ip(ip("192.0.2.1")), Ok(()));
        assert_eq!(l.check_ip(ip("192.0.2.2")), Ok(()));
        let full = Err(RetryAfter(Duration::from_secs(60)));
        assert_eq!(l.check_ip(ip("192.0.2.3")), full);
        assert_eq!(l.check_ip(ip("192.0.2.1")), full, "closed for everyone");

        clock.advance(Duration::from_secs(60));
        assert_eq!(l.check_ip(ip("192.0.2.3")), Ok(()));
        assert!(l.per_ip.limiter.len() <= 2);
    }

    #[test]
    fn a_full_user_limiter_fails_closed() {
        let (l, clock) = capped("20/min", "5/min", 2);
        l.record_failure("alice");
        l.record_failure("bob");
        let full = Err(RetryAfter(Duration::from_secs(60)));
        assert_eq!(l.check_user("carol"), full);
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.check_user("carol"), Ok(()));
    }

    #[test]
    fn long_usernames_are_keyed_by_hash_not_by_prefix() {
        let (l, _clock) = limits("20/min", "1/min");
        let long = "a".repeat(16 * 1024);
        let other = format!("{}b", &long[1..]);
        l.record_failure(&long);
        assert!(l.check_user(&long).is_err());
        assert_eq!(
            l.check_user(&other),
            Ok(()),
            "differs in the last byte only"
        );
        assert_eq!(l.check_user(""), Ok(()));
    }

    #[test]
    fn housekeeping_forgets_idle_keys() {
        let (l, clock) = limits("3/min", "2/min");
        for i in 0..50u8 {
            assert_eq!(l.check_ip(IpAddr::from([10, 0, 0, i])), Ok(()));
        }
        l.record_failure("alice");
        assert_eq!(l.per_ip.limiter.len(), 50);
        l.housekeeping();
        assert_eq!(l.per_ip.limiter.len(), 50, "recent keys stay");

        clock.advance(Duration::from_secs(120));
        l.housekeeping();
        assert_eq!(l.per_ip.limiter.len(), 0);
        assert_eq!(l.per_user.limiter.len(), 0);
    }

    #[test]
    fn real_clock_limits_are_shareable() {
        fn shared<T: Send + Sync + 'static>(_: &T) {}
        let l = LoginLimits::new(rate("1/min"), rate("1/min"));
        shared(&l);
        assert_eq!(l.check_ip(ip("192.0.2.1")), Ok(()));
        assert!(l.check_ip(ip("192.0.2.1")).expect_err("over").secs() >= 59);
    }
}
