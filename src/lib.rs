//! gatehouse: a reverse-proxy authentication gateway.
//!
//! # Layout
//! - [`config`]: `gateway.toml` -> validated [`config::Config`] or `FILE:LINE:COL` diagnostics.
//! - [`state`]: the [`state::Snapshot`] every request reads (routes, keys, verifier, cache,
//!   upstreams, login), swapped whole on SIGHUP, inside the [`state::Gateway`] that also holds
//!   the state store and the in-memory revocations.
//! - [`server`]: listeners, connection limits, graceful shutdown, signals, admin endpoints.
//! - [`routes`]: the route table (longest prefix, then host, then methods).
//! - [`auth`]: bearer extraction, keys, verification, the verified-claims cache, authorization.
//! - [`proxy`]: the request path: route -> authenticate -> revocations -> authorize -> forward.
//! - [`endpoints`]: `/auth/*` and `/.well-known/*`: login, refresh, logout, me, verify, JWKS.
//! - [`login`]: the users file or `verify_url`, password checks off the async workers,
//!   rate limits.
//! - [`cors`]: `[cors]`: preflights answered, `Access-Control-*` on every response.
//! - [`client_tls`]: TLS as a client: `https://` targets, `jwks_url`, `verify_url`.
//! - [`metrics`]: the counters behind the admin listener's `/metrics`.
//! - [`store`]: the durable state ([`store::Store`], embedded redb backend) and the in-memory
//!   revocation set.
//! - [`error`]: every failure and its response; [`body`]: the body type;
//!   [`telemetry`]: logging.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod cli;
pub mod client_tls;
pub mod config;
pub mod cors;
pub mod endpoints;
pub mod error;
pub mod login;
pub mod metrics;
pub mod proxy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod timer;
