//! Keys an issuer publishes at its `jwks_url`, kept current in the
//! background.
//!
//! Each served snapshot runs one task per `jwks_url` issuer: it fetches the
//! JWK Set at start, then every `jwks_refresh`; a fetch that fails (no
//! answer, another status, not a JWK Set, no usable key) keeps the keys
//! already fetched and is retried after 1 s, 2 s, 4 s... (at most 60 s, and
//! at most `jwks_refresh`). A token naming a `kid` the issuer does not have
//! asks for a fetch at once and waits for it ([`RemoteKeys::refetched`]):
//! that is how a key the provider has just rotated in is picked up. Those
//! on-demand fetches are rate-limited to one per [`REFETCH_COOLDOWN`] per
//! issuer, so tokens with made-up `kid`s cannot make the gateway hammer the
//! provider. Until the first fetch succeeds the issuer has no fetched keys
//! and `/readyz` answers 503.
//!
//! When a fetch drops a key (or changes the material behind a `kid`), the
//! verified-claims cache is emptied, so a token verified with the old key is
//! checked again, not served from the cache until `max_ttl`.
//!
//! With `discovery = true` each fetch first reads the issuer's OpenID
//! configuration for the set's URL ([`discovery`]); when it cannot be read
//! (no answer, another status, not JSON), the URL it gave last is used,
//! also across a reload; when it is read and refused, the fetch fails.
//!
//! A reload (SIGHUP) hands the keys on to the new snapshot's issuer with the
//! same URL and algorithms, so no token is refused while it fetches again.

pub mod discovery;
pub mod fetch;
pub mod jwk;
pub mod proxy;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};
use http::Uri;
use jsonwebtoken::Algorithm;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::config::JwksSpec;
use jwk::{Fetched, Parsed};

/// On-demand fetches (unknown `kid`) of one issuer are at least this far apart.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(10);

/// The longest wait between retries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The last on-demand fetch: when it was asked for, and its number.
#[derive(Default)]
struct Demand {
    at: Option<Instant>,
    number: u64,
}

/// How long a request waits for a fetch it asked for: the one under way
/// may have to finish first.
const DEMAND_WAIT: Duration = Duration::from_secs(2 * fetch::FETCH_TIMEOUT.as_secs() + 1);

/// One `jwks_url` issuer's fetched keys and the state of their fetching.
pub struct RemoteKeys {
    pub spec: JwksSpec,
    /// The issuer (`iss`), for logs and `/metrics`.
    pub issuer: String,
    /// The issuer's `algorithms`.
    algorithms: Option<Box<[Algorithm]>>,
    /// Empty until a fetch succeeds (here, or before a reload handed the
    /// keys on): a fetch with no usable key is a failed one.
    keys: ArcSwap<Vec<Fetched>>,
    /// Fetches started so far; a fetch is known by the count when it started.
    started: AtomicU64,
    /// The number of the last fetch that finished (either way).
    done: watch::Sender<u64>,
    /// Asks the task to fetch now.
    wake: Notify,
    /// The last on-demand fetch.
    demand: Mutex<Demand>,
    /// Failed fetches in a row (for the back-off and `/metrics`).
    failures: AtomicU32,
    /// Set when a reload has replaced the snapshot: the task ends.
    retired: AtomicBool,
    /// With `discovery`: the `jwks_uri` the issuer's configuration gave last.
    discovered: Mutex<Option<Uri>>,
}

impl RemoteKeys {
    pub fn new(issuer: &str, spec: JwksSpec, algorithms: Option<&[Algorithm]>) -> RemoteKeys {
        RemoteKeys {
            spec,
            issuer: issuer.to_string(),
            algorithms: algorithms.map(Into::into),
            keys: ArcSwap::from_pointee(Vec::new()),
            started: AtomicU64::new(0),
            done: watch::Sender::new(0),
            wake: Notify::new(),
            demand: Mutex::default(),
            failures: AtomicU32::new(0),
            retired: AtomicBool::new(false),
            discovered: Mutex::new(None),
        }
    }

    /// The keys fetched last (empty before the first fetch).
    pub fn keys(&self) -> Guard<Arc<Vec<Fetched>>> {
        self.keys.load()
    }

    /// Whether a fetch has succeeded: the issuer's keys are usable.
    pub fn is_fetched(&self) -> bool {
        !self.keys.load().is_empty()
    }

    /// Takes on the keys `old` fetched, when it fetched from the same URL
    /// for the same algorithms (a reload).
    pub fn carry_from(&self, old: &RemoteKeys) {
        let same_source = old.spec.url == self.spec.url
            && old.spec.discovery == self.spec.discovery
            && old.spec.ca_pem == self.spec.ca_pem;
        if same_source {
            // The fallback while the configuration cannot be read.
            let before = old.last_discovered().clone();
            *self.last_discovered() = before;
        }
        if same_source && old.algorithms == self.algorithms && old.is_fetched() {
            self.keys.store(old.keys.load_full());
        }
    }

