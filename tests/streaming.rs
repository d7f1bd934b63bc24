//! Bodies stream both ways without being held whole (SPEC §4 step 5), and
//! clients that send their request head too slowly are cut off
//! (`[server] header_read_timeout`).
mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

const MIB: usize = 1 << 20;

/// A protected catch-all route, with an upstream timeout long enough for a
/// 50 MB upload on a slow machine (the harness default is 2 s).
async fn gateway(upstream: std::net::SocketAddr) -> TestGateway {
    let config = config_with(
        upstream,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replace("timeout = \"2s\"", "timeout = \"60s\"");
    TestGateway::start(&config).await
}

fn auth() -> String {
    let token = sign(Algorithm::HS256, Some("hs"), &claims("alice"));
    format!("Bearer {token}")
}

/// A request body of `left` copies of one chunk, made as it is sent: the
/// test holds one chunk, not the whole body.
struct Chunks {
    chunk: Bytes,
    left: usize,
    /// Announce the length (`Content-Length`) instead of sending it chunked.
    exact: bool,
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        self.left -= 1;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.clone()))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact((self.chunk.len() * self.left) as u64)
        } else {
            SizeHint::default()
        }
    }
}

/// `POST path` (with a token) of `chunks` chunks of 64 KiB, announced
/// (`Content-Length`) when `exact`, else chunked; on a new connection.
fn upload(
    gw: &TestGateway,
    path: &str,
    chunks: usize,
    exact: bool,
) -> hyper_util::client::legacy::ResponseFuture {
    let body = Chunks {
        chunk: Bytes::from(vec![b'u'; 64 * 1024]),
        left: chunks,
        exact,
    };
    let req = Request::post(gw.url(path))
        .header("authorization", auth())
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Chunks>();
    client.request(req)
}

async fn upload_50_mb(exact: bool) {
    let up = TestUpstream::start().await;
    let gw = gateway(up.addr).await;
    let rsp = tokio::time::timeout(Duration::from_secs(120), upload(&gw, "/upload", 800, exact))
        .await
        .expect("the upload finished within 120 s")
        .expect("request sent");
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["bytes"], 52_428_800, "{report}");
    assert!(report["frames"].as_u64().unwrap() > 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_chunked_request_body_reaches_the_upstream_whole() {
    upload_50_mb(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_content_length_request_body_reaches_the_upstream_whole() {
    upload_50_mb(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_of_2000_chunks_arrives_whole() {
    let up = TestUpstream::start().await;
    let gw = gateway(up.addr).await;
    let req = Request::get(gw.url("/stream/2000"))
        .header("authorization", auth())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let rsp = client.request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert!(rsp.headers().get("content-length").is_none());
    let mut body = rsp.into_body();
    let (mut bytes, mut frames) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the response body ended cleanly");
        if let Some(d) = frame.data_ref() {
            assert!(d.iter().all(|&b| b == b'x'));
            bytes += d.len();
            frames += 1;
        }
    }
    assert_eq!(bytes, 2000 * 1024);
    assert!(frames > 1, "the body arrived in {frames} frame(s)");
}

/// An upstream whose response sends `first`, then waits for `release`
/// before sending `second`: a gateway that collected the body before
/// answering would never deliver `first`.
async fn held_response_upstream(release: Arc<Notify>) -> std::net::SocketAddr {
    serve_upstream(move |_req: Request<Incoming>| {
        let release = Arc::clone(&release);
        async move {
            let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            tokio::spawn(async move {
                let _ = tx.send(Ok(Frame::data(Bytes::from("first")))).await;
                release.notified().await;
                let _ = tx.send(Ok(Frame::data(Bytes::from("second")))).await;
            });
            let body = StreamBody::new(futures_core_stream::from_fn(move |cx| rx.poll_recv(cx)));
            Ok::<_, Infallible>(Response::new(body))
        }
    })
    .await
}

/// Lets [`held_response_upstream`] send the rest, and reads it.
async fn rest_once_released(body: Incoming, release: &Notify) -> Bytes {
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the rest arrived once released")
        .unwrap()
        .to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_bytes_reach_the_client_before_the_upstream_has_finished() {
    let release = Arc::new(Notify::new());
    let gw = gateway(held_response_upstream(Arc::clone(&release)).await).await;
    let req = Request::get(gw.url("/held"))
        .header("authorization", auth())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("the response head arrived while the body was still open")
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("the first chunk arrived while the upstream was still sending")
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    assert_eq!(rest_once_released(body, &release).await, "second");
}

/// An upstream that reports (through `got_first`) as soon as the first
/// request-body frame arrives, then reads the rest and answers its length.
async fn early_reading_upstream(got_first: Arc<Notify>) -> std::net::SocketAddr {
    serve_upstream(move |req: Request<Incoming>| {
        let got_first = Arc::clone(&got_first);
        async move {
            let mut body = req.into_body();
            let mut bytes = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    if bytes == 0 {
                        got_first.notify_one();
                    }
                    bytes += d.len();
                }
            }
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
                bytes.to_string(),
            ))))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_reach_the_upstream_before_the_client_has_finished() {
    let got_first = Arc::new(Notify::new());
    let gw = gateway(early_reading_upstream(Arc::clone(&got_first)).await).await;
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let body = StreamBody::new(futures_core_stream::from_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(gw.url("/held"))
        .header("authorization", auth())
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let pending = tokio::spawn(client.request(req));

    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; MIB]))))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), got_first.notified())
        .await
        .expect("the upstream got the first bytes while the client was still sending");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; MIB]))))
        .await
        .unwrap();
    drop(tx);

    let rsp = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("answered within 30 s")
        .unwrap()
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let body = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, (2 * MIB).to_string());
}

