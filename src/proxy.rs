//! The proxy path: route -> authenticate -> authorize -> forward, in that
//! order, from one place; every failure becomes a response in `error.rs` and
//! every request is logged once.

pub mod dial;
mod echo;
pub mod forward;
pub mod headers;
mod health;
pub(crate) mod path;
pub mod pool;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, Version, header};
use hyper::body::{Body as _, Incoming};

use crate::auth::{BearerToken, LastToken, Rejected, VerifiedClaims, bearer};
use crate::body::{self, Body, BodyState, Deadline, Hold};
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::ratelimit::{LimitBy, RouteLimit};
use crate::routes::Route;
use crate::state::Snapshot;
use crate::store::Revocations;
use crate::timer::SleepSlot;
use headers::{Downstream, Seen, rewrite_request};

/// The client end of a connection, with what each of its requests reuses.
pub struct Peer {
    pub addr: SocketAddr,
    /// The address as an `X-Forwarded-For` value, formatted once.
    value: HeaderValue,
    /// Times each request's upstream exchange (see `timer.rs`).
    upstream_timer: Arc<SleepSlot>,
    /// The last bearer token this connection presented (see `auth::cache`):
    /// the proxy path and `/auth/verify` ask it before the cache.
    pub(crate) last_token: LastToken,
    /// Holds the connection's `max_connections` permit: an upgraded tunnel
    /// takes a clone along.
    guard: forward::ConnGuard,
    /// The connection is TLS: `X-Forwarded-Proto: https`.
    pub(crate) https: bool,
    /// The client's verified certificate, as `X-Forwarded-Client-Cert`.
    client_cert: Option<HeaderValue>,
}

impl Peer {
    /// The client a rate limit counts against: the peer, or, when the peer
    /// is a trusted proxy, the rightmost `X-Forwarded-For` hop that is not
    /// one (the same reading as the forwarded `X-Forwarded-For`).
    pub fn client_ip(&self, headers: &http::HeaderMap, snap: &Snapshot) -> IpAddr {
        let trusted = |ip: IpAddr| snap.config.server.trusts(ip);
        let mut client = self.addr.ip();
        if !trusted(client) {
            return client;
        }
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else {
                break;
            };
            client = ip;
            if !trusted(ip) {
                break;
            }
        }
        client
    }

    pub fn new(
        addr: SocketAddr,
        guard: forward::ConnGuard,
        https: bool,
        client_cert: Option<HeaderValue>,
    ) -> Self {
        let value = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Peer {
            addr,
            value,
            upstream_timer: Arc::default(),
            last_token: LastToken::default(),
            guard,
            https,
            client_cert,
        }
    }
}

/// What the access log line reports about a request.
#[derive(Default)]
struct Ctx<'s> {
    route: Option<&'s Route>,
    caller: Option<Arc<VerifiedClaims>>,
    /// The access log is on: time the upstream exchange.
    timed: bool,
    upstream_time: Option<Duration>,
}

/// The request's id (`[server] request_id`), for the access log.
pub fn request_id_of<B>(req: &Request<B>, snap: &Snapshot) -> Option<HeaderValue> {
    let name = snap.config.server.request_id.as_ref()?;
    req.headers().get(name).cloned()
}

/// Serves one request on the proxy path.
pub async fn handle(
    req: Request<Incoming>,
    snap: &Snapshot,
    revocations: &Revocations,
    peer: &Peer,
) -> Response<Body> {
    // Copying the method and URI costs a little; only pay it when the access log is on.
    let log = tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO).then(|| {
        let id = request_id_of(&req, snap);
        (req.method().clone(), req.uri().clone(), Instant::now(), id)
    });
    let mut ctx = Ctx {
        timed: log.is_some(),
        ..Ctx::default()
    };
    let rsp = handle_inner(req, snap, revocations, peer, &mut ctx)
        .await
        .unwrap_or_else(GatewayError::into_response);
    let requests = ctx.route.map_or(&snap.metrics.unrouted, |r| &r.requests);
    requests.add(rsp.status());
    if let Some((method, uri, started, id)) = log {
        tracing::info!(
            target: "gatehouse::access",
            method = %method,
            path = uri.path(),
            route = ctx.route.map_or("-", |r| &*r.path_prefix),
            status = rsp.status().as_u16(),
            upstream_us = ctx.upstream_time.map(|d| d.as_micros() as u64),
            subject = ctx.caller.as_ref().and_then(|c| c.subject()),
            total_us = started.elapsed().as_micros() as u64,
            request_id = id.as_ref().and_then(|v| v.to_str().ok()),
        );
    }
    rsp
}

