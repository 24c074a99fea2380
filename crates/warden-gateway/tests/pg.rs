//! The PostgreSQL proxy in the gateway: real clients (tokio-postgres, psql) with a
//! Warden token, the machine's PostgreSQL behind, the held password never shown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::*;
use tokio_postgres::NoTls;
use warden_core::ConnectionKind;
use warden_store::Backend;

const BACKEND_PASSWORD: &str = "scram-pw-1";

async fn setup(backend: Backend) -> (TestGateway, String) {
    setup_with(TestGateway::start(backend, None).await).await
}

/// Adds the `billing` connection (TLS to the database, verified against the server's
/// certificate) and an API key in group `dba`.
async fn setup_with(gw: TestGateway) -> (TestGateway, String) {
    let (ca, name) = pg_server_ca();
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": "billing", "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": BACKEND_PASSWORD, "allowed_groups": ["dba"],
                "policies": {"guardrails": ["no-drops"], "masking": ["pii"]},
                "tls": {"mode": "verify", "ca_pem": ca, "server_name": name}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, key) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "dba-job", "groups": ["dba"]})),
        )
        .await;
    (gw, key["token"].as_str().unwrap().to_string())
}

/// Adds a connection to the test server without TLS, with `policies`.
async fn add_plain(gw: &TestGateway, name: &str, policies: serde_json::Value) {
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": name, "kind": "postgres", "target": "127.0.0.1:5432/postgres",
                "username": "warden_t_scram", "secret": BACKEND_PASSWORD,
                "allowed_groups": ["dba"], "policies": policies,
                "tls": {"mode": "disable"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

use support::pg_connect as connect;

/// A direct connection to the test server as its superuser, for setting up tables.
async fn superuser() -> tokio_postgres::Client {
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("{e}"))
}

both_stores!(token_login_guardrails_masking_audit_and_sessions);
async fn token_login_guardrails_masking_audit_and_sessions(backend: Backend) {
    let (gw, token) = setup(backend).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    // The backend session is the held role, not the client's user name.
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "warden_t_scram");
    // The database leg is TLS.
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let row = c
        .query_one("SELECT $1::text", &[&"write to ops@example.com"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "write to [redacted:email]");
    let err = c
        .batch_execute("DROP TABLE IF EXISTS nothing_here")
        .await
        .unwrap_err();
    assert_eq!(code(&err), "42501");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("no-drops/no-ddl")
    );
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    // Every statement is in the audit log with the identity and the decision.
    let queries = gw.audit_events("pg.query").await;
    let sqls: Vec<&str> = queries
        .iter()
        .map(|e| e["event"]["payload"]["sql"].as_str().unwrap())
        .collect();
    assert!(
        sqls.contains(&"DROP TABLE IF EXISTS nothing_here"),
        "{sqls:?}"
    );
    let drop_event = queries
        .iter()
        .find(|e| e["event"]["payload"]["sql"] == "DROP TABLE IF EXISTS nothing_here")
        .unwrap();
    assert_eq!(drop_event["event"]["decision"]["outcome"], "deny");
    assert_eq!(drop_event["event"]["identity"]["subject"], "apikey:dba-job");
    assert_eq!(drop_event["event"]["connection"], "billing");

    // The session was recorded and closed.
    let (_, sessions) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    let s = &sessions[0];
    assert_eq!(s["protocol"], "postgres");
    assert_eq!(s["subject"], "apikey:dba-job");
    assert_eq!(s["denied"], 1);
    assert!(s["commands"].as_i64().unwrap() >= 3, "{s}");
    assert_eq!(s["status"], "closed", "{s}");
    // Traffic both ways, in protocol bytes.
    assert!(s["bytes_in"].as_i64().unwrap() > 0, "{s}");
    assert!(s["bytes_out"].as_i64().unwrap() > 0, "{s}");

    // Each statement's outcome follows its event, naming it.
    let outcomes = gw.outcomes("pg").await;
    assert!(
        outcomes
            .iter()
            .any(|o| o["tag"] == "SELECT 1" && o["rows"] == 1),
        "{outcomes:?}"
    );
    let denied_outcome = outcomes
        .iter()
        .find(|o| o["error"]["code"] == "42501")
        .expect("the denial's outcome");
    assert_eq!(denied_outcome["statement"], drop_event["event"]["id"]);

    // The recording: statements, decisions, masked rows, the denial, the end.
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["recording"], format!("{id}.jsonl"));
    let (status, rec) = gw
        .admin("GET", &format!("/api/sessions/{id}/recording"), None)
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["header"]["connection"], "billing");
    assert_eq!(rec["header"]["subject"], "apikey:dba-job");
    assert_eq!(rec["truncated"], false);
    let entries = rec["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["kind"] == "result"
        && e["rows"][0][0] == "write to [redacted:email]"
        && e["rows_total"] == 1));
    assert!(entries.iter().any(|e| e["kind"] == "statement"
        && e["sql"] == "DROP TABLE IF EXISTS nothing_here"
        && e["decision"]["outcome"] == "deny"));
    assert_eq!(entries.last().unwrap()["kind"], "end");
    let ts: Vec<u64> = entries.iter().map(|e| e["t"].as_u64().unwrap()).collect();
    assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
    // Another user's key does not reach it.
    let (_, other) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "someone-else", "groups": ["dba"]})),
        )
        .await;
    let (status, _) = gw
        .call(
            "GET",
            &format!("/api/sessions/{id}/recording"),
            other["token"].as_str(),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // The held password appears in no answer, no event and no recording; the
    // unmasked value is in no recording either.
    let recordings = gw.recordings_text();
    assert!(recordings.contains("nothing_here"));
    assert!(!recordings.contains("ops@example.com"));
    let all = gw.everything_visible(&[&sessions, &rec]).await;
    assert!(!all.contains(BACKEND_PASSWORD));
    assert_eq!(
        gw.admin("GET", "/api/audit/verify", None).await.1["ok"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_name_the_reason() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let err = connect(&gw, "billing", "wdn_nope_00").await.err().unwrap();
    assert_eq!(code(&err), "28P01", "{err}");
    let err = connect(&gw, "unknown-db", &token).await.err().unwrap();
    assert_eq!(code(&err), "3D000", "{err}");
    // A key whose groups do not include the connection's.
    let (_, other) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "dev", "groups": ["developers"]})),
        )
        .await;
    let err = connect(&gw, "billing", other["token"].as_str().unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(code(&err), "3D000", "{err}");
    // A connection whose held password is wrong: the backend refusal, without the secret.
    gw.admin(
        "PATCH",
        "/api/connections/billing",
        Some(json!({"secret": "not-the-password"})),
    )
    .await;
    let err = connect(&gw, "billing", &token).await.err().unwrap();
    assert_eq!(code(&err), "08006", "{err}");
    assert!(!err.to_string().contains("not-the-password"));
    let failures = gw.audit_events("auth.failure").await;
    assert!(
        failures
            .iter()
            .any(|e| e["event"]["payload"]["protocol"] == "postgres")
    );
    assert!(!gw.audit_events("access.denied").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_through_the_gateway() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port()
        .to_string();
    let run = |sql: &str| {
        std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "someone",
                "-d",
                "billing",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", &token)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let out = run("SELECT 'card 4111 1111 1111 1111' AS c; SELECT 1 + 1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("card [redacted:card_number]") && !text.contains("4111"),
        "{text}"
    );
    assert!(text.contains('2'));
    let out = run("TRUNCATE pg_class");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Warden denied this statement") && err.contains("no-drops/no-ddl"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn column_rules_apply_to_real_tables() {
    // A table the held role may read, created directly as the superuser.
    let admin = superuser().await;
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS warden_t;
             CREATE TABLE IF NOT EXISTS warden_t.people (name text, ssn text);
             TRUNCATE warden_t.people;
             INSERT INTO warden_t.people VALUES ('Ann', '078-05-1120');
             CREATE TABLE IF NOT EXISTS warden_t.accounts (id int4, pin int4);
             TRUNCATE warden_t.accounts;
             INSERT INTO warden_t.accounts VALUES (1, 4321);
             GRANT USAGE ON SCHEMA warden_t TO warden_t_scram;
             GRANT SELECT ON warden_t.people, warden_t.accounts TO warden_t_scram;",
        )
        .await
        .unwrap();

    let (gw, token) = setup(Backend::Sqlite).await;
    let (status, body) = gw
        .admin(
            "PUT",
            "/api/policies/masking/tables",
            Some(json!({"columns": [{"pattern": "warden_t.people.ssn"}, {"pattern": "warden_t.accounts.pin"}]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    gw.admin(
        "PATCH",
        "/api/connections/billing",
        Some(json!({"policies": {"guardrails": ["no-drops"], "masking": ["tables"]}})),
    )
    .await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    let row = c
        .query_one("SELECT name, ssn, ssn AS copy FROM warden_t.people", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>("name"), "Ann");
    assert_eq!(row.get::<_, String>("ssn"), "[redacted:column]");
    assert_eq!(
        row.get::<_, String>("copy"),
        "[redacted:column]",
        "an alias keeps the column's origin"
    );
    // A computed column named `ssn` comes from no table: the table-qualified rule does not apply.
    let row = c
        .query_one("SELECT 'plain'::text AS ssn", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "plain");
    // Simple protocol too.
    let msgs = c
        .simple_query("SELECT ssn FROM warden_t.people")
        .await
        .unwrap();
    let value = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("[redacted:column]"));
    // A binary-format integer under a column rule cannot carry text: it becomes NULL.
    let row = c
        .query_one("SELECT id, pin FROM warden_t.accounts", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>("id"), 1);
    assert_eq!(row.get::<_, Option<i32>>("pin"), None);
    let msgs = c
        .simple_query("SELECT pin FROM warden_t.accounts")
        .await
        .unwrap();
    let value = msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
        _ => None,
    });
    assert_eq!(value.as_deref(), Some("[redacted:column]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_ends_that_session_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (gw, token) = setup(Backend::Sqlite).await;
    let addr = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap();
    let good = connect(&gw, "billing", &token).await.unwrap();
    for payload in [
        &b"\x00\x00\x00\x08\xde\xad\xbe\xef"[..], // unknown protocol version
        &b"\xff\xff\xff\xff"[..],                 // negative length
        &b"\x00\x01\x00\x00\x00\x03\x00\x00user\x00"[..], // absurd length
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], // wrong protocol
        &b"\x00\x00\x00\x10\x00\x03\x00\x00user\x00x"[..], // truncated parameters
    ] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(payload).await.unwrap();
        let mut buf = Vec::new();
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        if !buf.is_empty() {
            assert_eq!(buf[0], b'E', "a protocol error, not data: {buf:?}");
        }
    }
    // After login, a malformed message ends that session with nothing forwarded.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut startup = Vec::new();
    let body = b"\x00\x03\x00\x00user\x00x\x00database\x00billing\x00\x00";
    startup.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    startup.extend_from_slice(body);
    s.write_all(&startup).await.unwrap();
    let mut pw = vec![b'p'];
    pw.extend_from_slice(&((token.len() + 5) as i32).to_be_bytes());
    pw.extend_from_slice(token.as_bytes());
    pw.push(0);
    s.write_all(&pw).await.unwrap();
    s.write_all(b"Q\x00\x00\x00\x09abc").await.unwrap(); // unterminated query text
    s.write_all(b"\x00extra").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    // The client is told why, in a FATAL error with SQLSTATE 08P01.
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.contains("FATAL") && text.contains("08P01") && text.contains("bad message"),
        "{text}"
    );
    // The other session and the gateway go on.
    assert_eq!(
        good.query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    assert!(connect(&gw, "billing", &token).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    let cancel = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cancel.cancel_query(NoTls).await.unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), sleeper)
        .await
        .expect("cancel took effect")
        .unwrap();
    let err = result.unwrap_err();
    assert_eq!(code(&err), "57014", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_after_copy_from_stdin_in_one_query_are_refused() {
    // PostgreSQL runs what follows `COPY ... FROM STDIN;` in one query as statements
    // once the COPY ends; a parser that read it as the COPY's rows would miss a DROP.
    let admin = superuser().await;
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS warden_t;
             DROP TABLE IF EXISTS warden_t.copy_guard;
             CREATE TABLE warden_t.copy_guard (id int4);
             GRANT USAGE ON SCHEMA warden_t TO warden_t_scram;
             GRANT ALL ON warden_t.copy_guard TO warden_t_scram;",
        )
        .await
        .unwrap();
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    for sql in [
        "COPY warden_t.copy_guard FROM STDIN;\nDROP TABLE warden_t.copy_guard",
        "COPY warden_t.copy_guard FROM STDIN; SELECT 1;\nDROP TABLE warden_t.copy_guard",
    ] {
        let err = c.simple_query(sql).await.err().unwrap();
        assert_eq!(code(&err), "42501", "{sql}: {err}");
        let message = err.as_db_error().unwrap().message();
        assert!(message.contains("after COPY"), "{message}");
    }
    let n: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'warden_t' AND tablename = 'copy_guard'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the table was dropped");
    // The session goes on; a COPY sent on its own still works.
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY warden_t.copy_guard FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"7\n")).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_both_ways_with_copied_rows_masked() {
    let admin = superuser().await;
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS warden_t;
             DROP TABLE IF EXISTS warden_t.copy_people, warden_t.copy_in;
             CREATE TABLE warden_t.copy_people (id int4, name text, ssn text, note text);
             INSERT INTO warden_t.copy_people VALUES
               (1, 'Ann', '078-05-1120', 'mail ann@example.com'),
               (2, E'tab\there', '219-09-9999', E'line\nbreak \\\\ back'),
               (3, 'Quote \"q\", comma', NULL, NULL);
             CREATE TABLE warden_t.copy_in (id int4, note text);
             GRANT USAGE ON SCHEMA warden_t TO warden_t_scram;
             GRANT SELECT ON warden_t.copy_people TO warden_t_scram;
             GRANT SELECT, INSERT ON warden_t.copy_in TO warden_t_scram;",
        )
        .await
        .unwrap();
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();

    // Extended protocol (tokio-postgres), text format: every row masked, the
    // column rule (`*.ssn`) and the detector (email) both apply, escapes survive.
    use futures_util::StreamExt;
    let copied: Vec<_> = c
        .copy_out("COPY warden_t.copy_people TO STDOUT")
        .await
        .unwrap()
        .collect()
        .await;
    let text: String = copied
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.unwrap()).into_owned())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        !text.contains("078-05-1120") && !text.contains("219-09-9999"),
        "{text}"
    );
    assert!(!text.contains("ann@example.com"), "{text}");
    assert!(lines[0].starts_with("1\tAnn\t"), "{text}");
    assert!(lines[0].ends_with("\tmail [redacted:email]"), "{text}");
    assert!(lines[1].starts_with("2\ttab\\there\t"), "{text}");
    assert!(lines[2].ends_with("\t\\N\t\\N"), "{text}");

    // Simple protocol (psql), CSV with a header, from a query with an alias.
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let out = std::process::Command::new("psql")
        .args([
            "-X",
            &format!("host=127.0.0.1 port={port} dbname=billing user=me"),
            "-c",
            "COPY (SELECT name, ssn AS x FROM warden_t.copy_people ORDER BY id) TO STDOUT WITH (FORMAT csv, HEADER)",
        ])
        .env("PGPASSWORD", &token)
        .output()
        .unwrap();
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(csv.starts_with("name,x\n"), "{csv}");
    assert!(!csv.contains("078-05-1120"), "{csv}");
    assert!(csv.contains("\"Quote \"\"q\"\", comma\""), "{csv}");

    // COPY FROM STDIN.
    let sink = c
        .copy_in::<_, bytes::Bytes>("COPY warden_t.copy_in FROM STDIN")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"1\tfirst\n2\tsecond\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 2);
    let n: i64 = c
        .query_one("SELECT count(*) FROM warden_t.copy_in", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // The client sent a Sync the server ignored during COPY-in; the next statement's
    // rows are still matched to their columns (the column rule on `ssn` applies).
    let ssn: String = c
        .query_one("SELECT ssn FROM warden_t.copy_people WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(ssn, "078-05-1120");

    // Binary COPY cannot be masked: the session ends before any data leaves.
    let leaked = match c
        .copy_out("COPY warden_t.copy_people TO STDOUT (FORMAT binary)")
        .await
    {
        Err(_) => false,
        Ok(s) => s
            .collect::<Vec<_>>()
            .await
            .iter()
            .any(|c| c.as_ref().is_ok_and(|b| !b.is_empty())),
    };
    assert!(!leaked, "binary COPY returned data");
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, sessions) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    let ended = sessions.as_array().unwrap().iter().find(|s| {
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("COPY format binary"))
    });
    let ended = ended.unwrap_or_else(|| panic!("{sessions}"));
    // The recording has both copies, counted.
    let (_, rec) = gw
        .admin(
            "GET",
            &format!("/api/sessions/{}/recording", ended["id"].as_str().unwrap()),
            None,
        )
        .await;
    let copies: Vec<_> = rec["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "copy")
        .collect();
    assert!(
        copies
            .iter()
            .any(|e| e["direction"] == "out" && e["rows"] == 3),
        "{copies:?}"
    );
    assert!(
        copies
            .iter()
            .any(|e| e["direction"] == "in" && e["rows"] == 2),
        "{copies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_quoted_in_server_errors_are_masked() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    // The server quotes the value in its error message.
    let err = c
        .simple_query("SELECT 'owner is bob@example.com'::int")
        .await
        .unwrap_err();
    let db = err.as_db_error().unwrap();
    assert_eq!(db.code().code(), "22P02");
    assert!(!db.message().contains("bob@"), "{}", db.message());
    assert!(
        db.message().contains("[redacted:email]"),
        "{}",
        db.message()
    );
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_passes_through_with_payloads_masked() {
    use futures_util::StreamExt;
    let (gw, token) = setup(Backend::Sqlite).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let (listener, mut conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=x dbname=billing password={token}"),
        NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.unwrap();
    let sender = connect(&gw, "billing", &token).await.unwrap();
    sender
        .batch_execute("NOTIFY jobs, 'done for carol@example.com'")
        .await
        .unwrap();
    let (channel, payload) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(channel, "jobs");
    assert_eq!(payload, "done for [redacted:email]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_tls_is_verified_and_never_downgraded() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let (ca, _) = pg_server_ca();
    let add = |name: &str, tls: serde_json::Value| {
        let body = json!({
            "name": name, "kind": "postgres", "target": "127.0.0.1:5432/postgres",
            "username": "warden_t_scram", "secret": BACKEND_PASSWORD, "allowed_groups": ["dba"],
            "tls": tls
        });
        let gw = &gw;
        async move {
            let (status, b) = gw.admin("POST", "/api/connections", Some(body)).await;
            assert_eq!(status, 201, "{b}");
        }
    };
    // The certificate is fine but issued to another name.
    add(
        "wrong-name",
        json!({"mode": "verify", "ca_pem": ca, "server_name": "db.elsewhere.example"}),
    )
    .await;
    // A self-signed certificate the system roots do not trust.
    add("system-roots", json!({"mode": "verify"})).await;
    // The explicit opt-out: encrypted, not verified.
    add("opt-out", json!({"mode": "insecure"})).await;
    for name in ["wrong-name", "system-roots"] {
        let err = connect(&gw, name, &token).await.err().unwrap();
        assert_eq!(code(&err), "08006", "{name}: {err}");
        let message = err.as_db_error().unwrap().message().to_string();
        assert!(
            message.contains("TLS with the database failed"),
            "{message}"
        );
        // The fix is named.
        for fix in ["tls.ca_pem", "tls.server_name", "insecure"] {
            assert!(message.contains(fix), "{message}");
        }
        assert!(!message.contains(BACKEND_PASSWORD));
    }
    let c = connect(&gw, "opt-out", &token).await.unwrap();
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let ends = gw.audit_events("session.end").await;
    assert!(
        ends.iter().any(|e| e["event"]["payload"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("TLS")),
        "{ends:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_use_tls_with_full_verification() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path, ca_path) = (
        dir.path().join("pg.crt"),
        dir.path().join("pg.key"),
        dir.path().join("ca.crt"),
    );
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let mut config = base_config(dir.path(), store_url, vec![]);
    config.pg.tls_cert = Some(cert_path);
    config.pg.tls_key = Some(key_path);
    let ca = ca_path.display().to_string();
    let (gw, token) = setup_with(TestGateway::with_config(config, dir).await).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let psql = |sslmode: &str, root: &str| {
        std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                &format!(
                    "host=localhost port={port} dbname=billing user=me sslmode={sslmode} sslrootcert={root}"
                ),
                "-c",
                "SELECT 'tls ok'",
            ])
            .env("PGPASSWORD", &token)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let out = psql("verify-full", &ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "tls ok");
    // Verification against a CA that did not issue the certificate fails on the client.
    let (snakeoil, _) = pg_server_ca();
    let other = gw.dir.path().join("other-ca.crt");
    std::fs::write(&other, snakeoil).unwrap();
    let out = psql("verify-full", &other.display().to_string());
    assert!(!out.status.success());
    // Plain connections still work on loopback.
    let out = psql("disable", &ca);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A database of its own, owned by the held role, for tests that create tables.
async fn own_database(prefix: &str) -> String {
    let admin = superuser().await;
    let name = format!("warden_t_{prefix}_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {name} OWNER warden_t_scram"))
        .await
        .unwrap();
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initializes_and_runs_through_the_gateway() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let db = own_database("pgbench").await;
    // pgbench -i creates and drops tables: a connection with masking, no guardrails.
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": "bench", "kind": "postgres", "target": format!("127.0.0.1:5432/{db}"),
                "username": "warden_t_scram", "secret": BACKEND_PASSWORD, "allowed_groups": ["dba"],
                "policies": {"masking": ["pii"]}, "tls": {"mode": "disable"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port()
        .to_string();
    let pgbench = |args: &[&str]| {
        let out = std::process::Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "me"])
            .args(args)
            .arg("bench")
            .env("PGPASSWORD", &token)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pgbench {args:?}:\n{text}");
        text
    };
    // Initialization loads pgbench_accounts with COPY FROM STDIN.
    pgbench(&["-i", "-s", "1", "-q"]);
    // The TPC-B-like script in each query mode, two clients.
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&["-M", mode, "-c", "2", "-j", "2", "-t", "25", "-n"]);
        assert!(
            out.contains("number of transactions actually processed: 50/50"),
            "{mode}:\n{out}"
        );
    }
    // Every execution is an audit event, prepared ones too (each Bind).
    let mut updates = 0;
    let mut after = 0;
    loop {
        let (_, page) = gw
            .admin(
                "GET",
                &format!("/api/audit?kind=pg.query&limit=1000&after_seq={after}"),
                None,
            )
            .await;
        updates += page["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["event"]["payload"]["sql"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("UPDATE pgbench_accounts"))
            })
            .count();
        match page["next_after_seq"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(updates, 150, "audited updates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dying_backend_or_client_ends_only_its_session() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let bystander = connect(&gw, "billing", &token).await.unwrap();
    let admin = superuser().await;

    // The database kills the session's backend mid-query.
    let victim = connect(&gw, "billing", &token).await.unwrap();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let running = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), running)
        .await
        .expect("the client is told, not left hanging")
        .unwrap();
    assert!(result.is_err());

    // A client vanishes mid-query (killed, no Terminate): the gateway cancels what
    // it left running.
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let mut psql = std::process::Command::new("psql")
        .args([
            "-X",
            &format!("host=127.0.0.1 port={port} dbname=billing user=me application_name=leaver"),
            "-c",
            "SELECT pg_sleep(30)",
        ])
        .env("PGPASSWORD", &token)
        .spawn()
        .unwrap();
    let mut leaver_pid = None;
    for _ in 0..100 {
        let row = admin
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND application_name = 'leaver'",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = row {
            leaver_pid = Some(r.get::<_, i32>(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let leaver_pid = leaver_pid.expect("the sleeping query reached the database");
    psql.kill().unwrap();
    let _ = psql.wait();
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&leaver_pid],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(gone, "the abandoned query kept running");

    // Everyone else goes on, and both sessions are recorded as ended with a reason.
    assert_eq!(
        bystander
            .query_one("SELECT 7::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        7
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, sessions) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    let reasons: Vec<String> = sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["end_reason"].as_str().map(String::from))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("database closed the connection")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("client disconnected")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_long_results_stream_through_masking() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    // One 32 MiB value with an email at its end: masked, length recomputed.
    let row = c
        .query_one(
            "SELECT repeat('x', 32 * 1024 * 1024) || ' mail big@example.com' AS v",
            &[],
        )
        .await
        .unwrap();
    let v: String = row.get(0);
    assert_eq!(v.len(), 32 * 1024 * 1024 + " mail [redacted:email]".len());
    assert!(v.ends_with(" mail [redacted:email]"));
    // A 32 MiB parameter on the way in.
    let big = "y".repeat(32 * 1024 * 1024);
    let n: i32 = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, big.len());
    // 300 000 rows, every one masked, arriving as a stream.
    use futures_util::StreamExt;
    let stream = c
        .query_raw(
            "SELECT g, 'u' || g || '@example.com' FROM generate_series(1, 300000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut rows = 0;
    while let Some(row) = stream.next().await {
        let row = row.unwrap();
        let mail: String = row.get(1);
        assert_eq!(mail, "[redacted:email]");
        rows += 1;
    }
    assert_eq!(rows, 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_from_the_real_provider_work_and_expired_ones_do_not() {
    let (gw, _) = setup(Backend::Sqlite).await;
    // Client-credentials JWTs from the real OpenID provider, as the password.
    let ci = provider_token("ci-deployer", PROVIDER_AUDIENCE).await;
    let c = connect(&gw, "billing", &ci).await.unwrap();
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "warden_t_scram");
    // Not in the connection's groups.
    let dev = provider_token("dev-alice", PROVIDER_AUDIENCE).await;
    let err = connect(&gw, "billing", &dev).await.err().unwrap();
    assert_eq!(code(&err), "3D000", "{err}");
    // Lives two seconds; past that and the one-second skew, it is refused as expired.
    let short = provider_token("short-lived", PROVIDER_AUDIENCE).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let err = connect(&gw, "billing", &short).await.err().unwrap();
    assert_eq!(code(&err), "28P01", "{err}");
    assert!(
        err.as_db_error().unwrap().message().contains("expired"),
        "{err}"
    );
    let failures = gw.audit_events("auth.failure").await;
    assert!(
        failures
            .iter()
            .any(|e| e["event"]["payload"]["code"] == "token_expired"
                && e["event"]["payload"]["protocol"] == "postgres")
    );
    // The session of the valid token is attributed to the provider's subject.
    drop(c);
    let starts = gw.audit_events("session.start").await;
    assert!(
        starts
            .iter()
            .any(|e| e["event"]["identity"]["subject"] == "ci-deployer"),
        "{starts:?}"
    );
}

/// Server and account changes on a read-only connection, through psql: `ALTER
/// SYSTEM`, `DO` blocks and password changes are refused and change nothing; cursor
/// forms the parser does not know (`FETCH ALL c`) are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_account_changes_are_refused_and_cursors_work_with_psql() {
    let (gw, token) = setup(Backend::Sqlite).await;
    add_plain(&gw, "billing-ro", json!({"guardrails": ["read-only"]})).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port()
        .to_string();
    let psql = |commands: &[&str]| {
        let mut cmd = std::process::Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-p", &port, "-U", "someone", "-d", "billing-ro"]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        cmd.env("PGPASSWORD", &token)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let admin = superuser().await;
    let work_mem: String = admin.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    for sql in [
        "ALTER SYSTEM SET work_mem = '77MB'",
        "DO $$ BEGIN EXECUTE 'ALTER SYSTEM SET work_mem = ''77MB'''; END $$",
        "ALTER USER warden_t_scram PASSWORD 'changed'",
        "ALTER ROLE warden_t_scram WITH PASSWORD 'changed'",
    ] {
        let out = psql(&[sql]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{sql} ran");
        assert!(stderr.contains("Warden denied"), "{sql}: {stderr}");
    }
    // Nothing changed: the configuration file and the held account's password.
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    let now: String = admin.query_one("SHOW work_mem", &[]).await.unwrap().get(0);
    assert_eq!(now, work_mem);
    let auto: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_file_settings WHERE name = 'work_mem' AND setting = '77MB'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(auto, 0);
    let (direct, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=warden_t_scram dbname=postgres password={BACKEND_PASSWORD}"),
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    direct.simple_query("SELECT 1").await.unwrap();
    // Cursors, in the forms the parser does not know.
    let out = psql(&[
        "BEGIN",
        "DECLARE c CURSOR FOR SELECT generate_series(1, 3)",
        "FETCH 1 c",
        "MOVE NEXT c",
        "FETCH ALL c",
        "COMMIT",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "BEGIN\nDECLARE CURSOR\n1\nMOVE 1\n3\nCOMMIT\n"
    );
}

/// A card number the server spells as a float (`4.111111111111111e+15`) is masked
/// like its digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_in_other_spellings_are_masked() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    let rows = c
        .simple_query("SELECT '4111111111111111'::float8, to_char(4111111111111111, 'FM9,999,999,999,999,999')")
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    for i in 0..2 {
        let v = row.get(i).unwrap();
        assert!(!v.contains("4111") && !v.contains("4.111"), "{v}");
    }
}

/// Literals in statements are masked in what Warden keeps (audit events, the
/// recording) with the connection's masking sets; the database gets them as sent. A
/// connection may keep statements verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_text_is_masked_in_the_record_unless_kept_verbatim() {
    let (gw, token) = setup(Backend::Sqlite).await;
    add_plain(
        &gw,
        "billing-verbatim",
        json!({"masking": ["pii"], "verbatim_statements": true}),
    )
    .await;
    let sql = "SELECT count(*) FROM pg_roles WHERE rolname = 'alice@example.com'";
    for db in ["billing", "billing-verbatim"] {
        let c = connect(&gw, db, &token).await.unwrap();
        // The database got the literal: the query ran as written.
        let n: i64 = c.query_one(sql, &[]).await.unwrap().get(0);
        assert_eq!(n, 0);
        let rows = c.simple_query(sql).await.unwrap();
        assert!(!rows.is_empty());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = gw.audit_events("pg.query").await;
    let texts: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| {
            let text = e["event"]["payload"]["sql"].as_str()?;
            text.contains("pg_roles").then(|| {
                (
                    e["event"]["connection"].as_str().unwrap_or("").to_string(),
                    text.to_string(),
                )
            })
        })
        .collect();
    assert!(texts.len() >= 4, "{texts:?}");
    for (connection, text) in &texts {
        if connection == "billing" {
            assert!(!text.contains("alice@example.com"), "{text}");
            assert!(text.contains("[redacted:email]"), "{text}");
        } else {
            assert_eq!(text, sql);
        }
    }
    // The masked connection's recordings hold no literal either.
    let (_, sessions) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    for s in sessions.as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let (_, recording) = gw
            .admin("GET", &format!("/api/sessions/{id}/recording"), None)
            .await;
        assert!(!recording.to_string().contains("alice@example.com"));
    }
}

/// Any value of a type whose binary form Warden reads without its text: nothing is
/// kept but whether it is NULL and its bytes.
#[derive(Debug)]
struct RawValue(Option<Vec<u8>>);

impl<'a> tokio_postgres::types::FromSql<'a> for RawValue {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(Some(raw.to_vec())))
    }
    fn from_sql_null(
        _: &tokio_postgres::types::Type,
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawValue(None))
    }
    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }
}

