//! Audit events and the decisions they record.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Identity;

/// The outcome of asking policy about an action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny { rule: String, reason: String },
    Review { rule: String },
}

/// The part of an identity that an event records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventIdentity {
    pub subject: String,
    pub groups: Vec<String>,
}

impl From<&Identity> for EventIdentity {
    fn from(id: &Identity) -> Self {
        Self {
            subject: id.subject.clone(),
            groups: id.groups.clone(),
        }
    }
}

/// One thing that happened, as written to the audit log. `kind` is a dotted name such
/// as `auth.failure`, `connection.create` or `pg.query`; `payload` holds kind-specific
/// detail and must never contain a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Event {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub time: OffsetDateTime,
    pub session_id: Option<Uuid>,
    pub identity: Option<EventIdentity>,
    pub connection: Option<String>,
    pub kind: String,
    pub decision: Option<Decision>,
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

impl Event {
    /// A new event happening now, with a time-ordered id.
    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            time: crate::timefmt::now(),
            session_id: None,
            identity: None,
            connection: None,
            kind: kind.into(),
            decision: None,
            payload,
        }
    }

    pub fn by(mut self, identity: &Identity) -> Self {
        self.identity = Some(identity.into());
        self
    }

    pub fn on_connection(mut self, name: impl Into<String>) -> Self {
        self.connection = Some(name.into());
        self
    }

    pub fn in_session(mut self, id: Uuid) -> Self {
        self.session_id = Some(id);
        self
    }

    pub fn with_decision(mut self, decision: Decision) -> Self {
        self.decision = Some(decision);
        self
    }
}
