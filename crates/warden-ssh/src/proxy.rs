//! The SSH server facing users. A client logs in with a token (password or
//! keyboard-interactive) or a registered public key, naming the connection as its
//! user name; Warden then logs in to the target itself (see [`crate::backend`]) and
//! relays each channel: shells and commands with their PTY, SFTP, forwarded ports.
//!
//! Every channel goes through the same steps as a database statement: decide
//! (guardrails on exec commands, the connection's forwarding switch), record durably,
//! then forward; terminals are streamed to an asciicast recording as they run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::keys::PrivateKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, MethodKind, MethodSet, Pty};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tracing::Instrument;
use warden_core::{
    Action, Admission, ClientWatch, Command, ConnectionKind, Decision, DenialCause, EndReason,
    KeyLogin, LoginRequest, Refusal, SessionHandle, SessionHooks, TerminalRecorder, TerminalSpec,
    TimelineEvent, TunnelLogin, Unwatched,
};

use crate::backend::{self, BackendError, BackendHandle};
use crate::commands::{ScpCommand, TypedLines};
use crate::keys::PublicKeyLine;
use crate::sftp::{SftpEvent, SftpObserver};

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
        let auth_timeout = self.config.auth_timeout;
        let watchdog_slot = slot.clone();
        let reason = match server::run_stream(self.server.clone(), stream, handler).await {
            Ok(running) => {
                let handle = running.handle();
                // A client that never logs in is cut off.
                let watchdog = tokio::spawn(async move {
                    tokio::time::sleep(auth_timeout).await;
                    if watchdog_slot.get().is_none() {
                        let _ = handle
                            .disconnect(
                                russh::Disconnect::ByApplication,
                                "login timed out".into(),
                                "en".into(),
                            )
                            .await;
                    }
                });
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
                let result = running.await;
                watchdog.abort();
                ender.abort();
                match result {
                    Ok(()) => None,
                    Err(e) => Some(EndReason::ClientProtocol(e.to_string())),
                }
            }
            Err(e) => Some(EndReason::ClientProtocol(e.to_string())),
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
            live.session.close(reason).await;
        }
    }
}

