//! The session handle: what a protocol proxy holds for one open session. It carries
//! the backend target, the session's guard, masker and recorder, and the gateway's
//! per-session side ([`SessionSink`]); dropping it closes the session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use uuid::Uuid;

use crate::gate::{ReviewHold, ReviewOutcome, SessionEnd, Traffic};
use crate::{
    Action, ColumnPlan, Decision, Guard, HttpOptions, KubernetesOptions, Masked, Masker,
    RecordingError, Secret, SecretKind, SessionRecorder, SshOptions, TerminalRecorder,
    TerminalSpec, TimelineEvent, TlsOptions,
};

use super::{BoxedStream, DialError, Dialer, EndReason};

/// A boxed future, for the object-safe [`SessionSink`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where and as whom the gateway reaches the backend of a session.
pub struct BackendTarget {
    /// `host:port`.
    pub addr: String,
    pub user: String,
    /// The database to log in to; empty when the protocol allows none.
    pub database: String,
    pub secret: Option<Secret<String>>,
    /// What `secret` is: a password, or (SSH) a private key.
    pub secret_kind: Option<SecretKind>,
    /// SSH targets: the host key pin and what clients may do beyond a shell.
    pub ssh: SshOptions,
    /// TLS towards the backend.
    pub tls: TlsOptions,
    /// HTTP and Kubernetes targets: how the credential is sent, and as whom.
    pub http: HttpTarget,
}

/// What an HTTP or Kubernetes proxy needs beyond an address and a credential.
#[derive(Debug, Clone, Default)]
pub struct HttpTarget {
    pub kubernetes: KubernetesOptions,
    pub http: HttpOptions,
    /// Set when the connection acts as the person (Kubernetes impersonation).
    pub impersonate: Option<Impersonation>,
}

/// The person a Kubernetes request is made as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
}

impl BackendTarget {
    /// The host part of `addr` (brackets of an IPv6 literal removed), the name a
    /// backend certificate is checked against unless the connection names one.
    pub fn host(&self) -> &str {
        let addr = self.addr.as_str();
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
            .unwrap_or_else(|| self.host())
    }
}

/// The audit log could not take an event; the action it describes is refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuditError(pub String);

/// One admitted-or-refused action, as the gateway writes it to the audit log.
#[derive(Debug, Clone, Copy)]
pub struct AuditEntry<'a> {
    /// The event's id (the command's: outcomes name it).
    pub id: Uuid,
    pub action: &'a Action<'a>,
    /// The action as text (see [`Action::text`]).
    pub text: &'a str,
    /// How it arrived, in the protocol's words (`Query`, `Bind`, `COM_QUERY`, `exec`).
    pub via: &'static str,
    pub decision: &'a Decision,
    /// For executions of prepared statements: each parameter's byte length.
    pub parameters: Option<&'a [Option<u32>]>,
    /// The approved review that let the action run.
    pub review: Option<&'a str>,
    /// Protocol detail kept with the event (a forward's originator, ...).
    pub detail: Option<&'a serde_json::Value>,
}

/// The gateway's side of one open session. Protocol crates never implement it
/// (test support does); they reach it through [`SessionHandle`].
pub trait SessionSink: Send + Sync {
    /// Durably records an action before it is forwarded.
    fn audit<'a>(&'a self, entry: AuditEntry<'a>) -> BoxFuture<'a, Result<(), AuditError>>;
    /// Records something the session did that needs no decision (a transfer, a
    /// typed line), in order with the session's other events, without waiting.
    fn note(&self, kind: &'static str, payload: serde_json::Value);
    /// Opens a review for an action a guard held, or finds an approved one to reuse.
    fn request_review<'a>(
        &'a self,
        command: &'a str,
        rule: &'a str,
    ) -> BoxFuture<'a, Result<ReviewHold, String>>;
    /// Waits for a held action's review to be decided or to time out.
    fn await_review<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ReviewOutcome>;
    /// The client left while `id` held its action: nothing will run.
    fn abandon_review(&self, id: &str);
    /// Starts the asciicast recording of one terminal of the session.
    fn terminal(
        &self,
        spec: TerminalSpec,
    ) -> BoxFuture<'_, Result<Arc<dyn TerminalRecorder>, RecordingError>>;
    /// Pins the host key an SSH target presented on first use.
    fn pin_host_key<'a>(&'a self, host_key: &'a str) -> BoxFuture<'a, Result<(), String>>;
    /// The session ended (`None`: by the client's choice).
    fn close<'a>(&'a self, reason: Option<&'a EndReason>, traffic: Traffic) -> BoxFuture<'a, ()>;
}

/// An open session. Protocols hold it (in an `Arc` where several tasks share it)
/// and close it with [`SessionHandle::close`]; a handle dropped without that is
/// closed in the background with the last end reason it saw.
pub struct SessionHandle {
    id: Uuid,
    pub target: BackendTarget,
    pub guard: Arc<dyn Guard>,
    pub masker: Arc<dyn Masker>,
    recorder: Arc<dyn SessionRecorder>,
    sink: Arc<dyn SessionSink>,
    dialer: Arc<dyn Dialer>,
    ended: SessionEnd,
    verbatim_statements: bool,
    from_client: AtomicU64,
    to_client: AtomicU64,
    /// The first reason something inside the session gave for ending it.
    end_reason: Mutex<Option<EndReason>>,
    closed: AtomicBool,
}

