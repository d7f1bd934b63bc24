//! The HTTP proxy a `jwks_url` (or discovery) fetch goes through, from the
//! environment as Go's HTTP client reads it: `https_proxy`/`HTTPS_PROXY`
//! for `https://` URLs, `http_proxy`/`HTTP_PROXY` for `http://` ones, and
//! `no_proxy`/`NO_PROXY` for the hosts reached directly, the lower-case
//! name first. (curl ignores the capital `HTTP_PROXY`, which CGI sets from
//! a request's `Proxy:` header; the gateway is no CGI program.) Read at
//! each fetch.
//!
//! For an `https://` URL the fetch asks the proxy for a tunnel (`CONNECT
//! host:port`) and speaks TLS to the identity provider through it, so the
//! proxy sees only the host and port; an `http://` URL is asked of the
//! proxy in absolute form (`GET http://host/path`), as curl does. Either
//! way the proxy resolves the name: an egress proxy is often the only one
//! that can. A loopback host (`localhost`,
//! 127.0.0.0/8, `::1`) is always reached directly, as Go's HTTP client does.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use http::uri::{Authority, Uri};

use crate::config::Cidr;

/// An HTTP proxy: its address, and the `Proxy-Authorization` its URL's
/// credentials make.
#[derive(Clone)]
pub struct HttpProxy {
    pub authority: Authority,
    pub authorization: Option<HeaderValue>,
}

/// The credentials are never shown.
impl std::fmt::Debug for HttpProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpProxy")
            .field("authority", &self.host_port())
            .finish_non_exhaustive()
    }
}

/// The port of a proxy URL without one (curl's default).
const DEFAULT_PORT: u16 = 1080;

impl HttpProxy {
    /// `host:port` of the proxy, without credentials (for logs).
    pub fn host_port(&self) -> String {
        format!(
            "{}:{}",
            self.authority.host(),
            self.authority.port_u16().unwrap_or(DEFAULT_PORT)
        )
    }
}

/// The proxy for `url`, read from `env` (the process environment, in the
/// gateway); `None` for a direct connection.
///
/// # Errors
/// The variable is set but is not an `http://` proxy URL (no TLS to the
/// proxy itself).
pub fn for_url(
    url: &Uri,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<HttpProxy>, String> {
    let var = |lower: &str, upper: &str| {
        env(lower)
            .or_else(|| env(upper))
            .filter(|v| !v.trim().is_empty())
    };
    let (setting, name) = match url.scheme_str() {
        Some("https") => (var("https_proxy", "HTTPS_PROXY"), "https_proxy"),
        _ => (var("http_proxy", "HTTP_PROXY"), "http_proxy"),
    };
    let Some(setting) = setting else {
        return Ok(None);
    };
    let host = url.host().unwrap_or_default();
    if is_loopback(host) || bypassed(host, var("no_proxy", "NO_PROXY").as_deref()) {
        return Ok(None);
    }
    parse(setting.trim())
        .map(Some)
        .map_err(|why| format!("{name}: {why}"))
}

fn parse(setting: &str) -> Result<HttpProxy, String> {
    // curl takes a bare `host:port` as http://.
    let with_scheme;
    let setting = if setting.contains("://") {
        setting
    } else {
        with_scheme = format!("http://{setting}");
        &with_scheme
    };
    let uri: Uri = setting.parse().map_err(|_| "not a URL".to_string())?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// proxies are supported".into());
    }
    // A proxy URL is `http://[user:password@]host[:port][/]`: anything
    // after it means the URL was not read as meant (a `/` or `#` in an
    // unescaped password), and its host would be a piece of the password.
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() || setting.contains('#') {
        return Err(
            "a proxy URL has no path, query or fragment (escape / # ? in a password as %2F %23 %3F)"
                .into(),
        );
    }
    let full = uri.authority().ok_or("no host")?;
    let (userinfo, host_port) = match full.as_str().rsplit_once('@') {
        Some((userinfo, host_port)) => (Some(userinfo), host_port),
        None => (None, full.as_str()),
    };
    let authority: Authority = host_port.parse().map_err(|_| "no host".to_string())?;
    if authority.host().is_empty() {
        return Err("no host".into());
    }
    // `host:99999`: the URL parser reads no port at all there.
    let written_port = authority.as_str().len() > authority.host().len();
    if written_port && authority.port_u16().is_none() {
        return Err("the port is not a number from 0 to 65535".into());
    }
    let authorization = userinfo
        .map(|userinfo| {
            let mut decoded: Vec<u8> = percent_encoding::percent_decode_str(userinfo).collect();
            // `user` alone is `user:` (an empty password), as curl sends it.
            if !decoded.contains(&b':') {
                decoded.push(b':');
            }
            let basic = format!("Basic {}", STANDARD.encode(decoded));
            HeaderValue::from_str(&basic).map_err(|_| "bad credentials".to_string())
        })
        .transpose()?
        .map(|mut v| {
            v.set_sensitive(true);
            v
        });
    Ok(HttpProxy {
        authority,
        authorization,
    })
}