/// A client that asks for binary results (tokio-postgres does, as asyncpg does) gets
/// every value masked that text format masks: containers, records, jsonb, numbers
/// and bytea are decoded and masked, or become NULL when they cannot be masked in
/// their own type — never plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_are_masked_or_nulled_never_plaintext() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let c = connect(&gw, "billing", &token).await.unwrap();
    let leaks = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        text.contains("bob@example.com") || text.contains("4111") || text.contains("4.111")
    };
    for (sql, expect_null) in [
        ("SELECT 4111111111111111::int8", true),
        ("SELECT 4111111111111111::numeric", true),
        ("SELECT '4111111111111111'::float8", true),
        ("SELECT ARRAY['bob@example.com']", false),
        (
            "SELECT array_agg(x) FROM (VALUES ('bob@example.com')) v(x)",
            false,
        ),
        ("SELECT ARRAY[4111111111111111::int8, 7]", false),
        ("SELECT row('bob@example.com'::text, 1)", false),
        ("SELECT to_tsvector('simple', 'bob@example.com')", true),
        ("SELECT jsonb_build_object('e', 'bob@example.com')", false),
        ("SELECT to_jsonb('4111 1111 1111 1111'::text)", false),
        ("SELECT 'bob@example.com'::bytea", false),
    ] {
        // Text format masks it...
        let rows = c.simple_query(sql).await.unwrap();
        for m in &rows {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                assert!(!leaks(r.get(0).unwrap_or("").as_bytes()), "text: {sql}");
            }
        }
        // ...and so does binary.
        let row = c.query_one(sql, &[]).await.unwrap();
        let RawValue(value) = row.get(0);
        match value {
            None => assert!(expect_null, "{sql}: NULL"),
            Some(bytes) => {
                assert!(!expect_null, "{sql}: {bytes:?}");
                assert!(!leaks(&bytes), "{sql}: {}", String::from_utf8_lossy(&bytes));
            }
        }
    }
    // Values with nothing sensitive come through as they are.
    let row = c
        .query_one(
            "SELECT 42::int8, 3.5::numeric, ARRAY[1, 2], '{\"a\": 1}'::jsonb",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 42);
    for i in 1..4 {
        let RawValue(v) = row.get(i);
        assert!(v.is_some(), "column {i}");
    }
}

