//! Who is acting: a person or workload, as proven by a token.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// How an identity proved itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AuthMethod {
    /// A JWT from a configured OpenID Connect issuer.
    Oidc { issuer: String },
    /// A Warden API key (`wdn_<id>_<secret>`), including the bootstrap admin key.
    ApiKey { key_id: String },
    /// An SSH public key the subject registered with a token; it carries the groups
    /// the token had then and expires with the registration.
    SshKey { fingerprint: String },
}

/// An authenticated caller. Groups drive every access decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Identity {
    pub subject: String,
    pub groups: Vec<String>,
    pub method: AuthMethod,
    /// When the credential stops being valid, if it expires.
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

impl Identity {
    /// True when the identity belongs to at least one of `groups`.
    pub fn in_any_group(&self, groups: &[String]) -> bool {
        self.groups.iter().any(|g| groups.contains(g))
    }
}