// === slow clients ===

/// A gateway whose `header_read_timeout` is one second (and whose upstream
/// timeout is long enough not to matter).
async fn impatient_gateway(up: &TestUpstream) -> TestGateway {
    let config = config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"none\"\n",
    )
    .replacen("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n", 1)
    .replace("timeout = \"2s\"", "timeout = \"60s\"");
    TestGateway::start(&config).await
}

/// Waits up to `limit` for the server to close `s`; returns when it did.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // an error response (408) before the close is fine
            }
        }
    };
    tokio::time::timeout(limit, closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_request_head_is_cut_off_after_header_read_timeout() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let started = Instant::now();
    let s = TcpStream::connect(gw.addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Slowloris: a partial head, then one more header line every 200 ms.
    let trickle = tokio::spawn(async move {
        if wr
            .write_all(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n")
            .await
            .is_err()
        {
            return;
        }
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("X-Slow-{i}: {i}\r\n");
            if wr.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(8), rd.read_to_end(&mut buf)).await;
    let elapsed = started.elapsed();
    trickle.abort();
    assert!(
        closed.is_ok(),
        "the connection was still open after 8 s: {:?}",
        String::from_utf8_lossy(&buf)
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed after {elapsed:?}, before header_read_timeout"
    );
    assert_eq!(up.hits(), 0);
    // The gateway still serves clients that are not slow.
    assert_eq!(get(&gw.url("/x"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_after_part_of_the_request_line_is_cut_off() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HT").await.unwrap();
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "the connection was still open after 8 s");
    assert_eq!(up.hits(), 0);
}

/// The slowest client of all sends nothing: it must not hold a connection
/// (and one of `max_connections`) forever either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_connects_and_sends_nothing_is_cut_off() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "the connection was still open after 8 s");
}

/// Three bytes of the HTTP/2 preface keep the server guessing between
/// HTTP/1.1 and h2c: that wait is bounded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stalls_inside_the_h2_preface_is_cut_off() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"PRI").await.unwrap();
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "the connection was still open after 8 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_header_read_timeout() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    // Read the first response head; then send nothing more.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    assert!(head.starts_with(b"HTTP/1.1 200 "));
    let closed = closed_within(&mut s, Duration::from_secs(8)).await;
    assert!(closed.is_some(), "the connection was still open after 8 s");
}

/// The limit is on the request head, not on the exchange: a request whose
/// upstream takes longer than `header_read_timeout` still gets its answer,
/// over HTTP/1.1 and h2c alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_header_read_timeout_still_gets_its_answer() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let r = get(&gw.url("/slow/1500"), &[]).await;
    assert_eq!(r.status, 200);

    let h2 = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = Request::get(gw.url("/slow/1500"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(30), h2.request(req))
        .await
        .expect("answered within 30 s")
        .unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(rsp.version(), http::Version::HTTP_2);
}

/// A gateway whose `request_timeout` is one second (and whose upstream
/// timeout is long enough not to matter).
async fn body_impatient_gateway(up: &TestUpstream) -> TestGateway {
    body_impatient_gateway_to(up.addr, "60s").await
}

/// The same, in front of `upstream`, whose timeout is `timeout`.
async fn body_impatient_gateway_to(upstream: std::net::SocketAddr, timeout: &str) -> TestGateway {
    let config = config_with(
        upstream,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"none\"\n",
    )
    .replacen("[server]\n", "[server]\nrequest_timeout = \"1s\"\n", 1)
    .replace("timeout = \"2s\"", &format!("timeout = \"{timeout}\""));
    TestGateway::start(&config).await
}

/// Reads what the server sends on `s` until it closes, for up to 8 s.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), s.read_to_end(&mut out)).await;
    assert!(
        read.is_ok(),
        "still open after 8 s: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that stops sending its body is the client's fault: 408 (as
/// Envoy's `request_timeout` answers), not the upstream's 502, and the connection
/// closes (the rest of that body will not come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_slower_than_request_timeout_gets_408() {
    let up = TestUpstream::start().await;
    let gw = body_impatient_gateway(&up).await;
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await;
    let elapsed = started.elapsed();
    assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    assert!(reply.contains("\"error\":\"request_timeout\""), "{reply}");
    assert!(
        elapsed >= Duration::from_millis(900),
        "answered after {elapsed:?}, before request_timeout"
    );
    // The same request sent whole, at once, goes through.
    let whole = format!(
        "POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{}",
        "x".repeat(100)
    );
    let reply = raw(gw.addr, whole.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert!(reply.contains("\"bytes\":100"), "{reply}");
}

/// A chunked body that breaks its framing halfway is a bad request: 400,
/// not a 502 that would blame the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_with_broken_chunked_framing_gets_400() {
    let up = TestUpstream::start().await;
    let gw = body_impatient_gateway(&up).await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    .await
    .unwrap();
    let reply = read_until_closed(&mut s).await;
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(
        reply.contains("the request body could not be read"),
        "{reply}"
    );
}

/// An h2c connection to `addr`; the receiver reports when the connection
/// ended.
async fn h2c(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let (ended, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = conn.await;
        let _ = ended.send(());
    });
    (sender, rx)
}

/// hyper's HTTP/2 server has no idle limit of its own: an h2c connection
/// with no open stream is closed after `header_read_timeout`, as an idle
/// HTTP/1.1 keep-alive connection is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed_after_header_read_timeout() {
    let up = TestUpstream::start().await;
    let gw = impatient_gateway(&up).await;
    let (mut sender, ended) = h2c(gw.addr).await;
    let req = Request::get(gw.url("/x"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let answered = Instant::now();
    drop(rsp);
    let closed = tokio::time::timeout(Duration::from_secs(8), ended).await;
    assert!(
        closed.is_ok(),
        "the h2c connection was still open after 8 s"
    );
    // The server's idle clock starts a little before the answer reaches
    // the client: a loose lower bound.
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(700),
        "closed {idle:?} after the answer, before header_read_timeout"
    );
}

/// A stream is open until its response body has been sent: a download
/// that takes longer than `header_read_timeout` keeps its h2c connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_response_longer_than_header_read_timeout_arrives_whole() {
    let release = Arc::new(Notify::new());
    let upstream = held_response_upstream(Arc::clone(&release)).await;
    let config = config_with(
        upstream,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"none\"\n",
    )
    .replacen("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n", 1);
    let gw = TestGateway::start(&config).await;
    let (mut sender, _ended) = h2c(gw.addr).await;
    let req = Request::get(gw.url("/held"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let rsp = sender.send_request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    let mut body = rsp.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");
    // Three times the limit with the body still open.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rest_once_released(body, &release).await, "second");
}

/// With `request_timeout` equal to the upstream's `timeout` (as by
/// default) both timers run out together; a body stuck on the client is
/// still the client's fault: 408 every time, never 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_when_both_timeouts_are_equal() {
    let up = TestUpstream::start().await;
    let gw = body_impatient_gateway_to(up.addr, "1s").await;
    let stalled = (0..6).map(|_| {
        let addr = gw.addr;
        tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(
                b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n0123456789",
            )
            .await
            .unwrap();
            read_until_closed(&mut s).await
        })
    });
    for task in stalled.collect::<Vec<_>>() {
        let reply = task.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
    }
}