/// asyncpg asks for binary results for every type it knows: what it gets back is
/// masked or NULL, never plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_binary_results_are_masked() {
    let (gw, token) = setup(Backend::Sqlite).await;
    add_plain(&gw, "billing-plain", json!({"masking": ["pii"]})).await;
    let port = gw
        .gateway
        .listener(warden_core::ConnectionKind::Postgres)
        .unwrap()
        .port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/asyncpg_binary.py"
    );
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .env("WARDEN_PG_PORT", port.to_string())
        .env("WARDEN_TOKEN", &token)
        .env("WARDEN_DB", "billing-plain")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 10, "{stdout}");
    for r in &results[..9] {
        let value = r["value"].as_str().unwrap_or("NULL");
        assert!(
            !value.contains("example.com") && !value.contains("4111") && !value.contains("4.111"),
            "{r}"
        );
    }
    assert_eq!(results[9]["value"], "42");
}

/// A whole-row reference to a table (`SELECT u FROM t u`) masks the fields its
/// column rules cover, in text and in binary format.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_row_references_mask_their_fields_in_both_formats() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let table = format!("warden_t_rows_{}", std::process::id());
    let admin = superuser().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int, name text, ssn text);
             INSERT INTO {table} VALUES (1, 'alice, a', 'secret-ssn-value');
             GRANT SELECT ON {table} TO warden_t_scram"
        ))
        .await
        .unwrap();
    let c = connect(&gw, "billing", &token).await.unwrap();
    let sql = format!("SELECT u FROM {table} u");
    let rows = c.simple_query(&sql).await.unwrap();
    let text = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap();
    assert!(!text.contains("secret-ssn-value"), "{text}");
    assert!(text.starts_with("(1,\"alice, a\","), "{text}");
    let row = c.query_one(&sql, &[]).await.unwrap();
    let RawValue(binary) = row.get(0);
    let binary = binary.expect("a record, its ssn field masked");
    assert!(
        !String::from_utf8_lossy(&binary).contains("secret-ssn-value"),
        "{binary:?}"
    );
    assert!(String::from_utf8_lossy(&binary).contains("alice, a"));
    // User types that are strings (enums) are masked as strings, not nulled.
    admin
        .batch_execute(&format!(
            "CREATE TYPE {table}_mood AS ENUM ('happy', 'bob@example.com')"
        ))
        .await
        .unwrap();
    let row = c
        .query_one(
            &format!("SELECT 'happy'::{table}_mood, 'bob@example.com'::{table}_mood"),
            &[],
        )
        .await
        .unwrap();
    let RawValue(happy) = row.get(0);
    assert_eq!(happy.as_deref(), Some(&b"happy"[..]));
    let RawValue(email) = row.get(1);
    let email = email.expect("masked, not NULL");
    assert!(!String::from_utf8_lossy(&email).contains("bob@example.com"));
    admin
        .batch_execute(&format!("DROP TABLE {table}; DROP TYPE {table}_mood"))
        .await
        .unwrap();
}

