//! The contract between a protocol proxy and the gateway: the proxy decodes a login
//! and asks the gateway to open a session; the gateway answers with what the session
//! may reach and under which policies, and records each statement before the proxy
//! forwards it. Protocol crates implement none of this and store nothing; the gateway
//! implements it once for every protocol.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::{
    ConnectionKind, Decision, Guard, Masker, RecordingError, Secret, SecretKind, SessionRecorder,
    SshOptions, TerminalRecorder, TerminalSpec, TlsOptions,
};

/// A client's login as a proxy decoded it.
#[derive(Debug, Clone, Copy)]
pub struct LoginRequest<'a> {
    pub protocol: ConnectionKind,
    /// The Warden connection the client named.
    pub connection: &'a str,
    /// The user name the client sent (kept for the audit log; access is by token).
    pub user: &'a str,
    /// The client's token: an OIDC JWT or a Warden API key.
    pub token: &'a str,
    pub client: SocketAddr,
}

/// A client that arrives through an authenticated tunnel (`warden connect`): the
/// tunnel names the connection and carries the token, so the client itself sends no
/// credential. The proxy still opens the session through [`SessionHooks::open`].
#[derive(Debug, Clone)]
pub struct TunnelLogin {
    pub connection: String,
    pub token: Secret<String>,
}

/// Why a login was refused; each proxy maps it to its protocol's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The token is missing, malformed, expired or unknown.
    BadCredentials,
    /// No such connection of this protocol for the caller's groups.
    NoAccess,
    /// The connection's policies cannot be applied: no session without them.
    PolicyUnusable,
    /// The gateway cannot serve the session right now (store, recording, credential).
    Unavailable,
}

/// A refused login, with the message the client sees (never a secret).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

/// What the gateway resolved for an authenticated client.
pub struct SessionGrant {
    /// The gateway's id for this session; passed back in records.
    pub id: String,
    /// `host:port` of the database.
    pub backend_addr: String,
    pub backend_user: String,
    /// The database to log in to; empty when the protocol allows none.
    pub backend_database: String,
    pub secret: Option<Secret<String>>,
    /// What `secret` is: a password, or (SSH) a private key.
    pub secret_kind: Option<SecretKind>,
    /// SSH targets: the host key pin and what clients may do beyond a shell.
    pub ssh: SshOptions,
    /// TLS towards the database.
    pub tls: TlsOptions,
    pub guard: Arc<dyn Guard>,
    pub masker: Arc<dyn Masker>,
    /// The session's timeline; a write that fails ends the session.
    pub recorder: Arc<dyn SessionRecorder>,
    /// Fires when the gateway ends the session (its access grant ended or was
    /// revoked); the proxy tells the client why in its protocol and closes.
    pub ended: SessionEnd,
}

/// The proxy's side of a session the gateway may end: resolves with the reason.
#[derive(Debug, Clone)]
pub struct SessionEnd(tokio::sync::watch::Receiver<Option<String>>);

/// The gateway's side: ends the session once, with a reason the client sees.
#[derive(Debug)]
pub struct SessionEnder(tokio::sync::watch::Sender<Option<String>>);

impl SessionEnd {
    /// A linked pair.
    pub fn pair() -> (SessionEnder, SessionEnd) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (SessionEnder(tx), SessionEnd(rx))
    }

    /// A session nothing ends from outside.
    pub fn never() -> SessionEnd {
        Self::pair().1
    }

    /// Waits until the session is ended and returns why; pends forever when the
    /// gateway's side is gone without ending it.
    pub async fn wait(&mut self) -> String {
        loop {
            if let Some(reason) = self.0.borrow_and_update().clone() {
                return reason;
            }
            if self.0.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Why the session was ended, if it was.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }
}

impl SessionEnder {
    /// Ends the session (the first reason wins).
    pub fn end(&self, reason: &str) {
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(reason.to_string());
            true
        });
    }
}

/// A command a guard held for review, as the proxy asks for its review.
#[derive(Debug, Clone, Copy)]
pub struct ReviewRequest<'a> {
    pub session: &'a str,
    /// The statement or command line, as audited.
    pub command: &'a str,
    /// The review rule that matched.
    pub rule: &'a str,
}

/// What the gateway did with a review request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewHold {
    /// An approved, unused review of the identical command exists: run it now.
    PreApproved { id: String },
    /// A review is open; the proxy shows `message` to the client (where to approve)
    /// and waits with [`SessionHooks::await_review`].
    Held { id: String, message: String },
}

/// How a held command's review ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewOutcome {
    Approved {
        id: String,
    },
    Rejected {
        id: String,
        reason: String,
    },
    /// Nobody decided before the review's timeout (or the gateway lost it).
    Expired {
        id: String,
        reason: String,
    },
}

