//! Tunnels for `warden connect`: a client's connection to a proxy carried over the
//! API listener (HTTPS when it has a certificate) by an HTTP/1.1 upgrade,
//! authenticated by the caller's token. The tunneled bytes (PostgreSQL, MySQL or SSH) enter the same protocol
//! engine as a direct client's, with the tunnel's token and connection in place of
//! the ones a client would send, so every guardrail, mask, review and recording
//! applies; the local client needs no credential.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use warden_core::{ConnectionKind, TunnelLogin};
use warden_net::{BoxedStream, ProtocolProxy};

/// The value of the `Upgrade` header that asks for a tunnel.
pub const TUNNEL_PROTOCOL: &str = "warden-tunnel";

/// The proxies a tunnel can lead into: every registered protocol, whether or not its
/// own listener runs.
pub struct TunnelTargets {
    pub(crate) proxies: HashMap<ConnectionKind, Arc<dyn ProtocolProxy>>,
}

impl TunnelTargets {
    /// Whether tunnels to connections of `kind` can be served.
    pub fn serves(&self, kind: ConnectionKind) -> bool {
        self.proxies.contains_key(&kind)
    }

    /// Serves one tunneled client to its end.
    pub async fn serve(
        &self,
        kind: ConnectionKind,
        stream: BoxedStream,
        peer: SocketAddr,
        login: TunnelLogin,
    ) {
        match self.proxies.get(&kind) {
            Some(proxy) => proxy.clone().serve_tunnel(stream, peer, login).await,
            None => tracing::warn!(%kind, "no proxy serves tunnels of this kind"),
        }
    }
}