/// The door of every proxy listener: a client address holding its limit of
/// connections is turned away with the protocol's "too many connections" error
/// (PostgreSQL 53300, MySQL 1040), recorded once in full and then counted, and gets
/// in again once it lets go; a flood of bad tokens is likewise one `auth.failure`
/// in full and then a count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_turned_away_at_the_door_and_counted_not_logged_one_by_one() {
    use tokio::io::AsyncReadExt;
    let gw = TestGateway::sqlite_with(|c| {
        c.connections.max_per_client = 3;
    })
    .await;
    let pg = gw.gateway.listener(ConnectionKind::Postgres).unwrap();
    let mysql = gw.gateway.listener(ConnectionKind::Mysql).unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(pg).await.unwrap());
        held.push(tokio::net::TcpStream::connect(mysql).await.unwrap());
    }
    let turned_away = |addr| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    for _ in 0..4 {
        let answer = turned_away(pg).await;
        assert!(
            answer.contains("53300") && answer.contains("too many connections from your address"),
            "{answer}"
        );
    }
    let answer = turned_away(mysql).await;
    assert!(
        answer.contains("08004") && answer.contains("too many connections"),
        "{answer}"
    );
    // Once it lets go, it gets in again (its login then goes on as usual).
    drop(held);
    let key = gw.key_for("flood", &["dev"]).await;
    eventually("a connection after the held ones closed", || async {
        let answer = turned_away(pg).await;
        (!answer.contains("53300")).then_some(())
    })
    .await;

    // Fifty bad tokens from one address: one event in full, then one count.
    let bad = format!("{key}x");
    for _ in 0..50 {
        let refused = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=a dbname=none password={bad}",
                pg.port()
            ),
            tokio_postgres::NoTls,
        )
        .await;
        assert!(refused.is_err());
    }
    let failures = eventually("the count of repeated failures", || async {
        let events = gw.audit_events("auth.failure").await;
        events
            .iter()
            .any(|e| e["event"]["payload"]["repeats"].is_number())
            .then_some(events)
    })
    .await;
    let mine: Vec<&Value> = failures
        .iter()
        .filter(|e| e["event"]["payload"]["code"] == "invalid_api_key")
        .collect();
    assert_eq!(mine.len(), 2, "one in full, one count: {mine:?}");
    assert!(mine[0]["event"]["payload"]["repeats"].is_null());
    assert_eq!(mine[1]["event"]["payload"]["repeats"], 49);
    let refused = gw.audit_events("listener.refused").await;
    let pg_refusals: Vec<&Value> = refused
        .iter()
        .filter(|e| e["event"]["payload"]["protocol"] == "postgres")
        .collect();
    assert!(!pg_refusals.is_empty(), "{refused:?}");
    assert_eq!(pg_refusals[0]["event"]["payload"]["code"], "client_limit");
}