/// Counts the request against `limit` when it counts by `by` at this
/// step: per address before the token is checked, per subject after (a
/// request without a token then counts by its address).
///
/// # Errors
/// 429 with `Retry-After` over the rate.
fn count(
    limit: &RouteLimit,
    by: LimitBy,
    caller: Option<&VerifiedClaims>,
    req: &Request<Incoming>,
    peer: &Peer,
    snap: &Snapshot,
) -> Result<(), GatewayError> {
    if limit.by != by {
        return Ok(());
    }
    let counted = match caller.and_then(VerifiedClaims::subject_key) {
        Some(subject) => limit.check_subject(subject),
        None => limit.check_ip(peer.client_ip(req.headers(), snap)),
    };
    counted.map_err(|wait| GatewayError::RouteRateLimited(wait.secs()))
}

async fn handle_inner<'s>(
    mut req: Request<Incoming>,
    snap: &'s Snapshot,
    revocations: &Revocations,
    peer: &Peer,
    ctx: &mut Ctx<'s>,
) -> Result<Response<Body>, GatewayError> {
    let host = check_request(&req)?;
    let host_str = match &host {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    };
    let route = snap
        .routes
        .find(req.method(), host_str, req.uri().path())
        .ok_or(GatewayError::NoRoute)?;
    ctx.route = Some(route);
    // A declared length over the limit is refused before anything else is
    // done for it (nginx's `client_max_body_size`); a body without one is
    // cut off as it streams (`body::Deadline`).
    if route
        .max_body
        .is_some_and(|max| req.body().size_hint().lower() > max)
    {
        body::linger(req.into_body());
        return Err(GatewayError::PayloadTooLarge);
    }
    if let Some(limit) = &route.limit {
        // By address: before the token is checked, so a flood of bad
        // tokens from one client costs no signature checks.
        count(limit, LimitBy::Ip, None, &req, peer, snap)?;
    }
    let last = &peer.last_token;
    let caller = match admit(req.headers(), route, snap, revocations, last, true) {
        Some(admitted) => admitted?,
        None => {
            Box::pin(admit_fetching(
                req.headers(),
                route,
                snap,
                revocations,
                last,
            ))
            .await?
        }
    };
    ctx.caller = caller;
    if let Some(limit) = &route.limit {
        let caller = ctx.caller.as_deref();
        count(limit, LimitBy::Subject, caller, &req, peer, snap)?;
    }
    let seen = Seen::scan(req.headers(), Some(snap.verifier.identity()));
    // Read before the hop-by-hop headers go: they carry the upgrade request.
    let upgrade = seen.is_upgrade(req.headers());
    let caller = ctx.caller.as_deref();
    let upstream = &snap.upstreams[route.upstream];
    // `TE: trailers` (gRPC clients send it; HTTP/2 allows only that TE) is
    // hop-by-hop, but an HTTP/2 upstream may want to know.
    let te_trailers = upstream.http2
        && req
            .headers()
            .get(header::TE)
            .is_some_and(|te| te.as_bytes().eq_ignore_ascii_case(b"trailers"));
    // A client can name any header in `Connection`, and the rewrite drops
    // what it names: the id is put back.
    let id = request_id_of(&req, snap);
    rewrite_headers(&mut req, host, seen, snap, peer, caller, upgrade);
    if let (Some(name), Some(id)) = (&snap.config.server.request_id, id) {
        req.headers_mut().entry(name).or_insert(id);
    }
    if te_trailers {
        req.headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }

    let index = upstream.pick();
    let Some(pool) = upstream.pool(index) else {
        return Ok(echo::respond(&req, &route.upstream_path(req.uri().path())));
    };
    let path_and_query = upstream_path_and_query(route, req.uri())?;
    let upgrade = upgrade.then(|| forward::Upgrade {
        guard: peer.guard.clone(),
        on: hyper::upgrade::on(&mut req),
    });
    let mut client_body = None;
    let req = if req.body().is_end_stream() {
        // Nothing to stream (a GET, `Content-Length: 0`): no box at all.
        req.map(|_| body::empty())
    } else {
        let timeout = snap.config.server.request_timeout;
        let hold = req.extensions_mut().remove::<Hold>();
        let state = Arc::new(BodyState::default());
        client_body = Some(Arc::clone(&state));
        let max_bytes = route.max_body.unwrap_or(u64::MAX);
        req.map(|b| body::stream(Deadline::new(b, timeout, max_bytes, state, hold)))
    };
    let started = ctx.timed.then(Instant::now);
    let timer = &peer.upstream_timer;
    let rsp = forward::forward(
        req,
        upstream,
        index,
        pool,
        path_and_query,
        upgrade,
        timer,
        client_body.as_deref(),
    )
    .await;
    ctx.upstream_time = started.map(|t| t.elapsed());
    rsp
}

