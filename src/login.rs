//! Who may log in: the users file (argon2id, or bcrypt for migrated users)
//! or an existing API behind `verify_url`, with password work kept off the
//! async workers and bounded, and the rate limits of `[login]`.
//!
//! An unknown username is checked against a dummy argon2id hash, so it takes
//! as long as a wrong password and gets the same answer.

pub mod ratelimit;
mod users;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::body;
use crate::config::{ConfigErrors, Credentials, LoginConfig};
use crate::proxy::forward;
use crate::proxy::pool::{Pool, Pooled};
use ratelimit::LoginLimits;
pub use users::{PasswordHash, User, Users};

/// How long a login may wait for a password-hashing slot, or for
/// `verify_url` to answer, before the client gets a 503.
const WAIT: Duration = Duration::from_secs(10);

/// How long a new connection to `verify_url` (and its TLS handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest `verify_url` answer read.
const MAX_VERIFY_BODY: usize = 64 * 1024;

/// The subject a successful login becomes, and what its tokens say.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub subject: String,
    pub roles: Vec<String>,
    pub claims: Map<String, Value>,
}

/// How a login attempt ended.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Valid(Account),
    /// Unknown user or wrong password: the same answer for both.
    Invalid,
    /// The username's failed attempts are spent (checked once a hashing slot
    /// is held, so attempts sent all at once are counted one by one).
    Limited(ratelimit::RetryAfter),
    /// The credentials could not be checked (busy, or `verify_url` down).
    Unavailable,
}

/// The `[login]` section, ready to serve: built with each snapshot, so
/// SIGHUP reloads the users file too.
pub struct Login {
    source: Source,
    /// Shared with the next snapshot when a reload keeps the same rates,
    /// so SIGHUP does not hand an attacker fresh attempts.
    pub limits: Arc<LoginLimits>,
    rates: (ratelimit::Rate, ratelimit::Rate),
    /// Password checks running at once; more wait (up to [`WAIT`]).
    hashing: Arc<Semaphore>,
    /// Attempts for one username run one at a time (a stripe per hash of
    /// the name), so the per-user limit's check and its count of a failure
    /// are one step: without it, every hashing slot could pass the check
    /// before the first failure was counted.
    per_user: Box<[tokio::sync::Mutex<()>]>,
    stripe_hasher: std::hash::RandomState,
}

/// Lock stripes for [`Login::per_user`].
const USER_STRIPES: usize = 64;

enum Source {
    Users {
        users: Users,
        dummy: Arc<PasswordHash>,
        /// A failed check is answered no sooner than this: the slowest
        /// hash in the file (bcrypt users, other argon2 parameters) timed
        /// once at load, so an unknown user (checked against the dummy)
        /// takes as long as a wrong password for any user.
        floor: Duration,
    },
    Remote {
        /// Where to POST: the URL's path and query, and its authority (`Host`).
        path: http::uri::PathAndQuery,
        /// Keep-alive connections to it, as an upstream target's.
        pool: Arc<Pool>,
    },
}

#[derive(Deserialize)]
struct RemoteAccount {
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    claims: Map<String, Value>,
}

