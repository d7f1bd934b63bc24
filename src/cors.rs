//! `[cors]`: browsers' cross-origin requests, answered at the gateway.
//!
//! A single-page app on `https://app.example.com` that calls an API behind
//! the gateway with `Authorization: Bearer` makes the browser send a
//! preflight first: `OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`, and no token. Without `[cors]` that
//! preflight meets the route's `auth` like any request (401), and the
//! browser refuses the call. With `[cors]` the gateway answers preflights
//! itself, before routing and authentication, and writes the
//! `Access-Control-*` headers of every other response, its own 401s
//! included, so the app can read why it was refused. This is what Envoy's
//! CORS filter and Kong's `cors` plugin do.
//!
//! The gateway owns CORS when `[cors]` is set: an upstream's own
//! `Access-Control-*` response headers are replaced, so that a browser never
//! sees two `Access-Control-Allow-Origin` values (an app's FastAPI
//! `CORSMiddleware` can stay in place).
//!
//! CORS is enforced by browsers, not here: a request from an origin not
//! allowed is still served, only without the headers that would let the
//! page read the answer. A preflight from such an origin gets 403.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, HeaderMap, HeaderValue, ORIGIN,
    VARY,
};
use http::{HeaderName, Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::error::GatewayError;

/// The response headers `[cors]` writes, and so removes from upstreams'.
const OWNED: [HeaderName; 6] = [
    ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_ALLOW_CREDENTIALS,
    ACCESS_CONTROL_EXPOSE_HEADERS,
    ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_HEADERS,
    ACCESS_CONTROL_MAX_AGE,
];

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// The methods a preflight is told are allowed when `allow_methods` is not set.
pub const DEFAULT_METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// An entry of `allow_origins`, checked and lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `https://app.example.com`, `http://localhost:3000`.
    Exact(String),
    /// `https://*.example.com`: any host under `example.com` (not itself),
    /// same scheme and port. `prefix` is `https://`, `suffix` is
    /// `.example.com` and the port, if any.
    Subdomains { prefix: String, suffix: String },
}

impl Origin {
    /// Reads an `allow_origins` entry other than `*`. The error says why
    /// it is not an origin.
    pub fn parse(s: &str) -> Result<Origin, String> {
        if s.eq_ignore_ascii_case("null") {
            return Err("`null` is the origin of sandboxed frames and local files: \
                 allowing it lets any of them read the answers"
                .into());
        }
        let lower = s.to_ascii_lowercase();
        let Some((scheme, rest)) = lower.split_once("://") else {
            return Err(format!(
                "`{s}` is not an origin: write scheme://host[:port], as `https://app.example.com`"
            ));
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_lowercase())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err(format!("`{s}`: `{scheme}` is not a URL scheme"));
        }
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "`{s}`: an origin has no path (browsers send `{scheme}://{}`)",
                rest.split(['/', '?', '#']).next().unwrap_or_default()
            ));
        }
        if rest.contains('@') {
            return Err(format!("`{s}`: an origin has no user name or password"));
        }
        // `[::1]:8080`: the port follows the bracket.
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, Some(p)),
            _ => (rest, None),
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => return Err(format!("`{s}`: `{p}` is not a port")),
            },
        };
        // Browsers write the port as a number, and leave the scheme's
        // default one out.
        let port = port.filter(|&n| !matches!((scheme, n), ("https", 443) | ("http", 80)));
        let port = port.map(|n| format!(":{n}")).unwrap_or_default();
        if let Some(parent) = host.strip_prefix("*.") {
            if !is_host_bytes(parent.as_bytes())
                || parent.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            {
                return Err(format!("`{s}`: `{parent}` is not a host name"));
            }
            return Ok(Origin::Subdomains {
                prefix: format!("{scheme}://"),
                suffix: format!(".{parent}{port}"),
            });
        }
        if host.is_empty() || !is_host(host) {
            return Err(format!(
                "`{s}`: `{host}` is not a host (a `*` may only begin one: `https://*.example.com`)"
            ));
        }
        Ok(Origin::Exact(format!("{scheme}://{host}{port}")))
    }

    fn allows(&self, origin: &[u8]) -> bool {
        match self {
            Origin::Exact(o) => origin.eq_ignore_ascii_case(o.as_bytes()),
            Origin::Subdomains { prefix, suffix } => {
                let (p, s) = (prefix.len(), suffix.len());
                origin.len() > p + s
                    && origin[..p].eq_ignore_ascii_case(prefix.as_bytes())
                    && origin[origin.len() - s..].eq_ignore_ascii_case(suffix.as_bytes())
                    && is_host_bytes(&origin[p..origin.len() - s])
            }
        }
    }
}

