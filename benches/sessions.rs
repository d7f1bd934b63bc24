//! The token service under load, through a real gateway on loopback in
//! front of an in-process upstream:
//!
//! - login: argon2id verifications per second (the shipped parameters)
//!   through `POST /auth/login`, [`LOGINS`] logins by 2 × cores clients
//!   spread over [`USERS`] usernames (attempts for one username run one at a
//!   time by design), against the limit cores ÷ (one
//!   `PasswordHash::verify`, timed in this process);
//! - the proxy's p50/p99 latency (cached token, sequential requests) alone,
//!   then while a login burst runs;
//! - refresh: rotations per second with the embedded store (each answer
//!   waits for the redb commit, fsync included), one client and
//!   [`REFRESH_CLIENTS`] clients, each refreshing in a chain;
//! - the proxy's p50/p99 on a second gateway whose signing key is RS256
//!   (two RSA signatures of about a millisecond per refresh), alone and
//!   while [`REFRESH_CLIENTS`] clients refresh in chains.
//!
//! Prints a table; `cargo bench --bench sessions`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse::login::PasswordHash;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

// The integration tests' harness: the gateway on 127.0.0.1:0 and a real
// hyper upstream.
#[path = "../tests/support/mod.rs"]
mod support;

use support::{TestGateway, TestUpstream};

const PW: &str = "correct horse battery staple";
/// Users in the users file (`user00`, …), all with one argon2id hash of [`PW`].
const USERS: usize = 16;
/// Logins per burst.
const LOGINS: usize = 128;
/// `PasswordHash::verify` calls timed for the limit.
const VERIFIES: u32 = 8;
/// Proxy requests timed alone.
const PROXY_ALONE: usize = 10_000;
/// Rotations per client: one client, then [`REFRESH_CLIENTS`].
const ROTATIONS_SEQUENTIAL: usize = 300;
const ROTATIONS_EACH: usize = 60;
const REFRESH_CLIENTS: usize = 8;
/// Longest any one phase may take before the bench gives up.
const PHASE_LIMIT: Duration = Duration::from_secs(60);

/// How much work each phase does: the full counts under `cargo bench`, a
/// few requests each under `cargo test --benches`.
#[derive(Clone, Copy)]
struct Counts {
    logins: usize,
    verifies: u32,
    proxy_alone: usize,
    rotations_sequential: usize,
    rotations_each: usize,
}

fn users_toml(hash: &str) -> String {
    (0..USERS)
        .map(|i| {
            format!(
                "[[users]]\nusername = \"user{i:02}\"\npassword_hash = \"{hash}\"\n\
                 subject = \"sub-{i:02}\"\nroles = [\"user\"]\n\n"
            )
        })
        .collect()
}

/// The generated Ed25519 key signs; login limits high enough not to matter.
fn config(up: SocketAddr) -> String {
    format!(
        r#"
[server]
admin_listen = ""

[tokens]
leeway = "0s"

[login]
users_file = "users.toml"
rate_limit_per_ip = "100000/min"
rate_limit_per_user = "100000/min"

[[upstreams]]
name = "up"
targets = ["http://{up}"]
timeout = "2s"

[[routes]]
path_prefix = "/api/"
upstream = "up"
"#
    )
}

/// One keep-alive HTTP/1.1 connection (TCP_NODELAY) to the gateway.
struct Conn {
    host: HeaderValue,
    sender: SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn {
            host: HeaderValue::from_str(&addr.to_string()).unwrap(),
            sender,
        }
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        auth: Option<&HeaderValue>,
        body: Option<&Value>,
    ) -> (StatusCode, Bytes) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.host.clone());
        if let Some(auth) = auth {
            req = req.header(header::AUTHORIZATION, auth.clone());
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).unwrap();
        self.sender
            .ready()
            .await
            .expect("the connection stays open");
        let rsp = self
            .sender
            .send_request(req)
            .await
            .expect("the gateway answered");
        let status = rsp.status();
        (status, rsp.into_body().collect().await.unwrap().to_bytes())
    }

    async fn get(&mut self, path: &str, auth: &HeaderValue) -> (StatusCode, Bytes) {
        self.send(Method::GET, path, Some(auth), None).await
    }

    async fn post(&mut self, path: &str, body: &Value) -> (StatusCode, Bytes) {
        self.send(Method::POST, path, None, Some(body)).await
    }

    /// Logs `user` in; the `(access, refresh)` tokens.
    async fn login(&mut self, user: usize) -> (String, String) {
        let creds = json!({ "username": format!("user{user:02}"), "password": PW });
        let (status, body) = self.post("/auth/login", &creds).await;
        pair(status, &body)
    }
}

fn pair(status: StatusCode, body: &[u8]) -> (String, String) {
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
    let j: Value = serde_json::from_slice(body).unwrap();
    let field = |name: &str| j[name].as_str().unwrap().to_string();
    (field("access_token"), field("refresh_token"))
}