/// A COPY's columns are described on the gateway's own catalog connection, whose
/// search_path is not the session's: an unqualified name that two schemas (or a
/// temporary table) share is refused before any data leaves, instead of being masked
/// by the rules of the wrong table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_name_two_schemas_share_is_refused_not_masked_as_the_wrong_table() {
    let admin = superuser().await;
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS warden_amb;
             DROP TABLE IF EXISTS public.amb_people, warden_amb.amb_people, public.amb_unique;
             CREATE TABLE public.amb_people (id int4, note text);
             CREATE TABLE warden_amb.amb_people (id int4, ssn text);
             INSERT INTO warden_amb.amb_people VALUES (1, '078-05-1120');
             CREATE TABLE public.amb_unique (id int4, ssn text);
             INSERT INTO public.amb_unique VALUES (1, '219-09-9999');
             GRANT USAGE ON SCHEMA warden_amb TO warden_t_scram;
             GRANT SELECT ON warden_amb.amb_people, public.amb_people, public.amb_unique
               TO warden_t_scram;",
        )
        .await
        .unwrap();
    let (gw, token) = setup(Backend::Sqlite).await;
    use futures_util::StreamExt;
    let copy = |c: tokio_postgres::Client, sql: &'static str| async move {
        match c.copy_out(sql).await {
            Err(e) => Err(e.to_string()),
            Ok(s) => {
                let mut text = String::new();
                for chunk in s.collect::<Vec<_>>().await {
                    match chunk {
                        Ok(b) => text.push_str(&String::from_utf8_lossy(&b)),
                        Err(e) => return Err(format!("{text}{e}")),
                    }
                }
                Ok(text)
            }
        }
    };
    // The session looks in warden_amb first: `amb_people` is the table with SSNs,
    // while the catalog connection would describe public.amb_people (no ssn column).
    let c = connect(&gw, "billing", &token).await.unwrap();
    c.batch_execute("SET search_path = warden_amb, public")
        .await
        .unwrap();
    let refused = copy(c, "COPY amb_people TO STDOUT").await;
    let shown = format!("{refused:?}");
    assert!(!shown.contains("078-05-1120"), "an SSN leaked: {shown}");
    assert!(refused.is_err(), "{shown}");
    // The `TABLE name` form too.
    let c = connect(&gw, "billing", &token).await.unwrap();
    c.batch_execute("SET search_path = warden_amb, public")
        .await
        .unwrap();
    let refused = copy(c, "COPY (TABLE amb_people) TO STDOUT").await;
    let shown = format!("{refused:?}");
    assert!(!shown.contains("078-05-1120"), "an SSN leaked: {shown}");
    assert!(refused.is_err(), "{shown}");
    // Qualified, it is masked by its own table's rules; a name only one schema
    // holds needs no qualification.
    let c = connect(&gw, "billing", &token).await.unwrap();
    let masked = copy(c, "COPY warden_amb.amb_people TO STDOUT")
        .await
        .unwrap();
    assert!(
        masked.starts_with("1\t") && !masked.contains("078-05-1120"),
        "{masked}"
    );
    let c = connect(&gw, "billing", &token).await.unwrap();
    let masked = copy(c, "COPY (SELECT * FROM amb_unique) TO STDOUT")
        .await
        .unwrap();
    assert!(!masked.contains("219-09-9999"), "{masked}");
    // The refusal names why.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (_, sessions) = gw
        .admin("GET", "/api/sessions?connection=billing", None)
        .await;
    assert!(
        sessions.as_array().unwrap().iter().any(|s| s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("qualify it"))),
        "{sessions}"
    );
}
