//! gatehouse: a reverse-proxy authentication gateway.
//!
//! # Layout
//! - [`config`]: `gateway.toml` -> validated [`config::Config`] or `FILE:LINE:COL` diagnostics.
//! - [`state`]: the [`state::Snapshot`] every request reads (routes, keys, verifier, cache,
//!   upstreams), swapped whole on SIGHUP.
//! - [`server`]: listeners, connection limits, graceful shutdown, signals, admin endpoints.
//! - [`routes`]: the route table (longest prefix, then host, then methods).
//! - [`auth`]: bearer extraction, keys, verification, the verified-claims cache, authorization.
//! - [`proxy`]: the request path: route -> authenticate -> authorize -> forward.
//! - [`error`]: every failure and its response; [`body`]: the body type;
//!   [`telemetry`]: logging.
#![forbid(unsafe_code)]

pub mod auth;
pub mod body;
pub mod cli;
pub mod config;
pub mod endpoints;
pub mod error;
pub mod login;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod telemetry;
