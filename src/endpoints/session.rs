//! Login, refresh rotation, logout and logout-all: everything that issues
//! or revokes. Each answers only after the store has committed what it
//! issued or revoked (a 2xx is never lost to a crash), then updates the
//! in-memory revocations the proxy path checks.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::form;
use crate::auth::issue::{self, Grant, Minted, now, random_id};
use crate::auth::keys::Key;
use crate::auth::{RefreshClaims, bearer};
use crate::body::{self, Body};
use crate::error::{GatewayError, json_response};
use crate::login::{Account, Outcome};
use crate::proxy::Peer;
use crate::state::{Gateway, Snapshot};
use crate::store::{Family, Revocation, RotateRequest, Rotation, StoreError};

const NOT_FOUND: GatewayError = GatewayError::NoRoute;

/// `POST /auth/login`.
pub async fn login(
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
    peer: &Peer,
) -> Result<Response<Body>, GatewayError> {
    let login = snap.login.as_ref().ok_or(NOT_FOUND)?;
    let client = peer.client_ip(req.headers(), snap);
    login
        .limits
        .check_ip(client)
        .map_err(|r| GatewayError::RateLimited(r.secs()))?;
    let fields = form::read(req, false).await?;
    // `grant_type=password`, `scope` and `client_id` are accepted and ignored.
    let username = fields.required("username")?;
    let password = fields.required("password")?;
    login
        .limits
        .check_user(username)
        .map_err(|r| GatewayError::RateLimited(r.secs()))?;
    match login.authenticate(username, password).await {
        Outcome::Valid(account) => {
            tracing::info!(subject = %account.subject, "login");
            issue_new_family(gw, snap, &account).await
        }
        Outcome::Invalid => {
            tracing::info!(username = ?loggable(username), %client, "login failed");
            Err(GatewayError::InvalidCredentials)
        }
        Outcome::Limited(r) => Err(GatewayError::RateLimited(r.secs())),
        Outcome::Unavailable => Err(GatewayError::Unavailable(
            "the credentials could not be checked; try again",
        )),
    }
}

