//! One client connection's login and requests, as russh hands them over: token and
//! registered-key logins (the session opened through the hooks), session channels
//! (each run by its own task, see `channel`), forwarded ports, and the requests
//! Warden relays only if the guard allows them.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, MethodKind, MethodSet, Pty};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::Instrument;
use uuid::Uuid;
use warden_core::{
    Action, Admission, Command, ConnectionKind, KeyLogin, LoginRequest, Refusal, SessionHandle,
    SessionHooks, TimelineEvent, TunnelLogin, Unwatched,
};

use crate::backend::{self, BackendError, BackendHandle};
use crate::keys::PublicKeyLine;

use super::ProxyConfig;
use super::channel::SessionChannel;
use super::forward::Forward;

pub(super) fn login_methods() -> MethodSet {
    MethodSet::from(
        &[
            MethodKind::PublicKey,
            MethodKind::KeyboardInteractive,
            MethodKind::Password,
        ][..],
    )
}

/// The session a client logged in to, once it has.
#[derive(Default)]
pub(super) struct SessionSlot {
    pub(super) live: Mutex<Option<Arc<Live>>>,
    /// Signalled once `live` is set.
    pub(super) filled: tokio::sync::Notify,
}

impl SessionSlot {
    pub(super) fn get(&self) -> Option<Arc<Live>> {
        self.live.lock().ok().and_then(|l| l.clone())
    }
}

/// An open session: its handle and the connection to the target.
pub(super) struct Live {
    pub(super) session: Arc<SessionHandle>,
    pub(super) backend: OnceCell<Result<BackendHandle, BackendError>>,
    pub(super) channels: AtomicUsize,
    /// Port forwards refused so far; past [`MAX_REFUSED_FORWARDS`] the client is
    /// disconnected (each refusal is a durable audit write).
    pub(super) refused_forwards: AtomicUsize,
    /// Set once the client's connection has ended.
    pub(super) gone: tokio::sync::watch::Sender<bool>,
    /// Signalled when the last open channel ends.
    pub(super) idle: tokio::sync::Notify,
    /// The session's channel and forward tasks, ended when the session is.
    pub(super) tasks: Mutex<Vec<tokio::task::AbortHandle>>,
}

/// How long a closing session waits for its channels to finish recording.
pub(super) const CHANNELS_DRAIN: Duration = Duration::from_secs(5);

impl Live {
    /// Keeps a task of the session, to end it with the session.
    pub(super) fn track(&self, task: tokio::task::AbortHandle) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|t| !t.is_finished());
            tasks.push(task);
        }
    }

    /// Ends the session's tasks that are still running.
    pub(super) fn end_tasks(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for task in tasks.drain(..) {
                task.abort();
            }
        }
    }

    /// The logged-in target connection, connecting on first use.
    pub(super) async fn backend(&self, timeout: Duration) -> Result<&BackendHandle, BackendError> {
        self.backend
            .get_or_init(|| async {
                let r = backend::connect(&self.session, timeout).await;
                if let Err(e) = &r {
                    tracing::warn!(session = %self.session.id(), error = %e, "target login failed");
                    self.record(TimelineEvent::Error {
                        code: "target".into(),
                        message: e.to_string(),
                        duration_us: None,
                    })
                    .await;
                }
                r
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Writes to the session's timeline; a failed write ends the session.
    pub(super) async fn record(&self, event: TimelineEvent) -> bool {
        self.record_outcome(None, event).await
    }

    /// Writes an action's outcome, naming the action's audit event when known.
    pub(super) async fn record_outcome(
        &self,
        statement: Option<Uuid>,
        event: TimelineEvent,
    ) -> bool {
        match self.session.record_outcome(statement, event).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(session = %self.session.id(), error = %e, "recording failed");
                false
            }
        }
    }

    /// Something the session did: in its timeline and the audit log, in order.
    pub(super) async fn note(&self, kind: &'static str, detail: serde_json::Value) {
        if let Err(e) = self.session.activity(kind, detail).await {
            tracing::error!(session = %self.session.id(), error = %e, kind, "recording failed");
        }
    }
}

/// Handles one client connection's events (russh calls these in order).
pub(super) struct ClientHandler<H> {
    pub(super) hooks: Arc<H>,
    pub(super) client: SocketAddr,
    pub(super) config: ProxyConfig,
    pub(super) slot: Arc<SessionSlot>,
    /// Keyboard-interactive attempts that failed (each gets the reason shown).
    pub(super) retries: u32,
    /// Set for a client that came through a tunnel: its login.
    pub(super) tunnel: Option<TunnelLogin>,
}

pub(super) fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(login_methods()),
        partial_success: false,
    }
}

pub(super) fn token_prompt(instructions: String) -> Auth {
    Auth::Partial {
        name: "Warden".into(),
        instructions: instructions.into(),
        // "Password:" at the end, so sshpass and askpass helpers answer it.
        prompts: vec![("Token (OIDC or Warden API key) as Password: ".into(), false)].into(),
    }
}

impl<H: SessionHooks> ClientHandler<H> {
    pub(super) async fn login_with_token(
        &mut self,
        connection: &str,
        token: &str,
    ) -> Result<(), Refusal> {
        let session = self
            .hooks
            .open(LoginRequest {
                protocol: ConnectionKind::Ssh,
                connection,
                user: connection,
                token,
                client: self.client,
            })
            .await?;
        self.start(session);
        Ok(())
    }

