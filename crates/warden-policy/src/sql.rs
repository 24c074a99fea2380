//! SQL classification on a real parser (sqlparser), never on keywords.
//!
//! [`analyze`] parses a query string (any number of statements) and reports, for every
//! statement *including nested ones* (data-modifying CTEs, `PREPARE ... AS`, `EXPLAIN`
//! targets, `COPY (query)`), what kind it is, which tables it writes, whether a
//! DELETE/UPDATE has no WHERE clause, and every function it calls. Comments, casing,
//! quoting and MySQL executable comments (`/*! ... */`) are the parser's business;
//! anything it cannot parse is an error, which the guardrails treat as "deny" unless a
//! policy says otherwise.

use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    ContextModifier, Expr, FromTable, ObjectName, ObjectType, Query, Set, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, visit_expressions, visit_statements,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

use crate::reading::{parse_readings, read_differently, sets_client_encoding, sets_sql_mode};

pub use warden_core::SqlDialect;

/// What a statement does, at the granularity rules are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SqlKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// `COPY ... TO STDOUT` (a read).
    CopyTo,
    /// `COPY ... FROM STDIN` (a write).
    CopyFrom,
    /// `COPY ... TO/FROM PROGRAM`: runs a command on the database host.
    CopyProgram,
    /// `COPY ... TO/FROM 'file'`: reads or writes a file on the database host.
    CopyFile,
    Create,
    Alter,
    Drop,
    Truncate,
    Comment,
    Grant,
    Revoke,
    CreateRole,
    AlterRole,
    DropRole,
    Call,
    Execute,
    Prepare,
    SetRole,
    SetSessionAuthorization,
    /// `SET search_path`, `SET schema`, MySQL `USE`: changes where unqualified names resolve.
    SetSearchPath,
    /// Other session settings.
    Set,
    /// Server-wide settings: MySQL `SET GLOBAL`, `SET @@global.x`, `SET PERSIST`.
    SetGlobal,
    /// PostgreSQL `ALTER SYSTEM`: server settings written to its configuration.
    AlterSystem,
    /// PostgreSQL `DO`: an anonymous code block.
    Do,
    Transaction,
    /// Cursor and session housekeeping: FETCH, CLOSE, DEALLOCATE, DISCARD, DECLARE.
    Session,
    Show,
    Explain,
    Lock,
    /// VACUUM, ANALYZE, OPTIMIZE, REFRESH MATERIALIZED VIEW.
    Maintenance,
    LoadData,
    Listen,
    Notify,
    /// Anything else the parser knows; treated as a write.
    Other,
}

impl SqlKind {
    /// Kinds that neither change data, schema, privileges nor identity.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            SqlKind::Select
                | SqlKind::CopyTo
                | SqlKind::Set
                | SqlKind::Transaction
                | SqlKind::Session
                | SqlKind::Show
                | SqlKind::Explain
                | SqlKind::Listen
        )
    }

    /// Whether a rule naming `rule` covers this kind (`drop` covers `drop_role`, ...).
    pub fn covered_by(self, rule: SqlKind) -> bool {
        self == rule
            || matches!(
                (self, rule),
                (SqlKind::DropRole, SqlKind::Drop)
                    | (SqlKind::CreateRole, SqlKind::Create)
                    | (SqlKind::AlterRole, SqlKind::Alter)
            )
    }
}

/// Facts about one statement (top-level or nested).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: SqlKind,
    /// Tables (or other relations) the statement writes or changes, lowercased, as
    /// written: `schema.table` or `table`.
    pub writes: Vec<String>,
    /// A DELETE or UPDATE without a WHERE clause.
    pub unbounded: bool,
    /// What it does cannot be checked further (code, server settings): decided like
    /// unparsable SQL unless a rule matches it.
    pub opaque: bool,
}

/// Everything the guardrails need to know about a query string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqlAnalysis {
    pub statements: Vec<StatementFacts>,
    /// Functions called anywhere, lowercased, as written (`pg_read_file`, `pg_catalog.now`).
    pub functions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SQL could not be parsed: {0}")]
pub struct SqlParseError(pub String);