/// An upstream that reads its request body only after `delay`, then
/// answers how many bytes came.
async fn late_reading_upstream(delay: Duration) -> std::net::SocketAddr {
    serve_upstream(move |req: Request<Incoming>| async move {
        tokio::time::sleep(delay).await;
        let n = req.into_body().collect().await.unwrap().to_bytes().len();
        Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from(
            n.to_string(),
        ))))
    })
    .await
}

/// The client sends its whole body at once, but the upstream reads it
/// only after twice `request_timeout`: the time spent waiting on the
/// upstream is not the client's, so no 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reading_upstream_does_not_make_a_fast_client_time_out() {
    let upstream = late_reading_upstream(Duration::from_secs(2)).await;
    let gw = body_impatient_gateway_to(upstream, "60s").await;
    let body = Bytes::from(vec![b'x'; 16 * MIB]);
    let r = send(http::Method::POST, &gw.url("/upload"), &[], body).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.body, (16 * MIB).to_string());
}

/// An upstream that answers at once and reads the request body after, on
/// its own; `got` reports how many bytes came in the end.
async fn answer_first_upstream(got: mpsc::Sender<usize>) -> std::net::SocketAddr {
    serve_upstream(move |req: Request<Incoming>| {
        let got = got.clone();
        async move {
            tokio::spawn(async move {
                let n = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().len(),
                    Err(_) => 0,
                };
                let _ = got.send(n).await;
            });
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(Bytes::from("ok"))))
        }
    })
    .await
}

