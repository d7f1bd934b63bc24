//! What every request reads: the immutable [`Snapshot`] (config, routes,
//! keys, verifier, cache, upstreams, login), built together and swapped
//! together on SIGHUP, inside the [`Gateway`], which also holds what lives
//! as long as the process: the state store and the revocation set.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::auth::keys::{self, KeySet};
use crate::auth::{ClaimsCache, Identity, Verifier};
use crate::config::{Config, ConfigErrors, Diag, Loc};
use crate::login::Login;
use crate::metrics::Metrics;
use crate::proxy::upstream::Upstream;
use crate::routes::RouteTable;
use crate::store::{Revocations, Store, StoreError};

/// Everything the request path reads, built once per config load.
pub struct Snapshot {
    pub config: Config,
    /// Every key; `keys.signer()` signs issued tokens.
    pub keys: KeySet,
    /// Where the generated signing key lives, when there is one.
    pub generated_key: Option<std::path::PathBuf>,
    pub routes: RouteTable,
    pub verifier: Verifier,
    /// Per snapshot: a reload (new keys, new identity rules) starts it empty.
    pub cache: ClaimsCache,
    pub upstreams: Vec<Upstream>,
    /// `None` without `[login]`.
    pub login: Option<Login>,
    /// `[server] tls`, parsed: the certificate handshakes are answered with.
    pub tls: Option<Arc<tokio_rustls::rustls::sign::CertifiedKey>>,
    /// `[server] tls.client_ca`, parsed: checks client certificates.
    pub client_verifier: Option<Arc<dyn tokio_rustls::rustls::server::danger::ClientCertVerifier>>,
    /// Which snapshot of the process this is (numbered as built): TLS
    /// sessions are resumed only under the snapshot they were made under.
    pub generation: u64,
    /// The gateway's counters: the same for every snapshot it serves
    /// ([`Gateway::store_snapshot`] hands them on).
    pub metrics: Arc<Metrics>,
}

/// The gateway a listener serves: the current snapshot (only
/// `server::signals` stores a new one; every request loads it once), the
/// state store, and the in-memory revocations kept in step with it.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub store: Box<dyn Store>,
    pub revocations: Revocations,
    pub metrics: Arc<Metrics>,
    /// How far the store's log of revocations has been read (a shared
    /// store: other instances' revocations).
    log_position: tokio::sync::Mutex<String>,
    /// The last read of that log failed: the store is not usable
    /// (`/readyz` answers 503 until a read succeeds again).
    store_failing: std::sync::atomic::AtomicBool,
}

pub type Shared = Arc<Gateway>;

