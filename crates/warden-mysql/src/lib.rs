//! MySQL / MariaDB client/server protocol (4.1+, "protocol 41") for Warden's proxy.
//!
//! This crate owns framing ([`packet`]), the connection phase towards clients and
//! servers ([`handshake`], [`auth`], [`login`]), the commands clients send
//! ([`command`]) and the result sets servers answer with ([`resultset`]), including
//! rewriting masked values in text and binary rows. [`proxy`] ties them into a
//! session. Nothing here trusts a length from the network: every packet is bounded,
//! every field is checked, and a bad packet is an error for that one session.

pub mod auth;
pub mod command;
pub mod handshake;
pub mod login;
pub mod packet;
pub mod proxy;
mod register;
pub mod resultset;
mod wire;

pub use register::{MysqlSettings, register};

/// Why a packet could not be decoded. The session that sent it ends with this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MysqlProtocolError {
    #[error("packet of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("packet sequence id {got} where {expected} was expected")]
    Sequence { got: u8, expected: u8 },
    #[error("malformed {what}: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
}

/// Error numbers and SQLSTATEs of the errors the gateway itself sends (server error
/// codes clients already know how to show).
pub mod errno {
    /// ER_DBACCESS_DENIED_ERROR: no such connection for the caller.
    pub const DB_ACCESS_DENIED: (u16, &str) = (1044, "42000");
    /// ER_ACCESS_DENIED_ERROR: bad, expired or missing token.
    pub const ACCESS_DENIED: (u16, &str) = (1045, "28000");
    /// ER_NO_DB_ERROR: the client named no connection.
    pub const NO_DB: (u16, &str) = (1046, "3D000");
    /// ER_CON_COUNT_ERROR: turned away at the door.
    pub const TOO_MANY_CONNECTIONS: (u16, &str) = (1040, "08004");
    /// ER_HANDSHAKE_ERROR.
    pub const HANDSHAKE: (u16, &str) = (1043, "08S01");
    /// ER_UNKNOWN_COM_ERROR: a command the gateway does not relay.
    pub const UNKNOWN_COMMAND: (u16, &str) = (1047, "08S01");
    /// ER_UNKNOWN_CHARACTER_SET: a client character set the gateway refuses.
    pub const UNKNOWN_CHARACTER_SET: (u16, &str) = (1115, "42000");
    /// ER_UNKNOWN_ERROR with a communication SQLSTATE: the gateway cannot go on.
    pub const GATEWAY: (u16, &str) = (1105, "08S01");
    /// ER_NOT_ALLOWED_COMMAND: LOAD DATA LOCAL refused.
    pub const NOT_ALLOWED: (u16, &str) = (1148, "42000");
    /// ER_NET_PACKET_TOO_LARGE.
    pub const PACKET_TOO_LARGE: (u16, &str) = (1153, "08S01");
    /// ER_KILL_DENIED_ERROR: `KILL` of another account's or server's session.
    pub const KILL_DENIED: (u16, &str) = (1095, "HY000");
    /// ER_NET_PACKETS_OUT_OF_ORDER.
    pub const OUT_OF_ORDER: (u16, &str) = (1156, "08S01");
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR: a guardrail denied the statement.
    pub const DENIED: (u16, &str) = (1227, "42000");
    /// ER_NOT_SUPPORTED_YET.
    pub const NOT_SUPPORTED: (u16, &str) = (1235, "42000");
    /// ER_UNKNOWN_STMT_HANDLER.
    pub const UNKNOWN_STATEMENT: (u16, &str) = (1243, "HY000");
    /// ER_NOT_SUPPORTED_AUTH_MODE: the client cannot send its token.
    pub const AUTH_MODE: (u16, &str) = (1251, "08004");
    /// ER_CONNECTION_KILLED: the gateway ended the session (its grant ended).
    pub const KILLED: (u16, &str) = (1927, "70100");
}
