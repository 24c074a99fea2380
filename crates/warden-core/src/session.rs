//! A session: one client's use of one connection through one proxy.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Active,
    Closed,
    /// Ended by the gateway: an error, a policy, an expired grant.
    Terminated,
    /// Open when its gateway died; closed at that gateway's next start.
    Interrupted,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Closed => "closed",
            SessionStatus::Terminated => "terminated",
            SessionStatus::Interrupted => "interrupted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(SessionStatus::Active),
            "closed" => Some(SessionStatus::Closed),
            "terminated" => Some(SessionStatus::Terminated),
            "interrupted" => Some(SessionStatus::Interrupted),
            _ => None,
        }
    }
}

/// What the sessions API shows and the proxies fill in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Session {
    pub id: Uuid,
    pub connection: String,
    /// The proxy that served it: `postgres`, `mysql`, `ssh`, ...
    pub protocol: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub client_addr: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<OffsetDateTime>,
    pub status: SessionStatus,
    pub end_reason: Option<String>,
    /// Commands, queries or requests seen.
    pub commands: i64,
    /// Of those, how many policy denied.
    pub denied: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    /// Where the recording is kept, once the proxy writes one.
    pub recording: Option<String>,
}