/// `POST /auth/refresh`: rotation with reuse detection (RFC 9700 §4.14.2).
pub async fn refresh(
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<Response<Body>, GatewayError> {
    snap.login.as_ref().ok_or(NOT_FOUND)?;
    let fields = form::read(req, false).await?;
    if fields
        .optional("grant_type")?
        .is_some_and(|g| g != "refresh_token")
    {
        return Err(GatewayError::BadRequest(
            "grant_type must be refresh_token here",
        ));
    }
    let presented = verify_refresh(fields.required("refresh_token")?, gw, snap)?;
    let tokens = &snap.config.tokens;
    let key = signer(snap)?;
    let now = now();
    // One read of the logout-all cutoff decides both whether the presented
    // token is cut off and the new tokens' `iat`: read twice, a logout-all
    // landing in between could stamp tokens from a cut-off session past it.
    let cutoff = gw
        .revocations
        .subject_cutoff(&own_subject_key(snap, &presented.subject), now);
    if cutoff.is_some_and(|c| presented.iat <= c) {
        return Err(GatewayError::InvalidGrant("refresh token revoked"));
    }
    let iat = iat_after(cutoff, now);
    // Both signatures on one turn, taken before the commit below.
    let turn = turn_for(key).await?;
    let auth_time = presented.auth_time;
    // Past `session_max` (within the refresh token's leeway): log in again.
    if let Some(max) = tokens.session_max
        && now >= auth_time.saturating_add(max.as_secs())
    {
        return Err(GatewayError::InvalidGrant("session expired: log in again"));
    }
    let (subject, family) = (&presented.subject, &presented.family);
    let next = sign_refresh(key, &turn, snap, subject, family, iat, auth_time).await?;
    let rotation = gw
        .store
        .rotate(RotateRequest {
            family: &presented.family,
            presented: &presented.jti,
            next: &next.jti,
            now,
            exp: next.exp,
            grace: tokens.refresh_reuse_grace.as_secs(),
        })
        .await
        .map_err(store_failed)?;
    match rotation {
        Rotation::Rotated(family) => {
            let stored = Account {
                subject: family.subject,
                roles: family.roles,
                claims: family.claims,
            };
            // A user removed from the users file (and reloaded) loses their
            // sessions at the next refresh; one whose roles changed gets the
            // new roles. `verify_url` sessions keep what the login said.
            let current = snap
                .login
                .as_ref()
                .and_then(|l| l.current_account(&stored.subject));
            let account = match current {
                None => stored,
                Some(Some(current)) => current,
                Some(None) => {
                    let until = now.saturating_add(family_lifetime(snap));
                    let id = presented.family.clone();
                    commit(gw, Revocation::Family { id, until }).await?;
                    return Err(GatewayError::InvalidGrant("the user no longer exists"));
                }
            };
            let family = &presented.family;
            let access = sign_access(key, &turn, snap, &account, family, iat, auth_time).await?;
            Ok(token_pair(&access, &next))
        }
        Rotation::Grace => Err(GatewayError::InvalidGrant(
            "refresh token already used (within the reuse grace period)",
        )),
        Rotation::Reused { subject } => {
            tracing::warn!(
                %subject,
                family = %presented.family,
                "refresh token reused: the whole family is revoked"
            );
            // The store revoked the family; its access tokens go too.
            gw.revocations.add(Revocation::Family {
                id: presented.family.clone(),
                until: now.saturating_add(access_lifetime(snap)),
            });
            Err(GatewayError::InvalidGrant("refresh token already used"))
        }
        Rotation::Revoked => Err(GatewayError::InvalidGrant("refresh token revoked")),
        Rotation::Unknown => Err(GatewayError::InvalidGrant(
            "refresh token unknown or expired",
        )),
    }
}

/// `POST /auth/logout`: revokes the bearer access token (by `jti`, until
/// its `exp`) and the refresh family, named by the access token or by a
/// `refresh_token` in the body.
pub async fn logout(
    req: Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<Response<Body>, GatewayError> {
    // A token that is already revoked may still log out (logout is idempotent).
    let access = match bearer::extract(req.headers()) {
        Ok(Some(t)) => Some(crate::proxy::verify_fetching(t, snap).await),
        Ok(None) => None,
        Err(_) => return Err(GatewayError::MalformedAuthorization),
    };
    let fields = form::read(req, true).await?;
    let refresh = match fields.optional("refresh_token")? {
        Some(t) => Some(verify_refresh(t, gw, snap)?),
        None if access.is_none() => return Err(GatewayError::MissingToken),
        None => None,
    };
    // With a valid refresh token, an access token that no longer verifies
    // (it expired, typically) does not stop the session from ending.
    let access = match access {
        Some(Ok(a)) => Some(a),
        Some(Err(_)) if refresh.is_some() => None,
        Some(Err(e)) => return Err(e),
        None => None,
    };
    if let (Some(a), Some(r)) = (&access, &refresh)
        && a.subject() != Some(r.subject.as_str())
    {
        return Err(GatewayError::InvalidGrant(
            "the refresh token belongs to someone else",
        ));
    }
    let now = now();
    if let Some(a) = &access {
        let jti = a.jti();
        let until = a.exp().saturating_add(snap.config.tokens.leeway.as_secs());
        commit(
            gw,
            Revocation::Jti {
                jti: jti.into(),
                until,
            },
        )
        .await?;
    }
    let family = refresh
        .as_ref()
        .map(|r| r.family.as_str())
        .or_else(|| access.as_ref().and_then(|a| a.family()));
    if let Some(id) = family {
        let until = now.saturating_add(family_lifetime(snap));
        commit(
            gw,
            Revocation::Family {
                id: id.into(),
                until,
            },
        )
        .await?;
    }
    tracing::info!(
        subject = access
            .as_ref()
            .and_then(|a| a.subject())
            .or(refresh.as_ref().map(|r| r.subject.as_str())),
        "logout"
    );
    Ok(no_content())
}

/// `POST /auth/logout-all`: every token of the caller's subject issued up
/// to now is refused, at the proxy and at refresh.
pub async fn logout_all(
    req: &Request<Incoming>,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<Response<Body>, GatewayError> {
    let caller = super::caller(req, gw, snap).await?;
    let (Some(subject), Some(key)) = (caller.subject(), caller.subject_key()) else {
        return Err(GatewayError::InvalidToken("the token has no subject"));
    };
    let now = now();
    let revocation = Revocation::Subject {
        subject: key.into(),
        cutoff: now,
        until: now.saturating_add(family_lifetime(snap)),
    };
    commit(gw, revocation).await?;
    tracing::info!(%subject, "logout everywhere");
    Ok(no_content())
}

/// A username as logs show it: at most 64 characters (then formatted with
/// `?`, escaped, so a crafted name cannot forge log lines).
fn loggable(username: &str) -> &str {
    match username.char_indices().nth(64) {
        Some((i, _)) => &username[..i],
        None => username,
    }
}

/// Writes `r` to the store, then (only once it is durable) to memory.
async fn commit(gw: &Gateway, r: Revocation) -> Result<(), GatewayError> {
    let stored = match &r {
        Revocation::Jti { jti, until } => gw.store.revoke_jti(jti, *until).await,
        Revocation::Family { id, until } => gw.store.revoke_family(id, *until).await,
        Revocation::Subject {
            subject,
            cutoff,
            until,
        } => gw.store.revoke_subject(subject, *cutoff, *until).await,
    };
    stored.map_err(store_failed)?;
    gw.revocations.add(r);
    Ok(())
}

/// A refresh token that verifies and was issued after any logout-all of its subject.
fn verify_refresh(
    token: &str,
    gw: &Gateway,
    snap: &Snapshot,
) -> Result<RefreshClaims, GatewayError> {
    let claims = snap
        .verifier
        .verify_refresh(token)
        .map_err(|r| GatewayError::InvalidGrant(r.0))?;
    if gw
        .revocations
        .subject_cutoff(&own_subject_key(snap, &claims.subject), now())
        .is_some_and(|cutoff| claims.iat <= cutoff)
    {
        return Err(GatewayError::InvalidGrant("refresh token revoked"));
    }
    Ok(claims)
}

/// A login: a new family, its first refresh token and an access token.
async fn issue_new_family(
    gw: &Gateway,
    snap: &Snapshot,
    account: &Account,
) -> Result<Response<Body>, GatewayError> {
    let key = signer(snap)?;
    let now = now();
    let iat = issued_at(gw, snap, &account.subject, now);
    let family_id = random_id();
    // Both signed before the commit: a slot each is enough.
    let refresh = sign_refresh(key, &None, snap, &account.subject, &family_id, iat, now).await?;
    let access = sign_access(key, &None, snap, account, &family_id, iat, now).await?;
    let family = Family {
        id: family_id,
        subject: account.subject.clone(),
        roles: account.roles.clone(),
        claims: account.claims.clone(),
        current: refresh.jti.clone(),
        previous: None,
        rotated_at: now,
        exp: refresh.exp,
        revoked: false,
    };
    gw.store
        .insert_family(&family)
        .await
        .map_err(store_failed)?;
    Ok(token_pair(&access, &refresh))
}

/// A refresh token of `family` for `subject`.
async fn sign_refresh(
    key: &Arc<Key>,
    turn: &Turn,
    snap: &Snapshot,
    subject: &str,
    family: &str,
    iat: u64,
    auth_time: u64,
) -> Result<Minted, GatewayError> {
    let tokens = snap.config.tokens.clone();
    let (subject, family) = (subject.to_owned(), family.to_owned());
    signed(key, turn, move |key| {
        issue::sign_refresh(key, &tokens, &subject, &family, iat, auth_time)
    })
    .await
}

/// An access token whose `jti` names its family (`{family}.{random}`), so
/// revoking the family revokes it too.
///
/// It expires `access_ttl` from now, or at the end of the session (login at
/// `auth_time` plus `session_max`) if that comes first: no access token
/// outlives its family's last refresh token, so a revocation of the family
/// (kept as long as that) covers every one of them.
async fn sign_access(
    key: &Arc<Key>,
    turn: &Turn,
    snap: &Snapshot,
    account: &Account,
    family: &str,
    iat: u64,
    auth_time: u64,
) -> Result<Minted, GatewayError> {
    let tokens = snap.config.tokens.clone();
    let account = account.clone();
    let jti = format!("{family}.{}", random_id());
    let mut ttl = tokens.access_ttl;
    if let Some(max) = tokens.session_max {
        let left = auth_time
            .saturating_add(max.as_secs())
            .saturating_sub(now());
        ttl = ttl.min(Duration::from_secs(left));
    }
    signed(key, turn, move |key| {
        let grant = Grant {
            subject: &account.subject,
            roles: &account.roles,
            claims: &account.claims,
            ttl,
        };
        issue::sign_access(key, &tokens, &grant, jti, iat)
    })
    .await
}

/// `iat` for a new token of `subject`: now, or just after a logout-all
/// cutoff in this same second (tokens at or before the cutoff are refused).
fn issued_at(gw: &Gateway, snap: &Snapshot, subject: &str, now: u64) -> u64 {
    let cutoff = gw
        .revocations
        .subject_cutoff(&own_subject_key(snap, subject), now);
    iat_after(cutoff, now)
}

fn iat_after(cutoff: Option<u64>, now: u64) -> u64 {
    match cutoff {
        Some(cutoff) if cutoff >= now => cutoff.saturating_add(1),
        _ => now,
    }
}

/// The revocation set's name for `subject` of this gateway's own tokens.
fn own_subject_key(snap: &Snapshot, subject: &str) -> String {
    crate::store::revocations::issuer_scoped(Some(&snap.config.tokens.issuer), subject)
}

fn signer(snap: &Snapshot) -> Result<&Arc<Key>, GatewayError> {
    snap.keys
        .signer()
        .ok_or(GatewayError::Internal("no key can sign"))
}

/// Runs `sign` with `key` where it cannot hold up the proxy path. An RSA
/// signature (RS*/PS*) takes about a millisecond, and a login or a refresh
/// makes two: on the async thread that would stall every connection it
/// serves (all of them, with one worker), so those sign on tokio's blocking
/// pool. The other algorithms sign in tens of microseconds, less than the
/// hand-off to another thread costs, and sign in place.
///
/// RSA signatures run at most one per core at a time (as password checks
/// do): a flood of refreshes queues for a slot rather than growing the
/// blocking pool to hundreds of threads that crowd out the proxy. With
/// `turn` (see [`Turn`]) the caller already holds its slot.
async fn signed<T: Send + 'static>(
    key: &Arc<Key>,
    turn: &Turn,
    sign: impl FnOnce(&Key) -> Result<T, jsonwebtoken::errors::Error> + Send + 'static,
) -> Result<T, GatewayError> {
    let signed = if signs_slowly(key.algorithm) {
        let slot = match turn {
            Some(held) => Arc::clone(held),
            None => Arc::new(signing_slot().await?),
        };
        let key = Arc::clone(key);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            sign(&key)
        })
        .await
        .map_err(|_| cannot_sign())?
    } else {
        sign(key)
    };
    signed.map_err(|_| cannot_sign())
}

