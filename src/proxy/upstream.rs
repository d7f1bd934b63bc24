//! An upstream: its targets, round-robin selection with passive ejection of
//! targets that refuse connections, and a keep-alive pool per target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::pool::Pool;
use crate::config::{Target, UpstreamSpec};

/// How long a target whose connection failed is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

pub struct Upstream {
    pub name: String,
    targets: Box<[Slot]>,
    next: AtomicUsize,
    pub connect_timeout: Duration,
    /// From sending the request to the response head: 504 beyond it.
    pub timeout: Duration,
    /// The clock the ejection deadlines count from.
    epoch: Instant,
}

struct Slot {
    target: Target,
    /// Milliseconds since `epoch` until which the target is skipped (0: never ejected).
    ejected_until: AtomicU64,
    pool: Arc<Pool>,
}

impl Upstream {
    pub fn new(spec: &UpstreamSpec) -> Self {
        Upstream {
            name: spec.name.clone(),
            targets: spec
                .targets
                .iter()
                .map(|t| Slot {
                    target: t.clone(),
                    ejected_until: AtomicU64::new(0),
                    pool: Arc::default(),
                })
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: spec.connect_timeout,
            timeout: spec.timeout,
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next target in round-robin order that is not ejected; when every
    /// target is ejected, the next one anyway (better a try than a certain 502).
    pub fn pick(&self) -> (usize, &Target) {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return (0, &self.targets[0].target);
        }
        let now = self.now_ms();
        let i = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.targets[i].ejected_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n);
        (i, &self.targets[i].target)
    }

    /// The keep-alive connections of target `i`.
    pub fn pool(&self, i: usize) -> &Arc<Pool> {
        &self.targets[i].pool
    }

    /// Skips target `i` for [`EJECT_FOR`].
    pub fn eject(&self, i: usize) {
        let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
        self.targets[i]
            .ejected_until
            .store(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(n: usize) -> Upstream {
        Upstream::new(&UpstreamSpec {
            name: "u".into(),
            targets: (0..n)
                .map(|i| Target::Http {
                    authority: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                })
                .collect(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        })
    }

    #[test]
    fn round_robin_skips_ejected_targets() {
        let u = upstream(3);
        let picks: Vec<usize> = (0..6).map(|_| u.pick().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        u.eject(1);
        let picks: Vec<usize> = (0..4).map(|_| u.pick().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        u.eject(0);
        u.eject(2);
        // All ejected: still answers.
        let _ = u.pick();
    }
}