    /// Ends the background task (its snapshot has been replaced).
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Asked when a token names a `kid` this issuer does not have (or
    /// before its first fetch): fetches the JWK Set again and waits for
    /// that fetch. At most one such fetch per [`REFETCH_COOLDOWN`]: inside
    /// it, a request waits for the fetch already asked for while that one
    /// is under way, and is answered at once after. Before the first
    /// successful fetch, a request waits for the fetch under way (and asks
    /// for one, within the same limit, while the task waits to retry).
    /// Whether a fetch finished: the caller then looks for the key again.
    pub async fn refetched(&self) -> bool {
        if self.retired.load(Ordering::Relaxed) {
            return false;
        }
        let mut finished = self.done.subscribe();
        let target = {
            let mut demand = self.demand.lock().unwrap_or_else(PoisonError::into_inner);
            let started = self.started.load(Ordering::SeqCst);
            let done = *finished.borrow_and_update();
            let now = Instant::now();
            if !self.is_fetched() && started > done {
                // The first keys are on their way.
                started
            } else if demand
                .at
                .is_none_or(|at| now.duration_since(at) >= REFETCH_COOLDOWN)
            {
                // Read before the wake: the fetch it wakes has the next number.
                *demand = Demand {
                    at: Some(now),
                    number: started + 1,
                };
                self.wake.notify_one();
                started + 1
            } else if done < demand.number {
                demand.number
            } else {
                return false;
            }
        };
        matches!(
            tokio::time::timeout(DEMAND_WAIT, finished.wait_for(|&n| n >= target)).await,
            Ok(Ok(_))
        )
    }

    /// Whether a key this issuer fetches could verify `alg`: one of its
    /// `algorithms`, and never an HMAC one (a JWK Set holds public keys).
    pub fn may_serve(&self, alg: Algorithm) -> bool {
        let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
        !hmac
            && self
                .algorithms
                .as_ref()
                .is_none_or(|list| list.contains(&alg))
    }

    /// Failed fetches since the last success.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The `jwks_uri` the issuer's configuration gave last.
    fn last_discovered(&self) -> std::sync::MutexGuard<'_, Option<Uri>> {
        self.discovered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the JWK Set is fetched from: `jwks_url`, or with `discovery`
    /// the `jwks_uri` of the issuer's OpenID configuration, read now. A
    /// configuration that cannot be read leaves the `jwks_uri` it gave
    /// before (if any) in use.
    async fn jwks_url(&self) -> Result<Uri, String> {
        let Some(issuer) = &self.spec.discovery else {
            return Ok(self.spec.url.clone());
        };
        let from = &self.spec.url;
        // Half the round at most: a configuration that never answers
        // leaves time to fetch the set at the jwks_uri it gave before.
        let read = fetch::get(from, self.spec.ca_pem.as_deref(), fetch::FETCH_TIMEOUT / 2)
            .await
            .and_then(|body| discovery::parse(&body));
        let mut last = self.last_discovered();
        match (read, last.as_ref()) {
            (Ok(metadata), _) => {
                // Read, and refused: a failed fetch, never the fallback
                // (a provider whose issuer changed must not go unnoticed).
                let uri = discovery::jwks_uri(metadata, issuer, from)
                    .map_err(|why| format!("OpenID configuration at {from}: {why}"))?;
                if last.as_ref() != Some(&uri) {
                    tracing::info!(issuer = %self.issuer, %uri, "jwks_uri discovered");
                    *last = Some(uri.clone());
                }
                Ok(uri)
            }
            (Err(why), Some(before)) => {
                tracing::warn!(issuer = %self.issuer, url = %from, %why,
                    "OpenID configuration not read; using the jwks_uri it gave before");
                Ok(before.clone())
            }
            (Err(why), None) => Err(format!("OpenID configuration at {from}: {why}")),
        }
    }

    /// Puts the set fetched from `url` in place; whether a key was dropped
    /// or changed.
    /// Logged when the set changed (the skipped keys too: a provider that
    /// also publishes an encryption key would otherwise warn every refresh).
    fn install(&self, parsed: Parsed, url: &Uri) -> bool {
        let old = self.keys.load_full();
        let dropped = old.iter().any(|o| !parsed.keys.iter().any(|n| n.same(o)));
        let added = parsed.keys.iter().any(|n| !old.iter().any(|o| n.same(o)));
        if dropped || added {
            let kids: Vec<&str> = parsed.keys.iter().map(|f| &*f.key.id).collect();
            tracing::info!(issuer = %self.issuer, %url, ?kids, "JWKS fetched");
            for why in &parsed.skipped {
                tracing::warn!(issuer = %self.issuer, %url, "JWK skipped: {why}");
            }
        }
        self.keys.store(Arc::new(parsed.keys));
        dropped
    }
}

/// Keeps `remote`'s keys current until its snapshot is replaced or
/// dropped. `on_dropped` runs when a fetch drops or changes a key (it
/// empties the snapshot's claims cache).
pub fn spawn(remote: &Arc<RemoteKeys>, on_dropped: impl Fn() + Send + 'static) {
    let url = &remote.spec.url;
    let loopback = url.host().is_some_and(proxy::is_loopback);
    if url.scheme_str() == Some("http") && !loopback {
        tracing::warn!(issuer = %remote.issuer, %url,
            "jwks_url is plain http: whoever can alter the traffic can substitute keys; use https");
    }
    tokio::spawn(watch(Arc::downgrade(remote), on_dropped));
}

async fn watch(remote: Weak<RemoteKeys>, on_dropped: impl Fn() + Send + 'static) {
    loop {
        let Some(r) = remote.upgrade() else { return };
        if r.retired.load(Ordering::Relaxed) {
            // Nothing more is fetched here: whoever waits stops waiting.
            r.done.send_replace(u64::MAX);
            return;
        }
        let number = r.started.fetch_add(1, Ordering::SeqCst) + 1;
        // With discovery a fetch is two requests; together they take at
        // most FETCH_TIMEOUT, which DEMAND_WAIT counts on.
        let began = Instant::now();
        let (url, outcome) = match r.jwks_url().await {
            Ok(url) => {
                let left = fetch::FETCH_TIMEOUT.saturating_sub(began.elapsed());
                let body = fetch::get(&url, r.spec.ca_pem.as_deref(), left).await;
                let parsed = body.and_then(|body| jwk::parse(&body, r.algorithms.as_deref()));
                (url, parsed)
            }
            Err(why) => (r.spec.url.clone(), Err(why)),
        };
        let url = &url;
        // A fetch that finishes after a reload still serves the requests of
        // the replaced snapshot that wait for it (the new one fetches too).
        let wait = match outcome {
            Ok(parsed) => {
                r.failures.store(0, Ordering::Relaxed);
                if r.install(parsed, url) {
                    tracing::info!(issuer = %r.issuer,
                        "a JWKS key was dropped or changed: verified-claims cache emptied");
                    on_dropped();
                }
                r.spec.refresh
            }
            Err(why) => {
                let failures = r.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let keeping = if r.is_fetched() {
                    "keeping the keys fetched before"
                } else {
                    "no keys yet: its tokens are refused"
                };
                tracing::warn!(issuer = %r.issuer, %url, %why, failures,
                    "JWKS fetch failed; {keeping}");
                backoff(failures).min(r.spec.refresh)
            }
        };
        r.done.send_replace(number);
        // Holds the keys while it waits: `retire` wakes it to end.
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = r.wake.notified() => {}
        }
    }
}

