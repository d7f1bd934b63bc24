//! The counters behind `/metrics` on the admin listener, and their
//! Prometheus text rendering.
//!
//! The per-request counters (responses by status code, verified-claims
//! cache hits and misses) are kept in shards, one per thread (modulo
//! [`SHARDS`]), each on its own cache lines: with one counter shared by
//! every worker, each request would move its cache line between cores, as
//! Envoy's thread-local stats avoid too. An increment is a relaxed add to
//! the thread's own shard; a scrape sums the shards.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Shards of the per-request counters. Threads beyond it share.
const SHARDS: usize = 16;
/// Status codes 100 to 599, one slot each.
const CODES: usize = 500;
const CACHE_HIT: usize = CODES;
const CACHE_MISS: usize = CODES + 1;
const AUTH_OK: usize = CODES + 2;
const SLOTS: usize = CODES + 3;

/// One thread's per-request counters, aligned so no two shards share a
/// cache line (128 bytes: adjacent-line prefetch pairs them on x86).
#[repr(align(128))]
struct Shard([AtomicU64; SLOTS]);

/// The gateway's counters: one set per process, kept across reloads (every
/// snapshot points at the gateway's).
pub struct Metrics {
    shards: Box<[Shard]>,
    connections_accepted: AtomicU64,
    connections_open: AtomicU64,
    reloads_applied: AtomicU64,
    reloads_refused: AtomicU64,
    /// Requests by route (its `host` and `path_prefix`), kept across
    /// reloads by that name; `""` for requests no route matched.
    routes: Mutex<BTreeMap<String, Arc<ClassCounters>>>,
    /// Upstream response times by upstream name, kept across reloads.
    upstreams: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// Refused bearer tokens by outcome and reason, per thread shard: a
    /// flood of requests without a token takes no lock another core wants.
    /// The reasons are the fixed texts the gateway answers with.
    auth_refused: Box<[Mutex<Refusals>]>,
    logins: [AtomicU64; LoginOutcome::ALL.len()],
    tls_failures: [AtomicU64; TlsFailure::ALL.len()],
    /// The `""` entry of `routes`: requests no route matched.
    pub unrouted: Arc<ClassCounters>,
    /// Seconds since the epoch when the counters started.
    started: u64,
}

/// Refusals counted by `(outcome, reason)`.
type Refusals = BTreeMap<(&'static str, &'static str), u64>;

/// How a login ended, as `gatehouse_logins_total{outcome}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    InvalidCredentials,
    RateLimited,
    Unavailable,
    BadRequest,
    Error,
}

impl LoginOutcome {
    const ALL: [LoginOutcome; 6] = [
        LoginOutcome::Success,
        LoginOutcome::InvalidCredentials,
        LoginOutcome::RateLimited,
        LoginOutcome::Unavailable,
        LoginOutcome::BadRequest,
        LoginOutcome::Error,
    ];

    /// The `outcome` label.
    fn name(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::InvalidCredentials => "invalid_credentials",
            LoginOutcome::RateLimited => "rate_limited",
            LoginOutcome::Unavailable => "unavailable",
            LoginOutcome::BadRequest => "bad_request",
            LoginOutcome::Error => "error",
        }
    }
}

/// Why a TLS handshake with a client failed, as
/// `gatehouse_tls_handshake_failures_total{reason}` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsFailure {
    /// `client_ca` asks for a certificate and the client sent none.
    NoClientCertificate,
    /// The client's certificate is not issued by `client_ca`, expired, ...
    BadClientCertificate,
    /// Anything else: no common protocol or cipher, not TLS at all, a
    /// connection closed mid-handshake.
    Other,
}

impl TlsFailure {
    const ALL: [TlsFailure; 3] = [
        TlsFailure::NoClientCertificate,
        TlsFailure::BadClientCertificate,
        TlsFailure::Other,
    ];

    /// The `reason` label.
    fn name(self) -> &'static str {
        match self {
            TlsFailure::NoClientCertificate => "no_client_certificate",
            TlsFailure::BadClientCertificate => "bad_client_certificate",
            TlsFailure::Other => "other",
        }
    }
}

