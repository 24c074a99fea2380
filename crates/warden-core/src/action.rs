//! What proxies ask policy about, and the interfaces they ask through.
//!
//! A proxy decodes its protocol into an [`Action`] and asks a [`Guard`] for a
//! [`Decision`]; it hands each result value to a [`Masker`]. Neither interface knows
//! anything about wire formats, and neither may fail open: a guard that cannot
//! evaluate an action answers `Deny` (or `Review`, if configured).

use serde::{Deserialize, Serialize};

use crate::Decision;

/// The SQL dialect of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SqlDialect {
    Postgres,
    Mysql,
    /// MySQL's protocol and grammar, plus what MariaDB alone reads: it runs the code
    /// inside `/*M! ... */` comments, which MySQL ignores.
    Mariadb,
}

impl SqlDialect {
    /// MySQL or MariaDB.
    pub fn is_mysql_family(self) -> bool {
        matches!(self, SqlDialect::Mysql | SqlDialect::Mariadb)
    }
}

/// One thing a client asks a target to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A query string: one or more statements.
    Sql { dialect: SqlDialect, text: &'a str },
    /// A command line (SSH exec, or a line typed into a shell).
    Shell { command: &'a str },
    /// An HTTP request to an internal web service.
    Http { method: &'a str, path: &'a str },
    /// A Kubernetes API request, read the way the API server reads it.
    Kube(&'a KubeRequest),
    /// Switch the session's default database (MySQL `COM_INIT_DB`).
    UseDatabase { name: &'a str },
    /// Open a TCP stream to `host:port` through the target (SSH `direct-tcpip`).
    Forward { host: &'a str, port: u32 },
    /// A protocol feature beyond commands that a proxy must ask about before it
    /// relays it (`agent_forwarding`, `x11_forwarding`, `remote_forward`, `subsystem`,
    /// `function_call`). The guard answers for the connection.
    Feature { name: &'a str },
}

impl Action<'_> {
    /// The action as one line of text: what audit events and recordings show.
    pub fn text(&self) -> String {
        match self {
            Action::Sql { text, .. } => (*text).to_string(),
            Action::Shell { command } => (*command).to_string(),
            Action::Http { method, path } => format!("{method} {path}"),
            Action::Kube(request) => request.text(),
            Action::UseDatabase { name } => format!("USE `{}`", name.replace('`', "``")),
            Action::Forward { host, port } => format!("{host}:{port}"),
            Action::Feature { name } => (*name).to_string(),
        }
    }

    /// Whether the action is a command the target runs (a statement, a command
    /// line, a request), as opposed to a session feature (a forward, a subsystem).
    pub fn is_command(&self) -> bool {
        !matches!(self, Action::Forward { .. } | Action::Feature { .. })
    }
}

/// A Kubernetes API request as the API server reads it (its "request info"): the
/// verb and the resource the server authorizes, decoded by the proxy from the method,
/// path and query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KubeRequest {
    /// The HTTP method as sent (`GET`, `POST`, ...).
    pub method: String,
    /// The request path as the client sent it (without the query); `http` rules
    /// decode it once.
    pub path: String,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`; for a URL that names no resource, the method in lower case.
    pub verb: String,
    /// The API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// Empty for a URL that names no resource (`/version`, `/healthz`, `/apis`).
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl KubeRequest {
    /// `resource[.group][/subresource]`, as rules and people name it.
    pub fn resource_name(&self) -> String {
        let mut out = self.resource.clone();
        if !self.group.is_empty() {
            out.push('.');
            out.push_str(&self.group);
        }
        if !self.subresource.is_empty() {
            out.push('/');
            out.push_str(&self.subresource);
        }
        out
    }

    /// One line for audit events and recordings: `delete deployments.apps web -n prod`,
    /// or `get /version` for a URL that names no resource.
    pub fn text(&self) -> String {
        if self.resource.is_empty() {
            return format!("{} {}", self.verb, self.path);
        }
        let mut out = format!("{} {}", self.verb, self.resource_name());
        if !self.name.is_empty() {
            out.push(' ');
            out.push_str(&self.name);
        }
        if !self.namespace.is_empty() {
            out.push_str(" -n ");
            out.push_str(&self.namespace);
        }
        out
    }
}

/// Decides actions. Implementations are pure and fast; proxies call them inline.
pub trait Guard: Send + Sync {
    fn decide(&self, action: &Action<'_>) -> Decision;
}

/// What a column holds, as far as masking cares. Proxies map their wire types here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// Text, JSON, XML, unknown types: everything is searched.
    #[default]
    Text,
    /// Integers and decimals: a card number or phone can be stored as a number.
    Number,
    /// Bytes: searched as they are (keys and tokens end up in blobs).
    Binary,
    /// Dates, times, intervals: cannot hold what detectors look for.
    Temporal,
    Boolean,
    Uuid,
}

/// A result column as a proxy knows it; `schema` and `table` are absent when the
/// value is computed rather than read from a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRef<'a> {
    pub schema: Option<&'a str>,
    pub table: Option<&'a str>,
    pub column: &'a str,
    pub kind: ValueKind,
}

/// Names a column rule a masker resolved for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRuleId(pub usize);

/// How a column's values are masked, resolved once per result set so per-value
/// masking repeats no name matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnPlan {
    /// A column rule masks every value, whatever it looks like.
    Rule(ColumnRuleId),
    /// Run the content detectors on each value.
    Detect,
    /// The column's type cannot hold anything detectors look for.
    Skip,
}

/// What masking did to one value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// Nothing sensitive: send the value as it is (no allocation was made).
    Unchanged,
    /// Send this instead.
    Replaced(Vec<u8>),
    /// Send SQL NULL instead.
    Null,
}

/// Rewrites sensitive values in results.
pub trait Masker: Send + Sync {
    /// How to mask a column's values; resolve once per result set. Columns the proxy
    /// cannot describe are masked with [`ColumnPlan::Detect`].
    fn plan(&self, column: &ColumnRef<'_>) -> ColumnPlan;
    /// Masks one value (in its text form) according to its column's plan.
    fn mask(&self, plan: ColumnPlan, value: &[u8]) -> Masked;
    /// Whether this masker can change anything at all (lets proxies skip work).
    fn is_active(&self) -> bool;
}
