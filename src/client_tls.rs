//! TLS as a client, for `https://` upstream targets, `jwks_url` and
//! `verify_url`: rustls on aws-lc-rs (the crypto the gateway already
//! verifies tokens with), TLS 1.2 and 1.3 with rustls's safe defaults,
//! HTTP/1.1 by ALPN; a client certificate when an upstream has a
//! `client_cert`.
//!
//! The server's certificate is checked against the system's trusted roots
//! (`rustls-native-certs`: `/etc/ssl/certs` on Debian, or `SSL_CERT_FILE` /
//! `SSL_CERT_DIR` when set), or against the certificates of a PEM file
//! (an upstream's `ca_file`), and must name the host of the URL.

use std::sync::Arc;

use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, InconsistentKeys, RootCertStore};

/// The system's trusted roots, read now.
///
/// # Errors
/// None could be read: the message says what to install or set.
pub fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" ({e})"));
        return Err(format!(
            "no trusted root certificates{why}: install ca-certificates or set SSL_CERT_FILE"
        ));
    }
    Ok(roots)
}

/// The certificates of a PEM file's contents, as the only trusted roots.
///
/// # Errors
/// The contents are not PEM, hold no certificate, or one rustls refuses
/// as a trust anchor.
pub fn roots_from_pem(pem: &[u8]) -> Result<RootCertStore, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM file of certificates ({e})"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in the file".into());
    }
    let mut roots = RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| format!("a certificate cannot be trusted as a root ({e})"))?;
    }
    Ok(roots)
}

/// A client certificate chain and its private key, parsed.
pub struct ClientCert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientCert {
    /// From the contents of a PEM chain and a PEM private key.
    ///
    /// # Errors
    /// No certificate, no (unencrypted) private key, or not PEM.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<ClientCert, String> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("cert: not a PEM certificate chain ({e})"))?;
        if chain.is_empty() {
            return Err("cert: no CERTIFICATE in the file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| {
            if memchr::memmem::find(key, b"ENCRYPTED").is_some() {
                "key: encrypted keys are not supported".to_string()
            } else {
                format!("key: no PEM private key ({e})")
            }
        })?;
        Ok(ClientCert { chain, key })
    }
}

/// A client configuration trusting `roots`, presenting `client` when the
/// server asks for a certificate, and offering HTTP/2 (ALPN `h2`) when
/// `http2`, else HTTP/1.1.
///
/// # Errors
/// rustls cannot use the client key, or it does not belong to the
/// certificate.
pub fn config(
    roots: RootCertStore,
    client: Option<ClientCert>,
    http2: bool,
) -> Result<Arc<ClientConfig>, String> {
    let builder = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports rustls's default protocol versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(c.chain, c.key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                    "key: it does not belong to the certificate".to_string()
                }
                e => format!("key: {e}"),
            })?,
    };
    // Only what the connection will speak: a server that cannot is refused
    // at the handshake, not misread after it.
    let alpn: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_roots_need_a_certificate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
        let pem = std::fs::read(dir.join("a.cert.pem")).unwrap();
        assert_eq!(roots_from_pem(&pem).unwrap().len(), 1);
        let err = roots_from_pem(b"not pem").unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
        let key = std::fs::read(dir.join("a.key.pem")).unwrap();
        let err = roots_from_pem(&key).unwrap_err();
        assert!(err.contains("no CERTIFICATE"), "{err}");
    }
}
