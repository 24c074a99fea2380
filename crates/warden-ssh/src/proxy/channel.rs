//! One session channel from request to close: the PTY and environment it asks for,
//! the command (or shell, or SFTP) admitted through the session's pipeline, the
//! channel opened on the target, and what it did recorded at its end.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use russh::server::{self, Msg};
use russh::{Channel, ChannelId, ChannelMsg, Pty};
use serde_json::json;
use uuid::Uuid;
use warden_core::{
    Action, Admission, ClientWatch, Command, Decision, DenialCause, EndReason, TerminalRecorder,
    TerminalSpec, TimelineEvent,
};

use crate::commands::{ScpCommand, TypedLines};
use crate::sftp::{SftpEvent, SftpObserver};

use super::client::{Live, refused_feature};
use super::streams::{ClientToTarget, TargetToClient};
use super::{DENIED_EXIT_STATUS, UNAVAILABLE_EXIT_STATUS};

/// A client's PTY request, replayed to the target.
#[derive(Clone)]
pub(super) struct PtyRequest {
    pub(super) term: String,
    pub(super) width: u32,
    pub(super) height: u32,
    pub(super) pix_width: u32,
    pub(super) pix_height: u32,
    pub(super) modes: Vec<(Pty, u32)>,
}

/// What a session channel was asked to run.
pub(super) enum Start {
    Shell,
    Exec(String),
    Sftp,
}

/// One session channel (shell, command or SFTP) from request to close.
pub(super) struct SessionChannel {
    pub(super) live: Arc<Live>,
    pub(super) handle: server::Handle,
    pub(super) login_timeout: Duration,
    pub(super) id: ChannelId,
    /// The client's request was answered (success) already, while a review held it.
    pub(super) answered: AtomicBool,
}

/// How the bytes of a running channel are watched.
pub(super) enum Watch {
    Terminal {
        recorder: Arc<dyn TerminalRecorder>,
        typed: Option<TypedLines>,
    },
    Sftp(SftpObserver),
    Scp(ScpCommand, u64, u64),
}

impl SessionChannel {
    pub(super) async fn run(self, channel: Channel<Msg>) {
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
        let statement = decided.id;
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
                match self.live.session.terminal(spec).await {
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
        self.finish(&watch, status, statement).await;
    }

    /// Accepts the client's request, once.
    pub(super) async fn answer(&self) {
        if !self.answered.swap(true, Ordering::Relaxed) {
            let _ = self.handle.channel_success(self.id).await;
        }
    }

    /// Ends a channel that will run nothing: the reason on stderr and an exit status.
    pub(super) async fn refuse(
        &self,
        to_client: &russh::ChannelWriteHalf<Msg>,
        status: u32,
        message: &str,
    ) {
        self.answer().await;
        let line = format!("warden: {message}\r\n");
        let _ = to_client
            .extended_data_bytes(1, Bytes::from(line.into_bytes()))
            .await;
        let _ = to_client.exit_status(status).await;
        let _ = to_client.eof().await;
        let _ = to_client.close().await;
    }

    /// Records what a finished channel did; its exit is the outcome of the command
    /// (or shell) audited as `statement`.
    pub(super) async fn finish(&self, watch: &Mutex<Watch>, exit: ExitSeen, statement: Uuid) {
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
            self.live.note(kind, detail).await;
        }
        self.live
            .record_outcome(
                Some(statement),
                TimelineEvent::Exit {
                    channel: u32::from(self.id),
                    status: exit.status,
                    signal: exit.signal,
                },
            )
            .await;
    }
}

/// The audit event for an SFTP observation: `ssh.transfer` for a file's bytes,
/// `ssh.file` for a change to the tree.
pub(super) fn sftp_detail(e: SftpEvent) -> (&'static str, serde_json::Value) {
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
pub(super) struct ChannelClient<'a> {
    pub(super) channel: &'a SessionChannel,
    pub(super) to_client: &'a russh::ChannelWriteHalf<Msg>,
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
pub(super) fn terminal_of(watch: &Mutex<Watch>) -> Option<Arc<dyn TerminalRecorder>> {
    match watch.lock().ok().as_deref() {
        Some(Watch::Terminal { recorder, .. }) => Some(recorder.clone()),
        _ => None,
    }
}

/// How a command ended, as the target said.
#[derive(Default)]
pub(super) struct ExitSeen {
    pub(super) status: Option<u32>,
    pub(super) signal: Option<String>,
}
