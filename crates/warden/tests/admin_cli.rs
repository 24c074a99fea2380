//! `warden admin` as an operator uses it: every noun through the binary against a
//! real gateway, with files in JSON and TOML, `--set`, `--dry-run` that stores
//! nothing, partial updates that name each changed field, and errors that exit 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(clippy::zombie_processes)]

mod common;
use common::*;

use serde_json::{Value, json};
use std::path::Path;
use std::process::Output;

struct Admin<'a> {
    dir: &'a Path,
    url: String,
    token: String,
}

impl Admin<'_> {
    fn run(&self, args: &[&str]) -> Output {
        run(warden(self.dir)
            .env("WARDEN_GATEWAY", &self.url)
            .env("WARDEN_TOKEN", &self.token)
            .arg("admin")
            .args(args))
    }

    /// Runs and expects success; returns standard output.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "warden admin {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// Runs and expects exit status 1; returns standard error.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "warden admin {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        text(&out.stderr)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn get(&self, path: &str) -> (u16, Value) {
        call(&self.url, &self.token, "GET", path, None)
    }

    /// An API call with one extra header: status, `ETag`, JSON answer.
    fn with_header(
        &self,
        method: &str,
        path: &str,
        (name, value): (&str, &str),
        body: Option<Value>,
    ) -> (u16, Option<String>, Value) {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut req = reqwest::Client::new()
                .request(method.parse().unwrap(), format!("{}{path}", self.url))
                .bearer_auth(&self.token)
                .header(name, value);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let etag = resp
                .headers()
                .get("etag")
                .map(|v| v.to_str().unwrap().to_string());
            let status = resp.status().as_u16();
            (status, etag, resp.json().await.unwrap_or(Value::Null))
        })
    }
}

/// The row of a table whose first cell is `first`, split into cells.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in\n{table}"))
        .split_whitespace()
        .collect()
}