pub(crate) fn dialect(d: SqlDialect) -> Box<dyn Dialect> {
    match d {
        SqlDialect::Postgres => Box::new(PostgreSqlDialect {}),
        SqlDialect::Mysql | SqlDialect::Mariadb => Box::new(MySqlDialect {}),
    }
}

/// Parses `sql` into statements, with a bounded recursion depth. For MariaDB the
/// code in `/*M! ... */` comments is read as code, as MariaDB runs it (MySQL's own
/// `/*! ... */` the parser reads as code for both).
pub(crate) fn parse(d: SqlDialect, sql: &str) -> Result<Vec<Statement>, SqlParseError> {
    let dialect = dialect(d);
    let text = match d {
        SqlDialect::Mariadb => std::borrow::Cow::Owned(mariadb_executable_comments(sql)),
        _ => std::borrow::Cow::Borrowed(sql),
    };
    Parser::new(dialect.as_ref())
        .with_recursion_limit(64)
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| SqlParseError(e.to_string()))
}

/// `/*M!` (with or without a version) becomes `/*!`, which the parser expands. Done
/// everywhere in the text: inside a string it only changes the string's content.
pub(crate) fn mariadb_executable_comments(sql: &str) -> String {
    // Only an upper-case M: MariaDB reads `/*m! ... */` as a plain comment.
    sql.replace("/*M!", "/*!")
}

/// Longest query text analyzed; longer texts are refused rather than parsed slowly.
pub const MAX_SQL_BYTES: usize = 1 << 20;

pub fn analyze(d: SqlDialect, sql: &str) -> Result<SqlAnalysis, SqlParseError> {
    analyze_shaped(d, sql, None).map(|(analysis, _)| analysis)
}

/// [`analyze`], also saying whether every position in `literals` holds a number
/// literal of the syntax tree (so that other digits there would be read alike; see
/// [`crate::shape`]). Texts analyzed without the parser answer `false`.
pub(crate) fn analyze_shaped(
    d: SqlDialect,
    sql: &str,
    literals: Option<&[sqlparser::tokenizer::Location]>,
) -> Result<(SqlAnalysis, bool), SqlParseError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlParseError(format!(
            "query longer than {MAX_SQL_BYTES} bytes"
        )));
    }
    // MySQL reads backslashes as escapes unless NO_BACKSLASH_ESCAPES is set, and
    // setting `sql_mode` is opaque (below); PostgreSQL's reading follows
    // `standard_conforming_strings`, which a session can turn off in many ways:
    // a text whose reading depends on it is refused.
    if d == SqlDialect::Postgres && !crate::forms::reads_the_same(d, sql) {
        return Err(SqlParseError(
            "the text reads differently depending on whether backslashes escape quotes \
             (standard_conforming_strings, NO_BACKSLASH_ESCAPES)"
                .into(),
        ));
    }
    if let Some(why) = read_differently(d, sql) {
        return Err(SqlParseError(format!(
            "the server and the gateway would read this text differently ({why})"
        )));
    }
    if let Some(form) = crate::forms::recognize(d, sql) {
        let analysis = SqlAnalysis {
            statements: vec![StatementFacts {
                kind: form.kind,
                writes: Vec::new(),
                unbounded: false,
                opaque: form.opaque,
            }],
            functions: Vec::new(),
        };
        return Ok((analysis, false));
    }
    if d.is_mysql_family()
        && let Some(load) = mysql_load(sql)
    {
        let analysis = SqlAnalysis {
            statements: vec![load],
            functions: Vec::new(),
        };
        return Ok((analysis, false));
    }
    let mut analysis = SqlAnalysis::default();
    let mut numbers = Vec::new();
    for statements in parse_readings(d, sql)? {
        analyze_statements(
            &statements,
            &mut analysis,
            literals.is_some().then_some(&mut numbers),
        )?;
    }
    numbers.sort_unstable_by_key(|l| (l.line, l.column));
    let all_literal = literals.is_some_and(|l| {
        l.iter().all(|at| {
            numbers
                .binary_search_by_key(&(at.line, at.column), |n| (n.line, n.column))
                .is_ok()
        })
    });
    Ok((analysis, all_literal))
}