/// Steps 2 to 4 of the proxy path for `route`: the bearer token (if the
/// route wants one), verified or from the cache, then the revocation check
/// (after the cache: a revoked token may well be cached), then the route's
/// access rules. `/auth/verify` runs the same steps. `last` is the client
/// connection's last token, asked before the cache. The outcome is counted
/// for `/metrics`.
///
/// `None` (only when `may_fetch`) when the token names a key its issuer's
/// `jwks_url` may not have served yet: the caller then awaits
/// [`admit_fetching`] (boxed), which fetches and runs this again. A plain
/// function, not an `async fn` with that step inside: on a cache hit an
/// `async fn` here cost about 100 instructions a request more (callgrind,
/// one-token run).
pub(crate) fn admit(
    headers: &HeaderMap,
    route: &Route,
    snap: &Snapshot,
    revocations: &Revocations,
    last: &LastToken,
    may_fetch: bool,
) -> Option<Result<Option<Arc<VerifiedClaims>>, GatewayError>> {
    let admitted = admit_uncounted(headers, route, snap, revocations, last);
    match &admitted {
        Ok(Some(_)) => snap.metrics.auth_ok(),
        Ok(None) => {}
        Err(e) if may_fetch && awaits_keys(e) && snap.verifier.remotes().next().is_some() => {
            return None;
        }
        Err(e) => {
            let (outcome, reason) = match *e {
                GatewayError::MissingToken => ("missing_token", ""),
                GatewayError::MalformedAuthorization => ("malformed", ""),
                GatewayError::InvalidToken(why) => ("invalid_token", why),
                GatewayError::InsufficientScope(why) => ("forbidden", why),
                GatewayError::Unavailable(why) => ("unavailable", why),
                _ => ("error", ""),
            };
            snap.metrics.auth_refused(outcome, reason);
        }
    }
    Some(admitted)
}

/// [`admit`] after fetching the issuer's JWK Set again (rate-limited, see
/// [`Verifier::refetched`]): for a token [`admit`] could not place.
///
/// [`Verifier::refetched`]: crate::auth::Verifier::refetched
pub(crate) async fn admit_fetching(
    headers: &HeaderMap,
    route: &Route,
    snap: &Snapshot,
    revocations: &Revocations,
    last: &LastToken,
) -> Result<Option<Arc<VerifiedClaims>>, GatewayError> {
    if let Ok(Some(token)) = bearer::extract(headers) {
        refetched(token, snap).await;
    }
    // `admit` always answers when it may not fetch.
    admit(headers, route, snap, revocations, last, false)
        .unwrap_or(Err(GatewayError::InvalidToken(Rejected::UNKNOWN_KID.0)))
}

fn admit_uncounted(
    headers: &HeaderMap,
    route: &Route,
    snap: &Snapshot,
    revocations: &Revocations,
    last: &LastToken,
) -> Result<Option<Arc<VerifiedClaims>>, GatewayError> {
    let caller = authenticate(headers, route, snap, last)?;
    if let Some(c) = &caller {
        revocations
            .check(c.revocation_ref())
            .map_err(GatewayError::InvalidToken)?;
        route
            .access
            .check(c)
            .map_err(|d| GatewayError::InsufficientScope(d.0))?;
    }
    Ok(caller)
}

/// Reads the bearer token (if the route wants one) and verifies it, from the
/// cache when it was verified before.
fn authenticate(
    headers: &HeaderMap,
    route: &Route,
    snap: &Snapshot,
    last: &LastToken,
) -> Result<Option<Arc<VerifiedClaims>>, GatewayError> {
    if route.auth == AuthMode::None {
        return Ok(None);
    }
    let token = match bearer::extract(headers) {
        Ok(Some(token)) => token,
        Ok(None) if route.auth == AuthMode::Optional => return Ok(None),
        Ok(None) => return Err(GatewayError::MissingToken),
        Err(_) => return Err(GatewayError::MalformedAuthorization),
    };
    verify_remembered(token, snap, last).map(Some)
}

/// [`verify_cached`], asking the connection's `last` token first and
/// remembering `token` there after.
fn verify_remembered(
    token: BearerToken<'_>,
    snap: &Snapshot,
    last: &LastToken,
) -> Result<Arc<VerifiedClaims>, GatewayError> {
    let bytes = token.as_bytes();
    if let Some(hit) = snap.cache.get_last(last, bytes) {
        snap.metrics.cache_hit();
        return Ok(hit);
    }
    let epoch = snap.cache.epoch();
    let claims = verify_cached(token, snap)?;
    snap.cache.set_last(last, bytes, &claims, epoch);
    Ok(claims)
}

/// [`verify_cached`], and once more after a fetch of the issuer's JWK Set
/// when the token names a key its issuer does not have (yet).
pub(crate) async fn verify_fetching(
    token: BearerToken<'_>,
    snap: &Snapshot,
) -> Result<Arc<VerifiedClaims>, GatewayError> {
    match verify_cached(token, snap) {
        Err(e) if awaits_keys(&e) && refetched(token, snap).await => verify_cached(token, snap),
        verified => verified,
    }
}

