//! The dialer seam: every backend connection a proxy opens (the session's own, a
//! PostgreSQL catalog or cancel leg, a MySQL kill leg, an SSH target) goes through
//! the session's [`Dialer`]. The gateway picks it: a direct TCP dialer with a connect
//! timeout, or a stream through a network agent (`warden-agent`).

use tokio::io::{AsyncRead, AsyncWrite};

use super::BoxFuture;

/// A byte stream to a client or a backend, plain or TLS.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for T {}

pub type BoxedStream = Box<dyn ByteStream>;

/// Why a backend could not be reached; the client sees this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {addr}: {message}")]
    Refused { addr: String, message: String },
    #[error("connecting to {addr} took longer than {secs} s")]
    TimedOut { addr: String, secs: u64 },
    #[error("network agent `{agent}` is not connected to the gateway (waited {secs} s for it)")]
    AgentOffline { agent: String, secs: u64 },
}

/// Opens byte streams to backends.
pub trait Dialer: Send + Sync {
    /// Connects to `addr` (`host:port`).
    fn dial<'a>(&'a self, addr: &'a str) -> BoxFuture<'a, Result<BoxedStream, DialError>>;
}
