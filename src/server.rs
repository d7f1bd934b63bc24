//! The listener: accept loop, connection limits, HTTP/1.1 + h2c on one port,
//! graceful shutdown.

pub mod admin;
mod dispatch;
mod drain;
mod framing;
mod idle;
pub mod request_id;
pub mod signals;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::{Service, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use crate::body::Hold;
use crate::error::GatewayError;
use crate::metrics::OpenConnection;
use crate::proxy::Peer;
use crate::proxy::forward::ConnGuard;
use crate::state::{Gateway, Shared, Snapshot};
use crate::timer::ConnTimer;
use admin::Health;
use drain::Drain;
use idle::{Idle, Streams, Tracked};

/// Binds the listeners of `snap`, serves until SIGTERM/SIGINT, reloads on SIGHUP.
///
/// # Errors
/// When the state store cannot be opened or a listener cannot be bound.
pub async fn serve(snap: Snapshot, config_path: PathBuf) -> std::io::Result<()> {
    // The store first: a second gateway on the same state directory must
    // fail before it binds anything (or answers a health check).
    let state = match snap.config.state.redis_url {
        // Not the URL: it may carry a password.
        Some(_) => "[state] backend redis".to_string(),
        None => format!("under [state] path {}", snap.config.state.path.display()),
    };
    let gateway = Gateway::open(snap)
        .await
        .map_err(|e| std::io::Error::other(format!("{e} ({state})")))?;
    let shared: Shared = Arc::new(gateway);
    let snap = shared.load_full();
    let listen = snap.config.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
    let health = Arc::new(Health::default());
    if let Some(addr) = snap.config.server.admin_listen {
        let admin = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr} (admin): {e}"))
        })?;
        tokio::spawn(admin::serve(
            admin,
            Arc::clone(&health),
            Arc::clone(&shared),
        ));
        tracing::info!(%addr, "admin listener up");
    }
    if let Some(path) = &snap.generated_key {
        tracing::info!(path = %path.display(), "signing with the generated Ed25519 key");
    }
    if snap.login.as_ref().is_some_and(|l| l.has_user(DEMO_USER)) {
        tracing::warn!(
            "the demo user `{DEMO_USER}` is enabled: remove it from the users file before real use"
        );
    }
    tracing::info!(addr = %listen, "{}", snap.summary());
    drop(snap);
    signals::reload_on_sighup(Arc::clone(&shared), config_path);
    run(listener, shared, health, signals::shutdown()).await;
    Ok(())
}

/// The user the shipped `users.toml` defines; the gateway warns while it exists.
pub const DEMO_USER: &str = "demo";

/// How often expired families and revocations are swept, and idle rate-limit
/// buckets dropped.
const HOUSEKEEPING: Duration = Duration::from_secs(60);

/// What every connection of a listener is served with, fixed for the
/// listener's life (a reload changes routes and keys, not these).
struct ConnSettings {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// Serves `listener` until `shutdown` resolves, then stops accepting and lets
/// in-flight requests finish for up to `shutdown_grace`.
pub async fn run(
    listener: TcpListener,
    shared: Shared,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()>,
) {
    let (settings, limit, grace) = {
        let snap = shared.load();
        let s = &snap.config.server;
        let (http1, http2) = builders(s);
        let settings = ConnSettings {
            http1,
            http2,
            header_read_timeout: s.header_read_timeout,
            max_header_bytes: s.max_header_bytes,
        };
        (Arc::new(settings), s.max_connections, s.shutdown_grace)
    };
    // Built once: each handshake reads the certificate (and the client
    // CAs) from the snapshot of the moment, so a reload may also turn TLS
    // on or off for the connections that follow.
    let acceptor = tls::acceptor(&shared);
    // One permit per open connection: beyond the limit, connections wait in the backlog.
    let permits = Arc::new(Semaphore::new(limit));
    let drain = Arc::new(Drain::default());
    let housekeeping = tokio::spawn(housekeeping(Arc::clone(&shared)));
    let follow = tokio::spawn(follow_revocations(Arc::clone(&shared)));
    health.set_ready(true);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let tls = shared.load().tls.is_some().then_some(&acceptor);
        spawn_connection(stream, peer, &shared, &settings, &drain, permit, tls);
    }
    health.set_ready(false);
    housekeeping.abort();
    follow.abort();
    drop(listener);
    drain.start();
    tokio::select! {
        _ = all_closed(&permits, limit) => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown_grace elapsed with connections still open"),
    }
}

/// How often a gateway on a shared store (Redis) reads the revocations the
/// other instances recorded: SPEC §3 asks for them to be seen within 1 s.
const FOLLOW: std::time::Duration = std::time::Duration::from_millis(250);

