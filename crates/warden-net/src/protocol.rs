//! The protocol registry's entries: each protocol crate builds a [`Registration`]
//! (its kind, where its own listener binds, and its proxy), and the gateway runs
//! whatever is registered — listeners for those that have one, tunnels for all.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use warden_core::{BoxFuture, ConnectionKind, TunnelLogin};

use crate::BoxedStream;

/// A protocol proxy as the gateway runs it.
pub trait ProtocolProxy: Send + Sync + 'static {
    /// Serves a client of the protocol's own listener, to the end of its session.
    fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) -> BoxFuture<'static, ()>;
    /// Serves a client that came through an authenticated tunnel (`warden connect`):
    /// the tunnel names the connection and carries the token.
    fn serve_tunnel(
        self: Arc<Self>,
        stream: BoxedStream,
        peer: SocketAddr,
        tunnel: TunnelLogin,
    ) -> BoxFuture<'static, ()>;
    /// Turns a client away at the door (too many connections), in the protocol's
    /// words when it has some for it; by default the connection is just closed.
    fn refuse(self: Arc<Self>, stream: TcpStream, reason: String) -> BoxFuture<'static, ()> {
        let _ = reason;
        drop(stream);
        Box::pin(async {})
    }
}

/// One protocol, registered with the gateway.
pub struct Registration {
    pub kind: ConnectionKind,
    /// Where its listener binds; `None`: served through tunnels only.
    pub listen: Option<SocketAddr>,
    /// Whether clients reach that listener over TLS (SSH is always encrypted): the
    /// console shows commands that fit.
    pub encrypted: bool,
    pub proxy: Arc<dyn ProtocolProxy>,
}