/// Whether fetching the token's issuer's keys again may change `e`.
fn awaits_keys(e: &GatewayError) -> bool {
    matches!(e, GatewayError::InvalidToken(why) | GatewayError::Unavailable(why)
        if Rejected::awaits_keys(why))
}

/// The answer to a token [`Verifier::verify`] refused: 401, or 503 when
/// its issuer's keys could not be fetched (the token may be fine: the
/// client should not throw it away).
///
/// [`Verifier::verify`]: crate::auth::Verifier::verify
fn refused(r: Rejected) -> GatewayError {
    if r == Rejected::KEYS_NOT_FETCHED {
        GatewayError::Unavailable(r.0)
    } else {
        GatewayError::InvalidToken(r.0)
    }
}

/// Fetches `token`'s issuer's JWK Set again (see [`Verifier::refetched`]);
/// whether verifying it again is worth it. Boxed: a request that never
/// gets here does not carry its state.
///
/// [`Verifier::refetched`]: crate::auth::Verifier::refetched
async fn refetched(token: BearerToken<'_>, snap: &Snapshot) -> bool {
    match token.check_syntax() {
        Ok(token) => Box::pin(snap.verifier.refetched(token)).await,
        Err(_) => false,
    }
}

/// The verified claims of `token`: from the cache, or verified and cached.
pub(crate) fn verify_cached(
    token: BearerToken<'_>,
    snap: &Snapshot,
) -> Result<Arc<VerifiedClaims>, GatewayError> {
    let key = snap.cache.key(token.as_bytes());
    if let Some(hit) = snap.cache.get_key(&key) {
        snap.metrics.cache_hit();
        return Ok(hit);
    }
    snap.metrics.cache_miss();
    let epoch = snap.cache.epoch();
    let token = token
        .check_syntax()
        .map_err(|_| GatewayError::MalformedAuthorization)?;
    let claims = snap.verifier.verify(token).map_err(refused)?;
    let claims = snap.cache.seal(claims);
    snap.cache.insert_key(key, Arc::clone(&claims), epoch);
    Ok(claims)
}

static VIA_10: HeaderValue = HeaderValue::from_static("1.0 gatehouse");
static VIA_11: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
static VIA_2: HeaderValue = HeaderValue::from_static("2 gatehouse");

fn rewrite_headers(
    req: &mut Request<Incoming>,
    host: Option<HeaderValue>,
    seen: Seen,
    snap: &Snapshot,
    peer: &Peer,
    caller: Option<&VerifiedClaims>,
    upgrade: bool,
) {
    let via = match req.version() {
        Version::HTTP_10 | Version::HTTP_09 => &VIA_10,
        Version::HTTP_2 | Version::HTTP_3 => &VIA_2,
        _ => &VIA_11,
    };
    let ip = peer.addr.ip();
    let trusted = snap.config.server.trusts(ip);
    let host = match host {
        Some(host) => Some(host),
        // HTTP/2 clients send :authority instead: it becomes the upstream's Host.
        None => {
            let authority = req.uri().authority();
            let host = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(host) = &host {
                req.headers_mut().insert(header::HOST, host.clone());
            }
            host
        }
    };
    let down = Downstream {
        https: peer.https,
        client_cert: peer.client_cert.as_ref(),
        peer: ip,
        peer_value: &peer.value,
        trusted,
        via,
        host,
    };
    let ids = snap.verifier.identity();
    rewrite_request(req.headers_mut(), seen, upgrade, &down, ids, caller);
}

fn upstream_path_and_query(route: &Route, uri: &http::Uri) -> Result<PathAndQuery, GatewayError> {
    let bad = GatewayError::BadRequest("the request target cannot be forwarded");
    if !route.strip_prefix {
        return Ok(uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")));
    }
    let path = route.upstream_path(uri.path());
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    PathAndQuery::try_from(pq).map_err(|_| bad)
}

pub(crate) fn host<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
}

/// Refuses requests an upstream could read differently from the route
/// table: ambiguous paths (see `path.rs`) and more than one `Host` (RFC 9112
/// §3.2: routing would use one, the upstream maybe another).
/// (`Content-Length` with `Transfer-Encoding` never gets here: hyper drops
/// the `Content-Length`, so `server::framing` refuses those requests.)
/// Returns the `Host` header.
fn check_request<B>(req: &Request<B>) -> Result<Option<HeaderValue>, GatewayError> {
    if path::is_ambiguous(req.uri().path()) {
        return Err(GatewayError::BadRequest(
            "the path has dot-segments, empty segments or encoded characters an upstream could decode",
        ));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next().cloned();
    if hosts.next().is_some() {
        return Err(GatewayError::BadRequest("more than one Host header"));
    }
    Ok(host)
}
