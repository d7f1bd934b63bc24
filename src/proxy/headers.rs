//! Request and response header rewriting for the proxy path.
//!
//! - Hop-by-hop headers (RFC 9110 §7.6.1) and every header named in
//!   `Connection` are dropped both ways; an upgrade keeps `Upgrade` and
//!   `Connection: upgrade`.
//! - `Via` is added; `X-Forwarded-For` is appended to only for a trusted peer
//!   and replaced otherwise (with `Forwarded` dropped), and
//!   `X-Forwarded-Proto`/`-Host` are set.
//! - Every configured identity header is removed and, for a verified caller,
//!   set from the verified claims: a client can never forge one.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::auth::{Identity, VerifiedClaims};

/// RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and `Proxy-Connection`.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = header::FORWARDED;

/// True when the client asks for a protocol upgrade (WebSocket).
pub fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && connection_has(h, "upgrade")
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

fn connection_has(h: &HeaderMap, token: &str) -> bool {
    connection_tokens(h).any(|t| t.eq_ignore_ascii_case(token))
}

/// Drops hop-by-hop headers; keeps `Upgrade` + `Connection: upgrade` when `upgrade`.
pub fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    // Most messages carry one or none of them (`Connection: keep-alive`):
    // one pass over the names present finds which to remove, rather than
    // hashing and removing each name of the fixed set.
    let mut present = [false; HOP_BY_HOP.len() + 1];
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            present[i] = true;
        } else if k == header::UPGRADE {
            present[HOP_BY_HOP.len()] = true;
        }
    }
    // `Connection: keep-alive` / `close` / `upgrade` name nothing outside the
    // fixed set: collect names only when the client named others.
    if present[0] {
        let fixed = ["keep-alive", "close", "upgrade"];
        if connection_tokens(h).any(|t| !fixed.iter().any(|f| t.eq_ignore_ascii_case(f))) {
            let named: Vec<HeaderName> = connection_tokens(h)
                .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
                .collect();
            for name in named {
                if !(upgrade && name == header::UPGRADE) {
                    h.remove(name);
                }
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        h.remove(name);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present[HOP_BY_HOP.len()] {
        h.remove(header::UPGRADE);
    }
}

/// What the forwarding headers need to know about the downstream connection.
pub struct Downstream<'a> {
    pub peer: IpAddr,
    /// `peer` as a header value, made once per connection.
    pub peer_value: &'a HeaderValue,
    /// The peer is in `trusted_proxies`: its forwarding headers are kept.
    pub trusted: bool,
    /// `Via` for this request's HTTP version.
    pub via: &'a HeaderValue,
}

/// Sets `Via`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`.
pub fn set_forwarding(h: &mut HeaderMap, down: &Downstream<'_>, host: Option<&HeaderValue>) {
    h.append(header::VIA, down.via.clone());
    let peer = down.peer_value.clone();
    let prior: Option<String> = if down.trusted {
        let parts: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    } else {
        h.remove(&FORWARDED);
        None
    };
    let xff = match prior {
        Some(p) => HeaderValue::from_str(&format!("{p}, {}", down.peer)).unwrap_or(peer),
        None => peer,
    };
    h.insert(&X_FORWARDED_FOR, xff);
    if !down.trusted || !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if !down.trusted || !h.contains_key(&X_FORWARDED_HOST) {
        match host {
            Some(host) => {
                h.insert(&X_FORWARDED_HOST, host.clone());
            }
            None => {
                h.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Removes headers spelled with `_` where a header the gateway sets has `-`
/// (`X_Auth_Subject`): CGI/WSGI/Rack-style servers map both to the same
/// variable, so they would let a client forge identity or forwarding headers.
pub fn strip_underscore_aliases(h: &mut HeaderMap, ids: &Identity) {
    if !h.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let forwarding = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &FORWARDED,
    ];
    let aliases: Vec<HeaderName> = h
        .keys()
        .filter(|k| {
            let k = k.as_str();
            k.contains('_')
                && (forwarding.iter().any(|p| is_alias(k, p.as_str()))
                    || ids.header_names().iter().any(|p| is_alias(k, p.as_str())))
        })
        .cloned()
        .collect();
    for name in aliases {
        h.remove(name);
    }
}

/// `name` equals `of` once its `_` are read as `-` (both lower-case).
fn is_alias(name: &str, of: &str) -> bool {
    name.len() == of.len()
        && name
            .bytes()
            .zip(of.bytes())
            .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
}

/// Removes every identity header the client sent, then sets those of `claims`.
pub fn set_identity(h: &mut HeaderMap, ids: &Identity, claims: Option<&VerifiedClaims>) {
    for name in ids.header_names() {
        h.remove(name);
    }
    if let Some(c) = claims {
        for (name, value) in c.identity_headers() {
            h.insert(name, value.clone());
        }
    }
    if !ids.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn underscore_spellings_are_aliases() {
        assert!(is_alias("x_auth_subject", "x-auth-subject"));
        assert!(is_alias("x_forwarded-for", "x-forwarded-for"));
        assert!(!is_alias("x_auth_subjects", "x-auth-subject"));
        assert!(!is_alias("x_other", "x-auth-subject"));
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    #[test]
    fn xff_is_replaced_unless_the_peer_is_trusted() {
        let via = HeaderValue::from_static("1.1 gatehouse");
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let peer_value = HeaderValue::from_static("10.0.0.1");
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        set_forwarding(
            &mut h,
            &Downstream {
                peer,
                peer_value: &peer_value,
                trusted: false,
                via: &via,
            },
            None,
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert!(h.get("forwarded").is_none());
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
        ]);
        set_forwarding(
            &mut h,
            &Downstream {
                peer,
                peer_value: &peer_value,
                trusted: true,
                via: &via,
            },
            None,
        );
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
    }
}
