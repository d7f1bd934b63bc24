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
//! - `X-Forwarded-Client-Cert` is set from the client's verified certificate
//!   (`client_ca`); without one it is removed unless the peer is trusted.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::auth::{Identity, VerifiedClaims};

/// RFC 9110 §7.6.1, plus the de-facto `Keep-Alive` and `Proxy-Connection`;
/// the index of each is its bit in [`Seen`].
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
static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Whether the request rewrite drops `name` (hop-by-hop) or sets it itself
/// (`Via`, the forwarding headers): a value put there before it would not
/// reach the upstream as it was.
pub fn rewritten(name: &HeaderName) -> bool {
    let set = [
        &header::VIA,
        &FORWARDED,
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_CLIENT_CERT,
    ];
    HOP_BY_HOP.contains(name) || set.contains(&name)
}

/// Which of the names the rewrite acts on a message carries, found in one
/// pass over its names. Every `HeaderMap` lookup or removal hashes the name
/// (100 to 300 instructions each), and most requests carry none of these:
/// asking the map for each one cost about 2.5k instructions a request
/// (two-thirds of it finding nothing); the pass costs a few hundred.
#[derive(Clone, Copy, Default)]
pub struct Seen(u32);

impl Seen {
    // Bits 0..8: `HOP_BY_HOP`, in its order.
    const CONNECTION: u32 = 1;
    const UPGRADE: u32 = 1 << 8;
    const X_FORWARDED_FOR: u32 = 1 << 9;
    const X_FORWARDED_PROTO: u32 = 1 << 10;
    const X_FORWARDED_HOST: u32 = 1 << 11;
    const FORWARDED: u32 = 1 << 12;
    const AUTHORIZATION: u32 = 1 << 13;
    /// One of `ids`' identity header names.
    const IDENTITY: u32 = 1 << 14;
    /// A name with `_`: maybe an alias of one of ours (`strip_underscore_aliases`).
    const UNDERSCORE: u32 = 1 << 15;
    const X_FORWARDED_CLIENT_CERT: u32 = 1 << 16;

    /// One pass over the names of `h`. With `ids` (a request's scan) it
    /// also looks for identity headers and `_` spellings; a response's scan
    /// has no use for them and skips the search for `_` in every name it
    /// does not know (about 0.2k instructions a response, callgrind).
    pub fn scan(h: &HeaderMap, ids: Option<&Identity>) -> Seen {
        let mut seen = 0;
        for name in h.keys() {
            // Apart from the match: an identity header may be configured
            // with one of the names below (`X-Forwarded-Host`...).
            if ids.is_some_and(|ids| ids.header_names().contains(name)) {
                seen |= Self::IDENTITY;
            }
            seen |= match name.as_str() {
                "connection" => Self::CONNECTION,
                "keep-alive" => 1 << 1,
                "proxy-connection" => 1 << 2,
                "proxy-authenticate" => 1 << 3,
                "proxy-authorization" => 1 << 4,
                "te" => 1 << 5,
                "trailer" => 1 << 6,
                "transfer-encoding" => 1 << 7,
                "upgrade" => Self::UPGRADE,
                "x-forwarded-for" => Self::X_FORWARDED_FOR,
                "x-forwarded-proto" => Self::X_FORWARDED_PROTO,
                "x-forwarded-host" => Self::X_FORWARDED_HOST,
                "forwarded" => Self::FORWARDED,
                "authorization" => Self::AUTHORIZATION,
                "x-forwarded-client-cert" => Self::X_FORWARDED_CLIENT_CERT,
                s if ids.is_some() && s.as_bytes().contains(&b'_') => Self::UNDERSCORE,
                _ => 0,
            };
        }
        Seen(seen)
    }

    fn has(self, bits: u32) -> bool {
        self.0 & bits != 0
    }

    /// True when the client asks for a protocol upgrade (WebSocket).
    pub fn is_upgrade(self, h: &HeaderMap) -> bool {
        self.has(Self::UPGRADE) && self.has(Self::CONNECTION) && connection_has(h, "upgrade")
    }
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
    remove_hop_by_hop(h, Seen::scan(h, None), upgrade);
}