fn login_methods() -> MethodSet {
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
struct SessionSlot {
    live: Mutex<Option<Arc<Live>>>,
    /// Signalled once `live` is set.
    filled: tokio::sync::Notify,
}

impl SessionSlot {
    fn get(&self) -> Option<Arc<Live>> {
        self.live.lock().ok().and_then(|l| l.clone())
    }
}

/// An open session: its handle and the connection to the target.
struct Live {
    session: Arc<SessionHandle>,
    backend: OnceCell<Result<BackendHandle, BackendError>>,
    channels: AtomicUsize,
    /// Set once the client's connection has ended.
    gone: tokio::sync::watch::Sender<bool>,
    /// Signalled when the last open channel ends.
    idle: tokio::sync::Notify,
}

/// How long a closing session waits for its channels to finish recording.
const CHANNELS_DRAIN: Duration = Duration::from_secs(5);

impl Live {
    /// The logged-in target connection, connecting on first use.
    async fn backend(&self, timeout: Duration) -> Result<&BackendHandle, BackendError> {
        self.backend
            .get_or_init(|| async {
                let r = backend::connect(&self.session, timeout).await;
                if let Err(e) = &r {
                    tracing::warn!(session = %self.session.id(), error = %e, "target login failed");
                    self.record(TimelineEvent::Error {
                        code: "target".into(),
                        message: e.to_string(),
                        duration_us: None,
                    });
                }
                r
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Writes to the session's timeline; a failed write ends the session.
    fn record(&self, event: TimelineEvent) -> bool {
        match self.session.record(event) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(session = %self.session.id(), error = %e, "recording failed");
                false
            }
        }
    }

    /// Something the session did: in its timeline and the audit log, in order.
    fn note(&self, kind: &'static str, detail: serde_json::Value) {
        if let Err(e) = self.session.activity(kind, detail) {
            tracing::error!(session = %self.session.id(), error = %e, kind, "recording failed");
        }
    }
}

/// Handles one client connection's events (russh calls these in order).
struct ClientHandler<H> {
    hooks: Arc<H>,
    client: SocketAddr,
    config: ProxyConfig,
    slot: Arc<SessionSlot>,
    /// Keyboard-interactive attempts that failed (each gets the reason shown).
    retries: u32,
    /// Set for a client that came through a tunnel: its login.
    tunnel: Option<TunnelLogin>,
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(login_methods()),
        partial_success: false,
    }
}

fn token_prompt(instructions: String) -> Auth {
    Auth::Partial {
        name: "Warden".into(),
        instructions: instructions.into(),
        // "Password:" at the end, so sshpass and askpass helpers answer it.
        prompts: vec![("Token (OIDC or Warden API key) as Password: ".into(), false)].into(),
    }
}

impl<H: SessionHooks> ClientHandler<H> {
    async fn login_with_token(&mut self, connection: &str, token: &str) -> Result<(), Refusal> {
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
    fn start(&mut self, session: SessionHandle) {
        let live = Arc::new(Live {
            session: Arc::new(session),
            backend: OnceCell::new(),
            channels: AtomicUsize::new(0),
            gone: tokio::sync::watch::channel(false).0,
            idle: tokio::sync::Notify::new(),
        });
        tracing::info!(session = %live.session.id(), "ssh session opened");
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
        tokio::spawn(
            async move {
                let live = task.live.clone();
                task.run(channel).await;
                if live.channels.fetch_sub(1, Ordering::SeqCst) == 1 {
                    live.idle.notify_waiters();
                }
            }
            .instrument(span),
        );
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
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.slot.get() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let forward = Forward {
            host: host.to_string(),
            port,
            originator: originator.to_string(),
            originator_port,
        };
        let timeout = self.config.login_timeout;
        tokio::spawn(forward.run(live, timeout, channel, reply));
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
        _originator: &str,
        _port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
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
async fn refused_feature(live: &Live, what: &'static str, detail: serde_json::Value) -> bool {
    let command = Command::new(Action::Feature { name: what }, what).with_detail(detail);
    matches!(
        live.session.admit(command, &mut Unwatched).await,
        Admission::Admitted { .. }
    )
}

/// A client's PTY request, replayed to the target.
#[derive(Clone)]
struct PtyRequest {
    term: String,
    width: u32,
    height: u32,
    pix_width: u32,
    pix_height: u32,
    modes: Vec<(Pty, u32)>,
}

/// What a session channel was asked to run.
enum Start {
    Shell,
    Exec(String),
    Sftp,
}

/// One session channel (shell, command or SFTP) from request to close.
struct SessionChannel {
    live: Arc<Live>,
    handle: server::Handle,
    login_timeout: Duration,
    id: ChannelId,
    /// The client's request was answered (success) already, while a review held it.
    answered: AtomicBool,
}

/// How the bytes of a running channel are watched.
enum Watch {
    Terminal {
        recorder: Arc<dyn TerminalRecorder>,
        typed: Option<TypedLines>,
    },
    Sftp(SftpObserver),
    Scp(ScpCommand, u64, u64),
}

impl SessionChannel {
    async fn run(self, channel: Channel<Msg>) {
        let (mut from_client, to_client) = channel.split();
        let mut pty: Option<PtyRequest> = None;
        let mut env: Vec<(String, String)> = Vec::new();
        // Requests until the client says what to run.
        let start = loop {
            let Some(msg) = from_client.wait().await else {
                return;
            };
            match msg {
                ChannelMsg::RequestPty {
                    term,
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                    terminal_modes,
                    ..
                } => {
                    pty = Some(PtyRequest {
                        term,
                        width: col_width,
                        height: row_height,
                        pix_width,
                        pix_height,
                        modes: terminal_modes,
                    });
                }
                // At most 64 variables are passed on; the target decides which it takes.
                ChannelMsg::SetEnv {
                    variable_name,
                    variable_value,
                    ..
                } if env.len() < 64 => env.push((variable_name, variable_value)),
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    ..
                } => {
                    if let Some(p) = &mut pty {
                        p.width = col_width;
                        p.height = row_height;
                    }
                }
                ChannelMsg::RequestShell { .. } => break Start::Shell,
                ChannelMsg::Exec { command, .. } => {
                    break Start::Exec(String::from_utf8_lossy(&command).into_owned());
                }
                ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => break Start::Sftp,
                // Answered (refused) by the handler already: a relay would need a
                // guard that allows it, and none does.
                ChannelMsg::RequestSubsystem { name, .. } => {
                    refused_feature(&self.live, "subsystem", json!({"name": name})).await;
                }
                ChannelMsg::AgentForward { .. } => {
                    refused_feature(&self.live, "agent_forwarding", json!({})).await;
                }
                ChannelMsg::RequestX11 { .. } => {
                    refused_feature(&self.live, "x11_forwarding", json!({})).await;
                }
                ChannelMsg::Eof | ChannelMsg::Close => {
                    let _ = to_client.close().await;
                    return;
                }
                _ => {}
            }
        };
        let (via, command) = match &start {
            Start::Shell => ("shell", String::new()),
            Start::Exec(c) => ("exec", c.clone()),
            Start::Sftp => ("subsystem", "sftp".to_string()),
        };
        // Decide: commands (and the SFTP subsystem, as the command `sftp`) go through
        // the guardrails; an interactive shell is one action of its own.
        let mut decided = Command::new(Action::Shell { command: &command }, via);
        if matches!(start, Start::Shell) {
            decided = decided.decided(Decision::Allow);
        }
        let mut client = ChannelClient {
            channel: &self,
            to_client: &to_client,
        };
        // Audit before execute: a command that cannot be recorded does not run.
        match self.live.session.admit(decided, &mut client).await {
            Admission::Admitted { .. } => {}
            Admission::Denied(denial) => {
                let (status, message) = match denial.cause {
                    DenialCause::AuditUnavailable => (
                        UNAVAILABLE_EXIT_STATUS,
                        "the audit log cannot be written; nothing was run".to_string(),
                    ),
                    _ => (
                        DENIED_EXIT_STATUS,
                        format!("denied by rule `{}`: {}", denial.rule, denial.reason),
                    ),
                };
                return self.refuse(&to_client, status, &message).await;
            }
            Admission::End(EndReason::ClientGone) => return,
            Admission::End(reason) => {
                let message = match &reason {
                    EndReason::Recording(_) => {
                        "the session cannot be recorded; nothing was run".to_string()
                    }
                    other => other.to_string(),
                };
                self.refuse(&to_client, UNAVAILABLE_EXIT_STATUS, &message)
                    .await;
                // The whole session ends, as in every protocol.
                let _ = self
                    .handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        format!("warden: {reason}"),
                        "en".into(),
                    )
                    .await;
                return;
            }
        }
        let backend = match self.live.backend(self.login_timeout).await {
            Ok(b) => b,
            Err(e) => {
                return self
                    .refuse(&to_client, UNAVAILABLE_EXIT_STATUS, &e.to_string())
                    .await;
            }
        };
        let watch = match &start {
            Start::Sftp => Watch::Sftp(SftpObserver::default()),
            Start::Exec(c) if let Some(scp) = ScpCommand::parse(c) => Watch::Scp(scp, 0, 0),
            _ => {
                // No PTY, or one without a size (the client's stdin is not a
                // terminal): the recording says 80x24.
                let (width, height) = match &pty {
                    Some(p) if p.width > 0 && p.height > 0 => (p.width, p.height),
                    _ => (80, 24),
                };
                let spec = TerminalSpec {
                    channel: u32::from(self.id),
                    width,
                    height,
                    term: pty.as_ref().map(|p| p.term.clone()),
                    command: match &start {
                        Start::Exec(c) => Some(c.clone()),
                        _ => None,
                    },
                };
                match self.live.session.terminal(spec) {
                    Ok(recorder) => Watch::Terminal {
                        recorder,
                        typed: (pty.is_some() && matches!(start, Start::Shell))
                            .then(TypedLines::default),
                    },
                    Err(e) => {
                        tracing::error!(error = %e, "terminal recording failed");
                        return self
                            .refuse(
                                &to_client,
                                UNAVAILABLE_EXIT_STATUS,
                                "the session cannot be recorded; nothing was run",
                            )
                            .await;
                    }
                }
            }
        };
        let target = match backend.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                let message = format!("the target refused a session channel: {e}");
                return self
                    .refuse(&to_client, UNAVAILABLE_EXIT_STATUS, &message)
                    .await;
            }
        };
        let (mut from_target, to_target) = target.split();
        if let Some(p) = &pty {
            let _ = to_target
                .request_pty(
                    false,
                    &p.term,
                    p.width,
                    p.height,
                    p.pix_width,
                    p.pix_height,
                    &p.modes,
                )
                .await;
        }
        for (k, v) in env {
            let _ = to_target.set_env(false, k, v).await;
        }
        let asked = match &start {
            Start::Shell => to_target.request_shell(true).await,
            Start::Exec(c) => to_target.exec(true, c.as_bytes()).await,
            Start::Sftp => to_target.request_subsystem(true, "sftp").await,
        };
        if asked.is_err() {
            return self
                .refuse(
                    &to_client,
                    UNAVAILABLE_EXIT_STATUS,
                    "the target closed the channel",
                )
                .await;
        }
        // The target's answer to the request; anything before it is kept for later.
        let mut early = Vec::new();
        let accepted = loop {
            match from_target.wait().await {
                Some(ChannelMsg::Success) => break true,
                Some(ChannelMsg::Failure) | None => break false,
                Some(other) => early.push(other),
            }
        };
        if !accepted && self.answered.load(Ordering::Relaxed) {
            let _ = to_target.close().await;
            return self
                .refuse(
                    &to_client,
                    UNAVAILABLE_EXIT_STATUS,
                    "the target refused to run the command",
                )
                .await;
        }
        if !accepted {
            let _ = self.handle.channel_failure(self.id).await;
            let _ = to_client.close().await;
            let _ = to_target.close().await;
            return;
        }
        self.answer().await;
        let watch = Arc::new(Mutex::new(watch));
        let up = tokio::spawn(
            ClientToTarget {
                live: self.live.clone(),
                watch: watch.clone(),
            }
            .run(from_client, to_target),
        );
        let status = TargetToClient {
            live: self.live.clone(),
            handle: self.handle.clone(),
            id: self.id,
            watch: watch.clone(),
        }
        .run(early, from_target, to_client)
        .await;
        // The target closed: the client's side follows on its own; stop relaying.
        up.abort();
        self.finish(&watch, status).await;
    }

    /// Accepts the client's request, once.
    async fn answer(&self) {
        if !self.answered.swap(true, Ordering::Relaxed) {
            let _ = self.handle.channel_success(self.id).await;
        }
    }

    /// Ends a channel that will run nothing: the reason on stderr and an exit status.
    async fn refuse(&self, to_client: &russh::ChannelWriteHalf<Msg>, status: u32, message: &str) {
        self.answer().await;
        let line = format!("warden: {message}\r\n");
        let _ = to_client
            .extended_data_bytes(1, Bytes::from(line.into_bytes()))
            .await;
        let _ = to_client.exit_status(status).await;
        let _ = to_client.eof().await;
        let _ = to_client.close().await;
    }

    /// Records what a finished channel did.
    async fn finish(&self, watch: &Mutex<Watch>, exit: ExitSeen) {
        if let Some(recorder) = terminal_of(watch)
            && let Err(e) = recorder.finish().await
        {
            tracing::error!(error = %e, "terminal recording not finished");
        }
        let transfers = match watch.lock().ok().as_deref_mut() {
            Some(Watch::Terminal { .. }) => Vec::new(),
            Some(Watch::Sftp(o)) => o.finish().into_iter().map(sftp_detail).collect(),
            Some(Watch::Scp(scp, up, down)) => vec![(
                "ssh.transfer",
                json!({
                    "protocol": "scp",
                    "path": scp.path,
                    "direction": if scp.upload { "upload" } else { "download" },
                    "bytes": if scp.upload { *up } else { *down },
                }),
            )],
            None => Vec::new(),
        };
        for (kind, detail) in transfers {
            self.live.note(kind, detail);
        }
        self.live.record(TimelineEvent::Exit {
            channel: u32::from(self.id),
            status: exit.status,
            signal: exit.signal,
        });
    }
}