/// Whether `host` (of a URL: an IPv6 address in brackets) is this machine:
/// `localhost`, 127.0.0.0/8, `::1` (or 127.x as an IPv4-mapped address).
pub fn is_loopback(host: &str) -> bool {
    let host = bare(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// A URL's host without the brackets of an IPv6 address or a trailing dot.
fn bare(host: &str) -> &str {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
}

/// The host part of a `no_proxy` entry: without `[...]` around an IPv6
/// address, and without a `:port`.
fn entry_host(entry: &str) -> &str {
    if let Some(rest) = entry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match entry.rsplit_once(':') {
        // `host:port`, not an IPv6 address.
        Some((name, port)) if !name.contains(':') && port.parse::<u16>().is_ok() => name,
        _ => entry,
    }
}

/// Whether `no_proxy` names `host`: `*`; the host itself or a domain it is
/// in (`example.com` and `.example.com` both cover `idp.example.com`); an
/// IP address or network (`10.0.0.0/8`). A `:port` on an entry is ignored.
fn bypassed(host: &str, no_proxy: Option<&str>) -> bool {
    let Some(list) = no_proxy else { return false };
    let host = bare(host).to_ascii_lowercase();
    let ip = host.parse::<std::net::IpAddr>().ok();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry_host(entry);
        if let Some(ip) = ip {
            // An address matches addresses and networks only (as curl):
            // `2.3` is no domain that 10.1.2.3 is in.
            return Cidr::parse(entry).is_ok_and(|net| net.contains(ip));
        }
        let domain = entry.trim_start_matches('.').trim_end_matches('.');
        !domain.is_empty()
            && (host.eq_ignore_ascii_case(domain)
                || host
                    .strip_suffix(&domain.to_ascii_lowercase())
                    .is_some_and(|rest| rest.ends_with('.')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy_for(url: &str, vars: &[(&str, &str)]) -> Result<Option<HttpProxy>, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for_url(&url.parse().unwrap(), |k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    }

    fn host_of(url: &str, vars: &[(&str, &str)]) -> Option<String> {
        proxy_for(url, vars).unwrap().map(|p| p.host_port())
    }

    #[test]
    fn the_scheme_chooses_the_variable_lower_case_first() {
        let vars = [
            ("https_proxy", "http://lower:3128"),
            ("HTTPS_PROXY", "http://upper:3128"),
            ("HTTP_PROXY", "plain:8080"),
        ];
        assert_eq!(
            host_of("https://idp.example/k", &vars).unwrap(),
            "lower:3128"
        );
        assert_eq!(
            host_of("http://idp.example/k", &vars).unwrap(),
            "plain:8080"
        );
        assert_eq!(
            host_of("https://idp.example/k", &vars[1..]).unwrap(),
            "upper:3128"
        );
        assert_eq!(
            host_of("https://idp.example/k", &[("https_proxy", "proxy")]).unwrap(),
            "proxy:1080"
        );
        assert_eq!(host_of("https://idp.example/k", &[]), None);
        assert_eq!(
            host_of("https://idp.example/k", &[("HTTPS_PROXY", " ")]),
            None
        );
    }

    #[test]
    fn credentials_become_basic_proxy_authorization() {
        let p = proxy_for(
            "https://idp.example/k",
            &[("HTTPS_PROXY", "http://us%40er:p%3Aw@proxy:3128")],
        )
        .unwrap()
        .unwrap();
        let expected = format!("Basic {}", STANDARD.encode("us@er:p:w"));
        assert_eq!(p.authorization.as_ref().unwrap(), &expected);
        assert!(p.authorization.unwrap().is_sensitive());
        assert_eq!(p.authority.as_str(), "proxy:3128");
        assert!(
            !format!(
                "{:?}",
                proxy_for("https://i/k", &[("HTTPS_PROXY", "http://u:secret@p:1")])
            )
            .contains("secret")
        );
    }

    #[test]
    fn no_proxy_and_loopback_go_direct() {
        fn with(no_proxy: &str) -> [(&str, &str); 2] {
            [("HTTPS_PROXY", "http://proxy:3128"), ("NO_PROXY", no_proxy)]
        }
        for (url, no_proxy) in [
            ("https://idp.example.com/k", "*"),
            ("https://idp.example.com/k", "example.com"),
            ("https://idp.example.com/k", "other.org, .example.com"),
            ("https://IDP.example.com./k", "idp.example.com:443"),
            ("https://10.1.2.3/k", "10.0.0.0/8"),
            ("https://[fd00::1]/k", "fd00::/8"),
            ("https://localhost:8443/k", ""),
            ("https://127.0.0.2/k", ""),
            ("https://[::1]/k", ""),
        ] {
            assert_eq!(host_of(url, &with(no_proxy)), None, "{url} {no_proxy}");
        }
        for (url, no_proxy) in [
            ("https://idp.example.com/k", "ample.com"),
            ("https://idp.example.com/k", "idp.example.co"),
            ("https://11.1.2.3/k", "10.0.0.0/8"),
            ("https://idp.example.com/k", "."),
        ] {
            assert!(host_of(url, &with(no_proxy)).is_some(), "{url} {no_proxy}");
        }
    }

    #[test]
    fn bracketed_ipv6_entries_and_ip_hosts_match_as_curl_does() {
        for entry in ["[fd00::1]:443", "[fd00::1]", "fd00::1"] {
            let vars = [("HTTPS_PROXY", "http://proxy:3128"), ("NO_PROXY", entry)];
            assert_eq!(host_of("https://[fd00::1]/k", &vars), None, "{entry}");
        }
        // An address is matched by addresses and networks, not by suffix.
        let vars = [
            ("HTTPS_PROXY", "http://proxy:3128"),
            ("NO_PROXY", "2.3,1.2.3"),
        ];
        assert!(host_of("https://10.1.2.3/k", &vars).is_some());
        for host in ["localhost.", "[::ffff:127.0.0.1]"] {
            let url = format!("https://{host}/k");
            assert_eq!(
                host_of(&url, &[("HTTPS_PROXY", "http://p:1")]),
                None,
                "{host}"
            );
        }
    }

    #[test]
    fn a_user_without_password_is_sent_with_an_empty_one() {
        let p = proxy_for("https://i/k", &[("HTTPS_PROXY", "http://user@p:1")])
            .unwrap()
            .unwrap();
        let expected = format!("Basic {}", STANDARD.encode("user:"));
        assert_eq!(p.authorization.unwrap(), &expected);
    }

    /// A password with an unescaped `/` or `#` makes a URL whose host is
    /// a piece of the password: refused, and the error shows no part of it.
    #[test]
    fn misread_settings_are_refused_without_showing_the_password() {
        for bad in [
            "http://u:secret/x@p:1",
            "http://u:1234/x@p:1",
            "http://u:12#ab@p",
            "http://p:1/path",
            "http://p:1?q",
            "http://a:99999",
        ] {
            let err = proxy_for("https://idp/k", &[("https_proxy", bad)]).unwrap_err();
            assert!(
                !err.contains("secret") && !err.contains("1234"),
                "{bad}: {err}"
            );
        }
        for odd in [
            "http://[::1",
            "http://@",
            "http://:@:",
            "\u{0}",
            "http://u:%zz@p:1",
            "://",
        ] {
            let _ = proxy_for("https://idp/k", &[("https_proxy", odd)]);
        }
    }

    #[test]
    fn a_setting_that_is_no_http_proxy_is_an_error() {
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "http://",
            "http://:3128",
        ] {
            let err = proxy_for("https://idp/k", &[("https_proxy", bad)]).unwrap_err();
            assert!(err.starts_with("https_proxy: "), "{bad}: {err}");
        }
    }
}