/// `logins` logins by `clients` concurrent clients (one connection each),
/// the i-th as `user{i % USERS}`; its time and how many got a 200.
async fn login_burst(addr: SocketAddr, logins: usize, clients: usize) -> (Duration, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut conn = Conn::open(addr).await;
            let mut ok = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= logins {
                    return ok;
                }
                let creds = json!({ "username": format!("user{:02}", i % USERS), "password": PW });
                let (status, body) = conn.post("/auth/login", &creds).await;
                if status == StatusCode::OK {
                    ok += 1;
                } else {
                    eprintln!("login {i}: {status} {}", String::from_utf8_lossy(&body));
                }
            }
        });
    }
    let ok = tasks.join_all().await.into_iter().sum();
    (start.elapsed(), ok)
}

/// Sequential proxy requests with `auth`: `n` of them, or (`n` = 0) as many
/// as fit before `until` finishes. Each one's latency, sorted.
async fn proxy_latencies<T>(
    conn: &mut Conn,
    auth: &HeaderValue,
    n: usize,
    until: Option<&tokio::task::JoinHandle<T>>,
) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n.max(1024));
    loop {
        let done = match until {
            Some(h) => h.is_finished(),
            None => out.len() >= n,
        };
        if done {
            break;
        }
        let t = Instant::now();
        let (status, body) = conn.get("/api/x", auth).await;
        out.push(t.elapsed());
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    out.sort();
    out
}

