//! The relay of an open PostgreSQL session: the client side and the server side
//! (each in its own module) run until either ends or the gateway ends the session;
//! then the client is told why, with a SQLSTATE chosen from the typed end reason.

use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use uuid::Uuid;
use warden_core::EndReason;
use warden_net::Batched;

use super::{ProxyConfig, ProxySession, client_side, server_side};
use crate::backend::{self as out, PgNotice};
use crate::prepared::PreparedStatements;
use crate::requests::{Expect, Requests};
use crate::sqlstate;
use crate::tls::BoxedStream;

/// Why a session ends when answers can no longer be matched to requests: masking
/// rows with the wrong columns must not follow.
pub(super) const LOST_TRACK: &str =
    "the gateway lost track of the client's requests; the session was ended";

/// A denied statement replaced by a failing stand-in: what its error says.
pub(super) struct Denied {
    pub(super) code: &'static str,
    pub(super) rule: String,
    pub(super) reason: String,
    /// Its audit event, which the error is the outcome of.
    pub(super) statement: Uuid,
}

/// Marker → the denial its stand-in's error is replaced with.
pub(super) type Denials = Arc<Mutex<HashMap<String, Denied>>>;

pub(super) fn denied_message(rule: &str, reason: &str) -> String {
    format!("Warden denied this statement: {reason} (rule {rule})")
}

pub(super) async fn relay(
    client: BoxedStream,
    server: BoxedStream,
    client_buf: BytesMut,
    session: ProxySession,
    config: ProxyConfig,
) -> Option<EndReason> {
    let handle = session.handle.clone();
    let (client_rd, client_wr) = tokio::io::split(client);
    let (server_rd, server_wr) = tokio::io::split(server);
    let mut client_out = Batched::new(client_wr);
    let denials: Denials = Arc::default();
    // What the client asked, in order, so each answer can be matched to its request.
    let expected: Arc<Mutex<Requests>> = Arc::default();
    // Messages the proxy itself sends the client between the server's (a held
    // statement's notice); the answering side writes them at a message boundary.
    let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    // Which SQL each prepared statement name runs, for the audit events of its
    // executions; the answering side confirms what the server took.
    let prepared: Arc<Mutex<PreparedStatements>> = Arc::default();
    let answered = Arc::new(tokio::sync::Notify::new());
    let mut ended = handle.ended();
    let client_side = client_side::run(client_side::ClientSide {
        rd: client_rd,
        buf: client_buf,
        server_out: Batched::new(server_wr),
        expected: expected.clone(),
        session: handle.clone(),
        notices,
        denials: denials.clone(),
        prepared: prepared.clone(),
        answered: answered.clone(),
        max_message: config.max_message,
    });
    let server_side = server_side::run(server_side::ServerSide {
        rd: server_rd,
        client_out: &mut client_out,
        notices: notices_rx,
        expected,
        session: &session,
        denials,
        prepared,
        answered,
        max_message: config.max_message,
    });
    // Either side ending ends the session.
    let reason = tokio::select! {
        r = client_side => r,
        r = server_side => r,
        r = ended.wait() => Some(EndReason::Ended(r)),
    };
    let reason = handle.failure().or(reason);
    if let Some(why) = reason.as_ref().filter(|r| **r != EndReason::ClientGone) {
        let code = match why {
            EndReason::Ended(_) => sqlstate::ADMIN_SHUTDOWN,
            EndReason::ClientProtocol(_) | EndReason::Refused(_) => sqlstate::PROTOCOL_VIOLATION,
            EndReason::BackendGone(_) | EndReason::BackendProtocol(_) => {
                sqlstate::CONNECTION_FAILURE
            }
            EndReason::Unmaskable(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
            EndReason::ClientGone | EndReason::Recording(_) | EndReason::Internal(_) => {
                sqlstate::SYSTEM_ERROR
            }
        };
        let mut b = BytesMut::new();
        out::error_response(
            &mut b,
            &PgNotice {
                severity: "FATAL",
                code,
                message: &why.to_string(),
                detail: None,
                hint: None,
            },
        );
        let _ = client_out.send(&b).await;
        let _ = client_out.flush().await;
    }
    reason
}

/// Locks state shared by the two directions (a panic in one would end both).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes the first request of the current cycle that `want` accepts.
pub(super) fn take<T>(
    requests: &Mutex<Requests>,
    want: impl Fn(&Expect) -> Option<T>,
) -> Option<T> {
    requests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take(want)
}

/// Where the server's answers stand: when the last statement's answer ended, and
/// the simple query being answered (its later statements have no request of their
/// own).
pub(super) struct Answering {
    last_done: Instant,
    query: Option<Uuid>,
}

impl Answering {
    pub(super) fn new() -> Self {
        Self {
            last_done: Instant::now(),
            query: None,
        }
    }

    /// A statement's answer ended (`error`: with an `ErrorResponse`): how long it
    /// took from its request (or, for the later statements of one simple query, from
    /// the previous answer), and the audit event of the statement it answers, when
    /// known. An error answers the earliest request not yet answered, which may be a
    /// `Parse`, `Bind` or `Describe` rather than an `Execute`: then it names nothing
    /// (the `Execute`s after it are skipped, and dropped with the cycle).
    pub(super) fn finished(
        &mut self,
        requests: &Mutex<Requests>,
        error: bool,
    ) -> (Option<u64>, Option<Uuid>) {
        let execute = |e: &Expect| match e {
            Expect::Execute(at, portal, statement) => Some((*at, portal.is_none(), *statement)),
            _ => None,
        };
        let taken = if error {
            lock(requests).take_first_if(execute)
        } else {
            take(requests, execute)
        };
        let (since, statement) = match taken {
            Some((at, simple, statement)) => {
                if simple {
                    self.query = statement;
                }
                (at, statement)
            }
            None => (self.last_done, self.query),
        };
        let now = Instant::now();
        self.last_done = now;
        let duration = u64::try_from(now.saturating_duration_since(since).as_micros()).ok();
        (duration, statement)
    }

    /// `ReadyForQuery`: the simple query, if any, is answered.
    pub(super) fn cycle_ended(&mut self) {
        self.query = None;
    }
}
