//! Tunnels for `warden connect`: a client's connection to a proxy carried over the
//! API listener (HTTPS when it has a certificate) by an HTTP/1.1 upgrade,
//! authenticated by the caller's token. The tunneled bytes (PostgreSQL, MySQL or SSH) enter the same protocol
//! engine as a direct client's, with the tunnel's token and connection in place of
//! the ones a client would send, so every guardrail, mask, review and recording
//! applies; the local client needs no credential.

use std::net::SocketAddr;
use std::sync::Arc;
use warden_core::{ConnectionKind, TunnelLogin};
use warden_net::BoxedStream;

use crate::gate::SessionGate;

/// The value of the `Upgrade` header that asks for a tunnel.
pub const TUNNEL_PROTOCOL: &str = "warden-tunnel";

/// The proxies a tunnel can lead into, with their settings.
pub struct TunnelTargets {
    pub(crate) gate: Arc<SessionGate>,
    pub(crate) pg: Option<warden_pg::proxy::ProxyConfig>,
    pub(crate) mysql: Option<warden_mysql::proxy::ProxyConfig>,
    pub(crate) ssh: Option<Arc<warden_ssh::proxy::SshProxy<SessionGate>>>,
}

impl TunnelTargets {
    /// Whether tunnels to connections of `kind` can be served.
    pub fn serves(&self, kind: ConnectionKind) -> bool {
        match kind {
            ConnectionKind::Postgres => self.pg.is_some(),
            ConnectionKind::Mysql => self.mysql.is_some(),
            ConnectionKind::Ssh => self.ssh.is_some(),
            _ => false,
        }
    }

    /// Serves one tunneled client to its end.
    pub async fn serve(
        &self,
        kind: ConnectionKind,
        stream: BoxedStream,
        peer: SocketAddr,
        login: TunnelLogin,
    ) {
        match kind {
            ConnectionKind::Postgres if let Some(config) = &self.pg => {
                let hooks = self.gate.clone();
                warden_pg::proxy::serve_tunnel(stream, peer, hooks, config.clone(), login).await;
            }
            ConnectionKind::Mysql if let Some(config) = &self.mysql => {
                let hooks = self.gate.clone();
                warden_mysql::proxy::serve_tunnel(stream, peer, hooks, config.clone(), login).await;
            }
            ConnectionKind::Ssh if let Some(proxy) = &self.ssh => {
                proxy.serve_tunnel(stream, peer, login).await;
            }
            _ => tracing::warn!(%kind, "no proxy serves tunnels of this kind"),
        }
    }
}
