//! The immutable snapshot every request reads: config, routes, keys,
//! verifier, cache and upstreams, built together and swapped together.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::auth::keys::KeySet;
use crate::auth::{ClaimsCache, Identity, Verifier};
use crate::config::{AuthMode, Config, ConfigErrors, Diag, Loc};
use crate::proxy::upstream::Upstream;
use crate::routes::RouteTable;

/// Everything the request path reads, built once per config load.
pub struct Snapshot {
    pub config: Config,
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
    /// `check` runs it too.
    ///
    /// # Errors
    /// Key material that does not parse, or routes that need keys when there are none.
    pub fn build(config: Config) -> Result<Snapshot, ConfigErrors> {
        let keys = KeySet::build(&config.keys, &config.path).map_err(ConfigErrors)?;
        if keys.is_empty() && config.routes.iter().any(|r| r.auth != AuthMode::None) {
            return Err(ConfigErrors(vec![Diag {
                file: config.path.clone(),
                loc: Loc { line: 1, col: 1 },
                message: "routes require tokens but no [[keys]] are configured to verify them"
                    .into(),
            }]));
        }
        let identity = Identity::new(&config.identity);
        let verifier = Verifier::new(
            &keys,
            &config.keys,
            &config.issuers,
            &config.tokens,
            identity,
        );
        let cache = ClaimsCache::new(config.cache.max_entries, config.cache.max_ttl);
        let upstreams = config.upstreams.iter().map(Upstream::new).collect();
        Ok(Snapshot {
            routes: RouteTable::new(&config.routes),
            verifier,
            cache,
            upstreams,
            config,
        })
    }

    /// Loads and builds the config at `path`.
    ///
    /// # Errors
    /// Every problem found, as `FILE:LINE:COL: message`.
    pub fn load(path: &std::path::Path) -> Result<Snapshot, ConfigErrors> {
        Snapshot::build(Config::load(path)?)
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
            c.keys.len(),
            c.issuers.len(),
            c.upstreams.len(),
            self.routes.len(),
        )
    }
}
