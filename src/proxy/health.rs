//! Active health checks: `[[upstreams]] health_check = { path, interval }`.
//!
//! Each HTTP target of such an upstream is probed with `GET path` every
//! `interval`, on a connection of its own (over TLS for an `https://`
//! target, checked as its requests are; `Connection: close`; the
//! keep-alive pool is left alone). A probe passes on a 2xx or 3xx answer
//! within the interval (and the upstream's `timeout`, if shorter); a
//! refused or timed-out connection, a failed TLS handshake, another
//! status, or no answer in time fails it. As HAProxy's defaults (`fall 3`, `rise 2`): a target is taken
//! out of the round-robin after [`FALL`] failed probes in a row, and put
//! back after [`RISE`] passed ones. Targets start in, so a start does not
//! wait for probes; passive ejection (a refused connection) still applies
//! on top. When every target is out, requests still go to one (better a
//! try than a certain 502).
//!
//! A probe task belongs to the snapshot whose upstream it watches: it stops
//! at its next tick once a reload has replaced that snapshot (the new
//! snapshot's probes carry on with the state the old ones found), and holds
//! the target's state weakly besides. With a single target, the probes
//! only report (log, `/metrics`): the only target is always tried.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, StatusCode, header};
use tokio::time::MissedTickBehavior;

use super::dial::{ConnectError, Dial, H2Body};
use crate::body;
use crate::config::HealthCheck;

/// Failed probes in a row that take a target out.
pub const FALL: u32 = 3;
/// Passed probes in a row that put it back.
pub const RISE: u32 = 2;

/// Whether a target's probes have taken it out of the round-robin. A
/// reload hands it on to the new snapshot's prober, which claims it: from
/// then on, a verdict of the old prober (possibly for another path) that
/// was still under way is not recorded.
#[derive(Default)]
pub struct Down {
    down: AtomicBool,
    /// The prober whose verdicts count.
    owner: Mutex<u64>,
}

impl Down {
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Makes `prober` the one whose verdicts count.
    fn claim(&self, prober: u64) {
        *self.owner.lock().unwrap_or_else(|p| p.into_inner()) = prober;
    }

    /// Records `prober`'s verdict if it still owns the target; whether it did.
    fn record(&self, prober: u64, down: bool) -> bool {
        let owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if *owner == prober {
            self.down.store(down, Ordering::Relaxed);
        }
        *owner == prober
    }

