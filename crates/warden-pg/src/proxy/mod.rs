//! One client session through the PostgreSQL proxy: startup (TLS when configured),
//! token login, backend login with the held credential, then the relay.
//!
//! Every `Query`, `Parse`, `Bind` and function call goes through the session's
//! admission path (`warden_core::SessionHandle::admit`): decided, audited before it
//! is forwarded, recorded. A denied
//! statement never reaches the server: the proxy forwards in its place a message that
//! fails at the server with a one-time marker, and when the server's error for it comes
//! back the proxy replaces it with its own `ErrorResponse` (SQLSTATE 42501, naming the
//! rule). The server thus keeps the response order, the pipeline's skip-until-Sync
//! behaviour and the transaction state exactly as for a real error. Rows, COPY data,
//! notices and notifications are masked on the way back.
//!
//! Here: [`startup`] (login on both legs), [`relay`] (the open session), whose
//! [`client_side`] admits and forwards and [`server_side`] masks and records, and
//! [`cancel`] (cancel requests). Around it: `requests` matches answers to requests,
//! `catalog` knows the columns' origins, `capture` keeps what the recording shows,
//! `copy` handles COPY, `prepared` attributes prepared statements.

mod cancel;
mod client_side;
mod relay;
mod server_side;
mod startup;

pub use cancel::{CancelMap, ServerCancel};
use startup::serve_stream;

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;
use warden_core::{RefusalKind, SessionHandle, SessionHooks, TunnelLogin};

use crate::sqlstate;
use crate::tls::{BackendTls, BoxedStream, TlsSetupError};

/// An open session with its backend TLS built.
pub(crate) struct ProxySession {
    pub(crate) handle: Arc<SessionHandle>,
    /// TLS towards the database; `None` is plain TCP.
    pub(crate) backend_tls: Option<BackendTls>,
    /// Bounds each login and catalog exchange with the database.
    pub(crate) timeout: std::time::Duration,
}

impl ProxySession {
    fn new(
        handle: SessionHandle,
        timeout: std::time::Duration,
    ) -> (Arc<SessionHandle>, Result<Self, TlsSetupError>) {
        let handle = Arc::new(handle);
        let tls = BackendTls::for_target(&handle.target);
        let session = tls.map(|backend_tls| Self {
            handle: handle.clone(),
            backend_tls,
            timeout,
        });
        (handle, session)
    }
}

/// The SQLSTATE a refused login is answered with.
fn refusal_sqlstate(kind: RefusalKind) -> &'static str {
    match kind {
        RefusalKind::BadCredentials => sqlstate::INVALID_PASSWORD,
        RefusalKind::NoAccess => sqlstate::INVALID_CATALOG_NAME,
        RefusalKind::PolicyUnusable => sqlstate::INSUFFICIENT_PRIVILEGE,
        RefusalKind::Unavailable => sqlstate::CONNECTION_FAILURE,
    }
}

/// Listener-level settings.
#[derive(Clone)]
pub struct ProxyConfig {
    /// Shared by all sessions of a listener.
    pub cancels: CancelMap,
    /// Accept tokens over plain TCP from non-loopback clients.
    pub allow_plaintext_tokens: bool,
    /// Answers `SSLRequest` with TLS when set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub max_message: usize,
    /// How long a client has to send its startup packet and token.
    pub login_timeout: std::time::Duration,
}

/// Serves one client connection to its end. Errors end this session only.
pub async fn serve_client<H: SessionHooks>(
    tcp: TcpStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
) {
    // Frames are written as they are decided; without this, Nagle and delayed ACKs
    // add ~40 ms to each small request/response exchange.
    let _ = tcp.set_nodelay(true);
    serve_stream(Box::new(tcp), peer, hooks, config, None).await;
}

/// Serves a client that came through a tunnel: no TLS negotiation (the tunnel's
/// transport has its own) and no password exchange (the tunnel carries the token
/// and names the connection; the database the client names is ignored).
pub async fn serve_tunnel<H: SessionHooks>(
    stream: BoxedStream,
    peer: SocketAddr,
    hooks: Arc<H>,
    config: ProxyConfig,
    tunnel: TunnelLogin,
) {
    serve_stream(stream, peer, hooks, config, Some(tunnel)).await;
}
