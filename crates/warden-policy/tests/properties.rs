//! Property tests: generated inputs around the guardrails and detectors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use warden_core::{Action, Decision, Guard, Masked, Masker, SqlDialect};
use warden_policy::{
    Detector, GuardrailSet, Guardrails, MaskStyle, MaskingEngine, MaskingRules, RuleSpec,
};

fn no_ddl() -> Guardrails {
    let set = GuardrailSet {
        name: "p".into(),
        description: None,
        unparsable_sql: Default::default(),
        unparsable_shell: Default::default(),
        default_schema: None,
        rules: vec![
            RuleSpec {
                name: "ddl".into(),
                sql_statements: vec!["ddl".into()],
                ..Default::default()
            },
            RuleSpec {
                name: "rm".into(),
                shell: vec!["rm -r -f /".into()],
                ..Default::default()
            },
        ],
    };
    Guardrails::compile(&[set], &[]).unwrap()
}

fn engine() -> MaskingEngine {
    let rules = MaskingRules {
        detectors: Detector::ALL
            .iter()
            .map(|d| (*d, MaskStyle::Full))
            .collect(),
        custom: vec![],
        columns: vec![],
    };
    MaskingEngine::new(rules, b"k").unwrap()
}

/// Each character of `word` in random case.
fn any_case(word: &'static str) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<bool>(), word.len()).prop_map(move |upper| {
        word.chars()
            .zip(upper)
            .map(|(c, u)| if u { c.to_ascii_uppercase() } else { c })
            .collect()
    })
}

/// Whitespace or a comment: what may separate SQL tokens.
fn gap() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(" ".to_string()),
        Just("\n\t ".to_string()),
        "[a-z ]{0,10}".prop_map(|c| format!(" /*{c}*/ ")),
        "[a-z ]{0,10}".prop_map(|c| format!(" --{c}\n")),
    ]
}

/// A valid card number of 16 digits (Luhn check digit computed).
fn card() -> impl Strategy<Value = String> {
    proptest::collection::vec(0u32..10, 15).prop_map(|mut d| {
        d[0] = 4;
        let sum: u32 = d
            .iter()
            .rev()
            .enumerate()
            .map(|(i, x)| {
                if i % 2 == 0 {
                    if x * 2 > 9 { x * 2 - 9 } else { x * 2 }
                } else {
                    *x
                }
            })
            .sum();
        d.push((10 - sum % 10) % 10);
        d.iter()
            .map(|x| char::from_digit(*x, 10).unwrap_or('0'))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn drop_is_denied_however_it_is_written(
        prefix in prop_oneof![Just(String::new()), Just("SELECT 1;".to_string())],
        drop in any_case("drop"), table in any_case("table"), g1 in gap(), g2 in gap(), g3 in gap(),
        name in prop_oneof![Just("users".to_string()), Just("\"Users\"".to_string()), Just("s.t".to_string())],
    ) {
        let sql = format!("{prefix}{g1}{drop}{g2}{table}{g3}{name}");
        let d = no_ddl().decide(&Action::Sql { dialect: SqlDialect::Postgres, text: &sql });
        prop_assert!(matches!(d, Decision::Deny { .. }), "{sql:?} -> {d:?}");
    }

    #[test]
    fn any_sql_gets_a_decision_without_panicking(sql in "\\PC{0,200}") {
        let _ = no_ddl().decide(&Action::Sql { dialect: SqlDialect::Postgres, text: &sql });
        let _ = no_ddl().decide(&Action::Sql { dialect: SqlDialect::Mysql, text: &sql });
        let _ = no_ddl().decide(&Action::Shell { command: &sql });
        let _ = no_ddl().decide(&Action::Http { method: "GET", path: &sql });
    }

    #[test]
    fn rm_rf_root_is_denied_however_it_is_quoted(
        quoting in proptest::collection::vec(0u8..4, 2),
        flags in prop_oneof![Just("-rf"), Just("-fr"), Just("-r -f"), Just("-f -r"), Just("--recursive --force"), Just("-Rf")],
        root in prop_oneof![Just("/"), Just("//"), Just("/."), Just("'/'"), Just("\"/\"")],
        sep in prop_oneof![Just(" "), Just("  "), Just("\t")],
    ) {
        let q = |c: char, how: u8| match how {
            0 => c.to_string(),
            1 => format!("'{c}'"),
            2 => format!("\"{c}\""),
            _ => format!("\\{c}"),
        };
        let program = format!("{}{}", q('r', quoting[0]), q('m', quoting[1]));
        let cmd = format!("{program}{sep}{flags}{sep}{root}");
        let flags_ok = flags != "-Rf"; // -R is a different flag to the pattern `-r`
        let d = no_ddl().decide(&Action::Shell { command: &cmd });
        if flags_ok {
            prop_assert!(matches!(d, Decision::Deny { .. }), "{cmd:?} -> {d:?}");
        }
    }

    #[test]
    fn valid_cards_in_any_text_are_masked(before in "[a-z ]{0,30}", after in "[a-z ]{0,30}", number in card(), dashes in any::<bool>()) {
        let shown = if dashes {
            number.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("-")
        } else {
            number.clone()
        };
        let value = format!("{before} {shown} {after}");
        match engine().mask(warden_core::ColumnPlan::Detect, value.as_bytes()) {
            Masked::Replaced(out) => {
                let out = String::from_utf8_lossy(&out);
                prop_assert!(!out.contains(&shown), "{value:?} -> {out:?}");
                prop_assert!(out.contains("[redacted:card_number]"), "{value:?} -> {out:?}");
            }
            other => prop_assert!(false, "{value:?} -> {other:?}"),
        }
    }

    #[test]
    fn emails_are_masked(user in "[a-z][a-z0-9._]{0,15}", domain in "[a-z]{1,10}", tld in "[a-z]{2,6}") {
        let value = format!("contact: {user}@{domain}.{tld}.");
        match engine().mask(warden_core::ColumnPlan::Detect, value.as_bytes()) {
            Masked::Replaced(out) => prop_assert!(!String::from_utf8_lossy(&out).contains('@')),
            other => prop_assert!(false, "{value:?} -> {other:?}"),
        }
    }

    #[test]
    fn plain_words_are_left_alone(text in "[a-zA-Z ,.!?]{0,200}") {
        prop_assert_eq!(engine().mask(warden_core::ColumnPlan::Detect, text.as_bytes()), Masked::Unchanged);
    }

    /// The shape prefilter never skips a detector that would have matched.
    #[test]
    fn prefilter_changes_nothing(
        text in proptest::collection::vec(
            prop_oneof![
                "[0-9]{1,5}", "[ .()+:@=_-]", "[A-Z]{1,4}", "[a-z]{1,6}",
                Just("eyJ".to_string()), Just("AIza".to_string()), Just("-----".to_string()), Just("::".to_string()),
                Just("ghp_".to_string()), Just("wdn_".to_string()), Just("xoxb-".to_string()), Just("sk_live_".to_string()),
                Just("Password".to_string()), Just("api_key".to_string()), Just("token ".to_string()), Just("glpat-".to_string()),
                "[0-9a-f]{8,40}",
            ],
            0..24,
        ).prop_map(|parts| parts.concat()),
    ) {
        let e = engine();
        prop_assert_eq!(e.mask(warden_core::ColumnPlan::Detect, text.as_bytes()), e.mask_without_prefilter(text.as_bytes()), "{:?}", text);
    }

    #[test]
    fn any_bytes_get_masked_or_left_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = engine().mask(warden_core::ColumnPlan::Detect, &bytes);
    }
}
