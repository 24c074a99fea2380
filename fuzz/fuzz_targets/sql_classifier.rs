//! Any text, either dialect: the guardrails answer without panicking or hanging.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use warden_core::{Action, Guard, SqlDialect};
use warden_policy::{GuardrailSet, Guardrails, RuleSpec};

fn guard() -> &'static Guardrails {
    static G: OnceLock<Guardrails> = OnceLock::new();
    G.get_or_init(|| {
        let rules = vec![
            RuleSpec { name: "ddl".into(), sql_statements: vec!["ddl".into(), "dcl".into()], ..Default::default() },
            RuleSpec { name: "unbounded".into(), sql_unbounded_writes: true, ..Default::default() },
            RuleSpec { name: "tables".into(), sql_write_tables: vec!["billing.*".into()], ..Default::default() },
            RuleSpec { name: "fns".into(), sql_functions: vec!["pg_*".into()], ..Default::default() },
        ];
        let set = GuardrailSet {
            name: "fuzz".into(),
            description: None,
            unparsable_sql: Default::default(),
            unparsable_shell: Default::default(),
            default_schema: Some("public".into()),
            rules,
        };
        Guardrails::compile(&[set], &[]).unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = guard().decide(&Action::Sql { dialect: SqlDialect::Postgres, text });
        let _ = guard().decide(&Action::Sql { dialect: SqlDialect::Mysql, text });
    }
});