/// Reads the shared store's log of revocations every [`FOLLOW`], forever
/// (nothing to do, and returns, for the embedded store).
async fn follow_revocations(shared: Shared) {
    if !shared.store.is_shared() {
        return;
    }
    let mut tick = tokio::time::interval(FOLLOW);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match shared.follow_revocations().await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("reading revocations from the state store again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read other instances' revocations");
            }
            Err(_) => {}
        }
    }
}

/// An answer to HEAD over HTTP/2, without its body (RFC 9110 §9.3.2).
/// The gateway's own answers (errors, `/auth/*`, `builtin:echo`) are built
/// with one; hyper's HTTP/1.1 server leaves it out for HEAD, its HTTP/2
/// server sends it, and clients reset the stream (`PROTOCOL_ERROR`). The
/// length stays in `Content-Length`, as a GET would have it. A proxied
/// answer to HEAD has no body already.
fn without_body(rsp: &mut http::Response<crate::body::Body>) {
    use hyper::body::Body as _;
    if rsp.body().is_end_stream() {
        return;
    }
    if let Some(len) = rsp.body().size_hint().exact()
        && !rsp.headers().contains_key(http::header::CONTENT_LENGTH)
    {
        rsp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    }
    *rsp.body_mut() = crate::body::empty();
}

/// Sweeps expired state from the store and from memory, forever.
async fn housekeeping(shared: Shared) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::auth::issue::now();
        match shared.store.sweep(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "swept expired state"),
            Err(e) => tracing::warn!(error = %e, "sweeping the state store failed"),
        }
        shared.revocations.prune(now);
        let snap = shared.load();
        if let Some(login) = &snap.login {
            login.limits.housekeeping();
        }
        snap.routes.sweep_limits();
    }
}

/// What serves a connection, besides its socket.
struct ConnCtx {
    peer: SocketAddr,
    shared: Shared,
    settings: Arc<ConnSettings>,
    drain: Arc<Drain>,
    /// Shared with any upgraded tunnel, which outlives the connection task;
    /// the connection counts as open (`/metrics`) as long.
    permit: Arc<(OwnedSemaphorePermit, OpenConnection)>,
    /// Served over TLS: `X-Forwarded-Proto: https`.
    https: bool,
    /// The client's verified certificate, as `X-Forwarded-Client-Cert`.
    client_cert: Option<http::HeaderValue>,
}

