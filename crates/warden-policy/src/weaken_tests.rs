use super::*;
use serde_json::json;

fn connection(value: serde_json::Value) -> Connection {
    let mut base = json!({
        "name": "prod", "kind": "postgres", "target": "db:5432", "username": "app",
        "allowed_groups": ["dev"], "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "tls": {"mode": "verify"},
        "policies": {"guardrails": ["no-drops"], "masking": ["pii"], "reviews": ["held"]},
        "ssh": {"host_key": "ssh-ed25519 AAAA"},
        "access": {"request_required": true, "reviewers": ["sre"], "approvals": 2},
    });
    json_patch(&mut base, &value);
    serde_json::from_value(base).unwrap()
}

fn json_patch(doc: &mut serde_json::Value, patch: &serde_json::Value) {
    if let (Some(d), Some(p)) = (doc.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            match d.get_mut(k) {
                Some(existing) if v.is_object() => json_patch(existing, v),
                _ => {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

#[test]
fn an_unchanged_or_stricter_connection_weakens_nothing() {
    let old = connection(json!({}));
    assert!(connection_weakening(&old, &old).is_empty());
    let stricter = connection(json!({
        "policies": {"guardrails": ["no-drops", "more"], "reviews": ["held", "more"]},
        "access": {"approvals": 3, "max_duration_secs": 60},
        "allowed_groups": [],
    }));
    assert_eq!(connection_weakening(&old, &stricter), Vec::<String>::new());
}

#[test]
fn each_weakening_of_a_connection_is_named() {
    let old = connection(json!({}));
    for (patch, expected) in [
        (
            json!({"kind": "mysql"}),
            "kind changed from postgres to mysql",
        ),
        (json!({"target": "evil:5432"}), "target changed"),
        (
            json!({"agent": "dc-east"}),
            "route changed from the gateway directly to agent `dc-east`",
        ),
        (json!({"username": "postgres"}), "username changed"),
        (
            json!({"tls": {"ca_pem": "-----BEGIN CERTIFICATE-----"}}),
            "tls.ca_pem",
        ),
        (
            json!({"policies": {"masking": ["other", "pii"]}}),
            "may decide a column's",
        ),
        (
            json!({"access": {"reuse_approved_reviews": true, "review_timeout_secs": 600}}),
            "reuse_approved_reviews",
        ),
        (
            json!({"policies": {"guardrails": []}}),
            "policies.guardrails: `no-drops` removed (now empty)",
        ),
        (json!({"policies": {"masking": []}}), "policies.masking"),
        (json!({"policies": {"reviews": []}}), "policies.reviews"),
        (
            json!({"policies": {"verbatim_statements": true}}),
            "verbatim_statements",
        ),
        (
            json!({"access": {"request_required": false}}),
            "access.request_required turned off",
        ),
        (
            json!({"access": {"approvals": 1}}),
            "access.approvals lowered from 2 to 1",
        ),
        (
            json!({"access": {"reviewers": ["sre", "dev"]}}),
            "access.reviewers widened",
        ),
        (
            json!({"access": {"reviewers": []}}),
            "access.reviewers widened",
        ),
        (
            json!({"access": {"reuse_approved_reviews": true}}),
            "reuse_approved_reviews",
        ),
        (
            json!({"access": {"max_duration_secs": 86400}}),
            "max_duration_secs raised",
        ),
        (
            json!({"allowed_groups": ["dev", "contractors"]}),
            "allowed_groups",
        ),
        (json!({"ssh": {"host_key": null}}), "ssh.host_key unpinned"),
        (
            json!({"ssh": {"host_key": "ssh-ed25519 BBBB"}}),
            "ssh.host_key replaced",
        ),
        (
            json!({"ssh": {"trust_on_first_use": true}}),
            "ssh.trust_on_first_use turned on",
        ),
        (
            json!({"ssh": {"port_forwarding": true}}),
            "ssh.port_forwarding turned on",
        ),
        (
            json!({"tls": {"mode": "insecure"}}),
            "tls.mode lowered from verify to insecure",
        ),
        (
            json!({"tls": {"mode": "disable"}}),
            "tls.mode lowered from verify to disable",
        ),
        (
            json!({"tls": {"server_name": "other"}}),
            "tls.server_name changed",
        ),
    ] {
        let new = connection(patch.clone());
        let found = connection_weakening(&old, &new);
        assert_eq!(found.len(), 1, "{patch}: {found:?}");
        assert!(found[0].contains(expected), "{patch}: {found:?}");
    }
}

fn guardrails(value: serde_json::Value) -> GuardrailSet {
    serde_json::from_value(value).unwrap()
}

#[test]
fn a_guardrail_set_that_matches_less_is_named() {
    let old = guardrails(json!({"name": "g", "rules": [
        {"name": "no-ddl", "sql_statements": ["ddl", "truncate"]},
        {"name": "bounded", "sql_unbounded_writes": true},
        {"name": "shell", "action": "deny", "shell": ["rm -rf *"]},
    ]}));
    assert!(guardrail_weakening(&old, &old).is_empty());
    let stricter = guardrails(json!({"name": "g", "rules": [
        {"name": "no-ddl", "sql_statements": ["ddl", "truncate", "dcl"]},
        {"name": "bounded", "sql_unbounded_writes": true},
        {"name": "shell", "shell": ["rm -rf *", "shutdown"]},
        {"name": "new", "sql_read_only": true},
    ]}));
    assert!(guardrail_weakening(&old, &stricter).is_empty());
    let weaker = guardrails(json!({"name": "g", "unparsable_sql": "allow", "rules": [
        {"name": "no-ddl", "sql_statements": ["ddl"]},
        {"name": "shell", "action": "review", "shell": ["rm -rf *"]},
    ]}));
    let found = guardrail_weakening(&old, &weaker);
    for expected in [
        "g: unparsable_sql relaxed from deny to allow",
        "g: rule `no-ddl` sql_statements: `truncate` removed",
        "g: rule `bounded` removed",
        "g: rule `shell` action lowered from deny to review",
    ] {
        assert!(found.iter().any(|f| f == expected), "{expected}: {found:?}");
    }
    assert_eq!(found.len(), 4, "{found:?}");
}

#[test]
fn a_masking_set_that_masks_less_is_named() {
    let set = |v: serde_json::Value| -> MaskingSet { serde_json::from_value(v).unwrap() };
    let old = set(json!({"name": "pii", "detectors": ["email", "card_number"],
        "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}],
        "columns": [{"pattern": "*.ssn"}]}));
    assert!(masking_weakening(&old, &old).is_empty());
    let more = set(
        json!({"name": "pii", "detectors": ["email", "card_number", "iban"],
        "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}],
        "columns": [{"pattern": "*.ssn"}, {"pattern": "*password*"}]}),
    );
    assert!(masking_weakening(&old, &more).is_empty());
    let with_null = set(json!({"name": "pii", "detectors": ["email", "card_number"],
        "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}, {"name": "x", "regex": "X-[0-9]+"}],
        "columns": [{"pattern": "*.ssn"}, {"pattern": "*password*", "style": "null"}]}));
    assert!(masking_weakening(&old, &with_null).is_empty());
    // Additions that can reveal: a column rule that shows part of what a detector
    // masked, rules reordered, custom detectors under a revealing style.
    for (new, expected) in [
        (
            json!({"name": "pii", "detectors": ["email", "card_number"],
                "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}],
                "columns": [{"pattern": "*.card", "style": "partial:64"}, {"pattern": "*.ssn"}]}),
            vec!["column rule `*.card` added with style partial:64"],
        ),
        (
            json!({"name": "pii", "detectors": ["email", "card_number"],
                "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}],
                "columns": [{"pattern": "*.x"}, {"pattern": "*.ssn", "style": "full"}, {"pattern": "*.a"}]}),
            vec![],
        ),
        (
            json!({"name": "pii", "detectors": ["email", "card_number"],
                "custom": [{"name": "emp", "regex": "EMP-[0-9]+"}, {"name": "y", "regex": "Y", "style": "hash"}],
                "columns": [{"pattern": "*.ssn"}]}),
            vec!["custom detector `y` added with style hash"],
        ),
    ] {
        let found = masking_weakening(&old, &set(new.clone()));
        assert_eq!(found.len(), expected.len(), "{new}: {found:?}");
        for (f, e) in found.iter().zip(expected) {
            assert!(f.contains(e), "{f} / {e}");
        }
    }
    let two = set(
        json!({"name": "p", "columns": [{"pattern": "*.a"}, {"pattern": "*.b", "style": "hash"}]}),
    );
    let swapped = set(
        json!({"name": "p", "columns": [{"pattern": "*.b", "style": "hash"}, {"pattern": "*.a"}]}),
    );
    assert_eq!(
        masking_weakening(&two, &swapped),
        ["p: column rules reordered (the first match decides)"]
    );
    let partial = set(json!({"name": "p", "style": "partial:4", "detectors": ["email"]}));
    let more_partial =
        set(json!({"name": "p", "style": "partial:4", "detectors": ["email", "iban"]}));
    assert_eq!(masking_weakening(&partial, &more_partial).len(), 1);
    let less = set(
        json!({"name": "pii", "detectors": ["email"], "style": "partial:4",
        "custom": [{"name": "emp", "regex": "EMP-[0-9]{9}"}],
        "columns": [{"pattern": "*.ssn", "style": "partial:4"}]}),
    );
    let found = masking_weakening(&old, &less);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found[0].contains("`card_number` removed"), "{found:?}");
}
