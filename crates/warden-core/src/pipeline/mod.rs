//! The one session pipeline every protocol uses: the session handle (what a proxy
//! holds for an open session), the admission path (guard → review → audit →
//! recording, in that order) and typed end reasons.

mod admit;
mod dial;
mod end;
mod handle;

pub use admit::{Admission, ClientWatch, Command, Denial, DenialCause, Unwatched};
pub use dial::{BoxedStream, ByteStream, DialError, Dialer};
pub use end::EndReason;
pub use handle::{
    AuditEntry, AuditError, BackendTarget, BoxFuture, HttpTarget, Impersonation, SessionHandle,
    SessionParts, SessionSink,
};
#[cfg(test)]
mod tests;
