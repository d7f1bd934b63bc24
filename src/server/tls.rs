//! TLS termination (`[server] tls`), with rustls on aws-lc-rs (the crypto
//! the gateway already verifies tokens with).
//!
//! The certificate is part of the snapshot: it is parsed when a config is
//! loaded (so `check` validates it) and a SIGHUP reload replaces it for
//! the handshakes that follow, as nginx's reload does. Whether the listener
//! speaks TLS at all is fixed at start, as its address is. ALPN offers
//! `h2` and `http/1.1`; TLS 1.2 and 1.3 with rustls's safe defaults.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, InconsistentKeys, ServerConfig};

use crate::config::TlsFiles;
use crate::state::Shared;

/// The certificate chain and signing key of `files`.
///
/// # Errors
/// A file that holds no certificate or no private key, a key rustls cannot
/// use, or a key that does not belong to the first certificate.
pub fn certified_key(files: &TlsFiles) -> Result<Arc<CertifiedKey>, String> {
    let certs = CertificateDer::pem_slice_iter(&files.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("tls cert: not a PEM certificate chain ({e})"))?;
    if certs.is_empty() {
        return Err("tls cert: no CERTIFICATE in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key_pem).map_err(|e| {
        if memchr::memmem::find(&files.key_pem, b"ENCRYPTED").is_some() {
            "tls key: encrypted keys are not supported (decrypt it: openssl pkey -in KEY -out KEY.plain)"
                .to_string()
        } else {
            format!("tls key: no PEM private key ({e})")
        }
    })?;
    let provider = aws_lc_rs::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("tls key: {e}"))?;
    let certified = CertifiedKey::new(certs, signing);
    match certified.keys_match() {
        // A key that cannot name its public half is checked at handshake.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err("tls key: it does not belong to the certificate".into());
        }
        Err(e) => {
            return Err(format!(
                "tls cert: the first certificate is not usable ({e})"
            ));
        }
    }
    Ok(Arc::new(certified))
}

/// Answers every handshake with the current snapshot's certificate.
struct CurrentCert(Shared);

impl std::fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().tls.clone()
    }
}

/// The acceptor of a TLS listener serving `shared`.
pub fn acceptor(shared: &Shared) -> TlsAcceptor {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports rustls's default protocol versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCert(Arc::clone(shared))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Whether the client chose HTTP/2 by ALPN.
pub fn negotiated_h2(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(b"h2")
}