/// The audit event for an SFTP observation: `ssh.transfer` for a file's bytes,
/// `ssh.file` for a change to the tree.
fn sftp_detail(e: SftpEvent) -> (&'static str, serde_json::Value) {
    match e {
        SftpEvent::Transfer {
            path,
            write,
            read_bytes,
            written_bytes,
        } => (
            "ssh.transfer",
            json!({
                "protocol": "sftp",
                "path": path,
                "direction": if write { "upload" } else { "download" },
                "bytes": if write { written_bytes } else { read_bytes },
                "read_bytes": read_bytes,
                "written_bytes": written_bytes,
            }),
        ),
        SftpEvent::Change { op, path, target } => (
            "ssh.file",
            json!({"protocol": "sftp", "op": op, "path": path, "target": target}),
        ),
    }
}

/// The client's side of a command held for review: its request is accepted (the
/// client shows stderr only after that) and told where the review is; the client's
/// connection ending is noticed.
struct ChannelClient<'a> {
    channel: &'a SessionChannel,
    to_client: &'a russh::ChannelWriteHalf<Msg>,
}

impl ClientWatch for ChannelClient<'_> {
    async fn held(&mut self, notice: &str) {
        self.channel.answer().await;
        let line = format!("warden: {notice}\r\n");
        let _ = self
            .to_client
            .extended_data_bytes(1, Bytes::from(line.into_bytes()))
            .await;
    }

    async fn gone(&mut self) {
        let mut gone = self.channel.live.gone.subscribe();
        let _ = gone.wait_for(|g| *g).await;
    }
}

