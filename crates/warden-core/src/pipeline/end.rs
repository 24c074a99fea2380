//! Why a session ended, typed, so each protocol picks its own error code (SQLSTATE,
//! MySQL errno, SSH disconnect) from the variant and never from message text.

/// Why a session ended when it did not end by the client's choice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndReason {
    /// The client went away without saying goodbye.
    #[error("client disconnected")]
    ClientGone,
    /// The gateway ended the session: its access grant ended or was revoked, its
    /// identity was revoked or expired. The text names which.
    #[error("{0}")]
    Ended(String),
    /// The session's recording could not be written: nothing more may run.
    #[error("{0}")]
    Recording(String),
    /// The client broke its protocol.
    #[error("client sent a bad message: {0}")]
    ClientProtocol(String),
    /// The client asked for something the session refuses by ending (a decision of
    /// the guard, already audited).
    #[error("{0}")]
    Refused(String),
    /// The backend connection failed or closed.
    #[error("{0}")]
    BackendGone(String),
    /// The backend broke its protocol.
    #[error("database sent a bad message: {0}")]
    BackendProtocol(String),
    /// A result cannot be masked: the session ends rather than pass a value unmasked.
    #[error("{0}")]
    Unmaskable(String),
    /// The proxy lost track of the session (answers no longer match requests).
    #[error("{0}")]
    Internal(String),
}

impl EndReason {
    /// Short stable name, for logs and the session row.
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::ClientGone => "client_gone",
            EndReason::Ended(_) => "ended",
            EndReason::Recording(_) => "recording",
            EndReason::ClientProtocol(_) => "client_protocol",
            EndReason::Refused(_) => "refused",
            EndReason::BackendGone(_) => "backend_gone",
            EndReason::BackendProtocol(_) => "backend_protocol",
            EndReason::Unmaskable(_) => "unmaskable",
            EndReason::Internal(_) => "internal",
        }
    }
}

impl From<crate::RecordingError> for EndReason {
    fn from(e: crate::RecordingError) -> Self {
        EndReason::Recording(e.to_string())
    }
}
