//! The contract between a protocol proxy and the gateway at login: the proxy decodes
//! a login and asks the gateway to open a session; the gateway answers with a
//! [`SessionHandle`] (what the session may reach, under which policies, and the
//! admission path every action goes through). Protocol crates implement none of this
//! and store nothing; the gateway implements it once for every protocol.

use std::future::Future;
use std::net::SocketAddr;

use crate::pipeline::SessionHandle;
use crate::{ConnectionKind, Decision, Secret};

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

/// What the gateway did with a review request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReviewHold {
    /// An approved, unused review of the identical command exists: run it now.
    PreApproved { id: String },
    /// A review is open; the client is shown `message` (where to approve) while
    /// the admission path waits for its decision.
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

/// Bytes a session moved, counted in whole protocol messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub from_client: u64,
    pub to_client: u64,
}

/// What a proxy needs from the gateway: sessions opened for a client's login. Everything
/// after that goes through the [`SessionHandle`] the gateway answers with.
pub trait SessionHooks: Send + Sync + 'static {
    /// Checks the token and the client's access to the named connection.
    fn open(
        &self,
        login: LoginRequest<'_>,
    ) -> impl Future<Output = Result<SessionHandle, Refusal>> + Send;
    /// Opens a session for an SSH client that proved a registered public key.
    fn open_with_key(
        &self,
        login: KeyLogin<'_>,
    ) -> impl Future<Output = Result<SessionHandle, Refusal>> + Send {
        let _ = login;
        std::future::ready(Err(Refusal {
            kind: RefusalKind::BadCredentials,
            message: "this gateway accepts no keys".into(),
        }))
    }
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