/// The terminal recorder a channel streams to, if it is a terminal.
fn terminal_of(watch: &Mutex<Watch>) -> Option<Arc<dyn TerminalRecorder>> {
    match watch.lock().ok().as_deref() {
        Some(Watch::Terminal { recorder, .. }) => Some(recorder.clone()),
        _ => None,
    }
}

/// How a command ended, as the target said.
#[derive(Default)]
struct ExitSeen {
    status: Option<u32>,
    signal: Option<String>,
}

struct ClientToTarget {
    live: Arc<Live>,
    watch: Arc<Mutex<Watch>>,
}

impl ClientToTarget {
    async fn run(
        self,
        mut from_client: russh::ChannelReadHalf,
        to_target: russh::ChannelWriteHalf<russh::client::Msg>,
    ) {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    self.live.session.count_in(data.len() as u64);
                    let (typed, ok) = self.watch_input(&data).await;
                    for line in typed {
                        self.live
                            .note("ssh.command", json!({"command": line, "typed": true}));
                    }
                    if !ok || to_target.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::Eof => {
                    let _ = to_target.eof().await;
                }
                ChannelMsg::Close => break,
                ChannelMsg::WindowChange {
                    col_width,
                    row_height,
                    pix_width,
                    pix_height,
                } => {
                    if let Some(recorder) = terminal_of(&self.watch) {
                        let _ = recorder.resize(col_width, row_height).await;
                    }
                    let _ = to_target
                        .window_change(col_width, row_height, pix_width, pix_height)
                        .await;
                }
                ChannelMsg::Signal { signal } => {
                    let _ = to_target.signal(signal).await;
                }
                _ => {}
            }
        }
        let _ = to_target.close().await;
    }

    /// Feeds client bytes to the watcher; false when the channel must end.
    async fn watch_input(&self, data: &[u8]) -> (Vec<String>, bool) {
        // A terminal's recorder is awaited without the watch's lock held.
        if let Some(recorder) = terminal_of(&self.watch)
            && let Err(e) = recorder.input(data).await
        {
            tracing::error!(error = %e, "terminal recording failed");
            return (Vec::new(), false);
        }
        let Ok(mut watch) = self.watch.lock() else {
            return (Vec::new(), false);
        };
        match &mut *watch {
            Watch::Terminal { typed, .. } => (
                typed.as_mut().map(|t| t.feed(data)).unwrap_or_default(),
                true,
            ),
            Watch::Sftp(o) => match o.from_client(data) {
                Ok(events) => {
                    drop(watch);
                    // In order, before more of the stream is relayed.
                    for e in events {
                        let (kind, detail) = sftp_detail(e);
                        self.live.note(kind, detail);
                    }
                    (Vec::new(), true)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SFTP stream not understood; channel closed");
                    (Vec::new(), false)
                }
            },
            Watch::Scp(_, up, _) => {
                *up += data.len() as u64;
                (Vec::new(), true)
            }
        }
    }
}