    /// Keeps the grant and starts logging in to the target, so a bad target is
    /// reported as soon as the client opens a channel.
    pub(super) fn start(&mut self, session: SessionHandle) {
        let live = Arc::new(Live {
            session: Arc::new(session),
            backend: OnceCell::new(),
            channels: AtomicUsize::new(0),
            refused_forwards: AtomicUsize::new(0),
            gone: tokio::sync::watch::channel(false).0,
            idle: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
        });
        if let Ok(mut slot) = self.slot.live.lock() {
            *slot = Some(live.clone());
        }
        self.slot.filled.notify_one();
        let timeout = self.config.login_timeout;
        tokio::spawn(async move {
            let _ = live.backend(timeout).await;
        });
    }
}

impl<H: SessionHooks> server::Handler for ClientHandler<H> {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        let Some(tunnel) = self.tunnel.clone() else {
            return Ok(reject());
        };
        Ok(
            match self
                .login_with_token(&tunnel.connection, tunnel.token.expose())
                .await
            {
                Ok(()) => Auth::Accept,
                Err(_) => reject(),
            },
        )
    }

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(match self.login_with_token(user, password).await {
            Ok(()) => Auth::Accept,
            Err(_) => reject(),
        })
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut response) = response else {
            return Ok(token_prompt(format!(
                "Log in to the Warden connection `{user}` with a token."
            )));
        };
        let token = response
            .next()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        match self.login_with_token(user, token.trim()).await {
            Ok(()) => Ok(Auth::Accept),
            Err(refusal) if self.retries < 2 => {
                self.retries += 1;
                Ok(token_prompt(format!("warden: {}", refusal.message)))
            }
            Err(_) => Ok(reject()),
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Ok(line) = PublicKeyLine::of(key.public_key) else {
            return Ok(reject());
        };
        let login = KeyLogin {
            connection: user,
            user,
            public_key: &line.line,
            fingerprint: &line.fingerprint,
            client: self.client,
        };
        Ok(match self.hooks.open_with_key(login).await {
            Ok(session) => {
                self.start(session);
                Auth::Accept
            }
            Err(_) => reject(),
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.slot.get() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if live.channels.fetch_add(1, Ordering::SeqCst) >= self.config.max_channels {
            live.channels.fetch_sub(1, Ordering::SeqCst);
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        reply.accept().await;
        let task = SessionChannel {
            live: live.clone(),
            handle: session.handle(),
            login_timeout: self.config.login_timeout,
            id: channel.id(),
            answered: AtomicBool::new(false),
        };
        let span =
            tracing::info_span!("channel", session = %live.session.id(), channel = %channel.id());
        let running = tokio::spawn(
            async move {
                let live = task.live.clone();
                task.run(channel).await;
                if live.channels.fetch_sub(1, Ordering::SeqCst) == 1 {
                    live.idle.notify_waiters();
                }
            }
            .instrument(span),
        );
        live.track(running.abort_handle());
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.slot.get() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        // A forwarded port is a channel like any other: it counts against the limit.
        if live.channels.fetch_add(1, Ordering::SeqCst) >= self.config.max_channels {
            live.channels.fetch_sub(1, Ordering::SeqCst);
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let client = session.handle();
        let forward = Forward {
            host: host.to_string(),
            port,
            originator: originator.to_string(),
            originator_port,
        };
        let timeout = self.config.login_timeout;
        let task_live = live.clone();
        let running = tokio::spawn(async move {
            forward
                .run(task_live.clone(), timeout, channel, reply, client)
                .await;
            if task_live.channels.fetch_sub(1, Ordering::SeqCst) == 1 {
                task_live.idle.notify_waiters();
            }
        });
        live.track(running.abort_handle());
        Ok(())
    }

    // Requests that need no answer from the target are answered here, in order:
    // clients match answers to requests by order, so an answer sent later from the
    // channel's task could be taken for the next request's. The channel's task sees
    // the same requests and notes or uses them. Shell, exec and the sftp subsystem
    // are answered by the task once the target has answered.

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _width: u32,
        _height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            session.channel_failure(channel)?;
        }
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        originator: &str,
        port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Refused like every X11 request, and audited as the guard's decision.
        if let Some(live) = self.slot.get() {
            refused_feature(
                &live,
                "x11_forwarding",
                json!({"originator": format!("{originator}:{port}")}),
            )
            .await;
        }
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwarding (`ssh -R`) would open the target's ports to the client's
        // network; Warden does not offer it.
        if let Some(live) = self.slot.get() {
            refused_feature(
                &live,
                "remote_forward",
                json!({"address": address, "port": *port}),
            )
            .await;
        }
        Ok(false)
    }
}

/// Asks about a request Warden relays only if the guard allows it (agent or X11
/// forwarding, `ssh -R`, other subsystems): audited as `ssh.refused` when refused,
/// and refused (the client gets a failure) in any case but `Admitted`.
pub(super) async fn refused_feature(
    live: &Live,
    what: &'static str,
    detail: serde_json::Value,
) -> bool {
    let command = Command::new(Action::Feature { name: what }, what).with_detail(detail);
    matches!(
        live.session.admit(command, &mut Unwatched).await,
        Admission::Admitted { .. }
    )
}
