//! `protocol = "http2"` upstreams (gRPC): requests become streams of one
//! shared HTTP/2 connection per target (h2c for `http://`, h2 by ALPN for
//! `https://`), with `:authority` what `Host` would be, `TE: trailers`
//! passed on, and the answer's trailers (gRPC's status) passed back.
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::*;
use tokio::net::{TcpListener, TcpStream};

/// An HTTP/2-only upstream (h2c, or h2 over TLS with the test certificate
/// `a`): answers `{"version", "path", "authority", "te", "subject"}` with
/// the trailer `grpc-status: 0`. Counts connections.
struct H2Upstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Upstream {
    async fn start(tls: bool) -> H2Upstream {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), tls, None)
    }

    /// On `listener`; at most `max_streams` concurrent streams per connection.
    fn start_on(listener: TcpListener, tls: bool, max_streams: Option<u32>) -> H2Upstream {
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&connections);
        let acceptor = tls.then(|| {
            let mut config = (*tls_server_config("a")).clone();
            config.alpn_protocols = vec![b"h2".to_vec()];
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let mut server = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    server.max_concurrent_streams(max_streams);
                    let svc = service_fn(answer);
                    match acceptor {
                        None => {
                            let _ = server.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            let _ = server.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                });
            }
        });
        H2Upstream {
            addr,
            connections,
            task,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Stopping the task drops the listener and every connection.
impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/upload` reads the whole request body first.
async fn answer(req: Request<Incoming>) -> Result<Response<AnswerBody>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == "/upload" {
        let _ = body.collect().await;
    }
    let req = Request::from_parts(parts, ());
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let seen = json!({
        "version": format!("{:?}", req.version()),
        "path": req.uri().path(),
        "authority": req.uri().authority().map(|a| a.as_str().to_string()),
        "host": header("host"),
        "te": header("te"),
        "subject": header("x-auth-subject"),
        "connection": header("connection"),
    });
    // A small delay, so that concurrent requests overlap.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tx.try_send(Ok::<_, Infallible>(Frame::data(Bytes::from(
        seen.to_string(),
    ))))
    .unwrap();
    tx.try_send(Ok(Frame::trailers(trailers))).unwrap();
    let body = StreamBody::new(tokio_stream_from(rx));
    Ok(Response::new(BodyExt::boxed(body)))
}

fn h2_config(targets: &[String], extra: &str) -> String {
    pool_config(targets, &format!("protocol = \"http2\"\n{extra}"))
}

#[tokio::test]
async fn http2_targets_take_requests_as_streams_of_one_connection() {
    let up = H2Upstream::start(false).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{}", up.addr)], "")).await;
    let requests = (0..20).map(|i| {
        let url = gw.url(&format!("/svc/{i}"));
        tokio::spawn(async move { get(&url, &[]).await })
    });
    for (i, r) in futures_join(requests).await.into_iter().enumerate() {
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let seen = r.json();
        assert_eq!(seen["version"], "HTTP/2.0");
        assert_eq!(seen["path"], format!("/svc/{i}"));
        // The client's Host, as :authority; no Host or Connection beside it.
        assert_eq!(seen["authority"], gw.addr.to_string());
        assert_eq!(seen["host"], serde_json::Value::Null);
        assert_eq!(seen["connection"], serde_json::Value::Null);
    }
    assert_eq!(up.connections(), 1, "one connection, shared");
}

/// A gRPC-style exchange, HTTP/2 at both ends: the client's `TE: trailers`
/// reaches the upstream and the upstream's trailers reach the client.
#[tokio::test]
async fn te_trailers_and_trailers_pass_through() {
    let up = H2Upstream::start(false).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{}", up.addr)], "")).await;
    let tcp = TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://{}/pkg.Service/Method", gw.addr))
        .version(Version::HTTP_2)
        .header("te", "trailers")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let rsp = client.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let collected = rsp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let seen: serde_json::Value = serde_json::from_slice(&collected.to_bytes()).unwrap();
    assert_eq!(seen["te"], "trailers");
    assert_eq!(seen["path"], "/pkg.Service/Method");
}

/// Over TLS, HTTP/2 is agreed by ALPN; a server that does not take `h2`
/// is a 502 that says so. `preserve_host = false` sends the target's name.
#[tokio::test]
async fn h2_over_tls_is_agreed_by_alpn() {
    let up = H2Upstream::start(true).await;
    let target = format!("https://localhost:{}", up.addr.port());
    let ca = tls_dir().join("a.cert.pem");
    let extra = format!("ca_file = \"{}\"\npreserve_host = false", ca.display());
    let gw = TestGateway::start(&h2_config(std::slice::from_ref(&target), &extra)).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json()["authority"],
        format!("localhost:{}", up.addr.port())
    );

    // An HTTP/1.1-only TLS server offers no h2.
    let http1 = TestUpstream::start_tls("127.0.0.1:0", "a").await;
    let target = format!("https://localhost:{}", http1.addr.port());
    let (log, _capture) = capture_logs();
    let gw = TestGateway::start(&h2_config(&[target], &extra)).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    let log = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    assert!(log.contains("HTTP/2"), "{log}");
    assert_eq!(http1.hits(), 0);
}

/// A target that went away and came back gets a new connection.
#[tokio::test]
async fn a_lost_connection_is_opened_again() {
    let up = H2Upstream::start(false).await;
    let addr = up.addr;
    let gw = TestGateway::start(&h2_config(&[format!("http://{addr}")], "")).await;
    assert_eq!(get(&gw.url("/a"), &[]).await.status, 200);
    drop(up);
    // Restarted on the same port, once the old listener is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let up = H2Upstream::start_on(listener, false, None);
    let back = eventually(Duration::from_secs(5), || async {
        get(&gw.url("/b"), &[]).await.status == 200
    });
    assert!(back.await);
    assert_eq!(up.connections(), 1);
}

/// Health checks speak HTTP/2 to such targets: an HTTP/1.1-only target
/// fails them and is taken out.
#[tokio::test]
async fn health_checks_speak_http2() {
    let good = H2Upstream::start(false).await;
    let http1 = serve_upstream(|_req: Request<Incoming>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
    .await;
    let targets = [format!("http://{}", good.addr), format!("http://{http1}")];
    let hc = r#"health_check = { path = "/healthz", interval = "100ms" }"#;
    let gw = TestGateway::start(&h2_config(&targets, hc)).await;
    let admin = gw.admin().await;
    let series =
        |a: SocketAddr| format!("gatehouse_upstream_target_up{{upstream=\"pool\",target=\"{a}\"}}");
    let settled = eventually(Duration::from_secs(10), || async {
        let text = scrape(admin).await;
        metric(&text, &series(http1)) == Some(0) && metric(&text, &series(good.addr)) == Some(1)
    });
    assert!(settled.await, "{}", scrape(admin).await);
    // Every request now goes to the HTTP/2 target.
    for _ in 0..4 {
        assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
    }
}

/// Awaits every handle, in order.
async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

/// A burst on a cold connection to a server that takes one stream at a
/// time is served whole: requests wait for a stream, none is refused.
#[tokio::test]
async fn a_burst_waits_for_streams_of_a_server_that_takes_one_at_a_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = H2Upstream::start_on(listener, false, Some(1));
    let gw = TestGateway::start(&h2_config(&[format!("http://{}", up.addr)], "")).await;
    let requests = (0..10).map(|i| {
        let url = gw.url(&format!("/svc/{i}"));
        tokio::spawn(async move { get(&url, &[]).await.status })
    });
    let statuses = futures_join(requests).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(up.connections(), 1);
}

/// A request body the client stops sending is the client's fault with an
/// HTTP/2 upstream too: 408, not 502.
#[tokio::test]
async fn a_stalled_request_body_is_a_408() {
    let up = H2Upstream::start(false).await;
    let config = h2_config(&[format!("http://{}", up.addr)], "")
        .replace("[server]\n", "[server]\nrequest_timeout = \"1s\"\n");
    let gw = TestGateway::start(&config).await;
    let reply = raw(
        gw.addr,
        b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
}

/// A connection that stops answering without closing (a peer gone, NAT
/// state lost): the request on it times out (504), and the next one gets
/// a new connection rather than the dead one.
#[tokio::test]
async fn a_connection_that_stops_answering_is_replaced() {
    let up = H2Upstream::start(false).await;
    let relay = Blackhole::start(up.addr).await;
    let config = h2_config(&[format!("http://{}", relay.addr)], "timeout = \"500ms\"");
    let gw = TestGateway::start(&config).await;
    assert_eq!(get(&gw.url("/a"), &[]).await.status, 200);
    relay.swallow_open_connections();
    assert_eq!(get(&gw.url("/b"), &[]).await.status, 504);
    assert_eq!(get(&gw.url("/c"), &[]).await.status, 200);
    assert_eq!(up.connections(), 2);
}

/// Relays connections to `target`; connections open when
/// [`Blackhole::swallow_open_connections`] is called stop passing bytes
/// (both ways) but stay open.
struct Blackhole {
    addr: SocketAddr,
    opened: Arc<AtomicUsize>,
    swallow_upto: Arc<AtomicUsize>,
}

impl Blackhole {
    async fn start(target: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let opened = Arc::new(AtomicUsize::new(0));
        let swallow_upto = Arc::new(AtomicUsize::new(0));
        let (o, w) = (Arc::clone(&opened), Arc::clone(&swallow_upto));
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let id = o.fetch_add(1, Ordering::SeqCst) + 1;
                let Ok(up) = TcpStream::connect(target).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(pump(dr, uw, id, Arc::clone(&w)));
                tokio::spawn(pump(ur, dw, id, Arc::clone(&w)));
            }
        });
        Blackhole {
            addr,
            opened,
            swallow_upto,
        }
    }

    fn swallow_open_connections(&self) {
        let open = self.opened.load(Ordering::SeqCst);
        self.swallow_upto.store(open, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    id: usize,
    swallow_upto: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if id <= swallow_upto.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A client `Host` that HTTP/2 cannot carry as `:authority` (userinfo, or
/// not an authority at all) is not passed on: the target's authority is.
#[tokio::test]
async fn a_host_that_is_no_http2_authority_is_replaced_by_the_targets() {
    let up = H2Upstream::start(false).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{}", up.addr)], "")).await;
    for host in ["user@evil.test:1", "bad host"] {
        let r = get(&gw.url("/x"), &[("host", host)]).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.json()["authority"], up.addr.to_string(), "{host}");
    }
}

/// An h2c upstream that resets its first `refuse` streams with
/// `REFUSED_STREAM` (unprocessed: RFC 9113 §8.7), then answers 200 "ok".
/// Returns its address and the streams it saw.
async fn refusing_upstream(refuse: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let head = Response::builder().status(200).body(()).unwrap();
                    if let Ok(mut body) = respond.send_response(head, false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A request without a body that the server refused unprocessed is sent
/// once more; one with a body is not (its body is gone): 502.
#[tokio::test]
async fn a_refused_stream_without_a_body_is_sent_again() {
    let (addr, seen) = refusing_upstream(1).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{addr}")], "")).await;
    let r = get(&gw.url("/svc"), &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], b"ok");
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    let (addr, seen) = refusing_upstream(1).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{addr}")], "")).await;
    let r = send(http::Method::POST, &gw.url("/svc"), &[], "payload").await;
    assert_eq!(r.status, 502);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    // Refused twice in a row: sent again once only.
    let (addr, seen) = refusing_upstream(2).await;
    let gw = TestGateway::start(&h2_config(&[format!("http://{addr}")], "")).await;
    assert_eq!(get(&gw.url("/svc"), &[]).await.status, 502);
    assert_eq!(seen.load(Ordering::SeqCst), 2);
}
