//! What kinds of targets Warden fronts, and what a connection may be called.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The protocol a connection speaks; decides which proxy serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
    Mysql,
    Ssh,
    Kubernetes,
    Http,
}

impl ConnectionKind {
    pub const ALL: [ConnectionKind; 5] = [
        ConnectionKind::Postgres,
        ConnectionKind::Mysql,
        ConnectionKind::Ssh,
        ConnectionKind::Kubernetes,
        ConnectionKind::Http,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Postgres => "postgres",
            ConnectionKind::Mysql => "mysql",
            ConnectionKind::Ssh => "ssh",
            ConnectionKind::Kubernetes => "kubernetes",
            ConnectionKind::Http => "http",
        }
    }
}

impl fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown connection kind `{s}`"))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConnectionNameError {
    #[error("connection name must be 1 to 63 characters")]
    Length,
    #[error(
        "connection name must start with a lowercase letter or digit and contain only lowercase letters, digits, `-` and `_`"
    )]
    Characters,
}

/// Connection names appear as database names, SSH user names and URL path segments,
/// so they are restricted to a charset that is safe in all of them.
pub fn validate_connection_name(name: &str) -> Result<(), ConnectionNameError> {
    if name.is_empty() || name.len() > 63 {
        return Err(ConnectionNameError::Length);
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(ConnectionNameError::Characters)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_connection_name("prod-db_1").is_ok());
        assert_eq!(
            validate_connection_name(""),
            Err(ConnectionNameError::Length)
        );
        assert_eq!(
            validate_connection_name(&"a".repeat(64)),
            Err(ConnectionNameError::Length)
        );
        for bad in ["-x", "Prod", "a b", "a/b", "a;drop", "é"] {
            assert_eq!(
                validate_connection_name(bad),
                Err(ConnectionNameError::Characters),
                "{bad}"
            );
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in ConnectionKind::ALL {
            assert_eq!(k.as_str().parse::<ConnectionKind>(), Ok(k));
        }
        assert!("redis".parse::<ConnectionKind>().is_err());
    }
}

/// How Warden reaches a target over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS with certificate and host name verification (the default).
    #[default]
    Verify,
    /// TLS without certificate verification: an explicit, audited opt-out.
    Insecure,
}

/// TLS settings for the backend leg of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM bundle of CA certificates to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// Name to verify the certificate against, when it differs from the target host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// Names of the policy sets attached to a connection; the policy engine resolves them.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRefs {
    #[serde(default)]
    pub guardrails: Vec<String>,
    #[serde(default)]
    pub masking: Vec<String>,
    #[serde(default)]
    pub reviews: Vec<String>,
    /// Keep statement and command text verbatim in what Warden stores and sends
    /// (audit events, recordings, reviews, webhooks, SIEM). Off: the `masking` sets
    /// are applied to it first. What reaches the target never changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verbatim_statements: bool,
}

/// SSH settings of a connection (ignored by other kinds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshOptions {
    /// The target's host key as an OpenSSH public key line (`ssh-ed25519 AAAA...`).
    /// A target presenting another key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    /// With no key pinned, pin the first key the target presents (audited). Without
    /// this and without a pinned key, sessions are refused.
    #[serde(default)]
    pub trust_on_first_use: bool,
    /// Whether clients may forward ports through the target (`ssh -L`, direct-tcpip).
    #[serde(default)]
    pub port_forwarding: bool,
}

/// Kubernetes settings of a connection (ignored by other kinds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesOptions {
    /// Act on the cluster as the person: each request carries `Impersonate-User` (the
    /// token's subject) and `Impersonate-Group` (its groups), so the cluster's RBAC and
    /// audit log see who it is. The held credential must be allowed to impersonate.
    #[serde(default)]
    pub impersonate: bool,
    /// Whether `kubectl port-forward` and the pod and service proxies (which open the
    /// cluster's ports to the client) may be used.
    #[serde(default)]
    pub port_forwarding: bool,
    /// Show the values of Secret objects (`data`, `stringData` and the copy kubectl
    /// keeps in the last-applied annotation). Off (the default): they are masked in
    /// every answer.
    #[serde(default)]
    pub reveal_secrets: bool,
}