/// A signing slot held across several signatures: a refresh takes its turn
/// before it commits the rotation, so that nothing after the commit waits
/// (a client that gave up in such a wait would have lost its only valid
/// refresh token, and its retry would look like reuse). `None`: each
/// signature takes a slot of its own, if its key needs one.
type Turn = Option<Arc<OwnedSemaphorePermit>>;

/// `key`'s turn at signing: a slot for an RSA key, nothing for the others.
async fn turn_for(key: &Key) -> Result<Turn, GatewayError> {
    if signs_slowly(key.algorithm) {
        Ok(Some(Arc::new(signing_slot().await?)))
    } else {
        Ok(None)
    }
}

/// One of the RSA signing slots (one per core, at least two).
async fn signing_slot() -> Result<OwnedSemaphorePermit, GatewayError> {
    static SLOTS: LazyLock<Arc<Semaphore>> =
        LazyLock::new(|| Arc::new(Semaphore::new(crate::login::cpu_slots())));
    Arc::clone(&SLOTS)
        .acquire_owned()
        .await
        .map_err(|_| cannot_sign())
}

/// RSA: what `signed` moves off the async thread.
fn signs_slowly(alg: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::{PS256, PS384, PS512, RS256, RS384, RS512};
    matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
}

fn cannot_sign() -> GatewayError {
    GatewayError::Internal("the token could not be signed")
}

