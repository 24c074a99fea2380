//! The PostgreSQL protocol's entry in the gateway's registry: its settings (the
//! `[pg]` section of the configuration) and the proxy the gateway runs with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use warden_core::{BoxFuture, BoxedStream, ConnectionKind, SessionHooks, TunnelLogin};
use warden_net::{ProtocolProxy, Registration};

use crate::proxy::{CancelMap, ProxyConfig, serve_client, serve_tunnel};

/// The PostgreSQL listener (`[pg]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSettings {
    /// Run the listener; tunnels are served either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Accept tokens over plain TCP from clients that are not on loopback.
    #[serde(default)]
    pub allow_plaintext_tokens: bool,
    /// Largest single protocol message accepted, in bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// How long a client has to log in, and then the database to let the gateway in.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// PEM certificate chain; with `tls_key`, `SSLRequest` is answered with TLS
    /// (clients use `sslmode=require` or `verify-full`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 15432))
}
fn default_max_message() -> usize {
    64 * 1024 * 1024
}
fn default_login_timeout() -> u64 {
    30
}

impl Default for PgSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            allow_plaintext_tokens: false,
            max_message_bytes: default_max_message(),
            login_timeout_secs: default_login_timeout(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The PostgreSQL proxy as the gateway runs it.
struct PgProxy<H> {
    hooks: Arc<H>,
    config: ProxyConfig,
}

impl<H: SessionHooks> ProtocolProxy for PgProxy<H> {
    fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(serve_client(
            stream,
            peer,
            self.hooks.clone(),
            self.config.clone(),
        ))
    }

    fn serve_tunnel(
        self: Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: TunnelLogin,
    ) -> BoxFuture<'static, ()> {
        Box::pin(serve_tunnel(
            stream,
            peer,
            self.hooks.clone(),
            self.config.clone(),
            tunnel,
        ))
    }

    fn refuse(self: Arc<Self>, mut stream: TcpStream, reason: String) -> BoxFuture<'static, ()> {
        // libpq sends its startup packet and then reads: the error is its answer.
        Box::pin(async move {
            let mut b = bytes::BytesMut::new();
            crate::backend::error_response(
                &mut b,
                &crate::backend::PgNotice {
                    severity: "FATAL",
                    code: crate::sqlstate::TOO_MANY_CONNECTIONS,
                    message: &reason,
                    detail: None,
                    hint: None,
                },
            );
            let _ = warden_net::write_flushed(&mut stream, &b).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        })
    }
}

/// Registers the PostgreSQL proxy; an error names what in the settings is unusable.
pub fn register<H: SessionHooks>(
    settings: &PgSettings,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    // PostgreSQL clients before 17 send no ALPN; 17+ with sslnegotiation=direct would
    // send "postgresql", which this listener does not take directly.
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(warden_net::server_tls(cert, key, &[])?),
        _ => None,
    };
    let encrypted = tls.is_some();
    let config = ProxyConfig {
        cancels: CancelMap::default(),
        allow_plaintext_tokens: settings.allow_plaintext_tokens,
        tls,
        max_message: settings.max_message_bytes,
        login_timeout: Duration::from_secs(settings.login_timeout_secs),
    };
    Ok(Registration {
        kind: ConnectionKind::Postgres,
        listen: settings.enabled.then_some(settings.listen),
        encrypted,
        proxy: Arc::new(PgProxy { hooks, config }),
    })
}