/// HTTP service settings of a connection (ignored by other kinds).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpOptions {
    /// The request header that carries the held credential. Default `Authorization`:
    /// a token is sent as `Bearer <token>`, a password (with the connection's username)
    /// as HTTP Basic. Any other header name gets the secret as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_header: Option<String>,
}

/// Just-in-time access and review settings of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessOptions {
    /// Users must hold an approved, unexpired access request (a grant) to open a
    /// session; membership of `allowed_groups` only lets them ask for one.
    #[serde(default)]
    pub request_required: bool,
    /// Groups whose members approve access requests and held commands. Empty: the
    /// gateway's admin groups. Nobody approves their own.
    #[serde(default)]
    pub reviewers: Vec<String>,
    /// Approvals from distinct reviewers needed (default 1); one rejection ends it.
    #[serde(default = "default_approvals")]
    pub approvals: u32,
    /// The longest grant a request may ask for, in seconds (default 8 hours).
    #[serde(default = "default_max_duration")]
    pub max_duration_secs: u64,
    /// How long a held command waits for its review, in seconds (default 600).
    #[serde(default = "default_review_timeout")]
    pub review_timeout_secs: u64,
    /// An approved review whose command has not run (its client left, or it was
    /// asked for ahead through the API) lets the identical command run once.
    #[serde(default)]
    pub reuse_approved_reviews: bool,
}

fn default_approvals() -> u32 {
    1
}
fn default_max_duration() -> u64 {
    8 * 3600
}
fn default_review_timeout() -> u64 {
    600
}

impl Default for AccessOptions {
    fn default() -> Self {
        Self {
            request_required: false,
            reviewers: Vec::new(),
            approvals: default_approvals(),
            max_duration_secs: default_max_duration(),
            review_timeout_secs: default_review_timeout(),
            reuse_approved_reviews: false,
        }
    }
}

/// What sort of credential the gateway holds for a connection's backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    Password,
    PrivateKey,
    Token,
}

impl SecretKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::PrivateKey => "private_key",
            SecretKind::Token => "token",
        }
    }
}

impl FromStr for SecretKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            SecretKind::Password,
            SecretKind::PrivateKey,
            SecretKind::Token,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
        .ok_or_else(|| format!("unknown secret kind `{s}`"))
    }
}

/// A registered target. The backend secret is not part of this value: it is sealed in
/// the store and handed only to the proxy that dials the backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Connection {
    pub name: String,
    pub kind: ConnectionKind,
    /// `host:port` for `ssh`; `host:port/database` or `host:port` for `postgres` (the
    /// `postgres` database) and `mysql` (no default database); an `http(s)://` URL for
    /// `kubernetes` and `http`.
    pub target: String,
    pub username: Option<String>,
    /// Which credential the gateway holds, if any; the value itself is write-only.
    pub secret_kind: Option<SecretKind>,
    pub tls: TlsOptions,
    /// Groups whose members may use the connection.
    pub allowed_groups: Vec<String>,
    pub policies: PolicyRefs,
    /// SSH settings; present for every connection, used by `ssh` ones.
    #[serde(default)]
    pub ssh: SshOptions,
    /// Just-in-time access and review settings.
    #[serde(default)]
    pub access: AccessOptions,
    /// Kubernetes settings; present for every connection, used by `kubernetes` ones.
    #[serde(default)]
    pub kubernetes: KubernetesOptions,
    /// HTTP settings; present for every connection, used by `http` ones.
    #[serde(default)]
    pub http: HttpOptions,
    /// The network agent that reaches the target (`warden agent`), or none: the
    /// gateway dials it directly.
    #[serde(default)]
    pub agent: Option<String>,
    pub description: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: time::OffsetDateTime,
}
