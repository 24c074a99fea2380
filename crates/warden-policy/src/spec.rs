//! Policy sets as users write them (TOML in the config file, JSON through the API),
//! and their validation. [`crate::Guardrails`] and [`crate::MaskingEngine`] are
//! compiled from these.

use serde::{Deserialize, Serialize};

use crate::masking::{ColumnPattern, Detector, MaskStyle};
use crate::sql::SqlKind;

/// What to do when an action cannot be evaluated (SQL that does not parse, a shell
/// command whose program is computed at run time, an undecodable HTTP path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    #[default]
    Deny,
    Review,
    /// Let it through; it is still audited like every action.
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    #[default]
    Deny,
    Review,
}

/// A named set of guardrail (or review) rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardrailSet {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// SQL that does not parse (default `deny`).
    #[serde(default)]
    pub unparsable_sql: Fallback,
    /// Shell commands that cannot be read statically (default `deny`).
    #[serde(default)]
    pub unparsable_shell: Fallback,
    /// Schema that unqualified table names belong to, for `sql_write_tables`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_schema: Option<String>,
    pub rules: Vec<RuleSpec>,
}

/// One rule: a name, what happens when it matches, and exactly one matcher.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub action: RuleAction,
    /// Shown to the client when the rule denies; a default is generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Statement kinds (`drop`, `truncate`, `set_role`, ...) or groups (`ddl`, `dcl`, `dml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql_statements: Vec<String>,
    /// DELETE or UPDATE without WHERE.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sql_unbounded_writes: bool,
    /// Writes (DML and DDL) to tables matching these globs: `billing.*`, `*.payments`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql_write_tables: Vec<String>,
    /// Anything but reads.
    #[serde(default, skip_serializing_if = "is_false")]
    pub sql_read_only: bool,
    /// Calls of functions matching these globs: `pg_read_file`, `lo_*`, `dblink*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sql_functions: Vec<String>,
    /// Command patterns: `rm -rf /`, `shutdown`, `curl | sh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell: Vec<String>,
    /// Request patterns: `DELETE /api/v1/namespaces/*`, `* /admin/**`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<String>,
    /// Kubernetes request patterns: `delete namespaces`, `create pods/exec in prod`,
    /// `get,list,watch secrets named db-*` (see [`crate::kube`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kubernetes: Vec<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A named set of masking rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaskingSet {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Built-in content detectors to run on every value.
    #[serde(default)]
    pub detectors: Vec<Detector>,
    /// Style for detector matches: `full` (default), `partial:N`, `hash`, `null`.
    #[serde(default = "default_style")]
    pub style: String,
    #[serde(default)]
    pub custom: Vec<CustomDetector>,
    #[serde(default)]
    pub columns: Vec<ColumnRule>,
}

fn default_style() -> String {
    "full".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomDetector {
    pub name: String,
    pub regex: String,
    /// Defaults to the set's style.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
}

/// Masks every value of matching columns, whatever it looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ColumnRule {
    /// `column`, `table.column` or `schema.table.column`, globs: `*.ssn`, `*password*`.
    pub pattern: String,
    /// Defaults to `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<String>,
}

/// All policy sets of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    #[serde(default)]
    pub guardrails: Vec<GuardrailSet>,
    #[serde(default)]
    pub masking: Vec<MaskingSet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy `{set}`: {message}")]
pub struct PolicyError {
    pub set: String,
    pub message: String,
}

pub(crate) fn valid_name(name: &str) -> bool {
    // `.` and `..` would be path steps in a URL (`/api/policies/guardrails/..`).
    !name.is_empty()
        && !name.chars().all(|c| c == '.')
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Resolves a kind or group name from `sql_statements`.
pub fn sql_kinds(name: &str) -> Result<Vec<SqlKind>, String> {
    use SqlKind::*;
    Ok(match name {
        "ddl" => vec![Create, Alter, Drop, Truncate, Comment],
        "dcl" => vec![
            Grant,
            Revoke,
            CreateRole,
            AlterRole,
            DropRole,
            SetRole,
            SetSessionAuthorization,
        ],
        "dml" => vec![Insert, Update, Delete, Merge, CopyFrom, LoadData],
        // What changes the server itself rather than the session or the data.
        "server" => vec![SetGlobal, AlterSystem],
        other => vec![
            serde_json::from_value::<SqlKind>(serde_json::Value::String(other.to_string()))
                .map_err(|_| format!("unknown SQL statement kind `{other}`"))?,
        ],
    })
}

impl GuardrailSet {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |m: String| PolicyError {
            set: self.name.clone(),
            message: m,
        };
        if !valid_name(&self.name) {
            return Err(err(
                "name must be 1-64 letters, digits, `-`, `_` or `.`".into()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.rules {
            if !valid_name(&r.name) {
                return Err(err(format!(
                    "rule name `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
                    r.name
                )));
            }
            if !seen.insert(&r.name) {
                return Err(err(format!("rule `{}` is defined twice", r.name)));
            }
            let matchers = [
                !r.sql_statements.is_empty(),
                r.sql_unbounded_writes,
                !r.sql_write_tables.is_empty(),
                r.sql_read_only,
                !r.sql_functions.is_empty(),
                !r.shell.is_empty(),
                !r.http.is_empty(),
                !r.kubernetes.is_empty(),
            ];
            if matchers.iter().filter(|m| **m).count() != 1 {
                return Err(err(format!(
                    "rule `{}` must have exactly one matcher (sql_statements, sql_unbounded_writes, sql_write_tables, sql_read_only, sql_functions, shell, http or kubernetes)",
                    r.name
                )));
            }
        }
        Ok(())
    }
}

impl MaskingSet {
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |m: String| PolicyError {
            set: self.name.clone(),
            message: m,
        };
        if !valid_name(&self.name) {
            return Err(err(
                "name must be 1-64 letters, digits, `-`, `_` or `.`".into()
            ));
        }
        self.style.parse::<MaskStyle>().map_err(err)?;
        for c in &self.custom {
            if let Some(s) = &c.style {
                s.parse::<MaskStyle>().map_err(err)?;
            }
            if !valid_name(&c.name) {
                return Err(err(format!(
                    "custom detector name `{}` is not valid",
                    c.name
                )));
            }
        }
        for c in &self.columns {
            ColumnPattern::parse(&c.pattern).map_err(err)?;
            if let Some(s) = &c.style {
                s.parse::<MaskStyle>().map_err(err)?;
            }
        }
        // Compiling proves the regexes are valid and within size limits.
        crate::MaskingEngine::from_sets(std::slice::from_ref(self), b"validation").map(|_| ())
    }
}
