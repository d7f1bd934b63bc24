//! The gateway's own endpoints (SPEC §3), answered before any route is
//! matched: login, refresh, logout, `/auth/me`, `/auth/verify` for
//! forward-auth proxies, and the `/.well-known` documents.

mod form;
mod session;

use std::sync::Arc;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::auth::{VerifiedClaims, bearer};
use crate::body::{self, Body};
use crate::error::{GatewayError, json_response};
use crate::metrics::LoginOutcome;
use crate::proxy::Peer;
use crate::state::{Gateway, Snapshot};

pub use form::MAX_BODY;

/// One of the gateway's own endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Login,
    Refresh,
    Logout,
    LogoutAll,
    Me,
    Verify,
    Jwks,
    OpenIdConfiguration,
}

impl Endpoint {
    /// The endpoint at `path`, if it is one (exact match: anything else
    /// under `/auth/` is left to the routes).
    pub fn at(path: &str) -> Option<Endpoint> {
        Some(match path {
            "/auth/login" => Endpoint::Login,
            "/auth/refresh" => Endpoint::Refresh,
            "/auth/logout" => Endpoint::Logout,
            "/auth/logout-all" => Endpoint::LogoutAll,
            "/auth/me" => Endpoint::Me,
            "/auth/verify" => Endpoint::Verify,
            "/.well-known/jwks.json" => Endpoint::Jwks,
            "/.well-known/openid-configuration" => Endpoint::OpenIdConfiguration,
            _ => return None,
        })
    }

    /// The `Allow` header of a 405.
    fn allow(self) -> &'static str {
        match self {
            Endpoint::Login | Endpoint::Refresh | Endpoint::Logout | Endpoint::LogoutAll => "POST",
            Endpoint::Me | Endpoint::Jwks | Endpoint::OpenIdConfiguration => "GET, HEAD",
            // Forward-auth proxies send the original method.
            Endpoint::Verify => "",
        }
    }

    fn allows(self, m: &Method) -> bool {
        match self.allow() {
            "POST" => m == Method::POST,
            "GET, HEAD" => m == Method::GET || m == Method::HEAD,
            _ => true,
        }
    }
}