struct TargetToClient {
    live: Arc<Live>,
    handle: server::Handle,
    id: ChannelId,
    watch: Arc<Mutex<Watch>>,
}

impl TargetToClient {
    async fn run(
        self,
        early: Vec<ChannelMsg>,
        mut from_target: russh::ChannelReadHalf,
        to_client: russh::ChannelWriteHalf<Msg>,
    ) -> ExitSeen {
        let mut exit = ExitSeen::default();
        let mut early = early.into_iter();
        loop {
            let msg = match early.next() {
                Some(m) => m,
                None => match from_target.wait().await {
                    Some(m) => m,
                    None => break,
                },
            };
            match msg {
                ChannelMsg::Data { data } => {
                    if !self.watch_output(&data).await {
                        break;
                    }
                    self.live.session.count_out(data.len() as u64);
                    if to_client.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    if !self.watch_output(&data).await {
                        break;
                    }
                    self.live.session.count_out(data.len() as u64);
                    if to_client.extended_data_bytes(ext, data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exit.status = Some(exit_status);
                    let _ = to_client.exit_status(exit_status).await;
                }
                ChannelMsg::ExitSignal {
                    signal_name,
                    core_dumped,
                    error_message,
                    lang_tag,
                } => {
                    exit.signal = Some(format!("{signal_name:?}"));
                    let _ = self
                        .handle
                        .exit_signal_request(
                            self.id,
                            signal_name,
                            core_dumped,
                            error_message,
                            lang_tag,
                        )
                        .await;
                }
                ChannelMsg::Eof => {
                    let _ = to_client.eof().await;
                }
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        let _ = to_client.close().await;
        exit
    }

    /// Feeds target bytes to the watcher; false when the channel must end.
    async fn watch_output(&self, data: &[u8]) -> bool {
        if let Some(recorder) = terminal_of(&self.watch) {
            return match recorder.output(data).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "terminal recording failed");
                    false
                }
            };
        }
        let Ok(mut watch) = self.watch.lock() else {
            return false;
        };
        match &mut *watch {
            Watch::Terminal { .. } => true,
            Watch::Sftp(o) => match o.from_server(data) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "SFTP stream not understood; channel closed");
                    false
                }
            },
            Watch::Scp(_, _, down) => {
                *down += data.len() as u64;
                true
            }
        }
    }
}

