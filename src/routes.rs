//! The route table compiled from `[[routes]]`: longest `path_prefix` first,
//! then routes naming a `host`, then routes naming `methods`. Matching
//! allocates nothing.

use std::sync::Arc;

use http::Method;

use crate::auth::AccessRule;
use crate::config::{AuthMode, RouteSpec};
use crate::metrics::{ClassCounters, Metrics};
use crate::ratelimit::RouteLimit;

/// One compiled route.
#[derive(Debug)]
pub struct Route {
    pub path_prefix: Box<str>,
    /// Lower-case, without port.
    host: Option<Box<str>>,
    methods: Option<Box<[Method]>>,
    /// Index into the snapshot's upstreams.
    pub upstream: usize,
    pub auth: AuthMode,
    pub access: AccessRule,
    pub strip_prefix: bool,
    /// This route's request counts (`/metrics`): the gateway's, by
    /// [`Route::name`], once the snapshot is served.
    pub requests: Arc<ClassCounters>,
    /// `rate_limit`, with its counts.
    pub limit: Option<RouteLimit>,
    /// `max_body_bytes` (or `[server]`'s).
    pub max_body: Option<u64>,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    /// In match order.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(specs: &[RouteSpec]) -> Self {
        let mut routes: Vec<Route> = specs
            .iter()
            .map(|s| Route {
                path_prefix: s.path_prefix.as_str().into(),
                host: s.host.as_deref().map(Into::into),
                methods: s.methods.clone().map(Into::into),
                upstream: s.upstream,
                auth: s.auth,
                access: AccessRule::new(
                    s.roles_any.clone(),
                    s.scopes_all.clone(),
                    s.claims.clone(),
                ),
                strip_prefix: s.strip_prefix,
                requests: Arc::default(),
                limit: None,
                max_body: s.max_body_bytes,
            })
            .collect();
        for (route, spec) in routes.iter_mut().zip(specs) {
            if let Some((rate, by)) = spec.rate_limit {
                route.limit = Some(RouteLimit::new(&route.name(), rate, by));
            }
        }
        // Stable: equally specific routes keep their config order.
        routes.sort_by_key(|r| {
            (
                std::cmp::Reverse(r.path_prefix.len()),
                r.host.is_none(),
                r.methods.is_none(),
            )
        });
        RouteTable { routes }
    }

    /// Points every route at the gateway's counters for its name.
    pub fn attach_metrics(&mut self, metrics: &Metrics) {
        for r in &mut self.routes {
            r.requests = metrics.route(&r.name());
        }
    }

    /// The route for a request, if any. `host` may carry a port.
    pub fn find(&self, method: &Method, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            prefix_matches(&r.path_prefix, path)
                && r.host.as_deref().is_none_or(|want| {
                    host.is_some_and(|h| normalize_host(h).eq_ignore_ascii_case(want))
                })
                && r.methods.as_deref().is_none_or(|ms| ms.contains(method))
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Forgets the rate limits' idle keys (the server's housekeeping).
    pub fn sweep_limits(&self) {
        for limit in self.routes.iter().filter_map(|r| r.limit.as_ref()) {
            limit.sweep();
        }
    }
}

/// `/api/admin/` also matches `/api/admin`: many frameworks route both to
/// the same handler, which must not fall to a less protected `/api/` route.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix) || (prefix.len() > 1 && prefix.strip_suffix('/') == Some(path))
}

/// The host without port and without a trailing dot (`Example.com.:80`).
fn normalize_host(host: &str) -> &str {
    let h = strip_port(host);
    h.strip_suffix('.').unwrap_or(h)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [::1]:8080
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

impl Route {
    /// The route as `/metrics` names it: its `host` (if any), `path_prefix`
    /// and `methods` (if any), as in `api.example.com/api/ [GET,HEAD]`.
    /// Two routes may share a prefix and host with other methods; no two
    /// valid routes share all three.
    pub fn name(&self) -> String {
        let host = self.host.as_deref().unwrap_or("");
        match &self.methods {
            None => format!("{host}{}", self.path_prefix),
            Some(methods) => {
                let methods: Vec<&str> = methods.iter().map(Method::as_str).collect();
                format!("{host}{} [{}]", self.path_prefix, methods.join(","))
            }
        }
    }

    /// The upstream path for `path`: without the prefix when `strip_prefix`.
    pub fn upstream_path<'p>(&self, path: &'p str) -> std::borrow::Cow<'p, str> {
        if !self.strip_prefix {
            return path.into();
        }
        // Empty for `/api` matched by `/api/` (see `prefix_matches`).
        let rest = path.get(self.path_prefix.len()..).unwrap_or("");
        if rest.starts_with('/') {
            rest.into()
        } else {
            format!("/{rest}").into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        prefix: &str,
        host: Option<&str>,
        methods: Option<&[&str]>,
        upstream: usize,
    ) -> RouteSpec {
        RouteSpec {
            path_prefix: prefix.into(),
            host: host.map(Into::into),
            methods: methods.map(|ms| ms.iter().map(|m| m.parse().unwrap()).collect()),
            upstream,
            auth: AuthMode::Required,
            roles_any: vec![],
            scopes_all: vec![],
            claims: vec![],
            strip_prefix: false,
            rate_limit: None,
            max_body_bytes: None,
        }
    }

    #[test]
    fn longest_prefix_then_host_then_methods() {
        let t = RouteTable::new(&[
            spec("/", None, None, 0),
            spec("/api/", None, None, 1),
            spec("/api/", Some("a.example"), None, 2),
            spec("/api/", None, Some(&["POST"]), 3),
            spec("/api/admin/", None, None, 4),
        ]);
        let up = |m: Method, h: Option<&str>, p: &str| t.find(&m, h, p).map(|r| r.upstream);
        assert_eq!(up(Method::GET, None, "/x"), Some(0));
        assert_eq!(up(Method::GET, None, "/api/x"), Some(1));
        assert_eq!(up(Method::GET, Some("A.example:8080"), "/api/x"), Some(2));
        assert_eq!(up(Method::POST, None, "/api/x"), Some(3));
        assert_eq!(up(Method::POST, Some("a.example"), "/api/x"), Some(2));
        assert_eq!(up(Method::GET, Some("a.example"), "/api/admin/x"), Some(4));
        let none = RouteTable::new(&[spec("/api/", None, None, 0)]);
        assert!(none.find(&Method::GET, None, "/apx").is_none());
    }

    #[test]
    fn strip_prefix_keeps_a_leading_slash() {
        let mut s = spec("/api", None, None, 0);
        s.strip_prefix = true;
        let t = RouteTable::new(&[s]);
        let r = t.find(&Method::GET, None, "/api/users").unwrap();
        assert_eq!(r.upstream_path("/api/users"), "/users");
        assert_eq!(r.upstream_path("/api"), "/");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn a_prefix_with_a_slash_also_matches_the_path_without_it() {
        let mut s = spec("/api/admin/", Some("a.example"), None, 1);
        s.strip_prefix = true;
        let t = RouteTable::new(&[spec("/api/", None, None, 0), s]);
        let r = t
            .find(&Method::GET, Some("A.Example.:443"), "/api/admin")
            .unwrap();
        assert_eq!(r.upstream, 1);
        assert_eq!(r.upstream_path("/api/admin"), "/");
        assert!(
            t.find(&Method::GET, None, "/api/adminx")
                .is_some_and(|r| r.upstream == 0)
        );
    }
}
