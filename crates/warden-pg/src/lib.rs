//! PostgreSQL wire protocol (version 3.0) for Warden's proxy.
//!
//! This crate owns framing and the messages the proxy must understand; everything it
//! does not need to interpret is kept as the exact bytes received so it can be
//! forwarded unchanged. [`frontend`] decodes what clients send, [`results`] decodes
//! what servers send and rewrites masked rows, [`backend`] encodes what the gateway
//! itself answers. Decoding never trusts a length from the network:
//! every frame is bounded, every field is checked, and a bad frame is an error for
//! that one session.

pub mod backend;
mod capture;
mod catalog;
pub mod copy;
pub mod frontend;
pub mod login;
mod prepared;
pub mod proxy;
mod record;
mod register;
mod requests;
pub mod results;
pub mod tls;
mod wire;

pub use register::{PgSettings, register};

pub use frontend::{Frame, FrontendDecoder, PgFrontendMessage, PgStartup};
pub use results::{BackendDecoder, FieldDescription, PgBackendMessage};

/// Why a frame could not be decoded. The session that sent it ends with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgProtocolError {
    #[error("message length {0} is invalid")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("unknown message type {0:?}")]
    UnknownMessage(char),
    #[error("malformed {message}: {detail}")]
    Malformed {
        message: &'static str,
        detail: &'static str,
    },
}

/// SQLSTATE codes the gateway uses in its own errors.
pub mod sqlstate {
    /// insufficient_privilege: a guardrail denied the statement.
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// invalid_authorization_specification: bad or missing token.
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// invalid_password.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// protocol_violation.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// invalid_catalog_name: the named connection does not exist (or is not allowed).
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// connection_failure: the backend could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// system_error: the gateway itself cannot go on with the session.
    pub const SYSTEM_ERROR: &str = "58000";
    /// The session was ended by the gateway (its access grant ended or was revoked).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// too_many_connections: turned away at the door.
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    /// A notice that is only information (where a held statement is approved).
    pub const WARNING: &str = "01000";
}