/// A `direct-tcpip` channel (`ssh -L`): allowed per connection, audited, relayed
/// through the target.
struct Forward {
    host: String,
    port: u32,
    originator: String,
    originator_port: u32,
}

impl Forward {
    async fn run(
        self,
        live: Arc<Live>,
        timeout: Duration,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
    ) {
        let detail = json!({"host": self.host, "port": self.port,
                            "originator": format!("{}:{}", self.originator, self.originator_port)});
        let command = Command::new(
            Action::Forward {
                host: &self.host,
                port: self.port,
            },
            "forward",
        )
        .with_detail(detail);
        if !matches!(
            live.session.admit(command, &mut Unwatched).await,
            Admission::Admitted { .. }
        ) {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let opened = match live.backend(timeout).await {
            Ok(b) => {
                b.channel_open_direct_tcpip(
                    self.host.clone(),
                    self.port,
                    self.originator.clone(),
                    self.originator_port,
                )
                .await
            }
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        let target = match opened {
            Ok(t) => t,
            Err(_) => {
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return;
            }
        };
        reply.accept().await;
        let (from_client, to_client) = channel.split();
        let (from_target, to_target) = target.split();
        let up_live = live.clone();
        let up = tokio::spawn(async move {
            pump_bytes(from_client, &to_target, |n| up_live.session.count_in(n)).await;
        });
        pump_bytes(from_target, &to_client, |n| live.session.count_out(n)).await;
        up.abort();
    }
}

/// Relays a byte stream one way (a forwarded port: data and EOF, nothing else),
/// counting it, until either side closes; then closes the other side.
async fn pump_bytes<S>(
    mut from: russh::ChannelReadHalf,
    to: &russh::ChannelWriteHalf<S>,
    count: impl Fn(u64),
) where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(msg) = from.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                count(data.len() as u64);
                if to.data_bytes(data).await.is_err() {
                    break;
                }
            }
            ChannelMsg::Eof => {
                let _ = to.eof().await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = to.close().await;
}
