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
}

/// One thing a client asks a target to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// A query string: one or more statements.
    Sql { dialect: SqlDialect, text: &'a str },
    /// A command line (SSH exec, or a line typed into a shell).
    Shell { command: &'a str },
    /// An HTTP request (Kubernetes API or an internal web service).
    Http { method: &'a str, path: &'a str },
}

/// Decides actions. Implementations are pure and fast; proxies call them inline.
pub trait Guard: Send + Sync {
    fn decide(&self, action: &Action<'_>) -> Decision;
}

/// A result column as a proxy knows it; `schema` and `table` are absent when the
/// value is computed rather than read from a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRef<'a> {
    pub schema: Option<&'a str>,
    pub table: Option<&'a str>,
    pub column: &'a str,
}

/// Names a column rule a masker resolved for a column, so per-value masking does not
/// repeat name matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnRuleId(pub usize);

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
    /// The whole-value rule for a column, if one applies; resolve once per result set.
    fn column_rule(&self, column: &ColumnRef<'_>) -> Option<ColumnRuleId>;
    /// Masks one text value of a column with `rule` (from [`Masker::column_rule`]).
    fn mask(&self, rule: Option<ColumnRuleId>, value: &[u8]) -> Masked;
    /// Whether this masker can change anything at all (lets proxies skip work).
    fn is_active(&self) -> bool;
}
