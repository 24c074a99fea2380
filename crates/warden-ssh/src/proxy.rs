//! The SSH server facing users. A client logs in with a token (password or
//! keyboard-interactive) or a registered public key, naming the connection as its
//! user name; Warden then logs in to the target itself (see [`crate::backend`]) and
//! relays each channel: shells and commands with their PTY, SFTP, forwarded ports.
//!
//! Every channel goes through the same steps as a database statement: decide
//! (guardrails on exec commands, the connection's forwarding switch), record durably,
//! then forward; terminals are streamed to an asciicast recording as they run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    Action, ConnectionKind, Decision, KeyLogin, LoginRequest, Refusal, ReviewHold, ReviewOutcome,
    ReviewRequest, SessionGrant, SshHooks, StatementRecord, TerminalRecorder, TerminalSpec,
    TimelineEvent, Traffic, TunnelLogin,
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

impl<H: SshHooks> SshProxy<H> {
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
                    let reason = live.grant.ended.clone().wait().await;
                    if let Ok(mut r) = live.end_reason.lock() {
                        r.get_or_insert_with(|| reason.clone());
                    }
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
                    Err(e) => Some(e.to_string()),
                }
            }
            Err(e) => Some(e.to_string()),
        };
        if let Some(live) = slot.get() {
            live.gone.store(true, Ordering::Relaxed);
            if let Some(Ok(backend)) = live.backend.get() {
                let _ = backend
                    .disconnect(russh::Disconnect::ByApplication, "", "en")
                    .await;
            }
            let reason = live
                .end_reason
                .lock()
                .ok()
                .and_then(|mut r| r.take())
                .or(reason);
            let traffic = Traffic {
                from_client: live.from_client.load(Ordering::Relaxed),
                to_client: live.to_client.load(Ordering::Relaxed),
            };
            self.hooks.closed(&live.grant.id, reason, traffic).await;
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

/// An open session: what the gateway granted and the connection to the target.
struct Live {
    grant: SessionGrant,
    backend: OnceCell<Result<BackendHandle, BackendError>>,
    channels: AtomicUsize,
    from_client: AtomicU64,
    to_client: AtomicU64,
    end_reason: Mutex<Option<String>>,
    /// The client's connection has ended.
    gone: AtomicBool,
}

impl Live {
    /// The logged-in target connection, connecting on first use.
    async fn backend<H: SshHooks>(
        &self,
        hooks: &H,
        timeout: Duration,
    ) -> Result<&BackendHandle, BackendError> {
        self.backend
            .get_or_init(|| async {
                let r = backend::connect(&self.grant, hooks, timeout).await;
                if let Err(e) = &r {
                    tracing::warn!(session = %self.grant.id, error = %e, "target login failed");
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
        match self.grant.recorder.record(event) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(session = %self.grant.id, error = %e, "recording failed");
                if let Ok(mut r) = self.end_reason.lock() {
                    r.get_or_insert_with(|| e.to_string());
                }
                false
            }
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

impl<H: SshHooks> ClientHandler<H> {
    async fn login_with_token(&mut self, connection: &str, token: &str) -> Result<(), Refusal> {
        let grant = self
            .hooks
            .open(LoginRequest {
                protocol: ConnectionKind::Ssh,
                connection,
                user: connection,
                token,
                client: self.client,
            })
            .await?;
        self.start(grant);
        Ok(())
    }

    /// Keeps the grant and starts logging in to the target, so a bad target is
    /// reported as soon as the client opens a channel.
    fn start(&mut self, grant: SessionGrant) {
        let live = Arc::new(Live {
            grant,
            backend: OnceCell::new(),
            channels: AtomicUsize::new(0),
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            end_reason: Mutex::new(None),
            gone: AtomicBool::new(false),
        });
        tracing::info!(session = %live.grant.id, "ssh session opened");
        if let Ok(mut slot) = self.slot.live.lock() {
            *slot = Some(live.clone());
        }
        self.slot.filled.notify_one();
        let hooks = self.hooks.clone();
        let timeout = self.config.login_timeout;
        tokio::spawn(async move {
            let _ = live.backend(hooks.as_ref(), timeout).await;
        });
    }
}

impl<H: SshHooks> server::Handler for ClientHandler<H> {
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
            Ok(grant) => {
                self.start(grant);
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
            hooks: self.hooks.clone(),
            handle: session.handle(),
            login_timeout: self.config.login_timeout,
            id: channel.id(),
            answered: AtomicBool::new(false),
        };
        let span =
            tracing::info_span!("channel", session = %live.grant.id, channel = %channel.id());
        tokio::spawn(
            async move {
                let live = task.live.clone();
                task.run(channel).await;
                live.channels.fetch_sub(1, Ordering::SeqCst);
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
        let hooks = self.hooks.clone();
        let timeout = self.config.login_timeout;
        tokio::spawn(forward.run(live, hooks, timeout, channel, reply));
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
            refused_note(
                self.hooks.as_ref(),
                &live,
                "remote_forward",
                json!({"address": address, "port": *port}),
            )
            .await;
        }
        Ok(false)
    }
}

/// Notes a request Warden refuses by design (agent or X11 forwarding, `ssh -R`, other
/// subsystems) as an `ssh.refused` event that names it.
async fn refused_note<H: SshHooks>(
    hooks: &H,
    live: &Live,
    what: &str,
    mut detail: serde_json::Value,
) {
    let decision = Decision::Deny {
        rule: format!("ssh.{what}"),
        reason: format!("{} is not allowed through Warden", what.replace('_', " ")),
    };
    detail["what"] = json!(what);
    record_activity(hooks, live, "ssh.refused", what, detail, Some(decision)).await;
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
struct SessionChannel<H> {
    live: Arc<Live>,
    hooks: Arc<H>,
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

impl<H: SshHooks> SessionChannel<H> {
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
                ChannelMsg::RequestSubsystem { name, .. } => {
                    refused_note(
                        self.hooks.as_ref(),
                        &self.live,
                        "subsystem",
                        json!({"name": name}),
                    )
                    .await;
                }
                ChannelMsg::AgentForward { .. } => {
                    refused_note(
                        self.hooks.as_ref(),
                        &self.live,
                        "agent_forwarding",
                        json!({}),
                    )
                    .await;
                }
                ChannelMsg::RequestX11 { .. } => {
                    refused_note(self.hooks.as_ref(), &self.live, "x11_forwarding", json!({}))
                        .await;
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
        let decision = match &start {
            Start::Shell => Decision::Allow,
            _ => self
                .live
                .grant
                .guard
                .decide(&Action::Shell { command: &command }),
        };
        let (decision, review) = match decision {
            Decision::Review { rule } => self.hold_for_review(&to_client, &command, &rule).await,
            d => (d, None),
        };
        let statement = TimelineEvent::Statement {
            via: via.into(),
            sql: command.clone(),
            decision: decision.clone(),
        };
        let record = StatementRecord {
            session: self.live.grant.id.clone(),
            sql: command.clone(),
            via,
            decision: decision.clone(),
            parameters: None,
            review,
        };
        // Audit before execute: a command that cannot be recorded does not run.
        if let Err(e) = self.hooks.record(record).await {
            tracing::error!(error = %e, "audit write failed; command refused");
            return self
                .refuse(
                    &to_client,
                    UNAVAILABLE_EXIT_STATUS,
                    "the audit log cannot be written; nothing was run",
                )
                .await;
        }
        if !self.live.record(statement) {
            return self
                .refuse(
                    &to_client,
                    UNAVAILABLE_EXIT_STATUS,
                    "the session cannot be recorded; nothing was run",
                )
                .await;
        }
        match &decision {
            Decision::Allow => {}
            Decision::Deny { rule, reason } => {
                let message = format!("denied by rule `{rule}`: {reason}");
                return self.refuse(&to_client, DENIED_EXIT_STATUS, &message).await;
            }
            Decision::Review { rule } => {
                let message = format!("rule `{rule}` requires a review");
                return self.refuse(&to_client, DENIED_EXIT_STATUS, &message).await;
            }
        }
        let backend = match self
            .live
            .backend(self.hooks.as_ref(), self.login_timeout)
            .await
        {
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
                match self.hooks.terminal(&self.live.grant.id, spec) {
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
                hooks: self.hooks.clone(),
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

    /// Holds a command a review rule matched: opens its review, tells the client on
    /// stderr where it is approved, and waits. Returns the decision to apply and
    /// the review that allowed it.
    async fn hold_for_review(
        &self,
        to_client: &russh::ChannelWriteHalf<Msg>,
        command: &str,
        rule: &str,
    ) -> (Decision, Option<String>) {
        let request = ReviewRequest {
            session: &self.live.grant.id,
            command,
            rule,
        };
        match self.hooks.request_review(request).await {
            Ok(ReviewHold::PreApproved { id }) => (Decision::Allow, Some(id)),
            Ok(ReviewHold::Held { id, message }) => {
                // The client waits on its request's answer before showing stderr.
                self.answer().await;
                let line = format!("warden: {message}\r\n");
                let _ = to_client
                    .extended_data_bytes(1, Bytes::from(line.into_bytes()))
                    .await;
                self.live.record(TimelineEvent::Activity {
                    what: "review".into(),
                    detail: json!({"review": id, "message": message}),
                    decision: Some(Decision::Review {
                        rule: rule.to_string(),
                    }),
                });
                let outcome = self.hooks.await_review(&id).await;
                // Approved after the client left: nobody would see it run.
                if self.live.gone.load(Ordering::Relaxed) {
                    return (
                        Decision::Deny {
                            rule: rule.to_string(),
                            reason: "the client left while the command waited for review".into(),
                        },
                        None,
                    );
                }
                let approved = matches!(outcome, ReviewOutcome::Approved { .. });
                (outcome.decision(rule), approved.then_some(id))
            }
            Err(e) => (
                Decision::Deny {
                    rule: rule.to_string(),
                    reason: format!("this command needs a review, which cannot be held: {e}"),
                },
                None,
            ),
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
        let transfers = match watch.lock().ok().as_deref_mut() {
            Some(Watch::Terminal { recorder, .. }) => {
                if let Err(e) = recorder.finish() {
                    tracing::error!(error = %e, "terminal recording not finished");
                }
                Vec::new()
            }
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
            note(self.hooks.as_ref(), &self.live, kind, detail).await;
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

/// An audit event and a timeline line for something a channel did.
async fn note<H: SshHooks>(hooks: &H, live: &Live, kind: &'static str, detail: serde_json::Value) {
    let what = kind.trim_start_matches("ssh.");
    record_activity(hooks, live, kind, what, detail, None).await;
}

/// A timeline line and an audit event (written with the next batch) for one thing
/// a session did.
async fn record_activity<H: SshHooks>(
    hooks: &H,
    live: &Live,
    kind: &'static str,
    what: &str,
    detail: serde_json::Value,
    decision: Option<Decision>,
) {
    live.record(TimelineEvent::Activity {
        what: what.to_string(),
        detail: detail.clone(),
        decision: decision.clone(),
    });
    if let Err(e) = hooks
        .note(&live.grant.id, kind, detail, decision, false)
        .await
    {
        tracing::warn!(error = %e, kind, "could not note");
    }
}

/// How a command ended, as the target said.
#[derive(Default)]
struct ExitSeen {
    status: Option<u32>,
    signal: Option<String>,
}

struct ClientToTarget<H> {
    live: Arc<Live>,
    hooks: Arc<H>,
    watch: Arc<Mutex<Watch>>,
}

impl<H: SshHooks> ClientToTarget<H> {
    async fn run(
        self,
        mut from_client: russh::ChannelReadHalf,
        to_target: russh::ChannelWriteHalf<russh::client::Msg>,
    ) {
        while let Some(msg) = from_client.wait().await {
            match msg {
                ChannelMsg::Data { data } => {
                    self.live
                        .from_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    let (typed, ok) = self.watch_input(&data);
                    for line in typed {
                        note(
                            self.hooks.as_ref(),
                            &self.live,
                            "ssh.command",
                            json!({"command": line, "typed": true}),
                        )
                        .await;
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
                    if let Ok(Watch::Terminal { recorder, .. }) = self.watch.lock().as_deref() {
                        let _ = recorder.resize(col_width, row_height);
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
    fn watch_input(&self, data: &[u8]) -> (Vec<String>, bool) {
        let Ok(mut watch) = self.watch.lock() else {
            return (Vec::new(), false);
        };
        match &mut *watch {
            Watch::Terminal { recorder, typed } => {
                if let Err(e) = recorder.input(data) {
                    tracing::error!(error = %e, "terminal recording failed");
                    return (Vec::new(), false);
                }
                (
                    typed.as_mut().map(|t| t.feed(data)).unwrap_or_default(),
                    true,
                )
            }
            Watch::Sftp(o) => match o.from_client(data) {
                Ok(events) => {
                    drop(watch);
                    for e in events {
                        let (kind, detail) = sftp_detail(e);
                        let hooks = self.hooks.clone();
                        let live = self.live.clone();
                        // Not awaited here: the lock is released and order is kept by
                        // the journal's queue.
                        tokio::spawn(async move {
                            note(hooks.as_ref(), &live, kind, detail).await;
                        });
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
                    if !self.watch_output(&data) {
                        break;
                    }
                    self.live
                        .to_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if to_client.data_bytes(data).await.is_err() {
                        break;
                    }
                }
                ChannelMsg::ExtendedData { data, ext } => {
                    if !self.watch_output(&data) {
                        break;
                    }
                    self.live
                        .to_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
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
    fn watch_output(&self, data: &[u8]) -> bool {
        let Ok(mut watch) = self.watch.lock() else {
            return false;
        };
        match &mut *watch {
            Watch::Terminal { recorder, .. } => match recorder.output(data) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "terminal recording failed");
                    false
                }
            },
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
    async fn run<H: SshHooks>(
        self,
        live: Arc<Live>,
        hooks: Arc<H>,
        timeout: Duration,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
    ) {
        let decision = if live.grant.ssh.port_forwarding {
            Decision::Allow
        } else {
            Decision::Deny {
                rule: "ssh.port_forwarding".into(),
                reason: "port forwarding is not allowed on this connection".into(),
            }
        };
        let detail = json!({"host": self.host, "port": self.port,
                            "originator": format!("{}:{}", self.originator, self.originator_port)});
        live.record(TimelineEvent::Activity {
            what: "forward".into(),
            detail: detail.clone(),
            decision: Some(decision.clone()),
        });
        let recorded = hooks
            .note(
                &live.grant.id,
                "ssh.forward",
                detail,
                Some(decision.clone()),
                true,
            )
            .await;
        if recorded.is_err() || decision != Decision::Allow {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        }
        let opened = match live.backend(hooks.as_ref(), timeout).await {
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
            pump_bytes(from_client, &to_target, &up_live.from_client).await;
        });
        pump_bytes(from_target, &to_client, &live.to_client).await;
        up.abort();
    }
}

/// Relays a byte stream one way (a forwarded port: data and EOF, nothing else),
/// counting it, until either side closes; then closes the other side.
async fn pump_bytes<S>(
    mut from: russh::ChannelReadHalf,
    to: &russh::ChannelWriteHalf<S>,
    counter: &AtomicU64,
) where
    S: From<(ChannelId, ChannelMsg)> + Send + Sync + 'static,
{
    while let Some(msg) = from.wait().await {
        match msg {
            ChannelMsg::Data { data } => {
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
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