/// [`strip_hop_by_hop`] with the names already scanned. True when
/// `Connection` named other headers, which are gone now (`seen` is stale).
fn remove_hop_by_hop(h: &mut HeaderMap, seen: Seen, upgrade: bool) -> bool {
    let mut named_others = false;
    if seen.has(Seen::CONNECTION)
        && let Entry::Occupied(connection) = h.entry(header::CONNECTION)
    {
        // Read while removed: one lookup. The usual values (`keep-alive`,
        // `close`, `upgrade`) name nothing else and allocate nothing.
        let mut named = Vec::new();
        for value in connection.remove_entry_mult().1 {
            let fixed = ["keep-alive", "close", "upgrade"];
            let Ok(value) = value.to_str() else { continue };
            if fixed.iter().any(|f| value.eq_ignore_ascii_case(f)) {
                continue;
            }
            for token in value.split(',').map(str::trim) {
                if !fixed.iter().any(|f| token.eq_ignore_ascii_case(f))
                    && let Ok(name) = HeaderName::from_bytes(token.as_bytes())
                {
                    named.push(name);
                }
            }
        }
        named_others = !named.is_empty();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                h.remove(name);
            }
        }
    }
    // `Connection` (bit 0) is gone already.
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if seen.has(1 << i) {
            h.remove(name);
        }
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if seen.has(Seen::UPGRADE) {
        h.remove(header::UPGRADE);
    }
    named_others
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
    /// The request's `Host`: the upstream's `X-Forwarded-Host`.
    pub host: Option<HeaderValue>,
    /// The client connection is TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
    /// The client's verified certificate, as `X-Forwarded-Client-Cert`.
    pub client_cert: Option<&'a HeaderValue>,
}

/// Rewrites a request's headers for the upstream, in this order: drops the
/// hop-by-hop ones (keeping an upgrade's), the `_` aliases of ours, then sets
/// the forwarding headers and the identity of `caller` (see the module docs).
/// `seen` is [`Seen::scan`] of `h` with `ids`.
pub fn rewrite_request(
    h: &mut HeaderMap,
    mut seen: Seen,
    upgrade: bool,
    down: &Downstream<'_>,
    ids: &Identity,
    caller: Option<&VerifiedClaims>,
) {
    if remove_hop_by_hop(h, seen, upgrade) {
        seen = Seen::scan(h, Some(ids));
    }
    if seen.has(Seen::UNDERSCORE) {
        strip_underscore_aliases(h, ids);
    }
    set_forwarding(h, down, seen);
    set_identity(h, ids, caller, seen);
}

