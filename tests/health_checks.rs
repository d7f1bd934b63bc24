//! Active health checks (`[[upstreams]] health_check`): a target that fails
//! its probes leaves the round-robin and comes back when they pass again;
//! the probes of a replaced snapshot stop.
mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gatehouse::state::Snapshot;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use support::*;
use tokio::net::TcpListener;

/// An upstream whose `/healthz` answers 200 while `healthy`, else 503; any
/// other path answers "b".
#[derive(Clone, Default)]
struct Flaky {
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    hits: Arc<AtomicUsize>,
    /// (Host, User-Agent) of the last probe.
    last_probe: Arc<Mutex<Option<(String, String)>>>,
}

impl Flaky {
    async fn start(&self) -> std::net::SocketAddr {
        let me = self.clone();
        serve_upstream(move |req: Request<Incoming>| {
            let me = me.clone();
            async move {
                let header = |name| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let status = if req.uri().path() == "/healthz" {
                    *me.last_probe.lock().unwrap() = Some((header("host"), header("user-agent")));
                    me.probes.fetch_add(1, Ordering::SeqCst);
                    if me.healthy.load(Ordering::SeqCst) {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    }
                } else {
                    me.hits.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                };
                let mut rsp = Response::new(Full::new(Bytes::from_static(b"b")));
                *rsp.status_mut() = status;
                Ok::<_, Infallible>(rsp)
            }
        })
        .await
    }

    fn probes(&self) -> usize {
        self.probes.load(Ordering::SeqCst)
    }
}

fn config(targets: &[String], health_check: &str) -> String {
    let urls: Vec<String> = targets.iter().map(|t| format!("http://{t}")).collect();
    pool_config(&urls, health_check)
}

const EVERY_100MS: &str = r#"health_check = { path = "/healthz", interval = "100ms" }"#;

/// Waits (up to 10 s) until `flaky` has seen `n` more probes than `from`.
async fn probes_after(flaky: &Flaky, from: usize, n: usize) {
    for _ in 0..200 {
        if flaky.probes() >= from + n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{n} probes after {from} never came: {}", flaky.probes());
}

/// Sends `n` requests (each must get 200); how many reached `flaky`. (The
/// other target's own count would include its probes.)
async fn share_of(gw: &TestGateway, flaky: &Flaky, n: usize) -> usize {
    let before = flaky.hits.load(Ordering::SeqCst);
    for i in 0..n {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200, "request {i}");
    }
    flaky.hits.load(Ordering::SeqCst) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_its_health_check_leaves_the_round_robin_and_comes_back() {
    let a = TestUpstream::start().await;
    let b = Flaky::default();
    let b_addr = b.start().await;
    let gw = TestGateway::start(&config(
        &[a.addr.to_string(), b_addr.to_string()],
        EVERY_100MS,
    ))
    .await;

    // Three failed probes (and one more, to be past the third's verdict).
    probes_after(&b, 0, 4).await;
    assert_eq!(
        share_of(&gw, &b, 10).await,
        0,
        "b still served while failing"
    );
    let admin = gw.admin().await;
    let up = |t: std::net::SocketAddr| {
        format!("gatehouse_upstream_target_up{{upstream=\"pool\",target=\"{t}\"}}")
    };
    let text = scrape(admin).await;
    assert_eq!(metric(&text, &up(a.addr)), Some(1), "{text}");
    assert_eq!(metric(&text, &up(b_addr)), Some(0), "{text}");
    let (host, agent) = b.last_probe.lock().unwrap().clone().unwrap();
    assert_eq!(host, b_addr.to_string());
    assert_eq!(agent, "gatehouse-health-check");

    // Two passed probes put it back.
    b.healthy.store(true, Ordering::SeqCst);
    let now = b.probes();
    probes_after(&b, now, 3).await;
    assert_eq!(share_of(&gw, &b, 10).await, 5, "round-robin again");
    assert_eq!(metric(&scrape(admin).await, &up(b_addr)), Some(1));
}

/// A target that refuses connections is taken out by its probes before any
/// request has to fail on it (passive ejection would cost one 502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_is_taken_out_without_a_502() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let live = Flaky::default();
    live.healthy.store(true, Ordering::SeqCst);
    let live_addr = live.start().await;
    let gw = TestGateway::start(&config(
        &[dead.to_string(), live_addr.to_string()],
        EVERY_100MS,
    ))
    .await;
    // The probes of both targets tick together: by the live one's sixth,
    // the dead one's third has failed (with time to spare).
    probes_after(&live, 0, 6).await;
    for i in 0..6 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200, "request {i}");
    }
    assert_eq!(live.hits.load(Ordering::SeqCst), 6);
}

/// A healthy target and `b`, failing: the gateway (probing every 100 ms)
/// once `b`'s probes have taken it out, and the two targets' addresses.
async fn b_taken_out() -> (TestUpstream, Flaky, [String; 2], TestGateway) {
    let a = TestUpstream::start().await;
    let b = Flaky::default();
    let b_addr = b.start().await;
    let targets = [a.addr.to_string(), b_addr.to_string()];
    let gw = TestGateway::start(&config(&targets, EVERY_100MS)).await;
    // Three failed probes, and one more to be past the third's verdict.
    probes_after(&b, 0, 4).await;
    (a, b, targets, gw)
}

/// The probes belong to the snapshot: a reload without `health_check`
/// stops them, and the target they had taken out is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_without_health_check_stops_the_probes() {
    let (_a, b, targets, gw) = b_taken_out().await;
    assert_eq!(share_of(&gw, &b, 4).await, 0);

    let path = write_config(gw.dir.path(), &config(&targets, ""));
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    // A probe already under way may still land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = b.probes();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(b.probes(), settled, "the old snapshot's probes still run");
    assert_eq!(share_of(&gw, &b, 4).await, 2, "b served again");
}

/// A reload that keeps `health_check` keeps what the probes found (the
/// target they took out stays out) and stops the old snapshot's probes
/// even while a request still holds that snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeping_health_check_keeps_a_target_out_and_does_not_double_the_probes() {
    let (_a, b, targets, gw) = b_taken_out().await;
    // A slow request holds the old snapshot across the reload.
    let slow = tokio::spawn({
        let url = gw.url("/slow/3000");
        async move { get(&url, &[]).await.status }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let path = write_config(gw.dir.path(), &config(&targets, EVERY_100MS));
    gw.shared.store_snapshot(Snapshot::load(&path).unwrap());
    assert_eq!(share_of(&gw, &b, 6).await, 0, "b back in after the reload");
    // One prober per target: about ten probes a second, not twenty.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = b.probes();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let per_second = b.probes() - from;
    assert!(per_second <= 14, "{per_second} probes in a second");
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
}
