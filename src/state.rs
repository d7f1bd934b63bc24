//! The immutable snapshot every request reads: config, routes, keys,
//! verifier, cache and upstreams, built together and swapped together.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::keys::{self, KeySet};
use crate::auth::{ClaimsCache, Identity, Verifier};
use crate::config::{Config, ConfigErrors, Diag, Loc};
use crate::proxy::upstream::Upstream;
use crate::routes::RouteTable;

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
}

/// The current snapshot. Only `server::signals` stores a new one; every
/// request loads it once.
pub type Shared = Arc<ArcSwap<Snapshot>>;

impl Snapshot {
    /// Parses keys and compiles routes and upstreams. Binds nothing, so
    /// `check` runs it too. With no `sign = true` key, the Ed25519 key under
    /// `[state] path` is loaded, or generated (and written only when
    /// `persist`: `check` never writes).
    ///
    /// # Errors
    /// Key material that does not parse; a generated key that cannot be read or written.
    pub fn build(config: Config, persist: bool) -> Result<Snapshot, ConfigErrors> {
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
        let identity = Identity::new(&config.identity);
        let verifier = Verifier::new(&keys, &config.issuers, &config.tokens, identity);
        let cache = ClaimsCache::new(config.cache.max_entries, config.cache.max_ttl);
        let upstreams = config.upstreams.iter().map(Upstream::new).collect();
        Ok(Snapshot {
            keys,
            generated_key,
            routes: RouteTable::new(&config.routes),
            verifier,
            cache,
            upstreams,
            config,
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
            "listen {}, admin {}, {} key(s), {} issuer(s), {} upstream(s), {} route(s)",
            c.server.listen,
            c.server
                .admin_listen
                .map_or_else(|| "off".to_string(), |a| a.to_string()),
            self.keys.len(),
            c.issuers.len(),
            c.upstreams.len(),
            self.routes.len(),
        )
    }
}
