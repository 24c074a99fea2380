//! Guardrail evaluation: compiled rule sets that implement [`Guard`].
//!
//! Every rule of every attached set is checked; the first matching `deny` rule (in
//! set order, then rule order) decides, else the first `review` rule, else the action
//! is allowed. When an action cannot be evaluated, each set that has rules for that
//! kind of action applies its fallback, and the strictest fallback wins.

use std::collections::HashMap;
use std::sync::Mutex;
use warden_core::{Action, Decision, Guard, SqlDialect};

use crate::glob;
use crate::http::{HttpPattern, normalize_path};
use crate::kube::KubePattern;
use crate::shape;
use crate::shell::{self, Pipeline, SimpleCommand, expand_args};
use crate::spec::{Fallback, GuardrailSet, PolicyError, RuleAction, sql_kinds};
use crate::sql::{self, SqlAnalysis, SqlKind};

#[derive(Debug)]
enum Matcher {
    SqlKinds(Vec<SqlKind>),
    SqlUnbounded,
    SqlWriteTables(Vec<String>),
    SqlReadOnly,
    SqlFunctions(Vec<String>),
    Shell(Vec<ShellPattern>),
    Http(Vec<(String, HttpPattern)>),
    Kube(Vec<(String, KubePattern)>),
}

impl Matcher {
    fn domain(&self) -> Domain {
        match self {
            Matcher::Shell(_) => Domain::Shell,
            Matcher::Http(_) => Domain::Http,
            Matcher::Kube(_) => Domain::Kube,
            _ => Domain::Sql,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Domain {
    Sql,
    Shell,
    Http,
    Kube,
}

#[derive(Debug)]
struct ShellSegment {
    program: String,
    args: Vec<String>,
}

/// `rm -rf /` or `curl | sh`: segments that must appear in order in one pipeline.
#[derive(Debug)]
struct ShellPattern {
    text: String,
    segments: Vec<ShellSegment>,
}

impl ShellPattern {
    fn parse(text: &str) -> Result<Self, String> {
        let mut segments = Vec::new();
        for seg in text.split('|') {
            let mut words = seg.split_whitespace();
            let program = words
                .next()
                .ok_or_else(|| format!("shell pattern `{text}` has an empty segment"))?;
            let args: Vec<String> = words.map(String::from).collect();
            segments.push(ShellSegment {
                program: program.rsplit('/').next().unwrap_or(program).to_string(),
                args: expand_args(&args)
                    .into_iter()
                    .filter(|a| {
                        !(a.len() > 2
                            && a.starts_with('-')
                            && !a.starts_with("--")
                            && args.contains(a))
                    })
                    .collect(),
            });
        }
        Ok(Self {
            text: text.to_string(),
            segments,
        })
    }

    fn segment_matches(seg: &ShellSegment, cmd: &SimpleCommand, expanded: &[String]) -> bool {
        glob::matches(&seg.program, &cmd.program)
            && seg
                .args
                .iter()
                .all(|p| expanded.iter().any(|a| glob::matches(p, a)))
    }

    fn matches(&self, pipeline: &Pipeline) -> bool {
        let expanded: Vec<Vec<String>> = pipeline.iter().map(|c| expand_args(&c.args)).collect();
        let mut at = 0;
        for seg in &self.segments {
            match (at..pipeline.len())
                .find(|i| Self::segment_matches(seg, &pipeline[*i], &expanded[*i]))
            {
                Some(i) => at = i + 1,
                None => return false,
            }
        }
        true
    }
}

#[derive(Debug)]
struct Rule {
    id: String,
    action: RuleAction,
    reason: Option<String>,
    matcher: Matcher,
}

#[derive(Debug)]
struct CompiledSet {
    name: String,
    unparsable_sql: Fallback,
    unparsable_shell: Fallback,
    default_schema: Option<String>,
    rules: Vec<Rule>,
}

impl CompiledSet {
    fn has(&self, d: Domain) -> bool {
        self.rules.iter().any(|r| r.matcher.domain() == d)
    }
}

/// Compiled guardrail and review sets for one connection.
#[derive(Debug, Default)]
pub struct Guardrails {
    sets: Vec<CompiledSet>,
    /// Decisions on SQL by statement shape ([`crate::shape`]). It lives and dies with
    /// these compiled sets: a policy change compiles new ones, with an empty cache.
    decisions: Mutex<DecisionCache>,
}

#[derive(Debug, Default)]
struct DecisionCache {
    by_shape: HashMap<String, Decision>,
    /// Bytes of the keys held.
    bytes: usize,
}

/// Shapes whose decisions a session's guardrails keep at most, and their total
/// bytes: a full cache starts over, so memory stays bounded per session whatever
/// the client sends.
pub const DECISION_CACHE_ENTRIES: usize = 1024;
pub const DECISION_CACHE_BYTES: usize = 64 * 1024;

/// A rule that matched, before the precedence between rules is applied.
struct Hit {
    rule: String,
    action: RuleAction,
    reason: String,
}

impl Guardrails {
    /// `guardrails` decide with each rule's own action; every rule of a `reviews`
    /// set holds the action for review instead.
    pub fn compile(
        guardrails: &[GuardrailSet],
        reviews: &[GuardrailSet],
    ) -> Result<Self, PolicyError> {
        let mut sets = Vec::new();
        for (set, force_review) in guardrails
            .iter()
            .map(|s| (s, false))
            .chain(reviews.iter().map(|s| (s, true)))
        {
            set.validate()?;
            let err = |m: String| PolicyError {
                set: set.name.clone(),
                message: m,
            };
            let mut rules = Vec::new();
            for r in &set.rules {
                let matcher = if !r.sql_statements.is_empty() {
                    let mut kinds = Vec::new();
                    for k in &r.sql_statements {
                        kinds.extend(sql_kinds(k).map_err(err)?);
                    }
                    Matcher::SqlKinds(kinds)
                } else if r.sql_unbounded_writes {
                    Matcher::SqlUnbounded
                } else if !r.sql_write_tables.is_empty() {
                    Matcher::SqlWriteTables(
                        r.sql_write_tables
                            .iter()
                            .map(|t| t.to_lowercase())
                            .collect(),
                    )
                } else if r.sql_read_only {
                    Matcher::SqlReadOnly
                } else if !r.sql_functions.is_empty() {
                    Matcher::SqlFunctions(
                        r.sql_functions.iter().map(|f| f.to_lowercase()).collect(),
                    )
                } else if !r.shell.is_empty() {
                    Matcher::Shell(
                        r.shell
                            .iter()
                            .map(|p| ShellPattern::parse(p))
                            .collect::<Result<_, _>>()
                            .map_err(err)?,
                    )
                } else if !r.kubernetes.is_empty() {
                    Matcher::Kube(
                        r.kubernetes
                            .iter()
                            .map(|p| KubePattern::parse(p).map(|c| (p.clone(), c)))
                            .collect::<Result<_, _>>()
                            .map_err(err)?,
                    )
                } else {
                    Matcher::Http(
                        r.http
                            .iter()
                            .map(|p| HttpPattern::parse(p).map(|c| (p.clone(), c)))
                            .collect::<Result<_, _>>()
                            .map_err(err)?,
                    )
                };
                rules.push(Rule {
                    id: format!("{}/{}", set.name, r.name),
                    action: if force_review {
                        RuleAction::Review
                    } else {
                        r.action
                    },
                    reason: r.reason.clone(),
                    matcher,
                });
            }
            sets.push(CompiledSet {
                name: set.name.clone(),
                unparsable_sql: set.unparsable_sql,
                unparsable_shell: set.unparsable_shell,
                default_schema: set.default_schema.as_ref().map(|s| s.to_lowercase()),
                rules,
            });
        }
        Ok(Self {
            sets,
            decisions: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sets.iter().all(|s| s.rules.is_empty())
    }

    /// The strictest fallback among sets with rules for `domain`.
    fn unevaluable(&self, domain: Domain, what: &str, detail: &str) -> Decision {
        let mut review: Option<String> = None;
        for set in self.sets.iter().filter(|s| s.has(domain)) {
            let fallback = match domain {
                Domain::Sql => set.unparsable_sql,
                Domain::Shell | Domain::Http | Domain::Kube => set.unparsable_shell,
            };
            let rule = format!("{}/{what}", set.name);
            match fallback {
                Fallback::Deny => {
                    return Decision::Deny {
                        rule,
                        reason: format!("{detail}; denied because it cannot be checked"),
                    };
                }
                Fallback::Review => review = review.or(Some(rule)),
                Fallback::Allow => {}
            }
        }
        match review {
            Some(rule) => Decision::Review { rule },
            None => Decision::Allow,
        }
    }

    /// Decides SQL, from the decision cache when a text of the same shape was
    /// decided before.
    fn decide_sql(&self, dialect: SqlDialect, text: &str) -> Decision {
        let shape = shape::shape(dialect, text);
        if let Some(s) = &shape
            && let Some(hit) = self.cached(|c| c.by_shape.get(&s.key).cloned())
        {
            return hit;
        }
        let literals = shape.as_ref().map(|s| s.literals.as_slice());
        match sql::analyze_shaped(dialect, text, literals) {
            Ok((analysis, all_literal)) => {
                let decision = self.sql(&analysis);
                if let Some(s) = shape
                    && all_literal
                {
                    self.cached(|c| {
                        if c.by_shape.len() >= DECISION_CACHE_ENTRIES
                            || c.bytes + s.key.len() > DECISION_CACHE_BYTES
                        {
                            *c = DecisionCache::default();
                        }
                        c.bytes += s.key.len();
                        c.by_shape.insert(s.key, decision.clone());
                    });
                }
                decision
            }
            Err(e) => self.unevaluable(Domain::Sql, "unparsable_sql", &e.to_string()),
        }
    }

    fn cached<T>(&self, f: impl FnOnce(&mut DecisionCache) -> T) -> T {
        f(&mut self
            .decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    fn decide_hits(&self, hits: Vec<Hit>) -> Decision {
        if let Some(h) = hits.iter().find(|h| h.action == RuleAction::Deny) {
            return Decision::Deny {
                rule: h.rule.clone(),
                reason: h.reason.clone(),
            };
        }
        match hits.into_iter().next() {
            Some(h) => Decision::Review { rule: h.rule },
            None => Decision::Allow,
        }
    }

    fn sql(&self, analysis: &SqlAnalysis) -> Decision {
        let mut hits = Vec::new();
        for set in &self.sets {
            for rule in &set.rules {
                if let Some(why) = sql_match(&rule.matcher, analysis, set.default_schema.as_deref())
                {
                    hits.push(Hit {
                        rule: rule.id.clone(),
                        action: rule.action,
                        reason: rule.reason.clone().unwrap_or(why),
                    });
                }
            }
        }
        // Code and server settings no rule speaks about are decided like SQL that
        // cannot be parsed: what they do is beyond what rules check.
        if hits.is_empty()
            && let Some(s) = analysis.statements.iter().find(|s| s.opaque)
        {
            return self.unevaluable(
                Domain::Sql,
                "unparsable_sql",
                &format!("what {} does cannot be checked", kind_name(s.kind)),
            );
        }
        self.decide_hits(hits)
    }

    fn shell(&self, pipelines: &[Pipeline]) -> Decision {
        let mut hits = Vec::new();
        for set in &self.sets {
            for rule in &set.rules {
                let Matcher::Shell(patterns) = &rule.matcher else {
                    continue;
                };
                for p in patterns {
                    if let Some(pl) = pipelines.iter().find(|pl| p.matches(pl)) {
                        let programs: Vec<&str> = pl.iter().map(|c| c.program.as_str()).collect();
                        hits.push(Hit {
                            rule: rule.id.clone(),
                            action: rule.action,
                            reason: rule.reason.clone().unwrap_or_else(|| {
                                format!("command `{}` matches `{}`", programs.join(" | "), p.text)
                            }),
                        });
                        break;
                    }
                }
            }
        }
        self.decide_hits(hits)
    }

    fn http(&self, method: &str, path: &[String]) -> Decision {
        let mut hits = Vec::new();
        self.http_hits(method, path, &mut hits);
        self.decide_hits(hits)
    }

    /// Kubernetes requests answer to `kubernetes` rules and to `http` rules on their
    /// method and path alike.
    fn kube(&self, request: &warden_core::KubeRequest) -> Decision {
        let mut hits = Vec::new();
        for set in &self.sets {
            for rule in &set.rules {
                let Matcher::Kube(patterns) = &rule.matcher else {
                    continue;
                };
                if let Some((text, _)) = patterns.iter().find(|(_, p)| p.matches(request)) {
                    hits.push(Hit {
                        rule: rule.id.clone(),
                        action: rule.action,
                        reason: rule
                            .reason
                            .clone()
                            .unwrap_or_else(|| format!("`{}` matches `{text}`", request.text())),
                    });
                }
            }
        }
        if self.sets.iter().any(|s| s.has(Domain::Http)) {
            match normalize_path(&request.path) {
                Ok(p) => self.http_hits(&request.method, &p, &mut hits),
                Err(e) => return self.unevaluable(Domain::Http, "unparsable_path", &e.to_string()),
            }
        }
        self.decide_hits(hits)
    }

    fn http_hits(&self, method: &str, path: &[String], hits: &mut Vec<Hit>) {
        for set in &self.sets {
            for rule in &set.rules {
                let Matcher::Http(patterns) = &rule.matcher else {
                    continue;
                };
                if let Some((text, _)) = patterns.iter().find(|(_, p)| p.matches(method, path)) {
                    hits.push(Hit {
                        rule: rule.id.clone(),
                        action: rule.action,
                        reason: rule.reason.clone().unwrap_or_else(|| {
                            format!(
                                "{} /{} matches `{text}`",
                                method.to_ascii_uppercase(),
                                path.join("/")
                            )
                        }),
                    });
                }
            }
        }
    }
}

fn kind_name(k: SqlKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', " ").to_uppercase()))
        .unwrap_or_else(|| format!("{k:?}"))
}

/// Whether a table name (as written) matches a pattern, qualifying unqualified names
/// with the default schema. Patterns without a schema match the table in any schema.
fn table_matches(pattern: &str, table: &str, default_schema: Option<&str>) -> bool {
    // A whole schema (`billing.*`: dropped, renamed) holds every table a pattern for
    // that schema names, and whatever a pattern without a schema names.
    if let Some(schema) = table.strip_suffix(".*") {
        return match pattern.rsplit_once('.') {
            Some((pattern_schema, _)) => {
                let last = schema.rsplit('.').next().unwrap_or(schema);
                glob::matches(pattern_schema, last) || glob::matches(pattern_schema, schema)
            }
            None => true,
        };
    }
    let qualified = match (table.contains('.'), default_schema) {
        (false, Some(s)) => format!("{s}.{table}"),
        _ => table.to_string(),
    };
    let parts: Vec<&str> = qualified.split('.').collect();
    let last_two = parts[parts.len().saturating_sub(2)..].join(".");
    let last = parts.last().copied().unwrap_or("");
    if pattern.contains('.') {
        glob::matches(pattern, &last_two) || glob::matches(pattern, &qualified)
            // Unqualified with no default schema: the schema is unknown, so fail closed.
            || (!qualified.contains('.') && pattern.rsplit('.').next().is_some_and(|t| glob::matches(t, last)))
    } else {
        glob::matches(pattern, last)
    }
}

fn sql_match(m: &Matcher, a: &SqlAnalysis, default_schema: Option<&str>) -> Option<String> {
    match m {
        Matcher::SqlKinds(kinds) => a
            .statements
            .iter()
            .find(|s| kinds.iter().any(|k| s.kind.covered_by(*k)))
            .map(|s| format!("{} statements are not allowed", kind_name(s.kind))),
        Matcher::SqlUnbounded => a.statements.iter().find(|s| s.unbounded).map(|s| {
            format!(
                "{} without a WHERE clause is not allowed",
                kind_name(s.kind)
            )
        }),
        Matcher::SqlWriteTables(patterns) => {
            for s in &a.statements {
                if s.kind == SqlKind::SetSearchPath {
                    return Some("changing the search path is not allowed where writes to some tables are protected".into());
                }
                // Schema changes that name no table (rules, views, triggers, indexes
                // the parser does not attribute) may touch a protected one.
                if s.writes.is_empty()
                    && matches!(
                        s.kind,
                        SqlKind::Create
                            | SqlKind::Alter
                            | SqlKind::Drop
                            | SqlKind::Comment
                            | SqlKind::Truncate
                            | SqlKind::Other
                    )
                {
                    return Some(format!(
                        "{} statements whose tables Warden cannot name are not allowed where writes to some tables are protected",
                        kind_name(s.kind)
                    ));
                }
                if let Some(t) = s
                    .writes
                    .iter()
                    .find(|t| patterns.iter().any(|p| table_matches(p, t, default_schema)))
                {
                    return Some(format!("{} on `{t}` is not allowed", kind_name(s.kind)));
                }
            }
            None
        }
        Matcher::SqlReadOnly => a
            .statements
            .iter()
            .find(|s| !s.kind.is_read_only())
            .map(|s| {
                format!(
                    "the connection is read-only: {} is not allowed",
                    kind_name(s.kind)
                )
            })
            .or_else(|| {
                a.functions
                    .iter()
                    .find(|f| {
                        let last = f.rsplit('.').next().unwrap_or(f);
                        WRITING_FUNCTIONS.iter().any(|p| glob::matches(p, last))
                    })
                    .map(|f| format!("the connection is read-only: `{f}` changes state"))
            }),
        Matcher::SqlFunctions(patterns) => a
            .functions
            .iter()
            .find(|f| {
                let last = f.rsplit('.').next().unwrap_or(f);
                patterns
                    .iter()
                    .any(|p| glob::matches(p, f) || glob::matches(p, last))
            })
            .map(|f| format!("calling `{f}` is not allowed")),
        Matcher::Shell(_) | Matcher::Http(_) | Matcher::Kube(_) => None,
    }
}

/// Built-in functions known to change data or server state, which a read-only
/// connection refuses even inside a `SELECT` (user-defined functions cannot be told
/// apart: name them in `sql_functions`).
const WRITING_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "lastval",
    "lo_*",
    "pg_notify",
    "pg_advisory_*",
    "pg_try_advisory_*",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_stat_reset*",
    "pg_switch_wal",
    "pg_create_*",
    "pg_drop_*",
    "pg_replication_*",
    "pg_promote",
    "pg_file_*",
    "set_config",
    "dblink*",
    "txid_current",
    "pg_current_xact_id",
    "get_lock",
    "release_lock",
    "release_all_locks",
    "pg_import_system_collations",
    "pg_copy_*",
    "pg_logical_emit_message",
];

impl Guard for Guardrails {
    fn decide(&self, action: &Action<'_>) -> Decision {
        match action {
            Action::Sql { dialect, text } => {
                if !self.sets.iter().any(|s| s.has(Domain::Sql)) {
                    return Decision::Allow;
                }
                self.decide_sql(*dialect, text)
            }
            Action::Shell { command } => {
                if !self.sets.iter().any(|s| s.has(Domain::Shell)) {
                    return Decision::Allow;
                }
                match shell::parse(command) {
                    Ok(p) => {
                        let decision = self.shell(&p);
                        if decision == Decision::Allow
                            && let Some(c) = p.iter().flatten().find(|c| c.dynamic)
                        {
                            return self.unevaluable(
                                Domain::Shell,
                                "unparsable_shell",
                                &format!("the program `{}` is only known at run time", c.program),
                            );
                        }
                        decision
                    }
                    Err(e) => self.unevaluable(Domain::Shell, "unparsable_shell", &e.to_string()),
                }
            }
            Action::Http { method, path } => {
                if !self.sets.iter().any(|s| s.has(Domain::Http)) {
                    return Decision::Allow;
                }
                match normalize_path(path) {
                    Ok(p) => self.http(method, &p),
                    Err(e) => self.unevaluable(Domain::Http, "unparsable_path", &e.to_string()),
                }
            }
            Action::Kube(request) => {
                if !self
                    .sets
                    .iter()
                    .any(|s| s.has(Domain::Kube) || s.has(Domain::Http))
                {
                    return Decision::Allow;
                }
                self.kube(request)
            }
            // Connection settings decide these (see `ConnectionGuard`).
            Action::UseDatabase { .. } | Action::Forward { .. } | Action::Feature { .. } => {
                Decision::Allow
            }
        }
    }
}

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::spec::PolicyConfig;

    fn guard() -> Guardrails {
        let config: PolicyConfig = from_json(
            r#"{"guardrails":[{"name":"g","rules":[{"name":"no-drops","sql_statements":["drop"]}]}]}"#,
        );
        Guardrails::compile(&config.guardrails, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn from_json(json: &str) -> PolicyConfig {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}"))
    }

    fn decide(g: &Guardrails, text: &str) -> Decision {
        g.decide(&Action::Sql {
            dialect: SqlDialect::Postgres,
            text,
        })
    }

    fn entries(g: &Guardrails) -> usize {
        g.cached(|c| c.by_shape.len())
    }

    #[test]
    fn statements_differing_in_numbers_share_one_decision() {
        let g = guard();
        for aid in [1, 48213, 99_999] {
            let text = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};");
            assert_eq!(decide(&g, &text), Decision::Allow);
        }
        assert_eq!(entries(&g), 1);
        // A deny is cached as a deny, for its own shape only.
        assert!(matches!(decide(&g, "DROP TABLE t"), Decision::Deny { .. }));
        assert!(matches!(decide(&g, "DROP TABLE t"), Decision::Deny { .. }));
        assert_eq!(entries(&g), 2);
        // Numbers that are not literal values are not shaped away: nothing cached.
        decide(&g, "CREATE TABLE t (c varchar(10))");
        decide(&g, "SELECT * FROM s.1");
        decide(&g, "SELECT 1 /* comment */");
        assert_eq!(entries(&g), 2);
    }

    #[test]
    fn the_cache_is_bounded() {
        let g = guard();
        for i in 0..DECISION_CACHE_ENTRIES + 10 {
            decide(&g, &format!("SELECT c{i} FROM t"));
        }
        assert!(entries(&g) <= DECISION_CACHE_ENTRIES);
        assert!(entries(&g) > 0);
        let long = "x".repeat(1000);
        for i in 0..200 {
            decide(&g, &format!("SELECT c{i} AS {long} FROM t"));
            assert!(g.cached(|c| c.bytes) <= DECISION_CACHE_BYTES);
        }
    }
}
