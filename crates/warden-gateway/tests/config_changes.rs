//! Configuration changes that cannot weaken a policy by accident: connection updates
//! are merge patches (RFC 7396) that keep every field they do not name, and every
//! change that takes protection away is named in the answer and recorded as a
//! `policy.weakened` event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use support::*;
use warden_store::Backend;

const HOST_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

/// A connection with every nested setting away from its default.
fn guarded() -> Value {
    json!({
        "name": "prod", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
        "username": "warden_t_scram", "secret": "scram-pw-1", "allowed_groups": ["dev"],
        "tls": {"mode": "verify", "server_name": "db.internal",
                "ca_pem": "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"},
        "policies": {"guardrails": ["no-drops"], "masking": ["pii"], "reviews": ["held-for-review"]},
        "ssh": {"host_key": HOST_KEY, "trust_on_first_use": false, "port_forwarding": false},
        "access": {"request_required": true, "reviewers": ["sre"], "approvals": 2,
                   "max_duration_secs": 3600, "review_timeout_secs": 120,
                   "reuse_approved_reviews": false},
    })
}

/// The nested settings as stored, without timestamps.
fn nested(conn: &Value) -> Value {
    json!({"tls": conn["tls"], "policies": conn["policies"], "ssh": conn["ssh"],
           "access": conn["access"], "allowed_groups": conn["allowed_groups"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_changes_only_the_fields_it_names() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let (status, created) = gw.admin("POST", "/api/connections", Some(guarded())).await;
    assert_eq!(status, 201, "{created}");
    // One case per nested field: (patch, the path it changes, the value it then has).
    let cases: Vec<(Value, &str, Value)> = vec![
        (
            json!({"tls": {"server_name": "db2.internal"}}),
            "/tls/server_name",
            json!("db2.internal"),
        ),
        (
            json!({"tls": {"server_name": null}}),
            "/tls/server_name",
            Value::Null,
        ),
        (
            json!({"tls": {"mode": "insecure"}}),
            "/tls/mode",
            json!("insecure"),
        ),
        (json!({"tls": {"ca_pem": null}}), "/tls/ca_pem", Value::Null),
        (
            json!({"policies": {"reviews": []}}),
            "/policies/reviews",
            json!([]),
        ),
        (
            json!({"policies": {"guardrails": ["no-drops", "held-for-review"]}}),
            "/policies/guardrails",
            json!(["no-drops", "held-for-review"]),
        ),
        (
            json!({"policies": {"masking": null}}),
            "/policies/masking",
            json!([]),
        ),
        (
            json!({"policies": {"verbatim_statements": true}}),
            "/policies/verbatim_statements",
            json!(true),
        ),
        (
            json!({"ssh": {"port_forwarding": true}}),
            "/ssh/port_forwarding",
            json!(true),
        ),
        (
            json!({"ssh": {"trust_on_first_use": true}}),
            "/ssh/trust_on_first_use",
            json!(true),
        ),
        (
            json!({"ssh": {"host_key": null}}),
            "/ssh/host_key",
            Value::Null,
        ),
        (
            json!({"access": {"reviewers": ["sre", "dba"]}}),
            "/access/reviewers",
            json!(["sre", "dba"]),
        ),
        (
            json!({"access": {"request_required": false}}),
            "/access/request_required",
            json!(false),
        ),
        (
            json!({"access": {"approvals": 1}}),
            "/access/approvals",
            json!(1),
        ),
        (
            json!({"access": {"approvals": null}}),
            "/access/approvals",
            json!(1),
        ),
        (
            json!({"access": {"max_duration_secs": 7200}}),
            "/access/max_duration_secs",
            json!(7200),
        ),
        (
            json!({"access": {"review_timeout_secs": 60}}),
            "/access/review_timeout_secs",
            json!(60),
        ),
        (
            json!({"access": {"reuse_approved_reviews": true}}),
            "/access/reuse_approved_reviews",
            json!(true),
        ),
    ];
    for (patch, path, value) in cases {
        // Each case starts from the guarded connection.
        let mut reset = guarded();
        let reset = reset.as_object_mut().unwrap();
        for k in ["name", "kind", "secret"] {
            reset.remove(k);
        }
        let (status, before) = gw
            .admin(
                "PATCH",
                "/api/connections/prod",
                Some(Value::Object(reset.clone())),
            )
            .await;
        assert_eq!(status, 200, "{before}");
        let (status, after) = gw
            .admin("PATCH", "/api/connections/prod", Some(patch.clone()))
            .await;
        assert_eq!(status, 200, "{patch}: {after}");
        let (_, stored) = gw.admin("GET", "/api/connections/prod", None).await;
        let (mut expected, stored) = (nested(&before), nested(&stored));
        let field = path.rsplit('/').next().unwrap();
        let parent = &path[..path.len() - field.len() - 1];
        let parent = expected
            .pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap();
        if value.is_null() {
            parent.remove(field);
        } else {
            parent.insert(field.into(), value.clone());
        }
        assert_eq!(stored, expected, "{patch} changed more than {path}");
        assert_eq!(
            nested(&after),
            expected,
            "the answer is the stored connection"
        );
    }

    // Wrong shapes and unknown fields inside a nested object are refused, changing nothing.
    let (_, before) = gw.admin("GET", "/api/connections/prod", None).await;
    for bad in [
        json!({"access": {"request_required": "no"}}),
        json!({"access": {"reviewer": ["x"]}}),
        json!({"tls": "disable"}),
        json!({"ssh": {"host_key": "not a key"}}),
        json!({"policies": {"guardrails": ["no-such-set"]}}),
    ] {
        let (status, body) = gw
            .admin("PATCH", "/api/connections/prod", Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (_, after) = gw.admin("GET", "/api/connections/prod", None).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weakening_changes_are_named_and_audited_and_grants_still_hold() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let mut body = guarded();
    body["tls"] = json!({"mode": "disable"});
    let (status, created) = gw.admin("POST", "/api/connections", Some(body)).await;
    assert_eq!(status, 201, "{created}");
    let alice = gw.key_for("alice", &["dev"]).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let login = || async {
        tokio_postgres::connect(
            &format!("host=127.0.0.1 port={port} user=alice dbname=prod password={alice}"),
            tokio_postgres::NoTls,
        )
        .await
        .map(|(client, conn)| {
            tokio::spawn(conn);
            client
        })
    };

    // Changing who reviews is not weakening, and the grant is still required.
    let (status, answer) = gw
        .admin(
            "PATCH",
            "/api/connections/prod",
            Some(json!({"access": {"reviewers": ["oncall"]}})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access"]["request_required"], true);
    let weakened = answer["weakened"].as_array().unwrap();
    assert_eq!(weakened.len(), 1, "{answer}");
    assert!(
        weakened[0]
            .as_str()
            .unwrap()
            .contains("access.reviewers widened")
    );
    let Err(err) = login().await else {
        panic!("no grant, no session")
    };
    assert_eq!(err.as_db_error().unwrap().code().code(), "3D000", "{err}");

    // A stricter change weakens nothing and says nothing.
    let (_, answer) = gw
        .admin(
            "PATCH",
            "/api/connections/prod",
            Some(json!({"access": {"approvals": 3}})),
        )
        .await;
    assert!(answer.get("weakened").is_none(), "{answer}");

    // Several weakenings at once: each is named, in the answer and one event.
    let (_, answer) = gw
        .admin(
            "PATCH",
            "/api/connections/prod",
            Some(json!({"policies": {"masking": [], "guardrails": null},
                        "access": {"request_required": false},
                        "ssh": {"host_key": null}})),
        )
        .await;
    let weakened: Vec<&str> = answer["weakened"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    for expected in [
        "policies.guardrails: `no-drops` removed (now empty)",
        "policies.masking: `pii` removed (now empty)",
        "access.request_required turned off",
        "ssh.host_key unpinned",
    ] {
        assert!(weakened.contains(&expected), "{expected}: {weakened:?}");
    }
    assert_eq!(answer["policies"]["reviews"], json!(["held-for-review"]));
    // Now without a grant, as the change said.
    login().await.unwrap();
    let events = gw.audit_events("policy.weakened").await;
    assert_eq!(events.len(), 2, "{events:?}");
    let last = &events
        .iter()
        .find(|e| e["event"]["payload"]["weakened"].as_array().unwrap().len() == 4)
        .unwrap()["event"];
    assert_eq!(last["payload"]["object"], "connection");
    assert_eq!(
        last["payload"]["before"]["access"]["request_required"],
        true
    );
    assert_eq!(
        last["payload"]["after"]["access"]["request_required"],
        false
    );
    assert_eq!(last["identity"]["subject"], "admin");
    assert!(!last.to_string().contains("scram-pw-1"));

    // Policy sets: a replacement that matches or masks less is named too.
    let set = json!({"rules": [
        {"name": "no-ddl", "sql_statements": ["ddl", "truncate"]},
        {"name": "bounded", "sql_unbounded_writes": true}]});
    let (status, _) = gw
        .admin("PUT", "/api/policies/guardrails/api-set", Some(set))
        .await;
    assert_eq!(status, 201);
    let (status, answer) = gw
        .admin(
            "PUT",
            "/api/policies/guardrails/api-set",
            Some(json!({"unparsable_sql": "allow", "rules": [
                {"name": "no-ddl", "sql_statements": ["ddl", "truncate", "dcl"]}]})),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["weakened"],
        json!([
            "api-set: unparsable_sql relaxed from deny to allow",
            "api-set: rule `bounded` removed"
        ])
    );
    let (_, masking) = gw
        .admin(
            "PUT",
            "/api/policies/masking/api-pii",
            Some(json!({"detectors": ["email", "iban"]})),
        )
        .await;
    assert!(masking.get("weakened").is_none(), "{masking}");
    let (_, masking) = gw
        .admin(
            "PUT",
            "/api/policies/masking/api-pii",
            Some(json!({"detectors": ["email"]})),
        )
        .await;
    assert_eq!(
        masking["weakened"],
        json!(["api-pii: detectors: `iban` removed"])
    );
    let events = gw.audit_events("policy.weakened").await;
    assert_eq!(events.len(), 4, "{events:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"]["payload"]["object"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"guardrails") && kinds.contains(&"masking"),
        "{kinds:?}"
    );
}