/// Serves one client connection on its own task, over TLS when `tls` is
/// given; `permit` is released when it ends.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    settings: &Arc<ConnSettings>,
    drain: &Arc<Drain>,
    permit: OwnedSemaphorePermit,
    tls: Option<&TlsAcceptor>,
) {
    let _ = stream.set_nodelay(true);
    let (limit, max_head) = (settings.header_read_timeout, settings.max_header_bytes);
    let drain_started = Arc::clone(drain);
    let mut ctx = ConnCtx {
        peer,
        permit: Arc::new((permit, shared.metrics.connection_opened())),
        shared: Arc::clone(shared),
        settings: Arc::clone(settings),
        drain: Arc::clone(drain),
        https: tls.is_some(),
        client_cert: None,
    };
    let tls = tls.cloned();
    tokio::spawn(async move {
        let served = match tls {
            None => {
                // hyper hides a request's Content-Length when it also has
                // Transfer-Encoding; the reader underneath it sees both
                // (SPEC §4.5: 400).
                let (mut stream, framing) = framing::sniff(stream, max_head);
                // The first bytes tell HTTP/1.1 from h2c.
                let first = stream.read_preface();
                let Some(h2) = opening("request", limit, &drain_started, peer, first).await else {
                    return;
                };
                serve_http(stream, framing, h2, ctx).await
            }
            Some(acceptor) => {
                // Boxed: the handshake's state (1.3 KB) would otherwise
                // widen every plain connection's task too.
                let metrics = Arc::clone(&ctx.shared.metrics);
                let handshake = Box::pin(async move {
                    let accepted = acceptor.accept(stream).await;
                    accepted.inspect_err(|e| {
                        if let Some(why) = tls::failure(e) {
                            metrics.tls_handshake_failed(why);
                        }
                    })
                });
                let Some(stream) =
                    opening("TLS handshake", limit, &drain_started, peer, handshake).await
                else {
                    return;
                };
                // ALPN tells HTTP/1.1 from HTTP/2.
                let h2 = tls::negotiated_h2(stream.get_ref().1);
                ctx.client_cert = tls::forwarded_client_cert(stream.get_ref().1);
                let (stream, framing) = framing::sniff(stream, max_head);
                serve_http(stream, framing, h2, ctx).await
            }
        };
        match served {
            None => tracing::debug!(%peer, "dropped: idle, or not closed after GOAWAY"),
            Some(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
            Some(Ok(())) => {}
        }
    });
}

/// What `start` (a connection's first bytes, or its TLS handshake) gives,
/// if it finishes within `limit` and before the drain starts; `None`
/// (logged) otherwise. A client that connects and sends nothing (or `PRI`,
/// or half a ClientHello, and stalls) must not hold its connection, and its
/// permit, forever.
async fn opening<T>(
    what: &str,
    limit: Duration,
    drain: &Drain,
    peer: SocketAddr,
    start: impl Future<Output = std::io::Result<T>>,
) -> Option<T> {
    let done = tokio::select! {
        done = tokio::time::timeout(limit, start) => done,
        // Nothing read yet: nothing to finish.
        () = drain.started() => return None,
    };
    match done {
        Ok(Ok(opened)) => Some(opened),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %peer, "connection ended before its {what}");
            None
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, "no {what} within header_read_timeout");
            None
        }
    }
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `stream` to its end.
///
/// A plain function returning a boxed future, not an `async fn`: inside an
/// async block, rustc cannot prove hyper's connection futures `Send` (its
/// higher-ranked error bounds), so each is boxed where its type is known.
fn serve_http<IO>(
    stream: framing::Sniffed<IO>,
    framing: Arc<framing::Framing>,
    h2: bool,
    ctx: ConnCtx,
) -> Pin<Box<dyn Future<Output = Served> + Send>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx {
        peer,
        shared,
        settings,
        drain,
        permit,
        https,
        client_cert,
    } = ctx;
    let guard = ConnGuard(permit as Arc<dyn std::any::Any + Send + Sync>);
    let client = Arc::new(Peer::new(peer, guard, https, client_cert));
    // The service captures `Shared`, not a snapshot: keep-alive
    // connections see a reload on their next request.
    let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        let smuggled = framing.next_request_is_ambiguous();
        let snap = shared.load_full();
        let client = Arc::clone(&client);
        let shared = Arc::clone(&shared);
        async move {
            // Every answer below carries the request's id, as the request
            // (and so its access-log line and the upstream) does.
            let id = snap.config.server.request_id.as_ref().map(|name| {
                let trusted = snap.config.server.trusts(peer.ip());
                (name, request_id::assign(req.headers_mut(), name, trusted))
            });
            let mut rsp = if smuggled {
                tracing::debug!(%peer, "Content-Length with Transfer-Encoding refused");
                let why = "Content-Length and Transfer-Encoding together";
                GatewayError::BadRequest(why).into_response()
            } else {
                dispatch::dispatch(req, &shared, &snap, &client).await
            };
            if let Some((name, id)) = id {
                rsp.headers_mut().insert(name.clone(), id);
            }
            snap.metrics.response(rsp.status());
            Ok::<_, Infallible>(rsp)
        }
    });
    let limit = settings.header_read_timeout;
    let io = TokioIo::new(stream);
    if h2 {
        // Each stream is counted open until its response body (and its
        // request body, if proxied) is dropped, and the connection closed
        // once none has been open for `header_read_timeout` (hyper's h2
        // server has no idle limit).
        let streams = Streams::new();
        let counted = {
            let streams = Arc::clone(&streams);
            service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                let stream = Arc::new(streams.open());
                let hold = Arc::clone(&stream) as Arc<dyn std::any::Any + Send + Sync>;
                req.extensions_mut().insert(Hold(hold));
                let head = req.method() == http::Method::HEAD;
                let rsp = svc.call(req);
                async move {
                    let Ok(mut rsp) = rsp.await;
                    if head {
                        without_body(&mut rsp);
                    }
                    Ok::<_, Infallible>(rsp.map(|b| Tracked::body(b, stream)))
                }
            })
        };
        let conn = settings.http2.serve_connection(io, counted);
        let conn = Idle::new(conn, http2::Connection::graceful_shutdown, streams, limit);
        Box::pin(drain.watch(conn, Idle::stop))
    } else {
        // hyper bounds every HTTP/1 head with `header_read_timeout` itself,
        // with this connection's reusable timer.
        let mut http1 = settings.http1.clone();
        http1.timer(ConnTimer::default());
        let conn = http1.serve_connection(io, svc).with_upgrades();
        let conn = drain.watch(conn, http1::UpgradeableConnection::graceful_shutdown);
        Box::pin(async move { Some(conn.await) })
    }
}

/// How a connection ended: `None` when no request arrived in time.
type Served = Option<Result<(), hyper::Error>>;

/// Resolves once every connection permit is back: every connection, and
/// every upgraded tunnel (which holds its connection's permit), has ended.
async fn all_closed(permits: &Semaphore, limit: usize) {
    let all = u32::try_from(limit).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// The HTTP/1.1 and HTTP/2 (h2c) connection settings of a listener.
fn builders(s: &crate::config::ServerConfig) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        // writev stays on here: with it off hyper copies response bodies
        // into a buffer it only clears, never shrinks, so one large
        // response left about 0.5 MB held by each idle keep-alive
        // connection. (The upstream side turns it off: see `proxy::pool`.)
        .max_buf_size(s.max_header_bytes);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX));
    (h1, h2)
}