/// Answers a request for `endpoint`.
pub async fn serve(
    endpoint: Endpoint,
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Response<Body> {
    if !endpoint.allows(req.method()) {
        return GatewayError::MethodNotAllowed(endpoint.allow()).into_response();
    }
    let answer = match endpoint {
        Endpoint::Login => session::login(req, gw, snap, peer).await,
        Endpoint::Refresh => session::refresh(req, gw, snap).await,
        Endpoint::Logout => session::logout(req, gw, snap).await,
        Endpoint::LogoutAll => session::logout_all(&req, gw, snap).await,
        Endpoint::Me => me(&req, gw, snap).await,
        Endpoint::Verify => verify(&req, gw, snap, peer).await,
        Endpoint::Jwks => Ok(public_json(&crate::auth::jwks::jwks(&snap.keys))),
        Endpoint::OpenIdConfiguration => Ok(openid_configuration(&req, snap, peer)),
    };
    // Not counted: a 404 from a gateway without `[login]`.
    if endpoint == Endpoint::Login && !matches!(answer, Err(GatewayError::NoRoute)) {
        snap.metrics.login(login_outcome(&answer));
    }
    answer.unwrap_or_else(GatewayError::into_response)
}

/// The caller behind the request's bearer token: verified (or cached) and
/// not revoked.
async fn caller(
    req: &Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<Arc<VerifiedClaims>, GatewayError> {
    let token = match bearer::extract(req.headers()) {
        Ok(Some(t)) => t,
        Ok(None) => return Err(GatewayError::MissingToken),
        Err(_) => return Err(GatewayError::MalformedAuthorization),
    };
    let claims = crate::proxy::verify_fetching(token, snap).await?;
    gw.revocations
        .check(claims.revocation_ref())
        .map_err(GatewayError::InvalidToken)?;
    Ok(claims)
}

/// `GET /auth/me`: the verified claims.
async fn me(
    req: &Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<Response<Body>, GatewayError> {
    let claims = caller(req, gw, snap).await?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::Value::Object(claims.claims()),
    ))
}

/// `/auth/verify`, for nginx `auth_request`, Traefik ForwardAuth and Caddy
/// `forward_auth`: the route is the one the original request would take
/// (`X-Forwarded-Uri` or `X-Original-URI`, `X-Forwarded-Method`,
/// `X-Forwarded-Host`), and its rules apply. 200 carries the identity
/// headers the upstream should receive.
async fn verify(
    req: &Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Result<Response<Body>, GatewayError> {
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    // nginx passes the client's own headers on to auth_request: a client
    // could add the one header its proxy does not set. Two that disagree
    // are refused rather than one of them believed.
    let uri = match (text("x-forwarded-uri"), text("x-original-uri")) {
        (Some(a), Some(b)) if a != b => {
            return Err(GatewayError::BadRequest(
                "X-Forwarded-Uri and X-Original-URI disagree",
            ));
        }
        (a, b) => a.or(b).unwrap_or("/"),
    };
    let path = uri.split(['?', '#']).next().unwrap_or("/");
    // The same refusal as the proxy path's: a path an upstream could read
    // as another route's must not be judged by this one's rules.
    if !path.starts_with('/') || crate::proxy::path::is_ambiguous(path) {
        return Err(GatewayError::BadRequest(
            "the forwarded path has dot-segments, empty segments or encoded characters an upstream could decode",
        ));
    }
    let method = match (text("x-forwarded-method"), text("x-original-method")) {
        (Some(a), Some(b)) if a != b => {
            return Err(GatewayError::BadRequest(
                "X-Forwarded-Method and X-Original-Method disagree",
            ));
        }
        (a, b) => a
            .or(b)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .unwrap_or(Method::GET),
    };
    // A browser's preflight carries no token: with `[cors]` the front proxy
    // is let pass it on (its upstream answers it), as the proxy path
    // answers it itself.
    if method == Method::OPTIONS
        && let Some(cors) = &snap.config.cors
        && let Some(allowed) = cors.forwarded_preflight(h)
    {
        if !allowed {
            return Err(GatewayError::OriginNotAllowed);
        }
        let mut rsp = Response::new(body::empty());
        rsp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(rsp);
    }
    let host = text("x-forwarded-host").or_else(|| crate::proxy::host(req));
    let route = snap
        .routes
        .find(&method, host, path)
        .ok_or(GatewayError::NoRoute)?;
    let (revocations, last) = (&gw.revocations, &peer.last_token);
    let caller = match crate::proxy::admit(h, route, snap, revocations, last, true) {
        Some(admitted) => admitted?,
        None => crate::proxy::admit_fetching(h, route, snap, revocations, last).await?,
    };
    let mut rsp = Response::new(body::empty());
    if let Some(c) = caller {
        for (name, value) in c.identity_headers() {
            rsp.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rsp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(rsp)
}

/// Whether the client's request reached us over TLS: on this connection,
/// or at a trusted proxy in front that says so in `X-Forwarded-Proto`.
fn came_over_tls(req: &Request<Incoming>, snap: &Snapshot, peer: &Peer) -> bool {
    if peer.https {
        return true;
    }
    snap.config.server.trusts(peer.addr.ip())
        && req
            .headers()
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// How a login answered, for `/metrics`.
fn login_outcome(answer: &Result<Response<Body>, GatewayError>) -> LoginOutcome {
    match answer {
        Ok(_) => LoginOutcome::Success,
        Err(GatewayError::InvalidCredentials) => LoginOutcome::InvalidCredentials,
        Err(GatewayError::RateLimited(_)) => LoginOutcome::RateLimited,
        Err(GatewayError::Unavailable(_)) => LoginOutcome::Unavailable,
        Err(
            GatewayError::BadRequest(_)
            | GatewayError::PayloadTooLarge
            | GatewayError::UnsupportedMediaType
            | GatewayError::RequestTimeout,
        ) => LoginOutcome::BadRequest,
        Err(_) => LoginOutcome::Error,
    }
}

/// A document anyone may read and caches may keep for a few minutes.
fn public_json(value: &serde_json::Value) -> Response<Body> {
    let mut rsp = json_response(StatusCode::OK, value);
    rsp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    rsp
}

/// OpenID Connect Discovery 1.0 §3 (the parts that apply to a token
/// issuer without an authorization endpoint). URLs are built from the
/// request's `Host` when `[tokens] issuer` is not itself a URL, with
/// `https` when the client came over TLS, here or (as a trusted proxy's
/// `X-Forwarded-Proto` says) in front: a client that follows
/// `token_endpoint` must not be sent to plain HTTP with a password.
fn openid_configuration(req: &Request<Incoming>, snap: &Snapshot, peer: &Peer) -> Response<Body> {
    let issuer = &snap.config.tokens.issuer;
    let from_issuer = issuer.starts_with("https://") || issuer.starts_with("http://");
    let base = if from_issuer {
        issuer.trim_end_matches('/').to_string()
    } else {
        let host = crate::proxy::host(req).unwrap_or("localhost");
        let scheme = if came_over_tls(req, snap, peer) {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{host}")
    };
    let algs: Vec<String> = snap
        .keys
        .iter()
        .map(|k| format!("{:?}", k.algorithm))
        .collect();
    let doc = json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "token_endpoint": format!("{base}/auth/login"),
        "grant_types_supported": ["password", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "userinfo_endpoint": format!("{base}/auth/me"),
    });
    if from_issuer {
        public_json(&doc)
    } else {
        // Built from this request's Host: no shared cache may keep it.
        json_response(StatusCode::OK, &doc)
    }
}
