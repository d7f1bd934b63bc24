//! OpenID Connect Discovery 1.0: where an issuer publishes its keys.
//!
//! With `[[issuers]] discovery = true` the gateway reads the provider's
//! configuration at `<issuer>/.well-known/openid-configuration` (§4) before
//! each JWK Set fetch and takes the set's URL from its `jwks_uri`. The
//! document must name the configured issuer exactly (§4.3: otherwise
//! whoever answers at that URL could point the gateway at keys of another
//! issuer), and a document read over `https://` may not send the gateway
//! to a plain `http://` `jwks_uri`.

use http::Uri;
use serde::Deserialize;

/// The members of a provider's configuration the gateway reads.
#[derive(Deserialize)]
pub struct ProviderMetadata {
    issuer: Option<String>,
    jwks_uri: Option<String>,
}

/// The configuration `body`, read but not yet checked.
///
/// # Errors
/// Not a JSON object (with string `issuer` and `jwks_uri` where present).
pub fn parse(body: &[u8]) -> Result<ProviderMetadata, String> {
    serde_json::from_slice(body)
        .map_err(|e| format!("the OpenID configuration is not a JSON object: {e}"))
}

/// The `jwks_uri` of the configuration `meta`, read from `from`, for the
/// issuer `issuer`.
///
/// # Errors
/// A description for the log: another issuer or none, no `jwks_uri`, or
/// one that is not an `http(s)://` URL without credentials (or is
/// `http://` where the document came over `https://`).
pub fn jwks_uri(meta: ProviderMetadata, issuer: &str, from: &Uri) -> Result<Uri, String> {
    match meta.issuer.as_deref() {
        Some(named) if named == issuer => {}
        Some(named) => {
            return Err(format!(
                "the OpenID configuration names issuer `{named}`, not `{issuer}`"
            ));
        }
        None => return Err("the OpenID configuration has no `issuer`".into()),
    }
    let raw = meta
        .jwks_uri
        .ok_or("the OpenID configuration has no `jwks_uri`")?;
    let uri = raw
        .parse::<Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")))
        .filter(|u| u.authority().is_some_and(|a| !a.host().is_empty()))
        .ok_or_else(|| format!("jwks_uri `{raw}` is not an http:// or https:// URL"))?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!("jwks_uri `{raw}` carries credentials"));
    }
    if from.scheme_str() == Some("https") && uri.scheme_str() != Some("https") {
        return Err(format!(
            "jwks_uri `{raw}` is plain http in a configuration read over https"
        ));
    }
    Ok(uri)
}

/// `<issuer>/.well-known/openid-configuration` (§4: the issuer's trailing
/// `/` is removed first).
pub fn configuration_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://idp.example/";

    fn read(doc: &str) -> Result<Uri, String> {
        let from: Uri = configuration_url(ISS).parse().unwrap();
        jwks_uri(parse(doc.as_bytes())?, ISS, &from)
    }

    #[test]
    fn the_configuration_url_follows_the_issuer() {
        assert_eq!(
            configuration_url("https://idp.example/"),
            "https://idp.example/.well-known/openid-configuration"
        );
        assert_eq!(
            configuration_url("https://idp.example/realms/main"),
            "https://idp.example/realms/main/.well-known/openid-configuration"
        );
    }

    #[test]
    fn the_jwks_uri_of_the_configured_issuer_is_taken() {
        let doc = r#"{"issuer":"https://idp.example/","jwks_uri":"https://keys.example/certs",
                      "token_endpoint":"https://idp.example/token","extra":[1,2]}"#;
        assert_eq!(read(doc).unwrap(), "https://keys.example/certs");
    }

    #[test]
    fn another_issuer_or_none_is_refused() {
        let other = r#"{"issuer":"https://idp.example","jwks_uri":"https://idp.example/k"}"#;
        let err = read(other).unwrap_err();
        assert!(err.contains("names issuer `https://idp.example`"), "{err}");
        let none = r#"{"jwks_uri":"https://idp.example/k"}"#;
        assert!(read(none).unwrap_err().contains("no `issuer`"));
    }

    #[test]
    fn a_missing_bad_or_downgraded_jwks_uri_is_refused() {
        let doc = |uri: &str| format!(r#"{{"issuer":"{ISS}","jwks_uri":"{uri}"}}"#);
        assert!(
            read(r#"{"issuer":"https://idp.example/"}"#)
                .unwrap_err()
                .contains("no `jwks_uri`")
        );
        for bad in ["/relative/keys", "ftp://idp.example/k", "https:///k"] {
            let err = read(&doc(bad)).unwrap_err();
            assert!(
                err.contains("not an http:// or https:// URL"),
                "{bad}: {err}"
            );
        }
        let err = read(&doc("https://user:pw@idp.example/k")).unwrap_err();
        assert!(err.contains("credentials"), "{err}");
        let err = read(&doc("http://idp.example/k")).unwrap_err();
        assert!(err.contains("plain http"), "{err}");
        assert!(read("[1]").unwrap_err().contains("not a JSON object"));
    }

    #[test]
    fn a_plain_http_configuration_may_name_a_plain_http_jwks_uri() {
        let iss = "http://127.0.0.1:8080";
        let from: Uri = configuration_url(iss).parse().unwrap();
        let doc = format!(r#"{{"issuer":"{iss}","jwks_uri":"http://127.0.0.1:8080/k"}}"#);
        assert!(jwks_uri(parse(doc.as_bytes()).unwrap(), iss, &from).is_ok());
    }
}