/// Letters, digits, `-` and `.` (what a DNS name, punycode included, or an
/// IPv4 address is made of), or a bracketed IPv6 address; not starting or
/// ending with a dot.
///
/// An IP address must be written as browsers write it in `Origin`
/// (`127.0.0.1`, `[::1]`), or no request would ever match it.
fn is_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // Rust and the URL standard agree on the form, bar embedded IPv4
        // (`::ffff:1.2.3.4`, which browsers write `::ffff:102:304`).
        return v6
            .parse::<std::net::Ipv6Addr>()
            .is_ok_and(|ip| ip.to_string() == v6 && !v6.contains('.'));
    }
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return h
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.to_string() == h);
    }
    is_host_bytes(h.as_bytes())
}

fn is_host_bytes(h: &[u8]) -> bool {
    !h.is_empty()
        && !h.starts_with(b".")
        && !h.ends_with(b".")
        && h.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// `[cors]`, validated, with its header values built once.
#[derive(Debug)]
pub struct Cors {
    /// `None`: `allow_origins = ["*"]`.
    origins: Option<Vec<Origin>>,
    credentials: bool,
    methods: HeaderValue,
    /// `None`: a preflight is allowed the headers it asks for.
    headers: Option<HeaderValue>,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
}

/// `[cors]` as `check` validated it.
pub struct Settings {
    /// `None`: any origin (`*`).
    pub origins: Option<Vec<Origin>>,
    pub methods: Vec<Method>,
    pub headers: Option<Vec<HeaderName>>,
    pub expose: Vec<HeaderName>,
    pub max_age: std::time::Duration,
    pub credentials: bool,
}

/// What `[cors]` makes of one request.
pub enum Class {
    /// No `Origin`: a same-origin or non-browser request.
    Plain,
    /// A preflight: the gateway's answer.
    Preflight(Response<Body>),
    /// A cross-origin request: the `Access-Control-Allow-Origin` value its
    /// response gets, `None` when its origin is not allowed.
    Cross(Option<HeaderValue>),
}

fn list<T: AsRef<str>>(items: &[T]) -> Option<HeaderValue> {
    let joined = items
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<_>>()
        .join(", ");
    (!joined.is_empty()).then(|| HeaderValue::from_str(&joined).expect("tokens joined by commas"))
}

impl Cors {
    pub fn new(s: Settings) -> Cors {
        Cors {
            origins: s.origins,
            credentials: s.credentials,
            methods: list(&s.methods).unwrap_or(HeaderValue::from_static("GET")),
            headers: s
                .headers
                .map(|h| list(&h).unwrap_or(HeaderValue::from_static(""))),
            expose: list(&s.expose),
            max_age: (!s.max_age.is_zero()).then(|| HeaderValue::from(s.max_age.as_secs())),
        }
    }

    /// Sorts out a request, answering it when it is a preflight.
    pub fn classify(&self, method: &Method, headers: &HeaderMap) -> Class {
        let Some(origin) = headers.get(ORIGIN) else {
            return Class::Plain;
        };
        let allowed = self.allow_origin(origin);
        if method == Method::OPTIONS && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD) {
            return Class::Preflight(self.preflight(allowed, headers));
        }
        Class::Cross(allowed)
    }

    /// For `/auth/verify`: whether a forwarded preflight (its method
    /// OPTIONS, given by the front proxy) comes from an allowed origin;
    /// `None` when the headers are not a preflight's.
    pub fn forwarded_preflight(&self, headers: &HeaderMap) -> Option<bool> {
        let origin = headers.get(ORIGIN)?;
        headers
            .contains_key(ACCESS_CONTROL_REQUEST_METHOD)
            .then(|| self.allow_origin(origin).is_some())
    }

    /// The `Access-Control-Allow-Origin` for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            None => Some(HeaderValue::from_static("*")),
            Some(origins) => origins
                .iter()
                .any(|o| o.allows(origin.as_bytes()))
                .then(|| origin.clone()),
        }
    }

    fn preflight(&self, allowed: Option<HeaderValue>, req: &HeaderMap) -> Response<Body> {
        let Some(allow_origin) = allowed else {
            let mut rsp = GatewayError::OriginNotAllowed.into_response();
            rsp.headers_mut()
                .insert(VARY, HeaderValue::from_static(PREFLIGHT_VARY));
            return rsp;
        };
        let mut rsp = Response::new(body::empty());
        *rsp.status_mut() = StatusCode::NO_CONTENT;
        let h = rsp.headers_mut();
        self.allow(h, allow_origin);
        h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods.clone());
        let asked = req.get(ACCESS_CONTROL_REQUEST_HEADERS);
        if let Some(v) = self.headers.as_ref().or(asked).filter(|v| !v.is_empty()) {
            h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
        }
        if let Some(age) = &self.max_age {
            h.insert(ACCESS_CONTROL_MAX_AGE, age.clone());
        }
        h.insert(VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        rsp
    }

    /// The headers every allowed response carries.
    fn allow(&self, h: &mut HeaderMap, allow_origin: HeaderValue) {
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        if self.credentials {
            h.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }

    /// Writes the `Access-Control-*` headers of the response to a request
    /// that was not a preflight (`allowed` from [`Class::Cross`]; `None`
    /// for [`Class::Plain`] too), replacing the upstream's.
    pub fn mark(&self, rsp: &mut Response<Body>, allowed: Option<HeaderValue>) {
        let h = rsp.headers_mut();
        // One pass over the names, as most answers carry none: six removes
        // by name cost 600 instructions a request (callgrind).
        if h.keys().any(|k| k.as_str().starts_with("access-control-")) {
            for name in OWNED {
                h.remove(name);
            }
        }
        // With every origin allowed, every answer says so, to requests
        // without `Origin` too: a cache may hand it to a CORS request later
        // (Fetch, "CORS protocol and HTTP caches").
        let allowed = allowed.or_else(|| {
            self.origins
                .is_none()
                .then(|| HeaderValue::from_static("*"))
        });
        if let Some(allow_origin) = allowed {
            self.allow(h, allow_origin);
            if let Some(expose) = &self.expose {
                h.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        // The answer depends on the origin (unless every origin gets `*`):
        // a shared cache must not hand one origin's answer to another.
        if self.origins.is_some() && !varies_by_origin(h) {
            h.append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// `Vary` already names `Origin` (or is `*`).
fn varies_by_origin(h: &HeaderMap) -> bool {
    h.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"origin"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> Origin {
        Origin::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        assert_eq!(
            origin("HTTPS://App.Example.com"),
            Origin::Exact("https://app.example.com".into())
        );
        assert_eq!(
            origin("https://app.example.com:443"),
            Origin::Exact("https://app.example.com".into())
        );
        assert_eq!(
            origin("http://localhost:3000"),
            Origin::Exact("http://localhost:3000".into())
        );
        // The port as a number, as browsers write it.
        assert_eq!(
            origin("http://localhost:03000"),
            Origin::Exact("http://localhost:3000".into())
        );
        assert_eq!(
            origin("https://app.example.com:0443"),
            Origin::Exact("https://app.example.com".into())
        );
        assert_eq!(
            origin("http://[::1]:8080"),
            Origin::Exact("http://[::1]:8080".into())
        );
        assert_eq!(
            origin("capacitor://localhost"),
            Origin::Exact("capacitor://localhost".into())
        );
        assert_eq!(
            origin("https://*.example.com"),
            Origin::Subdomains {
                prefix: "https://".into(),
                suffix: ".example.com".into()
            }
        );
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://app.example.com:99999",
            "https://",
            "https://*",
            "https://a.*.example.com",
            "https://*example.com",
            "null",
            "1http://x",
            "https://app.example.com:+443",
            "http://[0:0:0:0:0:0:0:1]:8080",
            "http://[::ffff:1.2.3.4]",
            "http://127.000.000.001:3000",
            "http://1.2.3",
            "https://*.[::1]",
            "https://*.10.0.0.1",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} was accepted");
        }
        let e = Origin::parse("https://app.example.com/").unwrap_err();
        assert!(e.contains("browsers send `https://app.example.com`"), "{e}");
    }

    #[test]
    fn subdomain_patterns_match_hosts_under_the_name_only() {
        let o = origin("https://*.example.com");
        for yes in ["https://a.example.com", "https://a.b.example.com"] {
            assert!(o.allows(yes.as_bytes()), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://.example.com",
            "http://a.example.com",
            "https://a.example.com:8443",
            "https://evilexample.com",
            "https://a.example.com.evil.net",
            "https://x/y.example.com",
            "https://x@a.example.com",
        ] {
            assert!(!o.allows(no.as_bytes()), "{no}");
        }
        let with_port = origin("https://*.example.com:8443");
        assert!(with_port.allows(b"https://a.example.com:8443"));
        assert!(!with_port.allows(b"https://a.example.com"));
    }

    fn cors(origins: Option<Vec<Origin>>, credentials: bool) -> Cors {
        Cors::new(Settings {
            origins,
            methods: DEFAULT_METHODS.to_vec(),
            headers: None,
            expose: vec![HeaderName::from_static("x-request-id")],
            max_age: std::time::Duration::from_secs(600),
            credentials,
        })
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_is_answered() {
        let c = cors(Some(vec![origin("https://app.example.com")]), true);
        let req = headers(&[
            ("origin", "https://app.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ]);
        let Class::Preflight(rsp) = c.classify(&Method::OPTIONS, &req) else {
            panic!("not a preflight");
        };
        assert_eq!(rsp.status(), StatusCode::NO_CONTENT);
        let h = rsp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_METHODS],
            "GET, HEAD, POST, PUT, PATCH, DELETE"
        );
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type"
        );
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[VARY], PREFLIGHT_VARY);
    }

    #[test]
    fn a_preflight_from_another_origin_is_refused() {
        let c = cors(Some(vec![origin("https://app.example.com")]), false);
        let req = headers(&[
            ("origin", "https://evil.example.net"),
            ("access-control-request-method", "GET"),
        ]);
        let Class::Preflight(rsp) = c.classify(&Method::OPTIONS, &req) else {
            panic!("not a preflight");
        };
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert!(!rsp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn options_without_a_requested_method_is_not_a_preflight() {
        let c = cors(None, false);
        let req = headers(&[("origin", "https://a.test")]);
        assert!(matches!(
            c.classify(&Method::OPTIONS, &req),
            Class::Cross(Some(v)) if v == "*"
        ));
        assert!(matches!(
            c.classify(&Method::GET, &HeaderMap::new()),
            Class::Plain
        ));
    }

    #[test]
    fn responses_get_the_gateways_headers_not_the_upstreams() {
        let c = cors(Some(vec![origin("https://app.example.com")]), false);
        let mut rsp = Response::new(body::empty());
        let h = rsp.headers_mut();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("1"));
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        let Class::Cross(allowed) = c.classify(
            &Method::GET,
            &headers(&[("origin", "https://app.example.com")]),
        ) else {
            panic!("not cross-origin");
        };
        c.mark(&mut rsp, allowed);
        let h = rsp.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert!(!h.contains_key(ACCESS_CONTROL_MAX_AGE));
        assert!(!h.contains_key(ACCESS_CONTROL_ALLOW_CREDENTIALS));
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        // Another origin: no CORS headers at all, the upstream's removed.
        let mut rsp = Response::new(body::empty());
        rsp.headers_mut()
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        rsp.headers_mut()
            .insert(VARY, HeaderValue::from_static("origin"));
        c.mark(&mut rsp, None);
        assert!(!rsp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
        assert_eq!(rsp.headers().get_all(VARY).iter().count(), 1);
    }

    #[test]
    fn any_origin_gets_a_star_and_no_vary() {
        let c = cors(None, false);
        // Without `Origin` too: a cache may keep this answer for a CORS request.
        let mut plain = Response::new(body::empty());
        c.mark(&mut plain, None);
        assert_eq!(plain.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let mut rsp = Response::new(body::empty());
        let Class::Cross(allowed) =
            c.classify(&Method::GET, &headers(&[("origin", "https://x.test")]))
        else {
            panic!("not cross-origin");
        };
        c.mark(&mut rsp, allowed);
        assert_eq!(rsp.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!rsp.headers().contains_key(VARY));
    }
}
