//! The MySQL / MariaDB protocol's entry in the gateway's registry: its settings (the
//! `[mysql]` section of the configuration) and the proxy the gateway runs with them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use warden_core::{BoxFuture, BoxedStream, ConnectionKind, SessionHooks, TunnelLogin};
use warden_net::{ProtocolProxy, Registration};

use crate::proxy::{ProxyConfig, ThreadMap, serve_client, serve_tunnel};

/// The MySQL / MariaDB listener (`[mysql]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSettings {
    /// Run the listener; tunnels are served either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Accept tokens over plain TCP from clients that are not on loopback.
    #[serde(default)]
    pub allow_plaintext_tokens: bool,
    /// Largest packet (fragments joined) accepted from a client or a server, in bytes.
    #[serde(default = "default_max_packet")]
    pub max_packet_bytes: usize,
    /// Relay `LOAD DATA LOCAL INFILE` (the server reads a file from the client's
    /// machine through the gateway). Off: the server is never offered local files.
    #[serde(default)]
    pub allow_local_infile: bool,
    /// The server version the greeting announces (clients adapt to it).
    #[serde(default = "default_version")]
    pub server_version: String,
    /// How long a client, and then the database, have to complete the login.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// PEM certificate chain; with `tls_key`, clients can upgrade with `CLIENT_SSL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 13306))
}
fn default_max_packet() -> usize {
    64 * 1024 * 1024
}
fn default_version() -> String {
    "8.0.36-warden".into()
}
fn default_login_timeout() -> u64 {
    30
}

impl Default for MysqlSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            allow_plaintext_tokens: false,
            max_packet_bytes: default_max_packet(),
            allow_local_infile: false,
            server_version: default_version(),
            login_timeout_secs: default_login_timeout(),
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The MySQL proxy as the gateway runs it.
struct MysqlProxy<H> {
    hooks: Arc<H>,
    config: ProxyConfig,
}

impl<H: SessionHooks> ProtocolProxy for MysqlProxy<H> {
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
        // The server speaks first: an ERR in place of the greeting, as MySQL does.
        Box::pin(async move {
            let (code, state) = crate::errno::TOO_MANY_CONNECTIONS;
            let body = crate::handshake::err_packet(code, state, &reason);
            let len = u32::try_from(body.len()).unwrap_or(0).to_le_bytes();
            let mut packet = vec![len[0], len[1], len[2], 0];
            packet.extend_from_slice(&body);
            let _ = warden_net::write_flushed(&mut stream, &packet).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        })
    }
}

/// Registers the MySQL proxy; an error names what in the settings is unusable.
pub fn register<H: SessionHooks>(
    settings: &MysqlSettings,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(warden_net::server_tls(cert, key, &[])?),
        _ => None,
    };
    let encrypted = tls.is_some();
    let config = ProxyConfig {
        allow_plaintext_tokens: settings.allow_plaintext_tokens,
        tls,
        max_packet: settings.max_packet_bytes,
        login_timeout: Duration::from_secs(settings.login_timeout_secs),
        allow_local_infile: settings.allow_local_infile,
        server_version: settings.server_version.clone(),
        threads: ThreadMap::default(),
    };
    Ok(Registration {
        kind: ConnectionKind::Mysql,
        listen: settings.enabled.then_some(settings.listen),
        encrypted,
        proxy: Arc::new(MysqlProxy { hooks, config }),
    })
}