fn store_failed(e: StoreError) -> GatewayError {
    tracing::error!(error = %e, "state store failed; nothing was issued or revoked");
    GatewayError::Unavailable("the state store is unavailable; nothing was changed")
}

/// Seconds an access token may still be accepted after it is issued.
fn access_lifetime(snap: &Snapshot) -> u64 {
    let t = &snap.config.tokens;
    t.access_ttl.as_secs() + t.leeway.as_secs()
}

/// Seconds any token this gateway issued may still be accepted.
fn family_lifetime(snap: &Snapshot) -> u64 {
    let t = &snap.config.tokens;
    t.refresh_ttl.max(t.access_ttl).as_secs() + t.leeway.as_secs()
}

/// RFC 6749 §5.1: the token response, never cached.
fn token_pair(access: &Minted, refresh: &Minted) -> Response<Body> {
    let mut rsp = json_response(
        StatusCode::OK,
        &json!({
            "access_token": access.token,
            "refresh_token": refresh.token,
            "token_type": "Bearer",
            "expires_in": access.expires_in,
            "refresh_expires_in": refresh.expires_in,
        }),
    );
    rsp.headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    rsp
}

fn no_content() -> Response<Body> {
    let mut rsp = Response::new(body::empty());
    *rsp.status_mut() = StatusCode::NO_CONTENT;
    rsp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    rsp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::tests::test_keys;

    /// RSA keys sign on the blocking pool; the others on the calling thread.
    #[tokio::test]
    async fn only_rsa_keys_sign_off_the_async_thread() {
        let here = std::thread::current().id();
        for (id, elsewhere) in [
            ("RS256", true),
            ("RS512", true),
            ("PS256", true),
            ("HS256", false),
            ("ES256", false),
            ("EdDSA", false),
        ] {
            let key = test_keys().set.get(id).unwrap();
            let on = signed(key, &None, |_| Ok(std::thread::current().id()))
                .await
                .unwrap();
            assert_eq!(on != here, elsewhere, "{id}");
        }
    }

    /// A signature on a turn already held does not queue for a slot: with
    /// every slot taken, it still runs; without the turn, it waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_turn_signs_without_waiting_for_a_slot() {
        let key = test_keys().set.get("RS256").unwrap();
        let turn = turn_for(key).await.unwrap();
        assert!(turn.is_some(), "RSA takes a slot");
        let others: Vec<_> = {
            let mut v = Vec::new();
            for _ in 1..crate::login::cpu_slots() {
                v.push(signing_slot().await.unwrap());
            }
            v
        };
        let limit = std::time::Duration::from_millis(500);
        let on_turn = tokio::time::timeout(limit, signed(key, &turn, |_| Ok(())));
        assert!(on_turn.await.is_ok(), "waited with its turn held");
        let own_slot = tokio::time::timeout(limit, signed(key, &None, |_| Ok(())));
        assert!(own_slot.await.is_err(), "every slot was taken");
        drop(others);
        assert!(
            turn_for(test_keys().set.get("EdDSA").unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }

    /// However many ask at once, no more RSA signatures run than there are
    /// slots (one per core, at least two).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rsa_signatures_run_one_per_core_at_most() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NOW: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        let key = test_keys().set.get("RS256").unwrap();
        let asks = (0..16).map(|_| {
            let key = Arc::clone(key);
            tokio::spawn(async move {
                signed(&key, &None, |_| {
                    let n = NOW.fetch_add(1, Ordering::SeqCst) + 1;
                    MOST.fetch_max(n, Ordering::SeqCst);
                    // Long enough for the others to pile up behind it.
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    NOW.fetch_sub(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        });
        for ask in asks.collect::<Vec<_>>() {
            ask.await.unwrap().unwrap();
        }
        let slots = crate::login::cpu_slots();
        let most = MOST.load(Ordering::SeqCst);
        assert!(most <= slots, "{most} at once with {slots} slots");
        assert!(most >= 1);
    }
}