impl Login {
    /// Reads and checks the users file (when there is one).
    ///
    /// # Errors
    /// The users file cannot be read, is not valid, or holds a hash that
    /// is neither argon2 nor bcrypt.
    pub fn new(cfg: &LoginConfig) -> Result<Login, ConfigErrors> {
        let source = match &cfg.credentials {
            Credentials::UsersFile(path) => {
                let users = Users::load(path).map_err(ConfigErrors)?;
                let dummy = Arc::new(PasswordHash::dummy());
                let floor = slowest_check(&users, &dummy);
                Source::Users {
                    users,
                    dummy,
                    floor,
                }
            }
            Credentials::VerifyUrl { uri, dial } => Source::Remote {
                path: uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
                pool: Arc::new(Pool::new(dial.clone())),
            },
        };
        Ok(Login {
            source,
            limits: Arc::new(LoginLimits::new(
                cfg.rate_limit_per_ip,
                cfg.rate_limit_per_user,
            )),
            rates: (cfg.rate_limit_per_ip, cfg.rate_limit_per_user),
            hashing: Arc::new(Semaphore::new(cpu_slots())),
            per_user: (0..USER_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stripe_hasher: std::hash::RandomState::new(),
        })
    }

    /// Keeps `previous`'s rate-limit counters when the rates are unchanged.
    pub fn carry_limits_from(&mut self, previous: &Login) {
        if self.rates == previous.rates {
            self.limits = Arc::clone(&previous.limits);
        }
    }

    /// How many users the users file holds (`None` with `verify_url`).
    pub fn user_count(&self) -> Option<usize> {
        match &self.source {
            Source::Users { users, .. } => Some(users.len()),
            Source::Remote { .. } => None,
        }
    }

    /// Whether the users file holds a user named `name` (the demo-user warning).
    pub fn has_user(&self, name: &str) -> bool {
        matches!(&self.source, Source::Users { users, .. } if users.get(name).is_some())
    }

    /// Checks `username` and `password`, and counts a failure against the
    /// username's limit.
    pub async fn authenticate(&self, username: &str, password: &str) -> Outcome {
        use std::hash::BuildHasher;
        let stripe = self.stripe_hasher.hash_one(username) as usize % USER_STRIPES;
        let Ok(_one_at_a_time) = tokio::time::timeout(WAIT, self.per_user[stripe].lock()).await
        else {
            return Outcome::Unavailable;
        };
        let started = std::time::Instant::now();
        let outcome = match &self.source {
            Source::Users {
                users,
                dummy,
                floor,
            } => {
                let (hash, user) = match users.get(username) {
                    Some(u) => (Arc::clone(&u.password_hash), Some(u)),
                    None => (Arc::clone(dummy), None),
                };
                match self.check_password(hash, username, password).await {
                    Ok(true) => match user {
                        Some(u) => Outcome::Valid(u.account()),
                        None => Outcome::Invalid,
                    },
                    Ok(false) => {
                        // Counted already (under the stripe lock). Every
                        // failure takes the same time, whatever the hash.
                        if let Some(rest) = floor.checked_sub(started.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                        return Outcome::Invalid;
                    }
                    Err(outcome) => outcome,
                }
            }
            Source::Remote { path, pool } => {
                if let Err(r) = self.limits.check_user(username) {
                    return Outcome::Limited(r);
                }
                remote(pool, path, username, password).await
            }
        };
        if outcome == Outcome::Invalid {
            self.limits.record_failure(username);
        }
        outcome
    }

    /// The user whose `subject` this is, while the users file still lists
    /// them (`None` with `verify_url`: such sessions cannot be re-checked).
    pub fn current_account(&self, subject: &str) -> Option<Option<Account>> {
        match &self.source {
            Source::Users { users, .. } => Some(users.by_subject(subject).map(User::account)),
            Source::Remote { .. } => None,
        }
    }

    /// Runs the hash on the blocking pool, at most `hashing` at once. The
    /// username's limit is checked under its stripe lock (see `per_user`),
    /// and a failure is counted before the lock is released.
    async fn check_password(
        &self,
        hash: Arc<PasswordHash>,
        username: &str,
        password: &str,
    ) -> Result<bool, Outcome> {
        let permit = tokio::time::timeout(WAIT, Arc::clone(&self.hashing).acquire_owned())
            .await
            .map_err(|_| Outcome::Unavailable)?
            .map_err(|_| Outcome::Unavailable)?;
        self.limits.check_user(username).map_err(Outcome::Limited)?;
        let limits = Arc::clone(&self.limits);
        let (username, password) = (username.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let ok = hash.verify(password.as_bytes());
            if !ok {
                limits.record_failure(&username);
            }
            ok
        })
        .await
        .map_err(|_| Outcome::Unavailable)
    }
}

/// How many CPU-heavy jobs of one kind run at once on the blocking pool:
/// one per core, at least two. Password checks and RSA signatures (see
/// `endpoints::session`) each have a semaphore of this size.
pub(crate) fn cpu_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// The longest one check takes among the file's cost classes (and the
/// dummy's), timed once with a wrong password. Runs each class once: a file
/// of bcrypt cost-12 users costs about a third of a second here, at load.
fn slowest_check(users: &Users, dummy: &PasswordHash) -> Duration {
    let mut slowest = Duration::ZERO;
    let classes = users.cost_classes();
    let mut time = |hash: &PasswordHash| {
        let t = std::time::Instant::now();
        let _ = hash.verify(b"\0 not the password");
        slowest = slowest.max(t.elapsed());
    };
    time(dummy);
    for hash in classes.iter().take(MAX_COST_CLASSES) {
        time(hash);
    }
    slowest
}

/// Cost classes timed at load; a file with more (odd) ones is timed on these.
const MAX_COST_CLASSES: usize = 8;

/// POSTs the credentials to `verify_url`: 200 with an account is a valid
/// login, 401/403 an invalid one, anything else (or no answer) unavailable.
async fn remote(
    pool: &Arc<Pool>,
    path: &http::uri::PathAndQuery,
    username: &str,
    password: &str,
) -> Outcome {
    let body = serde_json::json!({ "username": username, "password": password }).to_string();
    let req = Request::post(path.as_str())
        .header(header::HOST, pool.dial().authority().as_str())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(body::full(body));
    let Ok(req) = req else {
        return Outcome::Unavailable;
    };
    let sent = forward::send(req, pool, CONNECT_TIMEOUT, Instant::now());
    let rsp = match tokio::time::timeout(WAIT, sent).await {
        // Its connection goes back to the pool once the answer is read.
        Ok(Ok((rsp, sender))) => rsp.map(|b| Pooled::new(b, sender, Arc::clone(pool))),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "verify_url unreachable");
            return Outcome::Unavailable;
        }
        Err(_) => {
            tracing::warn!("verify_url timed out");
            return Outcome::Unavailable;
        }
    };
    // Read whatever the status: a connection whose answer was read to the
    // end goes back to the pool, so failed logins reuse it too.
    let status = rsp.status();
    let body = Limited::new(rsp.into_body(), MAX_VERIFY_BODY);
    let read = tokio::time::timeout(WAIT, body.collect()).await;
    match status {
        StatusCode::OK => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Outcome::Invalid,
        status => {
            tracing::warn!(%status, "verify_url answered with an unexpected status");
            return Outcome::Unavailable;
        }
    }
    let Ok(Ok(collected)) = read else {
        tracing::warn!("verify_url's answer could not be read");
        return Outcome::Unavailable;
    };
    match serde_json::from_slice::<RemoteAccount>(&collected.to_bytes()) {
        Ok(a) if !a.subject.is_empty() => Outcome::Valid(Account {
            subject: a.subject,
            roles: a.roles,
            claims: a.claims,
        }),
        _ => {
            tracing::warn!("verify_url's 200 answer is not {{\"subject\", \"roles\", \"claims\"}}");
            Outcome::Unavailable
        }
    }
}