/// What a handle is built from (by the gateway, or a test's hooks).
pub struct SessionParts {
    pub id: Uuid,
    pub target: BackendTarget,
    pub guard: Arc<dyn Guard>,
    pub masker: Arc<dyn Masker>,
    pub recorder: Arc<dyn SessionRecorder>,
    pub sink: Arc<dyn SessionSink>,
    /// Opens the session's backend connections.
    pub dialer: Arc<dyn Dialer>,
    /// Fires when the gateway ends the session.
    pub ended: SessionEnd,
    /// Statement text is kept as sent (`false`: masked with the session's masker
    /// before it is audited, recorded or held for review).
    pub verbatim_statements: bool,
}

impl SessionHandle {
    pub fn new(parts: SessionParts) -> Self {
        Self {
            id: parts.id,
            target: parts.target,
            guard: parts.guard,
            masker: parts.masker,
            recorder: parts.recorder,
            sink: parts.sink,
            dialer: parts.dialer,
            ended: parts.ended,
            verbatim_statements: parts.verbatim_statements,
            from_client: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            end_reason: Mutex::new(None),
            closed: AtomicBool::new(false),
        }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    /// An action's text as Warden keeps it: masked with the session's masking sets,
    /// unless the connection keeps statements verbatim.
    pub fn recorded_text(&self, text: String) -> String {
        if self.verbatim_statements || !self.masker.is_active() {
            return text;
        }
        match self.masker.mask(ColumnPlan::Detect, text.as_bytes()) {
            Masked::Unchanged => text,
            Masked::Replaced(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Masked::Null => "[masked]".to_string(),
        }
    }

    /// Opens a new connection to the session's backend.
    pub async fn dial(&self) -> Result<BoxedStream, DialError> {
        self.dialer.dial(&self.target.addr).await
    }

    /// The session's dialer, for backend legs opened outside the session (cancels).
    pub fn dialer(&self) -> Arc<dyn Dialer> {
        self.dialer.clone()
    }

    /// The session's timeline.
    pub fn recorder(&self) -> &Arc<dyn SessionRecorder> {
        &self.recorder
    }

    /// A receiver that resolves when the gateway ends the session.
    pub fn ended(&self) -> SessionEnd {
        self.ended.clone()
    }

    /// Writes one timeline entry; a failure is the session's end.
    pub async fn record(&self, event: TimelineEvent) -> Result<(), EndReason> {
        self.recorder
            .record(event)
            .await
            .map_err(|e| self.fail(e.into()))
    }

    /// Writes the outcome (result, error, exit, response) of the action admitted as
    /// `statement` (its [`Command::id`](super::Command)); `None` when the proxy cannot
    /// tell which action it answers. A failure is the session's end.
    pub async fn record_outcome(
        &self,
        statement: Option<Uuid>,
        event: TimelineEvent,
    ) -> Result<(), EndReason> {
        self.recorder
            .record_outcome(statement, event)
            .await
            .map_err(|e| self.fail(e.into()))
    }

    /// Remembers why the session must end (the first reason wins) and returns it.
    pub fn fail(&self, reason: EndReason) -> EndReason {
        if let Ok(mut r) = self.end_reason.lock() {
            r.get_or_insert_with(|| reason.clone());
        }
        reason
    }

    /// The first reason given to [`SessionHandle::fail`], if any.
    pub fn failure(&self) -> Option<EndReason> {
        self.end_reason.lock().ok().and_then(|r| r.clone())
    }

    /// Counts bytes from the client (whole protocol messages).
    pub fn count_in(&self, bytes: u64) {
        self.from_client.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts bytes to the client.
    pub fn count_out(&self, bytes: u64) {
        self.to_client.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Something the session did that needs no decision: a timeline entry and an
    /// audit event of `kind`, in order with the session's other events.
    pub async fn activity(
        &self,
        kind: &'static str,
        detail: serde_json::Value,
    ) -> Result<(), EndReason> {
        let what = kind.rsplit('.').next().unwrap_or(kind);
        // The audit event is queued first: its order with the session's other
        // events does not depend on how long the recording takes.
        self.sink.note(kind, detail.clone());
        self.record(TimelineEvent::Activity {
            what: what.to_string(),
            detail,
            decision: None,
        })
        .await
    }

    /// Starts recording one terminal; an error refuses the channel.
    pub async fn terminal(
        &self,
        spec: TerminalSpec,
    ) -> Result<Arc<dyn TerminalRecorder>, EndReason> {
        self.sink.terminal(spec).await.map_err(EndReason::from)
    }

    /// Pins the host key an SSH target presented on first use.
    pub async fn pin_host_key(&self, host_key: &str) -> Result<(), String> {
        self.sink.pin_host_key(host_key).await
    }

    pub(super) fn sink(&self) -> &dyn SessionSink {
        self.sink.as_ref()
    }

    fn traffic(&self) -> Traffic {
        Traffic {
            from_client: self.from_client.load(Ordering::Relaxed),
            to_client: self.to_client.load(Ordering::Relaxed),
        }
    }

    /// Closes the session: recorded as ended for `reason` (`None`: the client
    /// quit), or for the reason the session failed with, if one came first.
    pub async fn close(&self, reason: Option<EndReason>) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let reason = self.failure().or(reason);
        self.sink.close(reason.as_ref(), self.traffic()).await;
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        let sink = self.sink.clone();
        let traffic = self.traffic();
        let reason = self
            .failure()
            .unwrap_or_else(|| EndReason::Internal("the proxy dropped the session".into()));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { sink.close(Some(&reason), traffic).await });
            }
            // Without a runtime the close cannot run.
            Err(_) => {
                tracing::error!(session = %self.id, "session dropped outside a runtime; not closed")
            }
        }
    }
}
