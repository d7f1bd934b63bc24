//! An upstream: its targets, round-robin selection that skips targets which
//! refuse connections (passive ejection) or fail their health checks
//! (`super::health`), and a keep-alive pool per target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::dial::Dial;
use super::health::{self, Down};
use super::pool::Pool;
use crate::config::{HealthCheck, Protocol, Target, UpstreamSpec};
use crate::metrics::Histogram;

/// How long a target whose connection failed is skipped.
pub const EJECT_FOR: Duration = Duration::from_secs(10);

pub struct Upstream {
    pub name: String,
    targets: Box<[Slot]>,
    next: AtomicUsize,
    pub connect_timeout: Duration,
    /// From sending the request to the response head: 504 beyond it.
    pub timeout: Duration,
    /// Send the client's `Host` (else the target's).
    pub preserve_host: bool,
    /// `protocol = "http2"`: one shared HTTP/2 connection per target.
    pub http2: bool,
    /// The clock the ejection deadlines count from.
    epoch: Instant,
    health_check: Option<HealthCheck>,
    /// Set when a reload has replaced this upstream: its probes stop.
    retired: Arc<AtomicBool>,
    /// Response times (`/metrics`): the gateway's for this upstream's name,
    /// once the snapshot is served.
    pub latency: Arc<Histogram>,
}

struct Slot {
    target: Target,
    /// Milliseconds since `epoch` until which the target is skipped (0: never ejected).
    ejected_until: AtomicU64,
    /// Set while the target's health checks keep it out.
    down: Arc<Down>,
    /// `None` for `builtin:echo`.
    pool: Option<Arc<Pool>>,
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
                    down: Arc::default(),
                    pool: dial(t, spec).map(|d| Arc::new(Pool::new(d))),
                })
                .collect(),
            next: AtomicUsize::new(0),
            connect_timeout: spec.connect_timeout,
            timeout: spec.timeout,
            preserve_host: spec.preserve_host,
            http2: spec.protocol == Protocol::Http2,
            epoch: Instant::now(),
            health_check: spec.health_check.clone(),
            retired: Arc::default(),
            latency: Arc::default(),
        }
    }

    /// Takes over what `before` (this upstream in the snapshot a reload
    /// replaces) knows of each target still listed: a target its health
    /// checks took out stays out until this upstream's probes pass it.
    /// Without a `health_check` here, nothing is carried: no probe would
    /// ever put the target back.
    pub fn carry_health_from(&mut self, before: &Upstream) {
        if self.health_check.is_none() {
            return;
        }
        for slot in self.targets.iter_mut() {
            if let Some(old) = before.targets.iter().find(|o| o.target == slot.target) {
                slot.down = Arc::clone(&old.down);
            }
        }
    }

    /// Stops this upstream's probes (at their next tick).
    pub fn stop_health_checks(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }

    /// Starts probing each HTTP target, when the upstream has a
    /// `health_check`; the probes stop once this upstream is dropped (with
    /// its snapshot). Needs a tokio runtime.
    pub fn start_health_checks(&self) {
        let Some(check) = &self.health_check else {
            return;
        };
        for slot in &self.targets {
            if let Some(pool) = &slot.pool {
                let probe = health::Probe {
                    upstream: self.name.clone(),
                    dial: pool.dial().clone(),
                    check: check.clone(),
                    connect_timeout: self.connect_timeout,
                    timeout: self.timeout,
                    retired: Arc::clone(&self.retired),
                };
                health::spawn(probe, &slot.down);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The next target in round-robin order that is neither ejected nor
    /// down; when every target is one or the other, the next one that is
    /// not ejected (a failed health check is less certain than a refused
    /// connection), and when every target is ejected, the next one anyway
    /// (better a try than a certain 502).
    pub fn pick(&self) -> usize {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        let order = || (0..n).map(|k| (start + k) % n);
        let ejected = |i: usize| self.targets[i].ejected_until.load(Ordering::Relaxed) > now;
        order()
            .find(|&i| !ejected(i) && !self.targets[i].down.is_down())
            .or_else(|| order().find(|&i| !ejected(i)))
            .unwrap_or(start % n)
    }

    /// Each `http://` or `https://` target and whether it takes requests
    /// now (neither ejected nor down), for `/metrics`.
    pub fn target_states(&self) -> impl Iterator<Item = (String, bool)> + '_ {
        let now = self.now_ms();
        self.targets.iter().filter_map(move |t| {
            let pool = t.pool.as_ref()?;
            let ejected = t.ejected_until.load(Ordering::Relaxed) > now;
            Some((pool.dial().to_string(), !ejected && !t.down.is_down()))
        })
    }

    /// The keep-alive connections of target `i`; `None` for `builtin:echo`.
    pub fn pool(&self, i: usize) -> Option<&Arc<Pool>> {
        self.targets[i].pool.as_ref()
    }

    /// Skips target `i` for [`EJECT_FOR`].
    pub fn eject(&self, i: usize) {
        let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
        self.targets[i]
            .ejected_until
            .store(until, Ordering::Relaxed);
    }
}

/// How to connect to `target`; `None` for `builtin:echo`.
fn dial(target: &Target, spec: &UpstreamSpec) -> Option<Dial> {
    let dial = match target {
        Target::Echo => None,
        Target::Http {
            authority,
            tls: None,
        } => Some(Dial::plain(authority.clone())),
        Target::Http {
            authority,
            tls: Some(name),
        } => {
            let config = spec
                .tls
                .clone()
                .expect("an https:// target's upstream has TLS settings");
            Some(Dial::tls(authority.clone(), config, name.clone()))
        }
    };
    match spec.protocol {
        Protocol::Http1 => dial,
        Protocol::Http2 => dial.map(Dial::http2),
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
                    tls: None,
                })
                .collect(),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            health_check: None,
            tls: None,
            preserve_host: true,
            protocol: Protocol::Http1,
        })
    }

    #[test]
    fn round_robin_skips_ejected_targets() {
        let u = upstream(3);
        let picks: Vec<usize> = (0..6).map(|_| u.pick()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        u.eject(1);
        let picks: Vec<usize> = (0..4).map(|_| u.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        u.eject(0);
        u.eject(2);
        // All ejected: still answers.
        let _ = u.pick();
    }

    #[test]
    fn targets_down_by_health_check_are_skipped_and_preferred_to_ejected_ones() {
        let u = upstream(3);
        u.targets[1].down.set(true);
        let picks: Vec<usize> = (0..4).map(|_| u.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        // Every target out: the one that is down but not ejected is tried.
        u.targets[0].down.set(true);
        u.eject(2);
        let picks: Vec<usize> = (0..4).map(|_| u.pick()).collect();
        assert!(picks.iter().all(|&i| i != 2), "{picks:?}");
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
        // Back in: served again.
        u.targets[0].down.set(false);
        u.targets[1].down.set(false);
        let picks: Vec<usize> = (0..4).map(|_| u.pick()).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }
}
