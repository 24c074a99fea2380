//! The SSH server facing users. A client logs in with a token (password or
//! keyboard-interactive) or a registered public key, naming the connection as its
//! user name; Warden then logs in to the target itself (see [`crate::backend`]) and
//! relays each channel: shells and commands with their PTY, SFTP, forwarded ports.
//!
//! Every channel goes through the session's admission path like a database
//! statement: decided (guardrails on exec commands; the connection's rules on
//! forwards and features), audited durably, recorded, then forwarded; terminals are
//! streamed to an asciicast recording as they run.
//!
//! Here: [`client`] (the login and the requests of one connection), [`channel`]
//! (one session channel from request to close), [`streams`] (its bytes both ways)
//! and [`forward`] (forwarded ports).

mod channel;
mod client;
mod forward;
mod streams;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{self};
use tokio::net::TcpStream;
use warden_core::{EndReason, SessionHooks, TunnelLogin};

use client::{CHANNELS_DRAIN, ClientHandler, SessionSlot, login_methods};

/// The exit status a client sees for a command Warden refused.
pub const DENIED_EXIT_STATUS: u32 = 1;
/// The exit status when Warden could not run anything (target unreachable, ...).
pub const UNAVAILABLE_EXIT_STATUS: u32 = 255;

/// How the SSH listener behaves.
#[derive(Clone)]
pub struct ProxyConfig {
    /// The gateway's host key, which clients pin (`known_hosts`).
    pub host_key: PrivateKey,
    /// Bounds connecting and logging in to the target.
    pub login_timeout: Duration,
    /// Channels one client connection may have open at once.
    pub max_channels: usize,
    /// Seconds a client may take to log in before it is disconnected.
    pub auth_timeout: Duration,
}

/// How long a client that did not log in in time has to read the disconnect message
/// before its connection is dropped.
const LOGIN_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// Serves SSH clients with one shared server configuration.
pub struct SshProxy<H> {
    hooks: Arc<H>,
    server: Arc<server::Config>,
    config: ProxyConfig,
}

impl<H: SessionHooks> SshProxy<H> {
    pub fn new(hooks: Arc<H>, config: ProxyConfig) -> Self {
        let server = server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Warden".into()),
            methods: login_methods(),
            // Rejections take the same time whatever the reason.
            auth_rejection_time: Duration::from_millis(300),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![config.host_key.clone()],
            max_auth_attempts: 6,
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        };
        Self {
            hooks,
            server: Arc::new(server),
            config,
        }
    }

    /// Serves one client connection until it ends.
    pub async fn serve(&self, stream: TcpStream, client: SocketAddr) {
        self.serve_stream(stream, client, None).await;
    }

    /// Serves a client that came through a tunnel: it logs in with the `none`
    /// method, as the tunnel's token, to the tunnel's connection (the user name it
    /// sends is ignored).
    pub async fn serve_tunnel<S>(&self, stream: S, client: SocketAddr, tunnel: TunnelLogin)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_stream(stream, client, Some(tunnel)).await;
    }

    async fn serve_stream<S>(&self, stream: S, client: SocketAddr, tunnel: Option<TunnelLogin>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let slot = Arc::new(SessionSlot::default());
        let handler = ClientHandler {
            hooks: self.hooks.clone(),
            client,
            config: self.config.clone(),
            slot: slot.clone(),
            retries: 0,
            tunnel,
        };
        // Everything before the login — the identification line, the key exchange,
        // the authentication — must be done by this deadline; then the connection is
        // dropped, whether or not the client reads the disconnect message.
        let deadline = tokio::time::Instant::now() + self.config.auth_timeout;
        let watchdog_slot = slot.clone();
        // russh runs the connection in a task of its own: the switch is how a client
        // that did not log in in time is cut.
        let (stream, cut) = warden_net::Killable::new(stream);
        let started = tokio::time::timeout_at(
            deadline,
            server::run_stream(self.server.clone(), stream, handler),
        )
        .await;
        let reason = match started {
            Err(_) => {
                tracing::info!("no SSH identification before the login deadline; dropped");
                Some(EndReason::ClientProtocol("login timed out".into()))
            }
            Ok(Err(e)) => Some(EndReason::ClientProtocol(e.to_string())),
            Ok(Ok(running)) => {
                let handle = running.handle();
                let login_watch = async move {
                    tokio::time::sleep_until(deadline).await;
                    if watchdog_slot.get().is_some() {
                        return std::future::pending::<()>().await;
                    }
                    let _ = tokio::time::timeout(
                        LOGIN_TIMEOUT_GRACE,
                        handle.disconnect(
                            russh::Disconnect::ByApplication,
                            "login timed out".into(),
                            "en".into(),
                        ),
                    )
                    .await;
                    tokio::time::sleep(LOGIN_TIMEOUT_GRACE).await;
                    if watchdog_slot.get().is_some() {
                        // Logged in during the grace after all: it stays.
                        return std::future::pending::<()>().await;
                    }
                    cut.kill();
                };
                // The gateway may end the session (its access grant ended): the
                // client is disconnected with the reason, which ssh prints.
                let end_slot = slot.clone();
                let end_handle = running.handle();
                let ender = tokio::spawn(async move {
                    let live = loop {
                        if let Some(l) = end_slot.get() {
                            break l;
                        }
                        end_slot.filled.notified().await;
                    };
                    let reason = live.session.ended().wait().await;
                    live.session.fail(EndReason::Ended(reason.clone()));
                    let _ = end_handle
                        .disconnect(
                            russh::Disconnect::ByApplication,
                            format!("warden: {reason}"),
                            "en".into(),
                        )
                        .await;
                });
                let result = tokio::select! {
                    r = running => r.map_err(|e| e.to_string()),
                    () = login_watch => Err("login timed out".to_string()),
                };
                ender.abort();
                match result {
                    Ok(()) => None,
                    Err(e) => Some(EndReason::ClientProtocol(e)),
                }
            }
        };
        if let Some(live) = slot.get() {
            let idle = live.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            live.gone.send_replace(true);
            if let Some(Ok(backend)) = live.backend.get() {
                let _ = backend
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            }
            // Channels finish what they record (a held command's refusal, a
            // transfer) before the session's end is; the target is gone, so they end
            // at once.
            if live.channels.load(Ordering::SeqCst) > 0 {
                let _ = tokio::time::timeout(CHANNELS_DRAIN, idle).await;
            }
            // What is still running (a target login that hangs) ends here: nothing
            // runs for a session that has ended.
            live.end_tasks();
            live.session.close(reason).await;
        }
    }
}
