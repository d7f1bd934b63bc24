//! The whole proxy path: the real server on loopback in front of an
//! in-process upstream, one keep-alive HTTP/1.1 connection per gateway.
//! Five cases: a no-auth route, a cached token (HS256, RS256), and a token
//! that misses the cache on every request (HS256, RS256: a gateway with
//! `[cache] max_entries = 1` cycling through [`POOL`] distinct tokens).
//!
//! Criterion measures each case, then the same process times
//! [`ROUNDS`] × [`PER_ROUND`] sequential requests per case (rounds
//! interleaved, after a warm-up) and prints each case's mean and its ratio
//! to the no-auth route, with the share of requests that reached a
//! signature check. `cargo bench --bench proxy_path`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

// The integration tests' harness: keys, config files, signing, the gateway
// on 127.0.0.1:0 and a real hyper upstream.
#[path = "../tests/support/mod.rs"]
mod support;

use support::{TestGateway, TestUpstream};

/// Distinct pre-signed tokens each uncached case cycles through.
const POOL: usize = 256;
/// Requests per case before the table's timing starts.
const WARM_UP: u64 = 500;
/// The table's timing: rounds (cases interleaved) × requests per round.
const ROUNDS: u64 = 10;
const PER_ROUND: u64 = 500;
/// Longest any one phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/public/"
upstream = "up"
auth = "none"

[[routes]]
path_prefix = "/api/"
upstream = "up"
"#;

/// One keep-alive HTTP/1.1 connection (TCP_NODELAY) to a gateway, opened
/// again when the gateway has closed it (it closes connections idle for
/// `header_read_timeout`, 10 s, as they are while other cases run).
struct Conn {
    addr: SocketAddr,
    host: HeaderValue,
    sender: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
            sender: Mutex::new(None),
        }
    }

    async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }
}

/// One benchmarked request shape.
struct Case<'a> {
    name: &'static str,
    gw: &'a TestGateway,
    conn: &'a Conn,
    path: &'static str,
    /// `Authorization` values, used in turn (none: no header).
    auth: Vec<HeaderValue>,
    /// Where the next request's token comes from in `auth`.
    cursor: AtomicU64,
}

impl Case<'_> {
    /// Sends `n` sequential requests on the case's connection; their time.
    async fn run(&self, n: u64) -> Duration {
        let mut guard = self.conn.sender.lock().await;
        if guard.as_ref().is_none_or(SendRequest::is_closed) {
            *guard = Some(Conn::connect(self.conn.addr).await);
        }
        let sender = guard.as_mut().unwrap();
        let start = Instant::now();
        for _ in 0..n {
            let mut req = Request::get(self.path).header(header::HOST, self.conn.host.clone());
            if !self.auth.is_empty() {
                let i = self.cursor.fetch_add(1, Ordering::Relaxed) as usize % self.auth.len();
                req = req.header(header::AUTHORIZATION, self.auth[i].clone());
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            if sender.ready().await.is_err() {
                // Closed by the gateway since the check above (rare).
                *sender = Conn::connect(self.conn.addr).await;
            }
            let rsp = sender
                .send_request(req)
                .await
                .expect("the gateway answered");
            let status = rsp.status();
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            black_box(body);
        }
        start.elapsed()
    }

    /// [`Case::run`], also returning how many requests reached a signature check.
    async fn run_counted(&self, n: u64) -> (Duration, u64) {
        let before = self.gw.signature_checks();
        let took = self.run(n).await;
        (took, self.gw.signature_checks() - before)
    }
}