/// This thread's shard index (see the module docs).
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// Counts by status class (1xx to 5xx) for one route, sharded as the
/// global counters are.
#[derive(Debug)]
pub struct ClassCounters {
    shards: Box<[ClassShard]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct ClassShard([AtomicU64; 5]);

impl Default for ClassCounters {
    fn default() -> Self {
        ClassCounters {
            shards: (0..SHARDS)
                .map(|_| ClassShard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
        }
    }
}

impl ClassCounters {
    /// Counts `status`; codes from 600 up (an upstream's) are not counted,
    /// as in `gatehouse_responses_total`.
    pub fn add(&self, status: http::StatusCode) {
        let Some(class) = usize::from(status.as_u16() / 100).checked_sub(1) else {
            return;
        };
        if let Some(slot) = self.shards[shard_index()].0.get(class) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn sum(&self, class: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[class].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Upper bounds of the upstream response-time buckets, in microseconds.
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// A response-time histogram (Prometheus cumulative buckets at scrape),
/// sharded as the counters are.
#[derive(Debug)]
pub struct Histogram {
    shards: Box<[HistShard]>,
}

#[derive(Debug)]
#[repr(align(128))]
struct HistShard {
    /// Per bucket, not cumulative; the last is beyond every bound.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            shards: (0..SHARDS)
                .map(|_| HistShard {
                    buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                    sum_us: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

impl Histogram {
    pub fn observe(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US.partition_point(|&b| b < us);
        let shard = &self.shards[shard_index()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Per-bucket counts summed over the shards, and the sum in µs.
    fn totals(&self) -> ([u64; BUCKETS_US.len() + 1], u64) {
        let mut buckets = [0u64; BUCKETS_US.len() + 1];
        let mut sum = 0u64;
        for s in &*self.shards {
            for (b, n) in buckets.iter_mut().zip(&s.buckets) {
                *b = b.wrapping_add(n.load(Ordering::Relaxed));
            }
            sum = sum.wrapping_add(s.sum_us.load(Ordering::Relaxed));
        }
        (buckets, sum)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let unrouted = Arc::new(ClassCounters::default());
        let routes = BTreeMap::from([(String::new(), Arc::clone(&unrouted))]);
        Metrics {
            unrouted,
            shards: (0..SHARDS)
                .map(|_| Shard(std::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            routes: Mutex::new(routes),
            upstreams: Mutex::default(),
            auth_refused: (0..SHARDS).map(|_| Mutex::default()).collect(),
            logins: std::array::from_fn(|_| AtomicU64::new(0)),
            tls_failures: std::array::from_fn(|_| AtomicU64::new(0)),
            started: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// What the gauges read at a scrape, from outside the counters.
pub struct Gauges {
    /// Entries in the current snapshot's verified-claims cache (moka's
    /// estimate).
    pub cache_entries: u64,
    /// Each `http://` or `https://` target of each upstream: `(upstream, target, in)`,
    /// `in` while it takes requests.
    pub targets: Vec<(String, String, bool)>,
    /// Each `jwks_url` issuer: `(issuer, keys fetched, failed fetches in a
    /// row)`.
    pub jwks: Vec<(String, usize, u32)>,
}

impl Metrics {
    /// This thread's shard.
    fn shard(&self) -> &[AtomicU64; SLOTS] {
        &self.shards[shard_index()].0
    }

    /// The counters of the route named `name` (`""`: no route matched),
    /// the same ones across reloads.
    pub fn route(&self, name: &str) -> Arc<ClassCounters> {
        entry(&self.routes, name)
    }

    /// The response-time histogram of the upstream named `name`, the same
    /// one across reloads.
    pub fn upstream(&self, name: &str) -> Arc<Histogram> {
        entry(&self.upstreams, name)
    }

    /// A bearer token accepted on a route that wanted one.
    pub fn auth_ok(&self) {
        self.add(AUTH_OK);
    }

    /// A request refused at authentication or authorization: `outcome`
    /// (`missing_token`, `malformed`, `invalid_token`, `forbidden`) and,
    /// for the last two, the reason given to the client.
    pub fn auth_refused(&self, outcome: &'static str, reason: &'static str) {
        let shard = &self.auth_refused[shard_index()];
        let mut refused = shard.lock().unwrap_or_else(|p| p.into_inner());
        *refused.entry((outcome, reason)).or_default() += 1;
    }

    pub fn login(&self, outcome: LoginOutcome) {
        self.logins[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn add(&self, slot: usize) {
        self.shard()[slot].fetch_add(1, Ordering::Relaxed);
    }

    fn sum(&self, slot: usize) -> u64 {
        self.shards
            .iter()
            .map(|s| s.0[slot].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// A response sent to a client with `status`.
    pub fn response(&self, status: http::StatusCode) {
        // StatusCode holds 100..=999; codes beyond 599 are not counted.
        if let Some(slot) = usize::from(status.as_u16()).checked_sub(100)
            && slot < CODES
        {
            self.add(slot);
        }
    }

    /// A token answered from the verified-claims cache.
    pub fn cache_hit(&self) {
        self.add(CACHE_HIT);
    }

    /// A token that was not in the cache and went to verification.
    pub fn cache_miss(&self) {
        self.add(CACHE_MISS);
    }

    /// A client connection accepted; the returned guard counts it open
    /// until dropped.
    pub fn connection_opened(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        OpenConnection(std::sync::Arc::clone(self))
    }

    /// A TLS handshake with a client failed.
    pub fn tls_handshake_failed(&self, why: TlsFailure) {
        self.tls_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reload(&self, applied: bool) {
        let counter = if applied {
            &self.reloads_applied
        } else {
            &self.reloads_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every counter.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        header(
            w,
            "gatehouse_responses_total",
            "counter",
            "Responses the gateway sent to clients, by status code (the upstream's passed on, and its own).",
        );
        for (slot, code) in (0..CODES).zip(100u16..) {
            let n = self.sum(slot);
            if n > 0 {
                let _ = writeln!(w, "gatehouse_responses_total{{code=\"{code}\"}} {n}");
            }
        }
        let hits = self.sum(CACHE_HIT);
        let misses = self.sum(CACHE_MISS);
        header(
            w,
            "gatehouse_token_cache_requests_total",
            "counter",
            "Bearer tokens looked up in the verified-claims cache: a hit skips verification; a miss is verified (and cached if valid).",
        );
        let _ = writeln!(
            w,
            "gatehouse_token_cache_requests_total{{result=\"hit\"}} {hits}"
        );
        let _ = writeln!(
            w,
            "gatehouse_token_cache_requests_total{{result=\"miss\"}} {misses}"
        );
        metric(
            w,
            "gatehouse_token_cache_entries",
            "gauge",
            "Verified tokens held in the cache now (an estimate).",
            gauges.cache_entries,
        );
        header(
            w,
            "gatehouse_route_requests_total",
            "counter",
            "Proxied requests by route (host and path_prefix; \"\" when no route matched) and status class.",
        );
        let routes = named(&self.routes);
        for (route, counters) in &routes {
            for (class, name) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
                let n = counters.sum(class);
                if n > 0 {
                    let _ = writeln!(
                        w,
                        "gatehouse_route_requests_total{{route=\"{}\",class=\"{name}\"}} {n}",
                        escape(route)
                    );
                }
            }
        }
        header(
            w,
            "gatehouse_auth_total",
            "counter",
            "Bearer-token checks on routes that take a token: ok, or refused by outcome and reason.",
        );
        let _ = writeln!(
            w,
            "gatehouse_auth_total{{outcome=\"ok\",reason=\"\"}} {}",
            self.sum(AUTH_OK)
        );
        let mut refused: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        for shard in &*self.auth_refused {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in shard.iter() {
                *refused.entry(*k).or_default() += v;
            }
        }
        for ((outcome, reason), n) in refused {
            let _ = writeln!(
                w,
                "gatehouse_auth_total{{outcome=\"{outcome}\",reason=\"{}\"}} {n}",
                escape(reason)
            );
        }
        labelled(
            w,
            "gatehouse_tls_handshake_failures_total",
            "TLS handshakes with clients that failed, by reason (the client certificate's, with client_ca).",
            "reason",
            TlsFailure::ALL.map(|why| (why.name(), &self.tls_failures[why as usize])),
        );
        labelled(
            w,
            "gatehouse_logins_total",
            "POST /auth/login by outcome.",
            "outcome",
            LoginOutcome::ALL.map(|o| (o.name(), &self.logins[o as usize])),
        );
        header(
            w,
            "gatehouse_upstream_response_seconds",
            "histogram",
            "Time from the start of an upstream exchange (a pooled or new connection, the request and any body sent so far) to the response head, by upstream; exchanges that fail or time out are not observed.",
        );
        let upstreams = named(&self.upstreams);
        for (upstream, histogram) in &upstreams {
            let (buckets, sum_us) = histogram.totals();
            let name = escape(upstream);
            let mut cumulative = 0u64;
            for (bound, n) in BUCKETS_US.iter().zip(&buckets) {
                cumulative = cumulative.wrapping_add(*n);
                let le = *bound as f64 / 1e6;
                let _ = writeln!(
                    w,
                    "gatehouse_upstream_response_seconds_bucket{{upstream=\"{name}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative = cumulative.wrapping_add(buckets[BUCKETS_US.len()]);
            let _ = writeln!(
                w,
                "gatehouse_upstream_response_seconds_bucket{{upstream=\"{name}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(
                w,
                "gatehouse_upstream_response_seconds_sum{{upstream=\"{name}\"}} {}",
                sum_us as f64 / 1e6
            );
            let _ = writeln!(
                w,
                "gatehouse_upstream_response_seconds_count{{upstream=\"{name}\"}} {cumulative}"
            );
        }
        header(
            w,
            "gatehouse_upstream_target_up",
            "gauge",
            "1 while an upstream target takes requests: not skipped after a refused connection, not out by health check.",
        );
        for (upstream, target, up) in &gauges.targets {
            let _ = writeln!(
                w,
                "gatehouse_upstream_target_up{{upstream=\"{}\",target=\"{}\"}} {}",
                escape(upstream),
                escape(target),
                u8::from(*up)
            );
        }
        header(
            w,
            "gatehouse_jwks_keys",
            "gauge",
            "Keys fetched from an issuer's jwks_url and in use (0 until the first fetch succeeds).",
        );
        for (issuer, keys, _) in &gauges.jwks {
            let _ = writeln!(
                w,
                "gatehouse_jwks_keys{{issuer=\"{}\"}} {keys}",
                escape(issuer)
            );
        }
        header(
            w,
            "gatehouse_jwks_fetch_failures",
            "gauge",
            "Failed fetches of an issuer's jwks_url since the last one that succeeded.",
        );
        for (issuer, _, failures) in &gauges.jwks {
            let _ = writeln!(
                w,
                "gatehouse_jwks_fetch_failures{{issuer=\"{}\"}} {failures}",
                escape(issuer)
            );
        }
        metric(
            w,
            "gatehouse_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            self.connections_accepted.load(Ordering::Relaxed),
        );
        metric(
            w,
            "gatehouse_connections_open",
            "gauge",
            "Client connections open now, upgraded (WebSocket) ones included.",
            self.connections_open.load(Ordering::Relaxed),
        );
        header(
            w,
            "gatehouse_config_reloads_total",
            "counter",
            "SIGHUP reloads: applied, or refused (the old config kept).",
        );
        let applied = self.reloads_applied.load(Ordering::Relaxed);
        let refused = self.reloads_refused.load(Ordering::Relaxed);
        let _ = writeln!(
            w,
            "gatehouse_config_reloads_total{{result=\"applied\"}} {applied}"
        );
        let _ = writeln!(
            w,
            "gatehouse_config_reloads_total{{result=\"refused\"}} {refused}"
        );
        if let Some(rss) = resident_bytes() {
            metric(
                w,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss,
            );
        }
        metric(
            w,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            self.started,
        );
        header(
            w,
            "gatehouse_build_info",
            "gauge",
            "The running gatehouse's version.",
        );
        let _ = writeln!(
            w,
            "gatehouse_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

/// One open client connection (see [`Metrics::connection_opened`]).
pub struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The entry of a by-name registry for `name`, made if new.
fn entry<T: Default>(registry: &Mutex<BTreeMap<String, Arc<T>>>, name: &str) -> Arc<T> {
    let mut map = registry.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(map.entry(name.to_string()).or_default())
}

/// The entries of a by-name registry, copied out so no lock is held while
/// they are rendered.
fn named<T>(registry: &Mutex<BTreeMap<String, Arc<T>>>) -> Vec<(String, Arc<T>)> {
    let map = registry.lock().unwrap_or_else(|p| p.into_inner());
    map.iter()
        .map(|(k, v)| (k.clone(), Arc::clone(v)))
        .collect()
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A counter with one label: a series per `(label value, count)`.
fn labelled<'c>(
    w: &mut String,
    name: &str,
    help: &str,
    label: &str,
    series: impl IntoIterator<Item = (&'static str, &'c AtomicU64)>,
) {
    header(w, name, "counter", help);
    for (value, n) in series {
        let n = n.load(Ordering::Relaxed);
        let _ = writeln!(w, "{name}{{{label}=\"{value}\"}} {n}");
    }
}

fn metric(w: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    header(w, name, kind, help);
    let _ = writeln!(w, "{name} {value}");
}

/// A label value as the text format wants it: `\`, `"` and newlines escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// `VmRSS` of `/proc/self/status`, in bytes; `None` off Linux.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use std::sync::Arc;

    fn value(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn counts_from_every_thread_are_summed() {
        let m = Arc::new(Metrics::default());
        let threads: Vec<_> = (0..SHARDS + 3)
            .map(|_| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        m.response(StatusCode::OK);
                        m.cache_hit();
                    }
                    m.response(StatusCode::UNAUTHORIZED);
                    m.cache_miss();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = m.render(&Gauges {
            cache_entries: 7,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        let n = (SHARDS + 3) as u64;
        assert_eq!(
            value(&text, "gatehouse_responses_total{code=\"200\"}"),
            Some(100 * n)
        );
        assert_eq!(
            value(&text, "gatehouse_responses_total{code=\"401\"}"),
            Some(n)
        );
        assert_eq!(
            value(&text, "gatehouse_responses_total{code=\"404\"}"),
            None,
            "zeros are left out"
        );
        assert_eq!(
            value(
                &text,
                "gatehouse_token_cache_requests_total{result=\"hit\"}"
            ),
            Some(100 * n)
        );
        assert_eq!(
            value(
                &text,
                "gatehouse_token_cache_requests_total{result=\"miss\"}"
            ),
            Some(n)
        );
        assert_eq!(value(&text, "gatehouse_token_cache_entries"), Some(7));
    }

    #[test]
    fn the_edges_of_the_status_range_have_slots() {
        let m = Metrics::default();
        m.response(StatusCode::CONTINUE);
        m.response(StatusCode::from_u16(599).unwrap());
        m.response(StatusCode::from_u16(600).unwrap());
        m.response(StatusCode::from_u16(999).unwrap());
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        assert_eq!(
            value(&text, "gatehouse_responses_total{code=\"100\"}"),
            Some(1)
        );
        assert_eq!(
            value(&text, "gatehouse_responses_total{code=\"599\"}"),
            Some(1)
        );
        assert!(!text.contains("code=\"600\""));
        assert!(!text.contains("code=\"999\""));
    }

    #[test]
    fn open_connections_go_down_when_they_close() {
        let m = Arc::new(Metrics::default());
        let a = m.connection_opened();
        let b = m.connection_opened();
        drop(a);
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        assert_eq!(
            value(&text, "gatehouse_connections_accepted_total"),
            Some(2)
        );
        assert_eq!(value(&text, "gatehouse_connections_open"), Some(1));
        drop(b);
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        assert_eq!(value(&text, "gatehouse_connections_open"), Some(0));
    }

    #[test]
    fn targets_are_listed_with_escaped_labels() {
        let m = Metrics::default();
        let gauges = Gauges {
            cache_entries: 0,
            targets: vec![
                ("api".into(), "127.0.0.1:9000".into(), true),
                ("we\"ird\\name\n".into(), "10.0.0.1:80".into(), false),
            ],
            jwks: Vec::new(),
        };
        let text = m.render(&gauges);
        assert_eq!(
            value(
                &text,
                "gatehouse_upstream_target_up{upstream=\"api\",target=\"127.0.0.1:9000\"}"
            ),
            Some(1)
        );
        assert_eq!(
            value(
                &text,
                "gatehouse_upstream_target_up{upstream=\"we\\\"ird\\\\name\\n\",target=\"10.0.0.1:80\"}"
            ),
            Some(0)
        );
    }

    #[test]
    fn upstream_histograms_are_cumulative_with_sum_and_count() {
        let m = Metrics::default();
        let h = m.upstream("api");
        for us in [300, 2_000, 7_000_000] {
            h.observe(std::time::Duration::from_micros(us));
        }
        assert!(
            Arc::ptr_eq(&h, &m.upstream("api")),
            "one histogram per name"
        );
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        let bucket = |le: &str| {
            value(
                &text,
                &format!(
                    "gatehouse_upstream_response_seconds_bucket{{upstream=\"api\",le=\"{le}\"}}"
                ),
            )
        };
        assert_eq!(bucket("0.0005"), Some(1));
        assert_eq!(bucket("0.001"), Some(1));
        assert_eq!(bucket("0.0025"), Some(2));
        assert_eq!(bucket("5"), Some(2));
        assert_eq!(bucket("+Inf"), Some(3));
        assert_eq!(
            value(
                &text,
                "gatehouse_upstream_response_seconds_count{upstream=\"api\"}"
            ),
            Some(3)
        );
        assert!(
            text.contains("gatehouse_upstream_response_seconds_sum{upstream=\"api\"} 7.0023\n"),
            "{text}"
        );
    }

    #[test]
    fn route_counts_are_kept_by_name_and_class() {
        let m = Metrics::default();
        m.route("/api/").add(StatusCode::OK);
        m.route("/api/").add(StatusCode::NOT_FOUND);
        m.unrouted.add(StatusCode::NOT_FOUND);
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        let route = |r: &str, c: &str| {
            value(
                &text,
                &format!("gatehouse_route_requests_total{{route=\"{r}\",class=\"{c}\"}}"),
            )
        };
        assert_eq!(route("/api/", "2xx"), Some(1));
        assert_eq!(route("/api/", "4xx"), Some(1));
        assert_eq!(route("", "4xx"), Some(1));
        assert_eq!(route("/api/", "5xx"), None, "zeros are left out");
    }

    #[test]
    fn every_series_has_help_and_type() {
        let m = Metrics::default();
        m.response(StatusCode::OK);
        m.route("/r/").add(StatusCode::OK);
        m.upstream("u").observe(std::time::Duration::from_millis(1));
        m.auth_refused("invalid_token", "token expired");
        m.login(LoginOutcome::Success);
        m.reload(true);
        m.reload(false);
        let text = m.render(&Gauges {
            cache_entries: 0,
            targets: Vec::new(),
            jwks: Vec::new(),
        });
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            // A histogram's series carry suffixes of its one name.
            let name = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| text.contains(&format!("# TYPE {base} histogram")))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP"
            );
        }
        assert_eq!(
            value(&text, "gatehouse_config_reloads_total{result=\"refused\"}"),
            Some(1)
        );
        if cfg!(target_os = "linux") {
            assert!(value(&text, "process_resident_memory_bytes").unwrap() > 0);
        }
    }
}