/// A keep-alive connection to the gateway at `addr` logged in as `user00`,
/// its `Authorization` value, and the latencies of `n` proxy requests on it
/// alone (after 200 untimed).
async fn proxy_alone(addr: SocketAddr, n: usize) -> (Conn, HeaderValue, Vec<Duration>) {
    let mut conn = Conn::open(addr).await;
    let (access, _) = conn.login(0).await;
    let auth = HeaderValue::from_str(&format!("Bearer {access}")).unwrap();
    phase(
        "warm-up",
        proxy_latencies::<()>(&mut conn, &auth, 200, None),
    )
    .await;
    let alone = phase(
        "the proxy alone",
        proxy_latencies::<()>(&mut conn, &auth, n, None),
    )
    .await;
    (conn, auth, alone)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// `clients` clients, each logged in once (not timed), then each refreshing
/// `rotations` times in a chain; the time of the refreshes.
async fn refresh_chains(addr: SocketAddr, clients: usize, rotations: usize) -> Duration {
    chains(logged_in(addr, clients).await, rotations).await
}

/// `clients` connections, each with a refresh token of its own.
async fn logged_in(addr: SocketAddr, clients: usize) -> Vec<(Conn, String)> {
    let mut ready = Vec::new();
    for c in 0..clients {
        let mut conn = Conn::open(addr).await;
        let (_, refresh) = conn.login(c % USERS).await;
        ready.push((conn, refresh));
    }
    ready
}

/// Each of `ready` refreshing `rotations` times in a chain; their time.
async fn chains(ready: Vec<(Conn, String)>, rotations: usize) -> Duration {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (mut conn, mut refresh) in ready {
        tasks.spawn(async move {
            for _ in 0..rotations {
                let (status, body) = conn
                    .post("/auth/refresh", &json!({ "refresh_token": refresh }))
                    .await;
                refresh = pair(status, &body).1;
            }
        });
    }
    tasks.join_all().await;
    start.elapsed()
}

/// Mean time of a 4 KiB write + `sync_data` in `dir`: what one fsync costs there.
fn fsync_cost(dir: &std::path::Path, n: u32) -> Duration {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = [7u8; 4096];
    let start = Instant::now();
    for _ in 0..n {
        f.write_all(&block).unwrap();
        f.sync_data().unwrap();
    }
    let took = start.elapsed() / n;
    drop(f);
    let _ = std::fs::remove_file(path);
    took
}

async fn phase<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(PHASE_LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} took over {PHASE_LIMIT:?}"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        return;
    }
    // As criterion decides: `cargo bench` passes `--bench`; `cargo test
    // --benches` does not, and then every phase runs briefly.
    let counts = if has("--bench") && !has("--test") {
        Counts {
            logins: LOGINS,
            verifies: VERIFIES,
            proxy_alone: PROXY_ALONE,
            rotations_sequential: ROTATIONS_SEQUENTIAL,
            rotations_each: ROTATIONS_EACH,
        }
    } else {
        Counts {
            logins: 4,
            verifies: 1,
            proxy_alone: 20,
            rotations_sequential: 3,
            rotations_each: 2,
        }
    };
    let started = Instant::now();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let clients = 2 * cores;

    // The limit: cores ÷ one verification, timed here (after one untimed).
    let hash = gatehouse::auth::password::hash(PW.as_bytes()).unwrap();
    let parsed = PasswordHash::parse(&hash).unwrap();
    assert!(parsed.verify(PW.as_bytes()));
    let t = Instant::now();
    for _ in 0..counts.verifies {
        assert!(parsed.verify(PW.as_bytes()));
    }
    let verify = t.elapsed() / counts.verifies;
    let limit = cores as f64 / verify.as_secs_f64();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let up = TestUpstream::start().await;
        let users = users_toml(&hash);
        let gw = TestGateway::start_with_files(&config(up.addr), &[("users.toml", &users)]).await;
        let addr = gw.addr;

        // Logins alone.
        let (burst, ok) = phase("the login burst", login_burst(addr, counts.logins, clients)).await;
        let logins_per_s = ok as f64 / burst.as_secs_f64();

        // The proxy alone, then during a second burst.
        let (mut conn, auth, alone) = proxy_alone(addr, counts.proxy_alone).await;
        let during_burst = tokio::spawn(login_burst(addr, counts.logins, clients));
        let during = phase(
            "the proxy during logins",
            proxy_latencies(&mut conn, &auth, 0, Some(&during_burst)),
        )
        .await;
        let (burst2, ok2) = during_burst.await.unwrap();

        // Refresh chains.
        let seq = phase(
            "sequential refreshes",
            refresh_chains(addr, 1, counts.rotations_sequential),
        )
        .await;
        let conc = phase(
            "concurrent refreshes",
            refresh_chains(addr, REFRESH_CLIENTS, counts.rotations_each),
        )
        .await;
        let fsync = fsync_cost(gw.dir.path(), if counts.logins > 4 { 50 } else { 2 });

        // A second gateway that signs with RS256: the proxy alone, then
        // while refreshes (two RSA signatures each) run.
        let rs_config = config(up.addr).replacen(
            "[tokens]\n",
            "[[keys]]\nid = \"rs\"\nalgorithm = \"RS256\"\nprivate_key = \"rs.pem\"\nsign = true\n\n[tokens]\n",
            1,
        );
        let rs_gw = TestGateway::start_with_files(&rs_config, &[("users.toml", &users)]).await;
        let (mut rs_conn, rs_auth, rs_alone) = proxy_alone(rs_gw.addr, counts.proxy_alone).await;
        // Logged in first: the proxy is timed during the refreshes alone.
        let ready = logged_in(rs_gw.addr, REFRESH_CLIENTS).await;
        let rs_refreshes = tokio::spawn(chains(ready, counts.rotations_each));
        let rs_during = phase(
            "the proxy during RS256 refreshes",
            proxy_latencies(&mut rs_conn, &rs_auth, 0, Some(&rs_refreshes)),
        )
        .await;
        let rs_took = rs_refreshes.await.unwrap();

        println!();
        println!("sessions, {cores} cores");
        println!();
        println!("login (argon2id m=19456 t=2 p=1, {USERS} users, {clients} clients):");
        println!(
            "  one PasswordHash::verify           {:>9.1} ms (mean of {})",
            ms(verify),
            counts.verifies
        );
        println!("  limit = {cores} cores / verify          {limit:>9.1} logins/s");
        println!(
            "  POST /auth/login                   {logins_per_s:>9.1} logins/s \
             ({ok}/{} ok in {:.2} s) = {:.2} × limit",
            counts.logins,
            burst.as_secs_f64(),
            logins_per_s / limit
        );
        println!(
            "  same, with the proxy loaded below  {:>9.1} logins/s ({ok2}/{} ok in {:.2} s)",
            ok2 as f64 / burst2.as_secs_f64(),
            counts.logins,
            burst2.as_secs_f64()
        );
        println!();
        println!("proxy latency (cached token, sequential, one keep-alive connection):");
        println!(
            "  {:<22} {:>8} {:>9} {:>9} {:>9}",
            "", "requests", "p50 µs", "p99 µs", "max µs"
        );
        for (name, l) in [
            ("alone", &alone),
            ("during login burst", &during),
            ("alone, RS256 signer", &rs_alone),
            ("during RS256 refreshes", &rs_during),
        ] {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            println!(
                "  {name:<22} {:>8} {:>9.0} {:>9.0} {:>9.0}",
                l.len(),
                us(percentile(l, 0.50)),
                us(percentile(l, 0.99)),
                us(*l.last().unwrap_or(&Duration::ZERO)),
            );
        }
        println!();
        println!("refresh (rotation with the embedded store, chained):");
        let seq_n = counts.rotations_sequential;
        let conc_n = REFRESH_CLIENTS * counts.rotations_each;
        println!(
            "  1 client                           {:>9.1} rotations/s ({seq_n} in {:.2} s, \
             {:.2} ms each)",
            seq_n as f64 / seq.as_secs_f64(),
            seq.as_secs_f64(),
            ms(seq) / seq_n as f64
        );
        println!(
            "  {REFRESH_CLIENTS} clients                          {:>9.1} rotations/s \
             ({conc_n} in {:.2} s)",
            conc_n as f64 / conc.as_secs_f64(),
            conc.as_secs_f64()
        );
        println!(
            "  {REFRESH_CLIENTS} clients, RS256 signer             {:>9.1} rotations/s \
             ({conc_n} in {:.2} s, while the proxy was timed)",
            conc_n as f64 / rs_took.as_secs_f64(),
            rs_took.as_secs_f64()
        );
        println!(
            "  (a 4 KiB write + fsync in the store's directory: {:.2} ms)",
            ms(fsync)
        );
        drop(rs_gw);
        drop(gw);
        drop(up);
    });
    println!();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
}
