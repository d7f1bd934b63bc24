//! TLS termination (`[server] tls`), with rustls on aws-lc-rs (the crypto
//! the gateway already verifies tokens with).
//!
//! The certificate is part of the snapshot: it is parsed when a config is
//! loaded (so `check` validates it) and a SIGHUP reload replaces it for
//! the handshakes that follow, as nginx's reload does. Whether a new
//! connection speaks TLS at all is the snapshot's word when it is accepted
//! (`server::run`): a reload may turn TLS on or off. ALPN offers
//! `h2` and `http/1.1`; TLS 1.2 and 1.3 with rustls's safe defaults.
//!
//! With `client_ca`, clients are asked for a certificate, which must chain
//! to one of its certificates (`client_auth = "optional"`: or be absent).
//! That too follows the current snapshot, handshake by handshake. A
//! verified certificate is described to the upstream in
//! `X-Forwarded-Client-Cert` ([`forwarded_client_cert`]). A resumed TLS
//! session is not checked again (rustls restores its certificate), so
//! sessions are kept per snapshot: after a reload, every client makes a
//! full handshake under the `client_ca` now in force.

use std::fmt::Write as _;
use std::sync::Arc;

use http::HeaderValue;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::client::danger::HandshakeSignatureValid;
use tokio_rustls::rustls::crypto::{self, WebPkiSupportedAlgorithms, aws_lc_rs};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use tokio_rustls::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio_rustls::rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
    WebPkiClientVerifier,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{
    self, DigitallySignedStruct, DistinguishedName, InconsistentKeys, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::config::{ClientAuth, TlsFiles};
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

/// The verifier of client certificates issued by `roots` (`client_ca`).
///
/// # Errors
/// `roots` cannot anchor a client certificate.
pub fn client_verifier(
    roots: Arc<RootCertStore>,
    auth: ClientAuth,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = WebPkiClientVerifier::builder_with_provider(roots, provider);
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    builder.build().map_err(|e| format!("client_ca: {e}"))
}

/// Asks for client certificates as the current snapshot's `client_ca`
/// says. No CA names are hinted to the client (they would have to outlive
/// the snapshot): a client then sends the certificate it has.
struct CurrentClientAuth {
    shared: Shared,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for CurrentClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentClientAuth")
    }
}

impl CurrentClientAuth {
    fn current(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.shared.load().client_verifier.clone()
    }
}

impl ClientCertVerifier for CurrentClientAuth {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().is_some_and(|v| v.client_auth_mandatory())
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.current() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            // A reload removed `client_ca` during the handshake.
            None => Err(rustls::Error::General("no client_ca".into())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// rustls's session cache (256 sessions, as its default), each key
/// prefixed with the generation of the snapshot the session was made
/// under: a session verified against one `client_ca` is never resumed under
/// another (nor one made without `client_ca` under one that asks). A
/// reload that lands between a handshake's certificate check and its
/// `put` (microseconds) can still file that session under the new
/// snapshot.
struct SessionsPerSnapshot {
    shared: Shared,
    cache: Arc<ServerSessionMemoryCache>,
}

impl std::fmt::Debug for SessionsPerSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionsPerSnapshot")
    }
}

impl SessionsPerSnapshot {
    fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut scoped = self.shared.load().generation.to_be_bytes().to_vec();
        scoped.extend_from_slice(key);
        scoped
    }
}

impl StoresServerSessions for SessionsPerSnapshot {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache.put(self.key(&key), value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.get(&self.key(key))
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache.take(&self.key(key))
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// The acceptor of a TLS listener serving `shared`.
pub fn acceptor(shared: &Shared) -> TlsAcceptor {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let clients = CurrentClientAuth {
        shared: Arc::clone(shared),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports rustls's default protocol versions")
        .with_client_cert_verifier(Arc::new(clients))
        .with_cert_resolver(Arc::new(CurrentCert(Arc::clone(shared))));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = Arc::new(SessionsPerSnapshot {
        shared: Arc::clone(shared),
        cache: ServerSessionMemoryCache::new(256),
    });
    TlsAcceptor::from(Arc::new(config))
}

/// Why a handshake ended in `e`, for `/metrics`; `None` for a client that
/// closed the connection (a load balancer's TCP probe does, every few
/// seconds: no failure of anyone's).
pub fn failure(e: &std::io::Error) -> Option<crate::metrics::TlsFailure> {
    use crate::metrics::TlsFailure;
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return None;
    }
    Some(
        match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::NoCertificatesPresented) => TlsFailure::NoClientCertificate,
            Some(rustls::Error::InvalidCertificate(_)) => TlsFailure::BadClientCertificate,
            _ => TlsFailure::Other,
        },
    )
}

/// Whether the client chose HTTP/2 by ALPN.
pub fn negotiated_h2(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(b"h2")
}

/// `X-Forwarded-Client-Cert` for the certificate the client presented (and
/// rustls verified), as Envoy writes it: `Hash=` (SHA-256 of the DER, hex),
/// `Subject="..."` (RFC 4514), then a `URI=` and a `DNS=` for each such
/// subject alternative name. `None` without a certificate. A part that
/// cannot be read, or holds what a header cannot, is left out; the hash is
/// always there.
pub fn forwarded_client_cert(conn: &rustls::ServerConnection) -> Option<HeaderValue> {
    use x509_cert::der::Decode;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;

    let der = conn.peer_certificates()?.first()?;
    let digest = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, der);
    let mut value = String::from("Hash=");
    for b in digest.as_ref() {
        let _ = write!(value, "{b:02x}");
    }
    if let Ok(cert) = x509_cert::Certificate::from_der(der) {
        let tbs = cert.tbs_certificate();
        // Not `to_string()`: it panics where Display fails, and x509-cert's
        // fails for a value it cannot encode again.
        let mut subject = String::new();
        let written = write!(subject, "{}", tbs.subject()).is_ok();
        // Quoted; `"` and `\` escaped, as Envoy does.
        if written && subject.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            let escaped = subject.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = write!(value, ";Subject=\"{escaped}\"");
        }
        if let Ok(Some((_, SubjectAltName(names)))) = tbs.get_extension::<SubjectAltName>() {
            for name in &names {
                let (key, text) = match name {
                    GeneralName::UniformResourceIdentifier(uri) => ("URI", uri.as_str()),
                    GeneralName::DnsName(dns) => ("DNS", dns.as_str()),
                    _ => continue,
                };
                // `;` and `,` separate XFCC's parts and elements.
                if text
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b';' && b != b',')
                {
                    let _ = write!(value, ";{key}={text}");
                }
            }
        }
    }
    HeaderValue::from_str(&value).ok()
}