/// Adds what `statements` do to `analysis`; collects where number literals start
/// into `numbers` when asked.
fn analyze_statements(
    statements: &Vec<Statement>,
    analysis: &mut SqlAnalysis,
    mut numbers: Option<&mut Vec<sqlparser::tokenizer::Location>>,
) -> Result<(), SqlParseError> {
    // PostgreSQL takes COPY's rows from CopyData messages, never from the query text:
    // what follows `COPY ... FROM STDIN;` in one query, which the parser reads as
    // inline rows, the server runs as more statements once the COPY ends.
    let inline_rows = visit_statements(statements, |s| match s {
        Statement::Copy {
            payload: Some(rows),
            ..
        } if !rows.data.trim().is_empty() => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    });
    if inline_rows.is_break() {
        return Err(SqlParseError(
            "text after COPY ... FROM STDIN in the same query is run by the server as more \
             statements; send the COPY as a query of its own"
                .into(),
        ));
    }
    let _ = visit_statements(statements, |s| {
        analysis.statements.push(facts(s));
        ControlFlow::<()>::Continue(())
    });
    // Functions called as tables (`FROM pg_read_file(...)`, `LATERAL f(...)`) are
    // calls too.
    struct TableFunctions<'a>(&'a mut Vec<String>);
    impl sqlparser::ast::Visitor for TableFunctions<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            match t {
                TableFactor::Table {
                    name,
                    args: Some(_),
                    ..
                }
                | TableFactor::Function { name, .. } => self.0.push(name_of(name)),
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let _ = sqlparser::ast::Visit::visit(statements, &mut TableFunctions(&mut analysis.functions));
    let _ = visit_expressions(statements, |e| {
        match e {
            Expr::Function(f) => {
                let name = name_of(&f.name);
                if name.rsplit('.').next() == Some("set_config") {
                    // Decided like the SET it stands for: by the setting it names, and
                    // opaque when that is the client encoding or cannot be told.
                    let setting = set_config_setting(f);
                    analysis.statements.push(StatementFacts {
                        kind: setting.as_deref().map_or(SqlKind::Set, setting_kind),
                        writes: Vec::new(),
                        unbounded: false,
                        opaque: setting
                            .as_deref()
                            .is_none_or(|s| matches!(s, "client_encoding" | "names")),
                    });
                }
                analysis.functions.push(name);
            }
            Expr::Value(v) => {
                if let (Some(numbers), sqlparser::ast::Value::Number(..)) = (&mut numbers, &v.value)
                {
                    numbers.push(v.span.start);
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(())
}

/// MySQL's `LOAD DATA|XML [LOW_PRIORITY|CONCURRENT] [LOCAL] INFILE 'f' ... INTO TABLE t`,
/// which the parser does not know (it knows Hive's `LOAD DATA INPATH`). Recognized
/// only as a whole, single statement without comments; anything else goes to the
/// parser (and fails closed). `LOCAL` reads a file on the client's machine
/// ([`SqlKind::LoadData`]); without it the server reads one of its own files
/// ([`SqlKind::CopyFile`]).
fn mysql_load(sql: &str) -> Option<StatementFacts> {
    let text = sql.trim();
    let body = text.strip_suffix(';').unwrap_or(text);
    if body.contains([';', '#']) || body.contains("--") || body.contains("/*") {
        return None;
    }
    let words: Vec<String> = body.split_whitespace().map(str::to_lowercase).collect();
    let mut w = words.iter().map(String::as_str).peekable();
    if w.next() != Some("load") || !matches!(w.next(), Some("data" | "xml")) {
        return None;
    }
    if matches!(w.peek(), Some(&("low_priority" | "concurrent"))) {
        w.next();
    }
    let local = w.peek() == Some(&"local");
    if local {
        w.next();
    }
    if w.next() != Some("infile") {
        return None;
    }
    let at = words
        .windows(2)
        .position(|p| p[0] == "into" && p[1] == "table")?;
    let table = words.get(at + 2)?.replace('`', "");
    Some(StatementFacts {
        kind: if local {
            SqlKind::LoadData
        } else {
            SqlKind::CopyFile
        },
        writes: vec![table],
        unbounded: false,
        opaque: false,
    })
}

/// `schema.table`, lowercased, unquoted; function-valued parts become `?`.
pub fn name_of(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| {
            p.as_ident()
                .map_or_else(|| "?".to_string(), |i| i.value.to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn table_of(t: &TableFactor) -> Option<String> {
    match t {
        TableFactor::Table { name, .. } => Some(name_of(name)),
        _ => None,
    }
}

/// Every table factor of FROM items and what is joined to them, nested joins
/// flattened.
fn factors<'a>(items: impl Iterator<Item = &'a TableWithJoins>) -> Vec<&'a TableFactor> {
    fn walk<'a>(t: &'a TableWithJoins, out: &mut Vec<&'a TableFactor>) {
        for f in std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)) {
            match f {
                TableFactor::NestedJoin {
                    table_with_joins, ..
                } => walk(table_with_joins, out),
                _ => out.push(f),
            }
        }
    }
    let mut out = Vec::new();
    for t in items {
        walk(t, &mut out);
    }
    out
}

/// The tables of a FROM item and everything joined to it (nested joins included).
fn tables_in(t: &TableWithJoins) -> Vec<String> {
    factors(std::iter::once(t))
        .into_iter()
        .filter_map(table_of)
        .collect()
}

/// (alias, table) for every aliased table in these FROM items, lowercased.
fn aliases_in<'a>(items: impl Iterator<Item = &'a TableWithJoins>) -> Vec<(String, String)> {
    factors(items)
        .into_iter()
        .filter_map(|f| match f {
            TableFactor::Table {
                name,
                alias: Some(a),
                ..
            } => Some((a.name.value.to_lowercase(), name_of(name))),
            _ => None,
        })
        .collect()
}

/// The setting a `set_config` call names, lowercased, when it is a plain literal.
fn set_config_setting(f: &sqlparser::ast::Function) -> Option<String> {
    use sqlparser::ast::{FunctionArg, FunctionArgExpr, FunctionArguments};
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.first() {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => match &v.value {
            sqlparser::ast::Value::SingleQuotedString(name) if name.is_ascii() => {
                Some(name.trim().to_ascii_lowercase())
            }
            _ => None,
        },
        _ => None,
    }
}

/// Whether any SELECT in the query is `SELECT ... INTO` (which creates a table).
fn selects_into(q: &Query) -> bool {
    fn set_expr(e: &SetExpr) -> bool {
        match e {
            SetExpr::Select(s) => s.into.is_some(),
            SetExpr::Query(q) => selects_into(q),
            SetExpr::SetOperation { left, right, .. } => set_expr(left) || set_expr(right),
            _ => false,
        }
    }
    set_expr(&q.body)
}

fn set_kind(scope: Option<&ContextModifier>, variable: &ObjectName) -> SqlKind {
    let name = name_of(variable);
    // `SET GLOBAL x`, `SET @@global.x` (and MySQL's persisted forms) change the server.
    let server_wide = matches!(scope, Some(ContextModifier::Global))
        || ["@@global.", "@@persist.", "@@persist_only."]
            .iter()
            .any(|p| name.starts_with(p));
    if server_wide {
        return SqlKind::SetGlobal;
    }
    match name.rsplit('.').next().unwrap_or(&name) {
        // MySQL `SET PASSWORD = ...`: the held account's password.
        "password" if variable.0.len() == 1 => SqlKind::AlterRole,
        setting => setting_kind(setting),
    }
}

/// The kind of setting a session setting's name makes a change of.
fn setting_kind(setting: &str) -> SqlKind {
    match setting {
        "role" => SqlKind::SetRole,
        "session_authorization" => SqlKind::SetSessionAuthorization,
        "search_path" | "schema" => SqlKind::SetSearchPath,
        // Settings whose effect reaches past the session's own reads: triggers and
        // foreign keys switched off (PostgreSQL), writes kept from replication (MySQL).
        "session_replication_role" | "sql_log_bin" => SqlKind::SetGlobal,
        _ => SqlKind::Set,
    }
}

/// How a schema-wide change is recorded among written tables: `schema.*`, which
/// `sql_write_tables` matches against every pattern for that schema.
fn schema_wide(schema: &ObjectName) -> String {
    format!("{}.*", name_of(schema))
}

/// The most sensitive kind among several session assignments.
fn strongest(kinds: impl Iterator<Item = SqlKind>) -> SqlKind {
    kinds
        .max_by_key(|k| match k {
            SqlKind::SetGlobal => 5,
            SqlKind::AlterRole => 4,
            SqlKind::SetSessionAuthorization => 3,
            SqlKind::SetRole => 2,
            SqlKind::SetSearchPath => 1,
            _ => 0,
        })
        .unwrap_or(SqlKind::Set)
}

fn facts(s: &Statement) -> StatementFacts {
    let mut writes = Vec::new();
    let mut unbounded = false;
    let kind = match s {
        Statement::Query(q) => {
            if selects_into(q) {
                SqlKind::Create
            } else {
                SqlKind::Select
            }
        }
        Statement::Insert(i) => {
            if let TableObject::TableName(n) = &i.table {
                writes.push(name_of(n));
            }
            SqlKind::Insert
        }
        Statement::Update(u) => {
            // MySQL's multi-table UPDATE sets columns of any joined table: each of
            // them may be written.
            writes.extend(tables_in(&u.table));
            unbounded = u.selection.is_none();
            SqlKind::Update
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
            };
            // The rows deleted are the targets' (MySQL `DELETE t1 FROM ...`, or the
            // FROM list with `USING`), which may name aliases of the tables joined.
            let aliases = aliases_in(from.iter().chain(d.using.iter().flatten()));
            // Aliases are case-sensitive on some servers and not on others: every
            // table an alias could name, in any case, counts.
            let resolve = |name: String| -> Vec<String> {
                let tables: Vec<String> = aliases
                    .iter()
                    .filter(|(alias, _)| alias.eq_ignore_ascii_case(&name))
                    .map(|(_, table)| table.clone())
                    .collect();
                if tables.is_empty() {
                    vec![name]
                } else {
                    tables
                }
            };
            if d.tables.is_empty() {
                if d.using.is_some() {
                    writes.extend(from.iter().flat_map(tables_in).flat_map(resolve));
                } else {
                    writes.extend(from.iter().flat_map(tables_in));
                }
            } else {
                writes.extend(d.tables.iter().map(name_of).flat_map(resolve));
            }
            unbounded = d.selection.is_none();
            SqlKind::Delete
        }
        Statement::Merge(m) => {
            writes.extend(table_of(&m.table));
            SqlKind::Merge
        }
        Statement::Copy {
            source, to, target, ..
        } => {
            use sqlparser::ast::{CopySource, CopyTarget};
            if let (CopySource::Table { table_name, .. }, false) = (source, to) {
                writes.push(name_of(table_name));
            }
            match (target, to) {
                (CopyTarget::Program { .. }, _) => SqlKind::CopyProgram,
                (CopyTarget::File { .. }, _) => SqlKind::CopyFile,
                (_, true) => SqlKind::CopyTo,
                (_, false) => SqlKind::CopyFrom,
            }
        }
        Statement::Truncate(t) => {
            writes.extend(t.table_names.iter().map(|n| name_of(&n.name)));
            SqlKind::Truncate
        }
        Statement::Drop {
            object_type, names, ..
        } => {
            // A schema (a MySQL database) goes with every table in it.
            let whole = matches!(object_type, ObjectType::Schema | ObjectType::Database);
            writes.extend(
                names
                    .iter()
                    .map(|n| if whole { schema_wide(n) } else { name_of(n) }),
            );
            match object_type {
                ObjectType::Role | ObjectType::User | ObjectType::Group => SqlKind::DropRole,
                _ => SqlKind::Drop,
            }
        }
        Statement::DropFunction { .. }
        | Statement::DropDomain { .. }
        | Statement::DropProcedure { .. }
        | Statement::DropSecret { .. }
        | Statement::DropPolicy { .. }
        | Statement::DropRule { .. }
        | Statement::DropConnector { .. }
        | Statement::DropExtension { .. }
        | Statement::DropOperator { .. }
        | Statement::DropOperatorFamily { .. }
        | Statement::DropOperatorClass { .. }
        | Statement::DropTrigger { .. }
        | Statement::DetachDuckDBDatabase { .. } => SqlKind::Drop,
        Statement::CreateTable(c) => {
            writes.push(name_of(&c.name));
            SqlKind::Create
        }
        Statement::CreateView { .. }
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateIndex { .. }
        | Statement::CreateSecret { .. }
        | Statement::CreateServer { .. }
        | Statement::CreateForeignTable { .. }
        | Statement::CreateForeignDataWrapper { .. }
        | Statement::CreateUserMapping { .. }
        | Statement::CreatePolicy { .. }
        | Statement::CreateRule { .. }
        | Statement::CreateConnector { .. }
        | Statement::CreateOperator { .. }
        | Statement::CreateOperatorFamily { .. }
        | Statement::CreateOperatorClass { .. }
        | Statement::CreateTextSearch { .. }
        | Statement::CreateAggregate { .. }
        | Statement::CreateExtension { .. }
        | Statement::CreateCollation { .. }
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction { .. }
        | Statement::CreateTrigger { .. }
        | Statement::CreateProcedure { .. }
        | Statement::CreateMacro { .. }
        | Statement::CreateStage { .. }
        | Statement::CreateFileFormat { .. }
        | Statement::CreateWarehouse { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain { .. }
        | Statement::CreateType { .. }
        | Statement::AttachDatabase { .. }
        | Statement::AttachDuckDBDatabase { .. }
        | Statement::Install { .. } => SqlKind::Create,
        Statement::CreateRole { .. } | Statement::CreateUser { .. } => SqlKind::CreateRole,
        Statement::AlterTable(a) => {
            writes.push(name_of(&a.name));
            SqlKind::Alter
        }
        Statement::AlterSchema(a) => {
            writes.push(schema_wide(&a.name));
            SqlKind::Alter
        }
        Statement::RenameTable(renames) => {
            for r in renames {
                writes.push(name_of(&r.old_name));
                writes.push(name_of(&r.new_name));
            }
            SqlKind::Alter
        }
        Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterFunction { .. }
        | Statement::AlterType { .. }
        | Statement::AlterCollation { .. }
        | Statement::AlterOperator { .. }
        | Statement::AlterOperatorFamily { .. }
        | Statement::AlterOperatorClass { .. }
        | Statement::AlterTextSearch { .. }
        | Statement::AlterPolicy { .. }
        | Statement::AlterTrigger { .. }
        | Statement::AlterConnector { .. }
        | Statement::AlterSession { .. } => SqlKind::Alter,
        Statement::AlterRole { .. } | Statement::AlterUser { .. } => SqlKind::AlterRole,
        Statement::Grant { .. }
        | Statement::GrantRole { .. }
        | Statement::Deny { .. }
        | Statement::AlterDefaultPrivileges { .. } => SqlKind::Grant,
        Statement::Revoke { .. } | Statement::RevokeRole { .. } => SqlKind::Revoke,
        Statement::Comment { .. } => SqlKind::Comment,
        Statement::Call { .. } => SqlKind::Call,
        Statement::Execute { .. } => SqlKind::Execute,
        Statement::Prepare { .. } => SqlKind::Prepare,
        Statement::Set(set) => match set {
            Set::SetRole { .. } => SqlKind::SetRole,
            Set::SetSessionAuthorization(_) => SqlKind::SetSessionAuthorization,
            Set::SingleAssignment {
                scope, variable, ..
            } => set_kind(scope.as_ref(), variable),
            Set::ParenthesizedAssignments { variables, .. } => {
                strongest(variables.iter().map(|v| set_kind(None, v)))
            }
            Set::MultipleAssignments { assignments } => strongest(
                assignments
                    .iter()
                    .map(|a| set_kind(a.scope.as_ref(), &a.name)),
            ),
            _ => SqlKind::Set,
        },
        // RESET undoes a SET: the same kind of change.
        Statement::Reset(r) => {
            use sqlparser::ast::Reset;
            match &r.reset {
                Reset::ALL => SqlKind::SetRole,
                Reset::SessionAuthorization => SqlKind::SetSessionAuthorization,
                Reset::ConfigurationParameter(name) => set_kind(None, name),
            }
        }
        Statement::Use { .. } => SqlKind::SetSearchPath,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => SqlKind::Transaction,
        Statement::Fetch { .. }
        | Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. }
        | Statement::Declare { .. } => SqlKind::Session,
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset { .. }
        | Statement::ShowObjects { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. }
        | Statement::ExplainTable { .. } => SqlKind::Show,
        Statement::Explain { .. } => SqlKind::Explain,
        Statement::Lock { .. } | Statement::LockTables { .. } | Statement::UnlockTables => {
            SqlKind::Lock
        }
        Statement::Analyze { .. }
        | Statement::Vacuum { .. }
        | Statement::OptimizeTable { .. }
        | Statement::RefreshMaterializedView { .. } => SqlKind::Maintenance,
        Statement::LoadData { .. } | Statement::Load { .. } => SqlKind::LoadData,
        Statement::LISTEN { .. } | Statement::UNLISTEN { .. } => SqlKind::Listen,
        Statement::NOTIFY { .. } => SqlKind::Notify,
        _ => SqlKind::Other,
    };
    StatementFacts {
        // Writing `pg_settings` is `SET` by another name.
        opaque: kind == SqlKind::SetGlobal
            // MariaDB's `EXECUTE IMMEDIATE 'sql'` runs text never analyzed (the
            // parser reads it as executing a statement named `immediate`).
            || matches!(s, Statement::Execute { immediate: true, .. })
            || matches!(s, Statement::Execute { name: Some(n), .. } if name_of(n) == "immediate")
            || sets_sql_mode(s)
            || sets_client_encoding(s)
            || writes
                .iter()
                .any(|t| t.rsplit('.').next() == Some("pg_settings")),
        kind,
        writes,
        unbounded,
    }
}

/// The databases `USE` statements in `sql` switch to (MySQL), unquoted as the
/// server reads them. A text that does not parse is an error: the caller fails
/// closed.
pub fn used_databases(d: SqlDialect, sql: &str) -> Result<Vec<String>, SqlParseError> {
    let readings = parse_readings(d, sql)?;
    let mut names = Vec::new();
    let _ = visit_statements(&readings, |s| {
        if let Statement::Use(u) = s {
            use sqlparser::ast::Use;
            let name = match u {
                Use::Catalog(n)
                | Use::Schema(n)
                | Use::Database(n)
                | Use::Warehouse(n)
                | Use::Role(n)
                | Use::Object(n) => {
                    n.0.iter()
                        .map(|p| p.to_string().trim_matches('`').replace("``", "`"))
                        .collect::<Vec<_>>()
                        .join(".")
                }
                Use::SecondaryRoles(_) | Use::Default => String::new(),
            };
            names.push(name);
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(d: SqlDialect, sql: &str) -> Vec<SqlKind> {
        analyze(d, sql)
            .map(|a| a.statements.iter().map(|s| s.kind).collect())
            .unwrap_or_default()
    }

    #[test]
    fn classifies_common_statements() {
        let pg = SqlDialect::Postgres;
        assert_eq!(kinds(pg, "select 1"), [SqlKind::Select]);
        assert_eq!(kinds(pg, "DROP SCHEMA s CASCADE"), [SqlKind::Drop]);
        assert_eq!(kinds(pg, "drop role bob"), [SqlKind::DropRole]);
        assert_eq!(kinds(pg, "SET ROLE admin"), [SqlKind::SetRole]);
        assert_eq!(kinds(pg, "SET role = 'admin'"), [SqlKind::SetRole]);
        assert_eq!(
            kinds(pg, "SET SESSION AUTHORIZATION bob"),
            [SqlKind::SetSessionAuthorization]
        );
        assert_eq!(kinds(pg, "COPY t TO PROGRAM 'sh'"), [SqlKind::CopyProgram]);
        assert_eq!(kinds(pg, "COPY t TO STDOUT"), [SqlKind::CopyTo]);
        assert_eq!(kinds(pg, "COPY t FROM STDIN"), [SqlKind::CopyFrom]);
        // The client encoding set by other names than SET is opaque too.
        let opaque = |d, sql: &str| {
            analyze(d, sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .statements
                .iter()
                .any(|s| s.opaque)
        };
        for sql in [
            "UPDATE pg_settings SET setting = 'SJIS' WHERE name = 'client_encoding'",
            "UPDATE pg_catalog.pg_settings SET setting = 'x'",
            "SELECT set_config('client_encoding', 'SJIS', false)",
            "SELECT set_config(lower('CLIENT_ENCODING'), 'SJIS', false)",
            "SELECT pg_catalog.set_config($1, $2, false)",
            "SET client_encoding = 'SJIS'",
            "SET NAMES 'BIG5'",
        ] {
            assert!(opaque(pg, sql), "{sql}");
        }
        for sql in [
            "SELECT set_config('application_name', 'report', false)",
            "SET client_encoding = 'UTF8'",
            "SET NAMES 'latin1'",
            "UPDATE settings SET v = 1 WHERE k = 2",
        ] {
            assert!(!opaque(pg, sql), "{sql}");
        }
        // As clients send it (psql adds the semicolon, scripts a line end); nothing
        // may follow it in the same query.
        for text in [
            "COPY t FROM STDIN;",
            "COPY t FROM STDIN;\n",
            "copy t (a, b) from stdin with (format csv) ;  \n\t",
            "COPY t FROM STDIN; ",
        ] {
            assert_eq!(kinds(pg, text), [SqlKind::CopyFrom], "{text:?}");
        }
        for text in [
            "COPY t FROM STDIN;\nDROP TABLE users",
            "COPY t FROM STDIN;\n1\t2\n",
        ] {
            assert!(analyze(pg, text).is_err(), "{text:?}");
        }
        assert_eq!(kinds(pg, "SELECT * INTO newt FROM t"), [SqlKind::Create]);
        let a = analyze(pg, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d")
            .unwrap_or_default();
        assert!(
            a.statements
                .iter()
                .any(|s| s.kind == SqlKind::Delete && s.unbounded),
            "{a:?}"
        );
        let a = analyze(pg, "update public.Users set x = 1").unwrap_or_default();
        assert_eq!(a.statements[0].writes, ["public.users"]);
        assert!(a.statements[0].unbounded);
        let a = analyze(pg, "select pg_read_file('/etc/passwd')").unwrap_or_default();
        assert_eq!(a.functions, ["pg_read_file"]);
        assert!(analyze(pg, "DROP TABLE").is_err());
    }

    #[test]
    fn mysql_load_data_is_classified_whole_or_not_at_all() {
        let my = SqlDialect::Mysql;
        let a = analyze(
            my,
            "LOAD DATA LOCAL INFILE '/tmp/x.csv' INTO TABLE `Shop`.t (a, b);",
        )
        .unwrap_or_default();
        assert_eq!(a.statements[0].kind, SqlKind::LoadData);
        assert_eq!(a.statements[0].writes, ["shop.t"]);
        assert_eq!(
            kinds(
                my,
                "load data low_priority infile '/etc/passwd' into table t"
            ),
            [SqlKind::CopyFile]
        );
        assert_eq!(
            kinds(my, "LOAD XML LOCAL INFILE 'x.xml' INTO TABLE t"),
            [SqlKind::LoadData]
        );
        // Anything around it goes to the parser, which refuses it.
        assert!(analyze(my, "LOAD DATA LOCAL INFILE 'x' INTO TABLE t; DROP TABLE t").is_err());
        assert!(analyze(my, "LOAD DATA LOCAL INFILE 'x' INTO TABLE t -- c").is_err());
        assert!(analyze(my, "LOAD DATA LOCAL INFILE 'x'").is_err());
        // Not MySQL: the PostgreSQL dialect has no such statement.
        assert!(
            analyze(
                SqlDialect::Postgres,
                "LOAD DATA LOCAL INFILE 'x' INTO TABLE t"
            )
            .is_err()
        );
    }
}
