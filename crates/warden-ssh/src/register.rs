//! The SSH protocol's entry in the gateway's registry: its settings (the `[ssh]`
//! section of the configuration) and the proxy the gateway runs with them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use warden_core::{BoxFuture, BoxedStream, ConnectionKind, SessionHooks, TunnelLogin};
use warden_net::{ProtocolProxy, Registration};

use crate::proxy::{ProxyConfig, SshProxy};

/// The SSH listener (`[ssh]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// Run the listener; tunnels are served either way.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The file of the gateway's own host key (OpenSSH format); generated there on
    /// first start. Default: `<data_dir>/ssh_host_ed25519_key`. (A connection's
    /// `ssh.host_key` is the target's key it pins: another thing, so another name;
    /// `host_key`, this setting's earlier name, is still read.)
    #[serde(default, alias = "host_key", skip_serializing_if = "Option::is_none")]
    pub host_key_file: Option<PathBuf>,
    /// How long Warden has to connect and log in to a target.
    #[serde(default = "default_login_timeout")]
    pub login_timeout_secs: u64,
    /// How long a client has to log in before it is disconnected.
    #[serde(default = "default_auth_timeout")]
    pub auth_timeout_secs: u64,
    /// Channels (shells, commands, transfers, forwards) one connection may hold.
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
    /// Longest life of a registered user key; registrations may ask for less.
    #[serde(default = "default_key_ttl")]
    pub user_key_max_ttl_secs: u64,
}

fn default_true() -> bool {
    true
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2222))
}
fn default_login_timeout() -> u64 {
    30
}
fn default_auth_timeout() -> u64 {
    60
}
fn default_max_channels() -> usize {
    16
}
fn default_key_ttl() -> u64 {
    12 * 3600
}

impl Default for SshSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: default_listen(),
            host_key_file: None,
            login_timeout_secs: default_login_timeout(),
            auth_timeout_secs: default_auth_timeout(),
            max_channels: default_max_channels(),
            user_key_max_ttl_secs: default_key_ttl(),
        }
    }
}

impl<H: SessionHooks> ProtocolProxy for SshProxy<H> {
    fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()> {
        Box::pin(async move { SshProxy::serve(&self, stream, peer).await })
    }

    fn serve_tunnel(
        self: Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: TunnelLogin,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move { SshProxy::serve_tunnel(&self, stream, peer, tunnel).await })
    }
}

/// Registers the SSH proxy with its host key at `host_key` (created there, 0600, on
/// first start); an error names what is unusable.
pub fn register<H: SessionHooks>(
    settings: &SshSettings,
    host_key: &Path,
    hooks: Arc<H>,
) -> Result<Registration, String> {
    let host_key = crate::keys::load_or_create_host_key(host_key).map_err(|e| e.to_string())?;
    let proxy = SshProxy::new(
        hooks,
        ProxyConfig {
            host_key,
            login_timeout: Duration::from_secs(settings.login_timeout_secs),
            max_channels: settings.max_channels,
            auth_timeout: Duration::from_secs(settings.auth_timeout_secs),
        },
    );
    Ok(Registration {
        kind: ConnectionKind::Ssh,
        listen: settings.enabled.then_some(settings.listen),
        encrypted: true,
        proxy: Arc::new(proxy),
    })
}
