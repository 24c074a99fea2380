//! One chained row per statement, through the whole gateway: real PostgreSQL clients
//! (tokio-postgres's extended protocol, psql's simple queries), and every statement's
//! outcome in the audit log naming it — folded into its event when both were chained
//! together, which is nearly always, or an `pg.outcome` event of its own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use support::*;
use warden_store::Backend;

const BACKEND_PASSWORD: &str = "scram-pw-1";
const STATEMENTS: usize = 20;

async fn every_statement_has_its_outcome_once(backend: Backend) {
    let gw = TestGateway::start(backend, None).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": "folds", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": BACKEND_PASSWORD,
                "allowed_groups": ["dev"], "tls": {"mode": "disable"},
                "policies": {"guardrails": ["no-drops"]},
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = gw.key_for("alice", &["dev"]).await;
    let client = pg_connect(&gw, "folds", &token).await.unwrap();
    for i in 0..STATEMENTS {
        // Extended protocol (Parse, Bind, Execute), then a simple query.
        let n: i32 = client
            .query_one(&format!("SELECT {i}::int4 AS n"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n as usize, i);
        client
            .simple_query(&format!("SELECT {i} AS simple"))
            .await
            .unwrap();
    }
    assert!(client.simple_query("DROP TABLE folds_none").await.is_err());
    drop(client);

    let events = eventually("every outcome", || async {
        let e = gw.audit_events("pg.").await;
        let outcomes = e
            .iter()
            .filter(|e| {
                e["event"]["kind"] == "pg.outcome" || e["event"]["payload"]["outcome"].is_object()
            })
            .count();
        (outcomes > 2 * STATEMENTS).then_some(e)
    })
    .await;
    // Each executed statement (the Binds and simple queries, and the denial) has
    // exactly one outcome, joined to it.
    let mut outcomes: HashMap<String, Vec<Value>> = HashMap::new();
    let mut folded = 0;
    for e in &events {
        let event = &e["event"];
        let id = event["id"].as_str().unwrap().to_string();
        if event["kind"] == "pg.outcome" {
            let of = event["payload"]["statement"]
                .as_str()
                .expect("names its statement");
            outcomes
                .entry(of.to_string())
                .or_default()
                .push(event["payload"].clone());
        } else if let Some(o) = event["payload"].get("outcome") {
            assert!(o.get("statement").is_none(), "{event}");
            outcomes.entry(id).or_default().push(o.clone());
            folded += 1;
        }
    }
    let executed: Vec<&Value> = events
        .iter()
        .map(|e| &e["event"])
        .filter(|e| e["kind"] == "pg.query" && e["payload"]["via"] != "Parse")
        .collect();
    for statement in &executed {
        let id = statement["id"].as_str().unwrap();
        let got = outcomes.get(id).map(Vec::len).unwrap_or(0);
        assert_eq!(got, 1, "{statement} has {got} outcomes");
    }
    let denied = events
        .iter()
        .map(|e| &e["event"])
        .find(|e| e["payload"]["sql"] == "DROP TABLE folds_none")
        .unwrap();
    let denial = &outcomes[denied["id"].as_str().unwrap()][0];
    assert_eq!(denial["error"]["code"], "42501", "{denial}");
    // Shipped every few milliseconds, a statement and its outcome are nearly always
    // chained together: most are one row.
    assert!(
        folded > executed.len() / 2,
        "{folded} of {} folded",
        executed.len()
    );
    let (_, report) = gw.admin("GET", "/api/audit/verify", None).await;
    assert_eq!(report["ok"], true, "{report}");
}

both_stores!(every_statement_has_its_outcome_once);