/// `n` distinct tokens (subjects `user-0`…) signed with `alg` under key `kid`.
fn tokens(alg: Algorithm, kid: &str, n: usize) -> Vec<HeaderValue> {
    (0..n)
        .map(|i| {
            let mut claims = support::claims(&format!("user-{i}"));
            claims["roles"] = serde_json::json!(["user"]);
            let t = support::sign(alg, Some(kid), &claims);
            HeaderValue::from_str(&format!("Bearer {t}")).unwrap()
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // As criterion decides: `cargo bench` passes `--bench`; `cargo test
    // --benches` does not, and then everything runs once, briefly.
    let full = has("--bench") && !has("--test");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_up, cached_gw, tiny_gw) = rt.block_on(async {
        let up = TestUpstream::start().await;
        let cached = TestGateway::start(&support::config_with(up.addr, ROUTES)).await;
        let tiny = TestGateway::start(&support::config_with(
            up.addr,
            &format!("[cache]\nmax_entries = 1\n{ROUTES}"),
        ))
        .await;
        (up, cached, tiny)
    });
    let (cached_conn, tiny_conn) = (Conn::new(cached_gw.addr), Conn::new(tiny_gw.addr));

    let case = |name, gw, conn, path, auth| Case {
        name,
        gw,
        conn,
        path,
        auth,
        cursor: AtomicU64::new(0),
    };
    let cases = [
        case("no_auth", &cached_gw, &cached_conn, "/public/x", vec![]),
        case(
            "cached/HS256",
            &cached_gw,
            &cached_conn,
            "/api/x",
            tokens(Algorithm::HS256, "hs", 1),
        ),
        case(
            "cached/RS256",
            &cached_gw,
            &cached_conn,
            "/api/x",
            tokens(Algorithm::RS256, "rs", 1),
        ),
        case(
            "uncached/HS256",
            &tiny_gw,
            &tiny_conn,
            "/api/x",
            tokens(Algorithm::HS256, "hs", POOL),
        ),
        case(
            "uncached/RS256",
            &tiny_gw,
            &tiny_conn,
            "/api/x",
            tokens(Algorithm::RS256, "rs", POOL),
        ),
    ];
    // Every path answers 200 (and the cached tokens get cached).
    for c in &cases {
        rt.block_on(c.run(2));
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = criterion.benchmark_group("proxy_path");
    for c in &cases {
        let before = (c.cursor.load(Ordering::Relaxed), c.gw.signature_checks());
        g.bench_function(c.name, |b| b.to_async(&rt).iter_custom(|n| c.run(n)));
        if c.name.starts_with("uncached") {
            let sent = c.cursor.load(Ordering::Relaxed) - before.0;
            let checks = c.gw.signature_checks() - before.1;
            eprintln!(
                "{}: {checks} signature checks for {sent} requests (miss rate {:.2}%)",
                c.name,
                100.0 * checks as f64 / sent.max(1) as f64
            );
        }
    }
    g.finish();
    criterion.final_summary();

    if has("--list") {
        return;
    }
    let (warm_up, rounds, per_round) = if full {
        (WARM_UP, ROUNDS, PER_ROUND)
    } else {
        (5, 1, 10)
    };
    let started = Instant::now();
    let measured = rt.block_on(async {
        tokio::time::timeout(PHASE_LIMIT, async {
            for c in &cases {
                c.run(warm_up).await;
            }
            // Per case: each round's time, signature checks.
            let mut m = vec![(Vec::new(), 0u64); cases.len()];
            for _ in 0..rounds {
                for (c, m) in cases.iter().zip(&mut m) {
                    let (took, checks) = c.run_counted(per_round).await;
                    m.0.push(took);
                    m.1 += checks;
                }
            }
            m
        })
        .await
        .expect("the table's requests finished in time")
    });
    let n = rounds * per_round;
    let us = |d: Duration, n: u64| d.as_secs_f64() * 1e6 / n as f64;
    // The mean over all rounds, and the median round (steadier on a busy machine).
    let summary = |rounds: &[Duration]| {
        let mut sorted = rounds.to_vec();
        sorted.sort();
        let median = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2;
        (us(rounds.iter().sum(), n), us(median, per_round))
    };
    let (base, base_median) = summary(&measured[0].0);
    println!();
    println!(
        "proxy path, {n} sequential requests per case ({rounds} interleaved rounds of \
         {per_round}, after {warm_up} warm-up), one keep-alive connection per gateway, \
         {} cores:",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<16} {:>10} {:>8} {:>16} {:>8} {:>14}",
        "case", "mean µs", "ratio", "median-round µs", "ratio", "sig. checks"
    );
    for (c, (rounds, checks)) in cases.iter().zip(&measured) {
        let (mean, median) = summary(rounds);
        println!(
            "{:<16} {:>10.1} {:>8.2} {:>16.1} {:>8.2} {:>13.2}%",
            c.name,
            mean,
            mean / base,
            median,
            median / base_median,
            100.0 * *checks as f64 / n as f64
        );
    }
    println!(
        "(uncached: [cache] max_entries = 1, {POOL} distinct tokens in turn; sig. checks = \
         requests that missed the cache; table took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
