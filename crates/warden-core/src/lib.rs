//! Domain types shared by every Warden crate.
//!
//! This crate owns the vocabulary of the system — who is acting ([`Identity`]), on what
//! ([`ConnectionKind`], connection names), what was decided ([`Decision`]) and what is
//! written to the audit log ([`Event`]) and to session recordings ([`TimelineEvent`]) — plus [`Secret`], the wrapper that keeps
//! credentials out of logs and serialized output. It knows nothing about storage or
//! wire protocols.

pub mod ablation;
mod action;
mod connection;
mod event;
pub mod event_json;
pub mod gate;
mod identity;
mod pipeline;
pub mod recording;
mod secret;
mod session;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod timefmt;

pub use action::{
    Action, ColumnPlan, ColumnRef, ColumnRuleId, Guard, KubeRequest, Masked, Masker, SqlDialect,
    ValueKind,
};
pub use connection::{
    AccessOptions, Connection, ConnectionKind, ConnectionNameError, HttpOptions, KubernetesOptions,
    PolicyRefs, SecretKind, SshOptions, TlsMode, TlsOptions, validate_connection_name,
};
pub use event::{Decision, Event, EventIdentity};
pub use gate::{
    KeyLogin, LoginRequest, Refusal, RefusalKind, ReviewHold, ReviewOutcome, SessionEnd,
    SessionEnder, SessionHooks, Traffic, TunnelLogin,
};
pub use identity::{AuthMethod, Identity};
pub use pipeline::{
    Admission, AuditEntry, AuditError, BackendTarget, BoxFuture, BoxedStream, ByteStream,
    ClientWatch, Command, Denial, DenialCause, DialError, Dialer, EndReason, HttpTarget,
    Impersonation, SessionHandle, SessionParts, SessionSink, Unwatched,
};
pub use recording::{
    NoRecording, RecordingError, RecordingHeader, SessionRecorder, TerminalRecorder, TerminalSpec,
    TimelineEntry, TimelineEvent,
};
pub use secret::{REDACTED, Secret};
pub use session::{Session, SessionStatus};