    #[cfg(test)]
    pub fn set(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

/// What a probe task needs to know about its target.
pub struct Probe {
    pub upstream: String,
    pub dial: Dial,
    pub check: HealthCheck,
    pub connect_timeout: Duration,
    /// A probe's answer must come within this (and within `interval`).
    pub timeout: Duration,
    /// Set when a reload has replaced the snapshot: the task ends.
    pub retired: Arc<AtomicBool>,
}

/// Probes `probe`'s target until its snapshot is replaced (or `down` is
/// dropped).
pub fn spawn(probe: Probe, down: &Arc<Down>) {
    static PROBERS: AtomicU64 = AtomicU64::new(1);
    let id = PROBERS.fetch_add(1, Ordering::Relaxed);
    down.claim(id);
    tokio::spawn(watch(probe, id, Arc::downgrade(down)));
}

async fn watch(probe: Probe, id: u64, down: Weak<Down>) {
    let mut tick = tokio::time::interval(probe.check.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        tick.tick().await;
        if down.strong_count() == 0 || probe.retired.load(Ordering::Relaxed) {
            return;
        }
        let outcome = probe_once(&probe).await;
        let Some(down) = down.upgrade() else {
            return;
        };
        if probe.retired.load(Ordering::Relaxed) {
            return;
        }
        match streak.record(outcome.is_ok(), down.is_down()) {
            Some(true) if down.record(id, true) => {
                let why = outcome.err().unwrap_or_default();
                tracing::warn!(upstream = %probe.upstream, target = %probe.dial, %why,
                    "health check failed {FALL} times: target taken out");
            }
            Some(false) if down.record(id, false) => {
                tracing::info!(upstream = %probe.upstream, target = %probe.dial,
                    "health check passed {RISE} times: target back in");
            }
            _ => {}
        }
    }
}

/// Consecutive passes and failures of one target's probes.
#[derive(Default)]
struct Streak {
    passed: u32,
    failed: u32,
}

impl Streak {
    /// Records a probe; `Some(down)` when the target changes state.
    fn record(&mut self, passed: bool, is_down: bool) -> Option<bool> {
        if passed {
            self.failed = 0;
            self.passed = self.passed.saturating_add(1);
            (is_down && self.passed >= RISE).then_some(false)
        } else {
            self.passed = 0;
            self.failed = self.failed.saturating_add(1);
            (!is_down && self.failed >= FALL).then_some(true)
        }
    }
}

/// One probe: `Ok` when it passed, else why not.
async fn probe_once(p: &Probe) -> Result<(), String> {
    let limit = p.check.interval.min(p.timeout);
    let exchange = async {
        let req = Request::get(p.check.path.as_str())
            .header(header::USER_AGENT, "gatehouse-health-check");
        let connect = |e: ConnectError| e.to_string();
        let rsp = if p.dial.is_http2() {
            // HTTP/2 has no `Connection` header; the connection ends with the probe.
            let uri = http::Uri::builder()
                .scheme(p.dial.scheme())
                .authority(p.dial.authority().clone())
                .path_and_query(p.check.path.clone())
                .build()
                .map_err(|e| e.to_string())?;
            let req = req.uri(uri).version(http::Version::HTTP_2);
            let req = req.body(H2Body(body::empty())).map_err(|e| e.to_string())?;
            let mut sender = p
                .dial
                .connect_h2(p.connect_timeout)
                .await
                .map_err(connect)?;
            sender.send_request(req).await
        } else {
            let req = req
                .header(header::HOST, p.dial.authority().as_str())
                .header(header::CONNECTION, "close");
            let req = req.body(body::empty()).map_err(|e| e.to_string())?;
            let mut sender = p.dial.connect(p.connect_timeout).await.map_err(connect)?;
            sender.send_request(req).await
        };
        Ok::<StatusCode, String>(rsp.map_err(|e| e.to_string())?.status())
    };
    match tokio::time::timeout(limit, exchange).await {
        Err(_) => Err(format!("no answer within {limit:?}")),
        Ok(Err(e)) => Err(e),
        Ok(Ok(s)) if s.is_success() || s.is_redirection() => Ok(()),
        Ok(Ok(s)) => Err(format!("status {}", s.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_prober_that_claimed_a_target_records_verdicts() {
        let down = Down::default();
        down.claim(1);
        assert!(down.record(1, true));
        assert!(down.is_down());
        // A reload: the new prober claims it; the old one's late verdict is dropped.
        down.claim(2);
        assert!(!down.record(1, false));
        assert!(down.is_down());
        assert!(down.record(2, false));
        assert!(!down.is_down());
    }

    #[test]
    fn a_target_goes_out_after_fall_failures_and_back_after_rise_passes() {
        let mut s = Streak::default();
        let mut down = false;
        let apply = |s: &mut Streak, passed: bool, down: &mut bool| {
            if let Some(d) = s.record(passed, *down) {
                *down = d;
            }
            *down
        };
        // Failures below FALL, broken by a pass: still in.
        for _ in 0..FALL - 1 {
            assert!(!apply(&mut s, false, &mut down));
        }
        assert!(!apply(&mut s, true, &mut down));
        for _ in 0..FALL - 1 {
            assert!(!apply(&mut s, false, &mut down));
        }
        assert!(apply(&mut s, false, &mut down), "out after {FALL} in a row");
        for _ in 0..RISE - 1 {
            assert!(apply(&mut s, true, &mut down));
        }
        assert!(apply(&mut s, false, &mut down), "a failure resets the rise");
        for _ in 0..RISE - 1 {
            assert!(apply(&mut s, true, &mut down));
        }
        assert!(
            !apply(&mut s, true, &mut down),
            "back after {RISE} in a row"
        );
    }
}
