//! The Kubernetes and HTTP proxies' entries in the gateway's registry: their
//! listeners' settings (`[kubernetes]` and `[http]` in the configuration) and the
//! proxies the gateway runs with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use warden_core::{BoxFuture, BoxedStream, ConnectionKind, SessionHooks, TunnelLogin};
use warden_net::{ProtocolProxy, Registration};

use crate::proxy::{HttpProxy, ProxyLimits};

/// A listener of the HTTP family; `PORT` is its default port on 127.0.0.1.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSettings<const PORT: u16> {
    /// Run the listener; tunnels (`warden connect`) are served either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_listen::<PORT>")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the listener speaks HTTPS only (HTTP/2
    /// and HTTP/1.1 by ALPN). Without: plain HTTP/1.1 and HTTP/2 (prior knowledge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Request line and headers of one request, in bytes.
    #[serde(default = "default_header_bytes")]
    pub max_header_bytes: usize,
    /// How long a client has for a request's headers (and the TLS handshake).
    #[serde(default = "default_header_timeout")]
    pub header_timeout_secs: u64,
    /// Sessions (connection and token pairs) one client connection may open.
    #[serde(default = "default_sessions")]
    pub sessions_per_client: usize,
    /// The largest answer Warden reads whole to mask it, and the longest line of a
    /// masked stream; a larger one is withheld (502).
    #[serde(default = "default_masked_bytes")]
    pub max_masked_bytes: usize,
    /// HTTP/2 requests one client connection may have open at once.
    #[serde(default = "default_streams")]
    pub max_streams: u32,
    /// Bytes of answers held for masking at once over the whole listener; an answer
    /// that would go beyond is refused (503).
    #[serde(default = "default_masked_in_flight")]
    pub masked_bytes_in_flight: usize,
}

/// `[kubernetes]`: kubectl and other Kubernetes clients (default 127.0.0.1:8443).
pub type KubernetesSettings = ListenerSettings<8443>;
/// `[http]`: browsers, curl and HTTP libraries (default 127.0.0.1:8088).
pub type HttpSettings = ListenerSettings<8088>;

fn default_true() -> bool {
    true
}
fn default_listen<const PORT: u16>() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], PORT))
}
fn default_header_bytes() -> usize {
    ProxyLimits::default().max_header_bytes
}
fn default_header_timeout() -> u64 {
    ProxyLimits::default().header_timeout.as_secs()
}
fn default_sessions() -> usize {
    ProxyLimits::default().sessions_per_client
}
fn default_masked_bytes() -> usize {
    ProxyLimits::default().max_masked_bytes
}
fn default_masked_in_flight() -> usize {
    ProxyLimits::default().masked_bytes_in_flight
}
fn default_streams() -> u32 {
    ProxyLimits::default().max_streams
}

impl<const PORT: u16> Default for ListenerSettings<PORT> {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen::<PORT>(),
            tls_cert: None,
            tls_key: None,
            max_header_bytes: default_header_bytes(),
            header_timeout_secs: default_header_timeout(),
            sessions_per_client: default_sessions(),
            max_masked_bytes: default_masked_bytes(),
            max_streams: default_streams(),
            masked_bytes_in_flight: default_masked_in_flight(),
        }
    }
}

impl<const PORT: u16> ListenerSettings<PORT> {
    /// Checks what can be checked without binding: the certificate pair and limits.
    pub fn validate(&self, section: &str) -> Result<(), String> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(format!(
                "{section}.tls_cert and {section}.tls_key must be set together"
            ));
        }
        if self.max_header_bytes < 1024 || self.sessions_per_client == 0 || self.max_streams == 0 {
            return Err(format!(
                "{section}: max_header_bytes must be at least 1024, sessions_per_client and max_streams at least 1"
            ));
        }
        Ok(())
    }

    fn limits(&self) -> ProxyLimits {
        ProxyLimits {
            max_header_bytes: self.max_header_bytes,
            header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
            sessions_per_client: self.sessions_per_client,
            max_masked_bytes: self.max_masked_bytes,
            max_streams: self.max_streams,
            masked_bytes_in_flight: self.masked_bytes_in_flight,
        }
    }

    fn acceptor(&self) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                warden_net::server_tls(cert, key, &[b"h2", b"http/1.1"]).map(Some)
            }
            _ => Ok(None),
        }
    }
}

impl<H: SessionHooks> ProtocolProxy for HttpProxy<H> {
    fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move { HttpProxy::serve(&self, stream, peer).await })
    }

    fn serve_tunnel(
        self: Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: TunnelLogin,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move { HttpProxy::serve_tunnel(&self, stream, peer, tunnel).await })
    }
}

fn register<H: SessionHooks, const PORT: u16>(
    kind: ConnectionKind,
    settings: &ListenerSettings<PORT>,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    let section = kind.as_str();
    settings.validate(section)?;
    let tls = settings
        .acceptor()
        .map_err(|e| format!("[{section}] TLS: {e}"))?;
    Ok(Registration {
        kind,
        listen: settings.enabled.then_some(settings.listen),
        encrypted: tls.is_some(),
        proxy: Arc::new(HttpProxy::new(hooks, kind, tls, settings.limits())),
    })
}

/// Registers the Kubernetes API proxy.
pub fn register_kubernetes<H: SessionHooks>(
    settings: &KubernetesSettings,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    register(ConnectionKind::Kubernetes, settings, hooks)
}

/// Registers the HTTP service proxy.
pub fn register_http<H: SessionHooks>(
    settings: &HttpSettings,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    register(ConnectionKind::Http, settings, hooks)
}
