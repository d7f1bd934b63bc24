//! Durable token state: refresh-token families and revocations.
//!
//! [`Store`] is the seam between the token service and a backend. Every
//! operation is one round trip that a Redis backend implements with one
//! command (or one `EVAL` where a compare-and-set needs it), and every record
//! carries its own expiry, so Redis's `EXAT` does what [`Store::sweep`] does
//! for the embedded backend:
//!
//! | operation | Redis |
//! |---|---|
//! | [`Store::insert_family`] | `SET fam:{id} {record} EXAT {exp} NX` |
//! | [`Store::rotate`] | `EVAL` of a script: `GET fam:{id}`, compare `current`, `SET ... EXAT` |
//! | [`Store::revoke_family`] | `EVAL`: mark `fam:{id}` revoked, `SET rev:fam:{id} EXAT {until}` |
//! | [`Store::revoke_jti`] | `SET rev:jti:{jti} 1 EXAT {until}` |
//! | [`Store::revoke_subject`] | `SET rev:sub:{sub} {cutoff} EXAT {until}` (keeps the later cutoff: `EVAL`) |
//! | [`Store::live_revocations`] | `SCAN 0 MATCH rev:*` + `MGET` |
//! | [`Store::sweep`] | nothing: keys expire by themselves |
//!
//! A call returns only after the change is durable (the embedded backend
//! commits with fsync), so a response sent after it never acknowledges
//! something a crash could lose.

pub mod embedded;
pub mod redis;
pub mod revocations;

use std::future::Future;
use std::pin::Pin;

pub use revocations::Revocations;

/// The state store failed (I/O, a corrupt file, an unreachable server): the
/// request that needed it gets a 503, and nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(pub String);

/// What every store operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// One login's chain of refresh tokens. Only the newest (`current`) may be
/// exchanged; `previous` is kept to tell a lost response (within the grace
/// window) from a replayed, stolen token.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Family {
    pub id: String,
    pub subject: String,
    /// What each access token issued from this family says about the
    /// subject (from the login), so a refresh needs no user lookup.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// `jti` of the refresh token that may be exchanged next.
    pub current: String,
    /// `jti` of the token `current` replaced, if any.
    pub previous: Option<String>,
    /// When `current` was issued (seconds since the epoch).
    pub rotated_at: u64,
    /// The family is forgotten after this (the newest refresh token's `exp`).
    pub exp: u64,
    pub revoked: bool,
}

/// What [`Store::rotate`] did with a presented refresh token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was `current`: the family (returned as now stored) has `next` as current.
    Rotated(Family),
    /// It was `previous` and presented within the grace window: refused,
    /// family left alone.
    Grace,
    /// It was spent (or otherwise not current): the family is now revoked.
    /// Carries the subject for the warning log.
    Reused { subject: String },
    /// The family was already revoked.
    Revoked,
    /// No such family (never issued, or expired and swept).
    Unknown,
}

/// What a refresh token rotation asks for.
#[derive(Clone, Copy, Debug)]
pub struct RotateRequest<'a> {
    pub family: &'a str,
    /// `jti` of the presented refresh token.
    pub presented: &'a str,
    /// `jti` of the refresh token issued in exchange.
    pub next: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
    /// `exp` of the new refresh token (the family's new expiry).
    pub exp: u64,
    /// `[tokens] refresh_reuse_grace`, in seconds.
    pub grace: u64,
}

/// A revocation that is still in force, as loaded at start-up into the
/// in-memory [`Revocations`] set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// An access token, by `jti`, until its `exp`.
    Jti { jti: String, until: u64 },
    /// A refresh family (and access tokens issued from it), until `until`.
    Family { id: String, until: u64 },
    /// Every token of `subject` issued at or before `cutoff` (logout-all).
    Subject {
        subject: String,
        cutoff: u64,
        until: u64,
    },
}

/// The operations the token service needs from a backend; see the module
/// docs for their Redis equivalents. All times are seconds since the epoch.
pub trait Store: Send + Sync {
    /// Records a new family (a login). Fails if the id exists.
    fn insert_family(&self, family: &Family) -> StoreFuture<'_, ()>;

    /// Atomically: if `req.presented` is the family's current token, make
    /// `req.next` current. Otherwise decide between grace, reuse (and then
    /// revoke the family in the same transaction), revoked and unknown.
    /// Concurrent calls with the same presented token: exactly one gets
    /// [`Rotation::Rotated`].
    fn rotate<'a>(&'a self, req: RotateRequest<'a>) -> StoreFuture<'a, Rotation>;

    /// Revokes a family until `until`: its refresh tokens stop working.
    fn revoke_family<'a>(&'a self, family: &'a str, until: u64) -> StoreFuture<'a, ()>;

    /// Revokes one access token by `jti` until `until` (its `exp`).
    fn revoke_jti<'a>(&'a self, jti: &'a str, until: u64) -> StoreFuture<'a, ()>;

    /// Refuses every token of `subject` issued at or before `cutoff`, until
    /// `until`. A later cutoff replaces an earlier one, never the reverse.
    fn revoke_subject<'a>(
        &'a self,
        subject: &'a str,
        cutoff: u64,
        until: u64,
    ) -> StoreFuture<'a, ()>;

    /// Every revocation with `until > now`.
    fn live_revocations(&self, now: u64) -> StoreFuture<'_, Vec<Revocation>>;

    /// Deletes families and revocations that expired before `now`; returns
    /// how many records went.
    fn sweep(&self, now: u64) -> StoreFuture<'_, usize>;

    /// Where the log of revocations ends now: read it before
    /// [`Store::live_revocations`] and follow it from there with
    /// [`Store::revocations_since`]. The embedded store has no log (no
    /// other instance writes to it).
    fn log_position(&self) -> StoreFuture<'_, String> {
        Box::pin(async { Ok(String::new()) })
    }

    /// The revocations recorded after `position` (by any instance sharing
    /// the store, this one included), oldest first, and the position after
    /// them. With no log, nothing.
    fn revocations_since<'a>(
        &'a self,
        position: &'a str,
    ) -> StoreFuture<'a, (Vec<Revocation>, String)> {
        Box::pin(async move { Ok((Vec::new(), position.to_string())) })
    }

    /// Whether other instances may write to this store (then the gateway
    /// follows its log of revocations).
    fn is_shared(&self) -> bool {
        false
    }
}
