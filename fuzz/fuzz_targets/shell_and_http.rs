//! Any text as a command line or an HTTP path: a decision, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use warden_core::{Action, Guard};
use warden_policy::{GuardrailSet, Guardrails, RuleSpec};

fn guard() -> &'static Guardrails {
    static G: OnceLock<Guardrails> = OnceLock::new();
    G.get_or_init(|| {
        let rules = vec![
            RuleSpec { name: "rm".into(), shell: vec!["rm -r -f /".into(), "curl | sh".into()], ..Default::default() },
            RuleSpec { name: "ns".into(), http: vec!["DELETE /api/v1/namespaces/*".into(), "* /admin/**".into()], ..Default::default() },
        ];
        let set = GuardrailSet {
            name: "fuzz".into(),
            description: None,
            unparsable_sql: Default::default(),
            unparsable_shell: Default::default(),
            default_schema: None,
            rules,
        };
        Guardrails::compile(&[set], &[]).unwrap_or_default()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = guard().decide(&Action::Shell { command: text });
        let _ = guard().decide(&Action::Http { method: "DELETE", path: text });
    }
});
