//! TLS towards backends: verified against a CA (the connection's or the system's) and
//! a server name, or explicitly unverified. How a protocol asks its server for TLS is
//! the protocol crate's business; this module only builds the connector.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use std::sync::Arc;
use warden_core::{BackendTarget, TlsMode};

/// Where the system's trusted CA certificates are on Debian.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How the proxy reaches a backend over TLS.
#[derive(Clone)]
pub struct BackendTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("invalid CA certificates: {0}")]
    BadCa(String),
    #[error("no CA certificates to verify the server with")]
    NoRoots,
    #[error("`{0}` is not a valid server name")]
    BadServerName(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl BackendTls {
    /// The TLS a granted session asks for: verified against the connection's CA (or
    /// the system's) and server name (or the target host), unverified only when the
    /// connection says `insecure`, none when it says `disable`.
    pub fn for_target(target: &BackendTarget) -> Result<Option<Self>, TlsSetupError> {
        let name = target.tls_server_name();
        match target.tls.mode {
            TlsMode::Disable => Ok(None),
            TlsMode::Verify => Self::verified(target.tls.ca_pem.as_deref(), name).map(Some),
            TlsMode::Insecure => Self::unverified(name).map(Some),
        }
    }

    /// TLS for an HTTP target, which may also ask for a client certificate
    /// (`identity`); `mode` must not be `disable`.
    pub fn for_http(
        mode: TlsMode,
        ca_pem: Option<&str>,
        server_name: &str,
        identity: Option<ClientIdentity>,
    ) -> Result<Self, TlsSetupError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?;
        let builder = match mode {
            TlsMode::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))),
            TlsMode::Verify | TlsMode::Disable => builder.with_root_certificates(roots(ca_pem)?),
        };
        let config = match identity {
            Some((certs, key)) => builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsSetupError::Config(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        Self::with(config, server_name)
    }

    /// Verifying TLS: trusts `ca_pem` (or the system roots) and checks the
    /// certificate against `server_name`.
    pub fn verified(ca_pem: Option<&str>, server_name: &str) -> Result<Self, TlsSetupError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        Self::with(config, server_name)
    }

    /// TLS without certificate verification: encrypted, but open to an active
    /// man in the middle. Only when a connection explicitly opts out.
    pub fn unverified(server_name: &str) -> Result<Self, TlsSetupError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider())))
            .with_no_client_auth();
        Self::with(config, server_name)
    }

    fn with(config: rustls::ClientConfig, server_name: &str) -> Result<Self, TlsSetupError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|_| TlsSetupError::BadServerName(server_name.to_string()))?;
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

/// A failed TLS handshake with a target, said so that the fix is named: a refused
/// certificate says how to make the connection trust it, or opt out explicitly.
pub fn handshake_failure(e: &std::io::Error) -> String {
    let refused = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| {
            matches!(
                r,
                rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)
            )
        });
    if refused {
        format!(
            "{e}: the target's certificate is not trusted for this name. Give the connection \
             `tls.ca_pem` (the CA that signed it) or `tls.server_name` (the name it was issued \
             for), or opt out with `tls.mode` `insecure` (encrypted, unverified) or `disable`"
        )
    } else {
        e.to_string()
    }
}

/// A certificate chain and its private key, for TLS client authentication.
pub type ClientIdentity = (
    Vec<CertificateDer<'static>>,
    rustls_pki_types::PrivateKeyDer<'static>,
);

/// The CA certificates to trust: `ca_pem`, or the system's.
fn roots(ca_pem: Option<&str>) -> Result<rustls::RootCertStore, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = match ca_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsSetupError::BadCa(e.to_string()))?,
        None => CertificateDer::pem_file_iter(SYSTEM_ROOTS)
            .map_err(|e| TlsSetupError::BadCa(format!("{SYSTEM_ROOTS}: {e}")))?
            .filter_map(Result::ok)
            .collect(),
    };
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsSetupError::NoRoots);
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts any certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Loads a certificate chain and key (PEM files) into a TLS acceptor for a listener,
/// offering `alpn` (none: no ALPN). Errors name the files, never their contents.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::PrivateKeyDer;
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| format!("{}: no usable private key", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