/// An h2c upload that goes on after its response has ended keeps its
/// stream, and so its connection, open: the idle close must not cut it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upload_outlasting_its_response_keeps_the_connection() {
    let (got_tx, mut got) = mpsc::channel(1);
    let upstream = answer_first_upstream(got_tx).await;
    let config = config_with(
        upstream,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\nauth = \"none\"\n",
    )
    .replacen("[server]\n", "[server]\nheader_read_timeout = \"1s\"\n", 1)
    .replace("timeout = \"2s\"", "timeout = \"60s\"");
    let gw = TestGateway::start(&config).await;

    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let body = StreamBody::new(futures_core_stream::from_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(gw.url("/upload")).body(body).unwrap();
    let rsp = sender.send_request(req);
    tx.send(Ok(Frame::data(Bytes::from("x".repeat(1024)))))
        .await
        .unwrap();
    let rsp = tokio::time::timeout(Duration::from_secs(10), rsp)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(rsp.status(), 200);
    let answer = rsp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(answer, "ok");
    // The response is over; the upload goes on for three times the limit.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tx.send(Ok(Frame::data(Bytes::from("x".repeat(1024)))))
            .await
            .unwrap();
    }
    drop(tx);
    let n = tokio::time::timeout(Duration::from_secs(10), got.recv())
        .await
        .expect("the upstream finished reading")
        .unwrap();
    assert_eq!(n, 7 * 1024, "the upload was cut off");
}

/// `max_body_bytes` (here `[server]`'s, 1 MiB, and a route's own, 4 MiB):
/// a declared length over it is 413 before the token is looked at; a
/// chunked body is cut off where it passes it (413, the upstream's request
/// broken off); a body within it goes through whole. A 413 closes the
/// connection (`Connection: close`): the rest of the body was not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_get_413() {
    let up = TestUpstream::start().await;
    let config = config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/big/\"\nupstream = \"up\"\nstrip_prefix = true\nmax_body_bytes = 4194304\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen("[server]\n", "[server]\nmax_body_bytes = 1048576\n", 1);
    let gw = TestGateway::start(&config).await;
    // 16 chunks of 64 KiB: exactly 1 MiB is allowed, either way; the
    // route's own limit is larger.
    for (path, chunks) in [("/upload", 16), ("/big/upload", 64)] {
        for exact in [true, false] {
            let rsp = upload(&gw, path, chunks, exact).await.unwrap();
            assert_eq!(rsp.status(), 200, "{path} exact: {exact}");
            let body = rsp.into_body().collect().await.unwrap().to_bytes();
            let report: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(report["bytes"], chunks * 64 * 1024, "{report}");
        }
    }
    let hits = up.hits();

    // Declared over the limit: 413 at once, before the token (none here).
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 1048577\r\n\r\n")
        .await
        .unwrap();
    let reply = read_until_closed(&mut s).await.to_ascii_lowercase();
    assert!(reply.starts_with("http/1.1 413 "), "{reply}");
    assert!(reply.contains("connection: close"), "{reply}");
    assert!(reply.contains("too large"), "{reply}");
    assert_eq!(up.hits(), hits, "never sent upstream");

    // Chunked, over the limit: cut off where it passes it.
    for (path, limit) in [("/upload", MIB), ("/big/upload", 4 * MIB)] {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {}\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            auth()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let chunk = [
            format!("{:x}\r\n", 64 * 1024).into_bytes(),
            vec![b'u'; 64 * 1024],
            b"\r\n".to_vec(),
        ]
        .concat();
        // One chunk past the limit; the gateway may close before the rest.
        for _ in 0..limit / (64 * 1024) + 1 {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let reply = read_until_closed(&mut s).await.to_ascii_lowercase();
        assert!(reply.starts_with("http/1.1 413 "), "{path}: {reply}");
    }
}

/// An ordinary client uploading more than `max_body_bytes` reads its 413:
/// the gateway reads and throws away the rest of the body for a while
/// (nginx's lingering close) instead of closing on a client still sending,
/// whose next write would meet a reset connection and no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_client_over_the_body_limit_reads_its_413() {
    let up = TestUpstream::start().await;
    let config = config_with(
        up.addr,
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"\n",
    )
    .replacen("[server]\n", "[server]\nmax_body_bytes = 1048576\n", 1);
    let gw = TestGateway::start(&config).await;
    for exact in [true, false] {
        for round in 0..8 {
            let rsp = upload(&gw, "/upload", 64, exact).await;
            let status = rsp.as_ref().map(|r| r.status().as_u16());
            assert!(
                matches!(status, Ok(413)),
                "exact: {exact}, round {round}: {rsp:?}"
            );
        }
    }
}