#[test]
fn connections_and_policies_are_administered_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway(dir.path());
    let a = Admin {
        dir: dir.path(),
        url: running.url.clone(),
        token: running.printed_key.clone().unwrap(),
    };
    const SECRET: &str = "scram-pw-1";

    // A guardrail set from a JSON file; again is refused; a set from TOML on stdin
    // is not needed: the connection below comes from TOML.
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        json!({"rules": [{"name": "no-drops", "sql_statements": ["drop"]},
                         {"name": "hold-deletes", "sql_statements": ["delete"], "action": "review"}]})
        .to_string(),
    )
    .unwrap();
    let out = a.ok(&[
        "policies",
        "create",
        "guardrails",
        "safety",
        "-f",
        rules.to_str().unwrap(),
    ]);
    assert!(out.contains("guardrails set `safety`"), "{out}");
    assert!(
        out.contains("rules.no-drops") && out.contains("rules.hold-deletes"),
        "{out}"
    );
    let err = a.fails(&[
        "policies",
        "create",
        "guardrails",
        "safety",
        "-f",
        rules.to_str().unwrap(),
    ]);
    assert!(
        err.contains("exists") && err.contains("policies update"),
        "{err}"
    );
    let list = a.ok(&["policies", "list"]);
    assert_eq!(
        row(&list, "guardrails")[1..4],
        ["safety", "api", "2"],
        "{list}"
    );

    // A connection from TOML, checked first with --dry-run (nothing stored).
    let toml = dir.path().join("billing.toml");
    std::fs::write(
        &toml,
        format!(
            "name = \"billing\"\nkind = \"postgres\"\ntarget = \"127.0.0.1:5432/postgres\"\n\
             username = \"warden_t_scram\"\nsecret = \"{SECRET}\"\nallowed_groups = [\"dba\"]\n\
             [tls]\nmode = \"disable\"\n[policies]\nguardrails = [\"safety\"]\n"
        ),
    )
    .unwrap();
    let out = a.ok(&[
        "connections",
        "create",
        "-f",
        toml.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(
        out.contains("would be created") && out.contains("nothing was stored"),
        "{out}"
    );
    assert_eq!(a.get("/api/connections/billing").0, 404);
    let out = a.ok(&["connections", "create", "-f", toml.to_str().unwrap()]);
    assert_eq!(out.trim(), "connection `billing` created");
    let err = a.fails(&["connections", "create", "-f", toml.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");

    // A table by default, JSON on request, never the secret.
    let list = a.ok(&["connections", "list"]);
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "KIND",
            "TARGET",
            "GROUPS",
            "GUARDRAILS",
            "MASKING",
            "AGENT"
        ]
    );
    assert_eq!(
        row(&list, "billing"),
        [
            "billing",
            "postgres",
            "127.0.0.1:5432/postgres",
            "dba",
            "safety",
            "-",
            "-"
        ]
    );
    let listed = a.json(&["connections", "list"]);
    assert_eq!(listed[0]["name"], "billing", "{listed}");
    let shown = a.ok(&["connections", "show", "billing"]);
    assert!(
        row(&shown, "target").contains(&"127.0.0.1:5432/postgres"),
        "{shown}"
    );
    for out in [&list, &shown, &listed.to_string()] {
        assert!(!out.contains(SECRET), "the secret was printed:\n{out}");
    }

    // A partial update in a dry run names the one field and stores nothing.
    let out = a.ok(&[
        "connections",
        "update",
        "billing",
        "--set",
        "description=Billing primary",
        "--set",
        "allowed_groups:=[\"dba\",\"oncall\"]",
        "--dry-run",
    ]);
    assert!(out.contains("2 fields would change"), "{out}");
    assert_eq!(
        row(&out, "allowed_groups")[1..],
        ["dba", "dba,oncall"],
        "{out}"
    );
    assert!(out.contains("nothing was stored"), "{out}");
    assert!(a.get("/api/connections/billing").1["description"].is_null());
    // The same for real; unchanged fields are not named.
    let out = a.ok(&[
        "connections",
        "update",
        "billing",
        "--set",
        "description=Billing primary",
        "--set",
        "target=127.0.0.1:5432/postgres",
    ]);
    assert!(
        out.starts_with("connection `billing`: 1 field changed"),
        "{out}"
    );
    assert_eq!(
        row(&out, "description")[1..],
        ["-", "Billing", "primary"],
        "{out}"
    );
    assert!(!out.contains("target"), "{out}");
    assert_eq!(
        a.get("/api/connections/billing").1["description"],
        "Billing primary"
    );
    // The event says what changed, and only that.
    let (_, events) = a.get("/api/audit?kind=connection.update");
    let changed =
        &events["events"].as_array().unwrap().last().unwrap()["event"]["payload"]["changed"];
    assert_eq!(changed, &json!(["description"]), "{events}");

    // Removing the guardrails weakens the connection, and says so; a new secret is
    // named, never shown.
    let out = a.ok(&[
        "connections",
        "update",
        "billing",
        "--set",
        "policies.guardrails:=[]",
        "--set",
        "secret=another-pw-2",
    ]);
    assert!(out.contains("2 fields changed"), "{out}");
    assert_eq!(
        row(&out, "policies.guardrails")[1..],
        ["safety", "-"],
        "{out}"
    );
    assert_eq!(row(&out, "secret")[1..], ["(held)", "(new)"], "{out}");
    assert!(out.contains("weakens:"), "{out}");
    assert!(!out.contains("another-pw-2"), "{out}");
    // Nothing to change is said as such.
    let out = a.ok(&["connections", "update", "billing", "--set", "kind=postgres"]);
    assert_eq!(out.trim(), "connection `billing`: nothing to change");

    // A misspelt dry run is refused, not made; a name cannot smuggle URL syntax.
    let (status, body) = call(
        &a.url,
        &a.token,
        "PATCH",
        "/api/connections/billing?dryrun=true",
        Some(&json!({"description": "changed"})),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        a.get("/api/connections/billing").1["description"],
        "Billing primary"
    );
    // Routes without a dry run refuse one instead of making the change.
    for (method, path) in [
        ("DELETE", "/api/connections/billing?dry_run=true"),
        ("DELETE", "/api/connections/billing?dry-run"),
        ("POST", "/api/agents?dryRun=1"),
    ] {
        let (status, body) = call(
            &a.url,
            &a.token,
            method,
            path,
            Some(&json!({"name": "edge-x"})),
        );
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "dry_run_unsupported", "{body}");
    }
    assert_eq!(a.get("/api/connections/billing").0, 200);
    assert_eq!(a.get("/api/agents/edge-x").0, 404);
    for tricky in ["billing#", "billing?", "billing/x"] {
        let err = a.fails(&[
            "connections",
            "update",
            tricky,
            "--set",
            "description=x",
            "--dry-run",
        ]);
        assert!(err.contains("no connection named"), "{tricky}: {err}");
    }
    assert_eq!(
        a.get("/api/connections/billing").1["description"],
        "Billing primary"
    );

    // Mistakes exit 1 with the gateway's reason.
    let err = a.fails(&["connections", "update", "billing", "--set", "name=other"]);
    assert!(err.contains("name cannot change"), "{err}");
    let err = a.fails(&["connections", "update", "nope", "--set", "description=x"]);
    assert!(err.contains("no connection named `nope`"), "{err}");
    let err = a.fails(&[
        "connections",
        "update",
        "billing",
        "--set",
        "tls.mode=sideways",
    ]);
    assert!(err.contains("HTTP 400"), "{err}");
    let err = a.fails(&["connections", "update", "billing"]);
    assert!(err.contains("nothing given"), "{err}");
    let err = a.fails(&[
        "connections",
        "update",
        "billing",
        "--set",
        "policies.guardrails:=[\"nope\"]",
    ]);
    assert!(err.contains("nope"), "{err}");

    // Policies: a partial update that relaxes a rule, first in a dry run.
    a.ok(&[
        "connections",
        "update",
        "billing",
        "--set",
        "policies.guardrails:=[\"safety\"]",
    ]);
    let relaxed = dir.path().join("relaxed.json");
    std::fs::write(
        &relaxed,
        json!({"rules": [{"name": "no-drops", "sql_statements": ["drop"], "action": "review"},
                         {"name": "hold-deletes", "sql_statements": ["delete"], "action": "review"}]})
        .to_string(),
    )
    .unwrap();
    let out = a.ok(&[
        "policies",
        "update",
        "guardrails",
        "safety",
        "-f",
        relaxed.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(out.contains("1 field would change"), "{out}");
    assert_eq!(
        row(&out, "rules.no-drops.action")[1..],
        ["deny", "review"],
        "{out}"
    );
    assert!(
        out.contains("weakens:") && out.contains("nothing was stored"),
        "{out}"
    );
    let test = |sql: &str| a.ok(&["policies", "test", "--connection", "billing", "--sql", sql]);
    let out = test("DROP TABLE t");
    assert!(
        out.starts_with("decision: deny (rule safety/no-drops)"),
        "{out}"
    );
    a.ok(&[
        "policies",
        "update",
        "guardrails",
        "safety",
        "-f",
        relaxed.to_str().unwrap(),
    ]);
    let out = test("DROP TABLE t");
    assert!(
        out.starts_with("decision: review (rule safety/no-drops)"),
        "{out}"
    );
    let out = test("SELECT 1");
    assert!(out.starts_with("decision: allow"), "{out}");
    // Two admins at once: a write over a version that changed since it was read is
    // refused (412), not a silent overwrite; the version is the GET's ETag.
    let set = "/api/policies/guardrails/safety";
    let (_, etag, _) = a.with_header("GET", set, ("Accept", "application/json"), None);
    let etag = etag.expect("an API set has a version");
    a.ok(&[
        "policies",
        "update",
        "guardrails",
        "safety",
        "--set",
        "description=changed meanwhile",
    ]);
    let (stale, _, _) = a.with_header("PUT", set, ("If-Match", &etag), Some(json!({"rules": []})));
    assert_eq!(stale, 412);
    // A create-only write never replaces.
    let (_, _, create_only) = a.with_header(
        "PUT",
        set,
        ("If-None-Match", "*"),
        Some(json!({"rules": []})),
    );
    assert_eq!(
        create_only["error"]["code"], "policy_exists",
        "{create_only}"
    );
    let shown = a.ok(&["policies", "show", "guardrails", "safety"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["rules"][0]["action"], "review", "{shown}");
    // The evaluator masks values with a named set.
    a.ok(&[
        "policies",
        "create",
        "masking",
        "pii",
        "--set",
        "detectors:=[\"email\"]",
    ]);
    let out = a.ok(&[
        "policies",
        "test",
        "--masking",
        "pii",
        "--value",
        "write to a@example.com",
    ]);
    assert!(
        out.contains("→") && !out.contains("→ write to a@example.com"),
        "{out}"
    );
    assert!(out.contains("(email)"), "{out}");

    // Deleting: a set in use is refused; the connection, then the set, go.
    let err = a.fails(&["policies", "delete", "guardrails", "safety"]);
    assert!(err.contains("409"), "{err}");
    assert_eq!(
        a.ok(&["connections", "delete", "billing"]).trim(),
        "connection `billing` deleted"
    );
    a.ok(&["policies", "delete", "guardrails", "safety"]);
    let err = a.fails(&["connections", "show", "billing"]);
    assert!(err.contains("no connection named `billing`"), "{err}");
    stop(running);
}

#[test]
fn keys_webhooks_sinks_and_agents_are_administered_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let running = start_gateway(dir.path());
    let a = Admin {
        dir: dir.path(),
        url: running.url.clone(),
        token: running.printed_key.clone().unwrap(),
    };

    // Keys: a dry run issues nothing; a real one prints its token once, which works
    // until it is revoked.
    let before = a.json(&["keys", "list"]).as_array().unwrap().len();
    let out = a.ok(&[
        "keys",
        "create",
        "ci-deploy",
        "--group",
        "deployers",
        "--dry-run",
    ]);
    assert!(
        out.contains("would be issued") && !out.contains("wdn_"),
        "{out}"
    );
    assert_eq!(a.json(&["keys", "list"]).as_array().unwrap().len(), before);
    let out = a.ok(&[
        "keys",
        "create",
        "ci-deploy",
        "--group",
        "deployers",
        "--ttl-secs",
        "3600",
    ]);
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("wdn_"))
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_string();
    assert_eq!(call(&a.url, &token, "GET", "/api/me", None).0, 200);
    let list = a.ok(&["keys", "list"]);
    let ci = row(
        &list,
        a.json(&["keys", "show", "ci-deploy"])["id"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(
        ci[1..5],
        ["ci-deploy", "apikey:ci-deploy", "deployers", "active"],
        "{list}"
    );
    assert!(!list.contains(&token), "a token was listed");
    let id = ci[0].to_string();
    assert!(a.ok(&["keys", "delete", &id]).contains("revoked"));
    assert_eq!(call(&a.url, &token, "GET", "/api/me", None).0, 401);
    let err = a.fails(&["keys", "show", "no-such-key"]);
    assert!(err.contains("no API key"), "{err}");

    // Webhooks: created with --set (secret printed once), changed in part, deleted.
    let out = a.ok(&[
        "webhooks",
        "create",
        "--set",
        "url=http://127.0.0.1:9/hook",
        "--set",
        "kinds:=[\"connection.*\"]",
        "--dry-run",
    ]);
    assert!(
        out.contains("would be created") && !out.contains("whsec_"),
        "{out}"
    );
    assert!(a.json(&["webhooks", "list"]).as_array().unwrap().is_empty());
    let out = a.ok(&[
        "webhooks",
        "create",
        "--set",
        "url=http://127.0.0.1:9/hook",
        "--set",
        "kinds:=[\"connection.*\"]",
    ]);
    assert!(out.contains("whsec_"), "{out}");
    let id = a.json(&["webhooks", "list"])[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = a.ok(&[
        "webhooks",
        "update",
        &id,
        "--set",
        "kinds:=[\"connection.*\",\"review.*\"]",
    ]);
    assert!(out.contains("1 field changed"), "{out}");
    assert_eq!(
        row(&out, "kinds")[1..],
        ["connection.*", "connection.*,review.*"],
        "{out}"
    );
    let list = a.ok(&["webhooks", "list"]);
    assert_eq!(
        row(&list, &id)[1..3],
        ["http://127.0.0.1:9/…", "connection.*,review.*"],
        "{list}"
    );
    let err = a.fails(&["webhooks", "update", &id, "--set", "url=ftp://x"]);
    assert!(err.contains("url must be"), "{err}");
    let letters = a.ok(&["webhooks", "dead-letters", &id]);
    assert!(letters.starts_with("LETTER"), "{letters}");
    a.ok(&["webhooks", "delete", &id]);
    assert!(a.fails(&["webhooks", "show", &id]).contains("no webhook"));
    let sinks = a.ok(&["sinks"]);
    assert_eq!(
        sinks.lines().count(),
        1,
        "no sinks are configured:\n{sinks}"
    );

    // Agents, the same commands as `warden agents`.
    let out = a.ok(&["agents", "create", "edge-1", "--source", "10.20.0.0/16"]);
    assert!(out.contains("wagt_"), "{out}");
    let out = a.ok(&[
        "agents",
        "update",
        "edge-1",
        "--source",
        "10.30.0.0/16",
        "--description",
        "east",
    ]);
    assert!(out.contains("10.30.0.0/16"), "{out}");
    let shown = a.json(&["agents", "show", "edge-1"]);
    assert_eq!(shown["sources"], json!(["10.30.0.0/16"]), "{shown}");
    assert_eq!(shown["description"], "east", "{shown}");
    let list = a.ok(&["agents"]);
    assert_eq!(row(&list, "edge-1")[1], "offline", "{list}");
    a.ok(&["agents", "delete", "edge-1"]);
    assert!(
        a.fails(&["agents", "show", "edge-1"])
            .contains("no such agent")
    );
    stop(running);
}