impl ReviewOutcome {
    /// The decision a proxy applies: `Allow`, or a denial naming the review.
    pub fn decision(&self, rule: &str) -> Decision {
        match self {
            ReviewOutcome::Approved { .. } => Decision::Allow,
            ReviewOutcome::Rejected { reason, .. } | ReviewOutcome::Expired { reason, .. } => {
                Decision::Deny {
                    rule: rule.to_string(),
                    reason: reason.clone(),
                }
            }
        }
    }
}

impl SessionGrant {
    /// The host part of `backend_addr` (brackets of an IPv6 literal removed), the
    /// name a backend certificate is checked against unless the connection names one.
    pub fn backend_host(&self) -> &str {
        let addr = self.backend_addr.as_str();
        addr.rsplit_once(':')
            .map_or(addr, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
    }

    /// The server name to verify the backend's certificate against.
    pub fn tls_server_name(&self) -> &str {
        self.tls
            .server_name
            .as_deref()
            .unwrap_or_else(|| self.backend_host())
    }
}

/// A statement the proxy saw, for the audit log and the recording.
#[derive(Debug, Clone)]
pub struct StatementRecord {
    pub session: String,
    pub sql: String,
    /// How the statement arrived, in the protocol's words (`Query`, `Bind`,
    /// `COM_QUERY`, `COM_STMT_EXECUTE`, ...).
    pub via: &'static str,
    pub decision: Decision,
    /// For executions of prepared statements: the byte length of each parameter
    /// (`None`: NULL). The values themselves are not recorded.
    pub parameters: Option<Vec<Option<u32>>>,
    /// The approved review that let the statement run, when one was needed.
    pub review: Option<String>,
}

/// Bytes a session moved, counted in whole protocol messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub from_client: u64,
    pub to_client: u64,
}

/// What a proxy needs from the gateway.
pub trait SessionHooks: Send + Sync + 'static {
    /// Checks the token and the client's access to the named connection.
    fn open(
        &self,
        login: LoginRequest<'_>,
    ) -> impl Future<Output = Result<SessionGrant, Refusal>> + Send;
    /// Durably records a statement before it is forwarded; an error denies it.
    fn record(&self, record: StatementRecord) -> impl Future<Output = Result<(), String>> + Send;
    /// Opens a review for a command a guard held (or finds an approved one to
    /// reuse). An error means it cannot be held: the proxy denies the command.
    fn request_review(
        &self,
        request: ReviewRequest<'_>,
    ) -> impl Future<Output = Result<ReviewHold, String>> + Send {
        let _ = request;
        std::future::ready(Err("this gateway holds no reviews".to_string()))
    }
    /// Waits for a held command's review to be decided or to time out.
    fn await_review(&self, id: &str) -> impl Future<Output = ReviewOutcome> + Send {
        std::future::ready(ReviewOutcome::Expired {
            id: id.to_string(),
            reason: "this gateway holds no reviews".to_string(),
        })
    }
    /// The session ended (client quit, or `reason` says why not).
    fn closed(
        &self,
        session: &str,
        reason: Option<String>,
        traffic: Traffic,
    ) -> impl Future<Output = ()> + Send;
}

/// A client's SSH public-key login: the key's signature is already verified.
#[derive(Debug, Clone, Copy)]
pub struct KeyLogin<'a> {
    pub connection: &'a str,
    pub user: &'a str,
    /// The key as an OpenSSH public key line.
    pub public_key: &'a str,
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: &'a str,
    pub client: SocketAddr,
}

/// The SSH target of a session, for pinning its host key.
#[derive(Debug, Clone, Copy)]
pub struct SshTarget<'a> {
    pub session: &'a str,
    /// The host key the target presented, as an OpenSSH public key line.
    pub host_key: &'a str,
}

/// What the SSH proxy needs beyond [`SessionHooks`].
pub trait SshHooks: SessionHooks {
    /// Opens a session for a client that proved a registered public key.
    fn open_with_key(
        &self,
        login: KeyLogin<'_>,
    ) -> impl Future<Output = Result<SessionGrant, Refusal>> + Send;
    /// Pins the host key a target presented on first use (the connection allows it
    /// and has none); an error refuses the session.
    fn pin_host_key(
        &self,
        target: SshTarget<'_>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Records something a session did that is not a statement: a transfer, a
    /// forwarded port, a typed command, a channel refused. `kind` is the event kind
    /// (`ssh.transfer`, ...); `durable` makes the call wait until it is on disk.
    fn note(
        &self,
        session: &str,
        kind: &'static str,
        payload: serde_json::Value,
        decision: Option<Decision>,
        durable: bool,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Starts the asciicast recording of one terminal of a session (and notes it in
    /// the session's timeline); an error refuses the channel.
    fn terminal(
        &self,
        session: &str,
        spec: TerminalSpec,
    ) -> Result<Arc<dyn TerminalRecorder>, RecordingError>;
}