/// Snapshots built so far ([`Snapshot::generation`]).
static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Gateway {
    /// Serves `snap` with `store`, loading the revocations still in force.
    ///
    /// # Errors
    /// When the store cannot list its revocations.
    pub async fn new(mut snap: Snapshot, store: Box<dyn Store>) -> Result<Gateway, StoreError> {
        let revocations = Revocations::default();
        // Where the log ends before the load: nothing revoked in between is missed.
        let log_position = store.log_position().await?;
        for r in store.live_revocations(crate::auth::issue::now()).await? {
            revocations.add(r);
        }
        let metrics = Arc::clone(&snap.metrics);
        snap.attach_metrics(&metrics);
        let snap = Arc::new(snap);
        Snapshot::start_background(&snap);
        Ok(Gateway {
            metrics,
            snapshot: ArcSwap::new(snap),
            store,
            revocations,
            log_position: tokio::sync::Mutex::new(log_position),
            store_failing: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Opens the embedded store under `[state] path` and serves `snap` with it.
    ///
    /// # Errors
    /// When the store cannot be opened or read.
    pub async fn open(snap: Snapshot) -> Result<Gateway, StoreError> {
        let store: Box<dyn Store> = match &snap.config.state.redis_url {
            None => Box::new(crate::store::embedded::Embedded::open(
                &snap.config.state.path,
            )?),
            Some(url) => Box::new(
                crate::store::redis::RedisStore::connect(url, &snap.config.state.redis_tls).await?,
            ),
        };
        Gateway::new(snap, store).await
    }

    /// The current snapshot (cheap: no reference count touched).
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot, owned (for a request that awaits).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Replaces the snapshot (SIGHUP). The new one carries on what the old
    /// one's health checks found (a target they took out stays out until
    /// it passes again) and the keys it fetched from `jwks_url`s, and the
    /// old one's background tasks stop.
    pub fn store_snapshot(&self, mut snap: Snapshot) {
        snap.attach_metrics(&self.metrics);
        let old = self.snapshot.load_full();
        for u in &mut snap.upstreams {
            if let Some(before) = old.upstreams.iter().find(|o| o.name == u.name) {
                u.carry_health_from(before);
            }
        }
        for remote in snap.verifier.remotes() {
            for before in old.verifier.remotes() {
                remote.carry_from(before);
            }
        }
        let snap = Arc::new(snap);
        Snapshot::start_background(&snap);
        self.snapshot.store(snap);
        for u in &old.upstreams {
            u.stop_health_checks();
        }
        for remote in old.verifier.remotes() {
            remote.retire();
        }
    }

    /// Adds the revocations other instances recorded in a shared store
    /// since the last call (and this one's, again: adding is idempotent).
    /// Returns how many were read.
    ///
    /// # Errors
    /// When the store cannot be read (the next call tries again from the
    /// same place).
    pub async fn follow_revocations(&self) -> Result<usize, StoreError> {
        let mut position = self.log_position.lock().await;
        let mut n = 0;
        // Until the log is read to its end (each read returns a batch).
        loop {
            let read = self.store.revocations_since(&position).await;
            let failing = &self.store_failing;
            failing.store(read.is_err(), std::sync::atomic::Ordering::Relaxed);
            let (revocations, next) = read?;
            n += revocations.len();
            for r in revocations {
                self.revocations.add(r);
            }
            if next == *position {
                return Ok(n);
            }
            *position = next;
        }
    }

    /// Whether what requests need is in place: every `jwks_url` fetched.
    pub fn keys_ready(&self) -> bool {
        self.snapshot.load().verifier.keys_ready()
    }

    /// Whether the state store answered when last asked (a shared store is
    /// asked four times a second; the embedded one is always usable once
    /// open).
    pub fn store_ready(&self) -> bool {
        !self
            .store_failing
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Snapshot {
    /// Points the snapshot, its routes and its upstreams at the gateway's
    /// counters (by name, so they run on across reloads).
    fn attach_metrics(&mut self, metrics: &Arc<Metrics>) {
        self.metrics = Arc::clone(metrics);
        self.routes.attach_metrics(metrics);
        for u in &mut self.upstreams {
            u.latency = metrics.upstream(&u.name);
        }
    }

    /// Starts what a served snapshot runs in the background (the upstreams'
    /// health checks, the `jwks_url` fetches). [`Gateway::store_snapshot`]
    /// stops it when it replaces the snapshot: the only way a served
    /// snapshot is replaced.
    fn start_background(this: &Arc<Snapshot>) {
        for u in &this.upstreams {
            u.start_health_checks();
        }
        for remote in this.verifier.remotes() {
            let snap = Arc::downgrade(this);
            crate::auth::remote::spawn(remote, move || {
                if let Some(snap) = snap.upgrade() {
                    snap.cache.clear();
                }
            });
        }
    }

    /// Parses keys and compiles routes and upstreams. Binds nothing, so
    /// `check` runs it too. With no `sign = true` key, the Ed25519 key under
    /// `[state] path` is loaded, or generated (and written only when
    /// `persist`: `check` never writes).
    ///
    /// # Errors
    /// Key material that does not parse; a generated key that cannot be read or written.
    pub fn build(mut config: Config, persist: bool) -> Result<Snapshot, ConfigErrors> {
        let mut keys = KeySet::build(&config.keys, &config.path).map_err(ConfigErrors)?;
        let mut generated_key = None;
        if keys.signer().is_none() {
            let (key, path) = keys::load_or_generate(&config.state.path, persist).map_err(|e| {
                ConfigErrors(vec![Diag {
                    file: config.path.clone(),
                    loc: Loc { line: 1, col: 1 },
                    message: format!("the generated signing key under [state] path: {e}"),
                }])
            })?;
            keys.push(key);
            generated_key = Some(path);
        }
        let mut rule_claims: Vec<String> = config
            .routes
            .iter()
            .flat_map(|r| r.claims.iter().map(|(name, _)| name.clone()))
            .collect();
        rule_claims.sort();
        rule_claims.dedup();
        let identity = Identity::new(&config.identity, rule_claims);
        let verifier = Verifier::new(&keys, &config.issuers, &config.tokens, identity);
        let cache = ClaimsCache::new(config.cache.max_entries, config.cache.max_ttl);
        let upstreams = config.upstreams.iter().map(Upstream::new).collect();
        let login = config.login.as_ref().map(Login::new).transpose()?;
        let (tls, client_verifier) = match &mut config.server.tls {
            None => (None, None),
            Some(files) => {
                let at = |message| {
                    ConfigErrors(vec![Diag {
                        file: config.path.clone(),
                        loc: files.loc,
                        message,
                    }])
                };
                let key = crate::server::tls::certified_key(files).map_err(at)?;
                let clients = files.clients.clone();
                let verifier = clients
                    .map(|(roots, auth)| crate::server::tls::client_verifier(roots, auth))
                    .transpose()
                    .map_err(at)?;
                // rustls holds the key now; the PEM need not stay in memory.
                files.key_pem = Vec::new();
                (Some(key), verifier)
            }
        };
        Ok(Snapshot {
            login,
            keys,
            generated_key,
            routes: RouteTable::new(&config.routes),
            verifier,
            cache,
            upstreams,
            config,
            tls,
            client_verifier,
            generation: GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            metrics: Arc::default(),
        })
    }

    /// Loads and builds the config at `path` to serve it.
    ///
    /// # Errors
    /// Every problem found, as `FILE:LINE:COL: message`.
    pub fn load(path: &std::path::Path) -> Result<Snapshot, ConfigErrors> {
        Snapshot::build(Config::load(path)?, true)
    }

    /// Like [`Snapshot::load`], but writes nothing (for `check`).
    ///
    /// # Errors
    /// Every problem found, as `FILE:LINE:COL: message`.
    pub fn check(path: &std::path::Path) -> Result<Snapshot, ConfigErrors> {
        Snapshot::build(Config::load(path)?, false)
    }

    /// One line for `check` and the start-up log.
    pub fn summary(&self) -> String {
        let c = &self.config;
        format!(
            "listen {}{}, admin {}, {} key(s), {} issuer(s), {} upstream(s), {} route(s), login {}",
            c.server.listen,
            if self.tls.is_some() { " (TLS)" } else { "" },
            c.server
                .admin_listen
                .map_or_else(|| "off".to_string(), |a| a.to_string()),
            self.keys.len(),
            c.issuers.len(),
            c.upstreams.len(),
            self.routes.len(),
            match self.login.as_ref().map(Login::user_count) {
                None => "off".to_string(),
                Some(Some(n)) => format!("with {n} user(s)"),
                Some(None) => "via verify_url".to_string(),
            },
        )
    }
}