/// Sets `Via`, `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host`
/// and `X-Forwarded-Client-Cert`.
fn set_forwarding(h: &mut HeaderMap, down: &Downstream<'_>, seen: Seen) {
    if let Some(cert) = down.client_cert {
        h.insert(&X_FORWARDED_CLIENT_CERT, cert.clone());
    } else if !down.trusted && seen.has(Seen::X_FORWARDED_CLIENT_CERT) {
        h.remove(&X_FORWARDED_CLIENT_CERT);
    }
    h.append(header::VIA, down.via.clone());
    let peer = down.peer_value.clone();
    let xff = if down.trusted && seen.has(Seen::X_FORWARDED_FOR) {
        let parts: Vec<&str> = h
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if parts.is_empty() {
            // None of them readable: the peer is the only hop known.
            peer
        } else {
            let prior = parts.join(", ");
            HeaderValue::from_str(&format!("{prior}, {}", down.peer)).unwrap_or(peer)
        }
    } else {
        if !down.trusted && seen.has(Seen::FORWARDED) {
            h.remove(&FORWARDED);
        }
        peer
    };
    h.insert(&X_FORWARDED_FOR, xff);
    if !down.trusted || !seen.has(Seen::X_FORWARDED_PROTO) {
        let proto = if down.https { "https" } else { "http" };
        h.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !down.trusted || !seen.has(Seen::X_FORWARDED_HOST) {
        match &down.host {
            Some(host) => {
                h.insert(&X_FORWARDED_HOST, host.clone());
            }
            None if seen.has(Seen::X_FORWARDED_HOST) => {
                h.remove(&X_FORWARDED_HOST);
            }
            None => {}
        }
    }
}

/// Removes headers spelled with `_` where a header the gateway sets has `-`
/// (`X_Auth_Subject`): CGI/WSGI/Rack-style servers map both to the same
/// variable, so they would let a client forge identity or forwarding headers.
fn strip_underscore_aliases(h: &mut HeaderMap, ids: &Identity) {
    let forwarding = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &FORWARDED,
        &X_FORWARDED_CLIENT_CERT,
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
fn set_identity(h: &mut HeaderMap, ids: &Identity, claims: Option<&VerifiedClaims>, seen: Seen) {
    if seen.has(Seen::IDENTITY) {
        for name in ids.header_names() {
            h.remove(name);
        }
    }
    if let Some(c) = claims {
        for (name, value) in c.identity_headers() {
            h.insert(name, value.clone());
        }
    }
    if !ids.forward_authorization && seen.has(Seen::AUTHORIZATION) {
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
        assert!(Seen::scan(&h, None).is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    /// Identity headers: `subject` only; `Authorization` is not forwarded.
    fn ids_with(subject: &'static str) -> Identity {
        let cfg = crate::config::IdentityConfig {
            subject_header: Some(HeaderName::from_static(subject)),
            roles_header: None,
            claims_header: None,
            claim_headers: Vec::new(),
            roles_claim: "roles".into(),
            forward_authorization: false,
        };
        Identity::new(&cfg, Vec::new())
    }

    fn ids() -> Identity {
        ids_with("x-auth-subject")
    }

    static VIA: HeaderValue = HeaderValue::from_static("1.1 gatehouse");
    static PEER: HeaderValue = HeaderValue::from_static("10.0.0.1");

    /// The client 10.0.0.1, trusted or not, without a Host.
    fn down(trusted: bool) -> Downstream<'static> {
        Downstream {
            peer: "10.0.0.1".parse().unwrap(),
            peer_value: &PEER,
            trusted,
            via: &VIA,
            host: None,
            https: false,
            client_cert: None,
        }
    }

    fn forwarding(h: &mut HeaderMap, trusted: bool) {
        set_forwarding(h, &down(trusted), Seen::scan(h, None));
    }

    /// The whole request rewrite, with no caller.
    fn rewrite(h: &mut HeaderMap, ids: &Identity, trusted: bool) {
        let seen = Seen::scan(h, Some(ids));
        rewrite_request(h, seen, false, &down(trusted), ids, None);
    }

    #[test]
    fn xff_is_replaced_unless_the_peer_is_trusted() {
        let mut h = map(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")]);
        forwarding(&mut h, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert!(h.get("forwarded").is_none());
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-forwarded-proto", "https"),
        ]);
        forwarding(&mut h, true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn a_client_cert_header_is_ours_kept_from_a_trusted_peer_or_dropped() {
        let forged = || {
            map(&[
                ("x-forwarded-client-cert", "Hash=forged"),
                ("x_forwarded_client_cert", "Hash=alias"),
            ])
        };
        let mut h = forged();
        rewrite(&mut h, &ids(), false);
        assert!(h.get("x-forwarded-client-cert").is_none());
        assert!(h.get("x_forwarded_client_cert").is_none());
        let mut h = forged();
        forwarding(&mut h, true);
        assert_eq!(h["x-forwarded-client-cert"], "Hash=forged");
        let ours = HeaderValue::from_static("Hash=00");
        for trusted in [false, true] {
            let mut h = forged();
            let down = Downstream {
                client_cert: Some(&ours),
                ..down(trusted)
            };
            let seen = Seen::scan(&h, None);
            set_forwarding(&mut h, &down, seen);
            let all: Vec<_> = h.get_all("x-forwarded-client-cert").iter().collect();
            assert_eq!(all, [&ours], "trusted: {trusted}");
        }
    }

    #[test]
    fn the_scan_sees_what_the_rewrite_acts_on() {
        let ids = ids();
        let h = map(&[
            ("host", "a"),
            ("Connection", "upgrade"),
            ("upgrade", "websocket"),
            ("x-auth-subject", "forged"),
            ("x_forwarded_for", "1.1.1.1"),
            ("authorization", "Bearer x"),
        ]);
        let seen = Seen::scan(&h, Some(&ids));
        assert!(seen.is_upgrade(&h));
        for bit in [
            Seen::CONNECTION,
            Seen::UPGRADE,
            Seen::IDENTITY,
            Seen::UNDERSCORE,
            Seen::AUTHORIZATION,
        ] {
            assert!(seen.has(bit), "{bit:#x}");
        }
        assert!(!seen.has(Seen::X_FORWARDED_FOR | Seen::FORWARDED | 1 << 5));
        // Without `ids`, an identity header or a `_` is just another name.
        assert!(!Seen::scan(&h, None).has(Seen::IDENTITY | Seen::UNDERSCORE));
    }

    #[test]
    fn an_identity_header_named_like_a_forwarding_header_is_still_stripped() {
        let ids = ids_with("x-forwarded-host");
        let mut h = map(&[("x-forwarded-host", "forged-subject")]);
        rewrite(&mut h, &ids, true);
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn a_trusted_peers_unreadable_xff_is_replaced_not_joined() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_bytes(b"\xff").unwrap());
        forwarding(&mut h, true);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
    }

    #[test]
    fn a_connection_named_forwarding_header_is_set_again() {
        // `Connection: x-forwarded-proto` from a trusted peer removes the
        // client's value; the gateway's own must still be set.
        let ids = ids();
        let mut h = map(&[
            ("connection", "x-forwarded-proto"),
            ("x-forwarded-proto", "https"),
        ]);
        rewrite(&mut h, &ids, true);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("connection").is_none());
    }
}