/// The wait after `failures` failed fetches in a row: 1 s, doubling, at
/// most [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(6);
    Duration::from_secs(secs).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::tests::test_keys;

    fn remote() -> RemoteKeys {
        let spec = JwksSpec {
            url: "http://127.0.0.1:9/jwks".parse().unwrap(),
            refresh: Duration::from_secs(600),
            ca_pem: None,
            discovery: None,
        };
        RemoteKeys::new("idp", spec, None)
    }

    #[tokio::test]
    async fn a_retired_issuer_answers_at_once() {
        let r = remote();
        r.retire();
        let answer = tokio::time::timeout(Duration::from_secs(1), r.refetched()).await;
        assert_eq!(answer, Ok(false));
    }

    #[tokio::test(start_paused = true)]
    async fn on_demand_fetches_are_one_per_cooldown_and_shared_while_under_way() {
        let r = remote();
        let jwk = test_keys().set.get("ES256").unwrap().jwk.clone().unwrap();
        let set = serde_json::json!({ "keys": [jwk] }).to_string();
        r.keys
            .store(Arc::new(jwk::parse(set.as_bytes(), None).unwrap().keys));
        assert!(r.is_fetched());
        // The first asks for fetch 1 and waits for it; the second, inside
        // the cooldown, waits for the same fetch; both see it finish.
        let (first, second) = (r.refetched(), r.refetched());
        let finish = async {
            tokio::task::yield_now().await;
            r.started.store(1, Ordering::SeqCst);
            r.done.send_replace(1);
        };
        let (a, b, ()) = tokio::join!(first, second, finish);
        assert!(a && b);
        // Done, and still inside the cooldown: no wait, no fetch.
        assert!(!r.refetched().await);
        tokio::time::advance(REFETCH_COOLDOWN).await;
        let again = r.refetched();
        let finish = async {
            tokio::task::yield_now().await;
            r.done.send_replace(2);
        };
        let (again, ()) = tokio::join!(again, finish);
        assert!(again);
    }

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let waits: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
