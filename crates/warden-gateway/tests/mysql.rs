//! The MySQL proxy in the gateway: real clients (mysql_async, the `mysql` CLI) with a
//! Warden token, the machine's MariaDB behind, the held password never shown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

mod support;

use bytes::BytesMut;
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use serde_json::json;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_mysql::handshake::{HandshakeResponse, caps};
use warden_mysql::packet::{Packet, PacketDecoder, put_packet};
use warden_store::Backend;

/// The held passwords of the accounts `scripts/test.sh` creates.
const NATIVE_PASSWORD: &str = "native-pw-1";
const ED25519_PASSWORD: &str = "ed-pw-1";

fn mariadb() -> String {
    std::env::var("WARDEN_TEST_MYSQL_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3306".into())
}

/// A table name no other test uses.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

async fn add_connection(gw: &TestGateway, name: &str, user: &str, password: &str) {
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": name, "kind": "mysql", "target": format!("{}/warden_t", mariadb()),
                "username": user, "secret": password, "allowed_groups": ["dba"],
                "policies": {"guardrails": ["no-drops"], "masking": ["pii"]},
                "tls": {"mode": "disable"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Adds the `shop` connection (the `warden_t_native` account) and an API key in
/// group `dba`.
async fn setup_with(gw: TestGateway) -> (TestGateway, String) {
    add_connection(&gw, "shop", "warden_t_native", NATIVE_PASSWORD).await;
    let (_, key) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "dba-job", "groups": ["dba"]})),
        )
        .await;
    (gw, key["token"].as_str().unwrap().to_string())
}

async fn setup(backend: Backend) -> (TestGateway, String) {
    setup_with(TestGateway::start(backend, None).await).await
}

fn port(gw: &TestGateway) -> u16 {
    gw.gateway
        .listener(warden_core::ConnectionKind::Mysql)
        .unwrap()
        .port()
}

async fn connect(gw: &TestGateway, db: &str, token: &str) -> Result<Conn, mysql_async::Error> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port(gw))
        .user(Some("anyone"))
        .pass(Some(token))
        .db_name(Some(db))
        .enable_cleartext_plugin(true);
    Conn::new(opts).await
}

/// A direct connection to MariaDB as root, for setting up tables.
async fn root() -> Conn {
    let (host, port) = mariadb()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.parse().unwrap()))
        .unwrap();
    let opts = OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some("root"))
        .db_name(Some("warden_t"));
    Conn::new(opts).await.unwrap()
}

fn server_code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        other => panic!("not a server error: {other:?}"),
    }
}

fn server_message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => s.message.clone(),
        other => panic!("not a server error: {other:?}"),
    }
}

both_stores!(token_login_guardrails_masking_audit_and_sessions);
async fn token_login_guardrails_masking_audit_and_sessions(backend: Backend) {
    let (gw, token) = setup(backend).await;
    let table = unique("people");
    let mut admin = root().await;
    admin
        .query_drop(format!(
            "CREATE TABLE {table} (id INT PRIMARY KEY, name VARCHAR(50), email VARCHAR(100), \
             ssn VARCHAR(20), card BIGINT, born DATE, balance DECIMAL(10,2)); \
             INSERT INTO {table} VALUES \
             (1, 'Ann', 'ann@example.com', '123-45-6789', 4111111111111111, '1990-05-17', 12.50), \
             (2, 'Bob', NULL, NULL, 42, NULL, -3.25)"
        ))
        .await
        .unwrap();

    let mut c = connect(&gw, "shop", &token).await.unwrap();
    // The backend session is the held account, not the client's user name.
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "warden_t_native@%");

    // Text protocol: detectors, the column rule, a number a detector matches.
    let rows: Vec<Row> = c
        .query(format!(
            "SELECT id, name, email, ssn, card FROM {table} ORDER BY id"
        ))
        .await
        .unwrap();
    let first: Vec<Option<String>> = (0..5).map(|i| rows[0].get(i).unwrap()).collect();
    assert_eq!(first[0].as_deref(), Some("1"));
    assert_eq!(first[1].as_deref(), Some("Ann"));
    assert_eq!(first[2].as_deref(), Some("[redacted:email]"));
    assert_ne!(first[3].as_deref(), Some("123-45-6789"));
    assert!(first[3].is_some());
    assert_eq!(first[4].as_deref(), Some("[redacted:card_number]"));
    let second: Vec<Option<String>> = (0..5).map(|i| rows[1].get(i).unwrap()).collect();
    assert_eq!(
        second,
        vec![
            Some("2".into()),
            Some("Bob".into()),
            None,
            None,
            Some("42".into())
        ]
    );

    // Binary protocol (a prepared statement): strings masked, a number a detector
    // matches becomes NULL, everything else keeps its type and value.
    let row: Row = c
        .exec_first(
            format!("SELECT id, email, ssn, card, born, balance FROM {table} WHERE id = ?"),
            (1,),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i32, _>(0), Some(1));
    assert_eq!(row.get::<String, _>(1).as_deref(), Some("[redacted:email]"));
    assert_ne!(row.get::<String, _>(2).as_deref(), Some("123-45-6789"));
    assert_eq!(row.get::<Value, _>(3), Some(Value::NULL));
    assert_eq!(
        row.get::<Value, _>(4),
        Some(Value::Date(1990, 5, 17, 0, 0, 0, 0))
    );
    assert_eq!(row.get::<String, _>(5).as_deref(), Some("12.50"));
    let row: Row = c
        .exec_first(
            format!("SELECT id, card, balance FROM {table} WHERE id = ?"),
            (2,),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.get::<i64, _>(1), Some(42));
    assert_eq!(row.get::<String, _>(2).as_deref(), Some("-3.25"));

    // Several statements, several result sets: every one masked.
    let mut result = c
        .query_iter(format!(
            "SELECT email FROM {table} WHERE id = 1; SELECT 'x@example.com' AS e; UPDATE {table} SET name = 'Ann' WHERE id = 1"
        ))
        .await
        .unwrap();
    let a: Vec<String> = result.collect().await.unwrap();
    let b: Vec<String> = result.collect().await.unwrap();
    result.drop_result().await.unwrap();
    assert_eq!(a, vec!["[redacted:email]"]);
    assert_eq!(b, vec!["[redacted:email]"]);

    // A denied statement never runs; the session goes on.
    let err = c
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 1227, "{err}");
    assert!(server_message(&err).contains("no-drops/no-ddl"), "{err}");
    let err = c.prep(format!("DROP TABLE {table}")).await.unwrap_err();
    assert_eq!(server_code(&err), 1227, "{err}");
    let err = c
        .query_drop(format!("DELETE FROM {table}"))
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 1227, "{err}");
    let n: i64 = c
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 2);
    // The server's own errors come through as they are.
    let err = c
        .query_drop("SELECT * FROM no_such_table_here")
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 1146, "{err}");
    c.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Every statement is in the audit log with the identity and the decision.
    let queries = gw.audit_events("mysql.query").await;
    let drop_event = queries
        .iter()
        .find(|e| e["event"]["payload"]["sql"] == format!("DROP TABLE {table}").as_str())
        .unwrap();
    assert_eq!(drop_event["event"]["decision"]["outcome"], "deny");
    assert_eq!(drop_event["event"]["identity"]["subject"], "apikey:dba-job");
    assert_eq!(drop_event["event"]["connection"], "shop");
    let execute = queries
        .iter()
        .find(|e| e["event"]["payload"]["via"] == "COM_STMT_EXECUTE")
        .unwrap();
    assert_eq!(
        execute["event"]["payload"]["params"]["count"], 1,
        "{execute}"
    );
    // Each outcome names its statement: the server's error, the denial, the
    // prepared statement's execution.
    let outcomes = gw.outcomes("mysql").await;
    let of = |event: &serde_json::Value| {
        outcomes
            .iter()
            .filter(|o| o["statement"] == event["event"]["id"])
            .collect::<Vec<_>>()
    };
    let missing = queries
        .iter()
        .find(|e| e["event"]["payload"]["sql"] == "SELECT * FROM no_such_table_here")
        .unwrap();
    assert_eq!(of(missing).len(), 1, "{outcomes:?}");
    assert_eq!(of(missing)[0]["error"]["code"], "1146");
    assert_eq!(of(drop_event)[0]["error"]["code"], "1227", "{outcomes:?}");
    assert_eq!(of(execute).len(), 1, "{outcomes:?}");

    // The session was recorded and closed.
    let (_, sessions) = gw.admin("GET", "/api/sessions?connection=shop", None).await;
    let s = &sessions[0];
    assert_eq!(s["protocol"], "mysql");
    assert_eq!(s["subject"], "apikey:dba-job");
    assert_eq!(s["denied"], 3, "{s}");
    assert_eq!(s["status"], "closed", "{s}");
    assert!(s["bytes_in"].as_i64().unwrap() > 0, "{s}");
    let id = s["id"].as_str().unwrap();
    let (status, rec) = gw
        .admin("GET", &format!("/api/sessions/{id}/recording"), None)
        .await;
    assert_eq!(status, 200, "{rec}");
    assert_eq!(rec["header"]["protocol"], "mysql");
    let entries = rec["entries"].as_array().unwrap();
    assert!(
        entries.iter().any(|e| e["kind"] == "result"
            && e["rows"][0][2] == "[redacted:email]"
            && e["rows_total"] == 2),
        "{entries:?}"
    );
    assert!(entries.iter().any(|e| e["kind"] == "statement"
        && e["sql"] == format!("DROP TABLE {table}").as_str()
        && e["decision"]["outcome"] == "deny"));
    assert!(
        entries
            .iter()
            .any(|e| e["kind"] == "error" && e["code"] == "1227")
    );
    assert_eq!(entries.last().unwrap()["kind"], "end");

    // The held password is in no answer, event or recording; unmasked values are in
    // no recording either.
    let recordings = gw.recordings_text();
    assert!(!recordings.contains("ann@example.com"));
    assert!(!recordings.contains("4111111111111111"));
    let all = gw.everything_visible(&[&sessions, &rec]).await;
    assert!(!all.contains(NATIVE_PASSWORD));
    assert_eq!(
        gw.admin("GET", "/api/audit/verify", None).await.1["ok"],
        true
    );
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logins_and_commands_name_the_reason() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let err = connect(&gw, "shop", "wdn_nope_00").await.unwrap_err();
    assert_eq!(server_code(&err), 1045, "{err}");
    let err = connect(&gw, "no-such-connection", &token)
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 1044, "{err}");
    // A PostgreSQL connection is not reachable through the MySQL listener.
    let (status, _) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(
                json!({"name": "pgdb", "kind": "postgres", "target": "127.0.0.1:5432",
                        "username": "postgres", "allowed_groups": ["dba"]}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    let err = connect(&gw, "pgdb", &token).await.unwrap_err();
    assert_eq!(server_code(&err), 1044, "{err}");
    // A key whose groups do not include the connection's.
    let (_, other) = gw
        .admin(
            "POST",
            "/api/api-keys",
            Some(json!({"name": "dev", "groups": ["developers"]})),
        )
        .await;
    let err = connect(&gw, "shop", other["token"].as_str().unwrap())
        .await
        .unwrap_err();
    assert_eq!(server_code(&err), 1044, "{err}");
    // No connection named at all.
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port(&gw))
        .user(Some("me"))
        .pass(Some(token.as_str()))
        .enable_cleartext_plugin(true);
    let err = Conn::new(opts).await.unwrap_err();
    assert_eq!(server_code(&err), 1046, "{err}");

    // COM_CHANGE_USER would swap the held account: refused, and the session is
    // not usable under a different identity afterwards.
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    let change = c
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some("root".into()))
                .with_pass(None),
        )
        .await;
    assert!(change.is_err(), "{change:?}");
    drop(c);

    // COM_INIT_DB cannot leave the connection's database; within it, it works.
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    send_raw(&mut s, 0, b"\x02mysql").await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(p.payload[0], 0xFF);
    assert_eq!(err_code(&p), 1044);
    assert!(String::from_utf8_lossy(&p.payload).contains("limited to the database `warden_t`"));
    send_raw(&mut s, 0, b"\x02warden_t").await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(p.payload[0], 0, "{:?}", p.payload);
    // Nor can a USE statement, however it is written; within it, it works.
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    for sql in [
        "USE mysql",
        "use `mysql`",
        "SELECT 1; USE mysql",
        "/* x */ USE mysql",
    ] {
        let err = c.query_drop(sql).await.unwrap_err();
        assert_eq!(server_code(&err), 1227, "{sql}: {err}");
        assert!(
            server_message(&err).contains("connection-database"),
            "{err}"
        );
    }
    c.query_drop("USE warden_t").await.unwrap();
    c.disconnect().await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Each refusal is a decision like any other: audited with its rule.
    let pinned: Vec<serde_json::Value> = gw
        .audit_events("mysql.query")
        .await
        .into_iter()
        .filter(|e| e["event"]["decision"]["rule"] == "connection-database")
        .collect();
    let mut vias: Vec<&str> = pinned
        .iter()
        .map(|e| e["event"]["payload"]["via"].as_str().unwrap())
        .collect();
    vias.sort_unstable();
    assert_eq!(
        vias,
        [
            "COM_INIT_DB",
            "COM_QUERY",
            "COM_QUERY",
            "COM_QUERY",
            "COM_QUERY"
        ],
        "{pinned:?}"
    );

    let failures = gw.audit_events("auth.failure").await;
    assert!(
        failures
            .iter()
            .any(|e| e["event"]["payload"]["protocol"] == "mysql"),
        "{failures:?}"
    );
    let denied = gw.audit_events("access.denied").await;
    assert!(denied.len() >= 3, "{denied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_ed25519_accounts_and_large_values() {
    let (gw, token) = setup(Backend::Sqlite).await;
    add_connection(&gw, "shop-ed", "warden_t_ed", ED25519_PASSWORD).await;
    let mut c = connect(&gw, "shop-ed", &token).await.unwrap();
    let who: String = c
        .query_first("SELECT CURRENT_USER()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(who, "warden_t_ed@%");

    // Values over 16 MiB cross in several packets both ways, in both protocols.
    let table = unique("blobs");
    let mut admin = root().await;
    admin
        .query_drop(format!("CREATE TABLE {table} (id INT, body LONGTEXT)"))
        .await
        .unwrap();
    let big: String = "abcdefghij".repeat(2_000_000); // 20 MB
    c.exec_drop(
        format!("INSERT INTO {table} VALUES (?, ?)"),
        (1, big.as_str()),
    )
    .await
    .unwrap();
    let text: String = c
        .query_first(format!("SELECT body FROM {table} WHERE id = 1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text.len(), big.len());
    assert!(text == big);
    let binary: String = c
        .exec_first(format!("SELECT body FROM {table} WHERE id = ?"), (1,))
        .await
        .unwrap()
        .unwrap();
    assert!(binary == big);
    // Many rows stream through.
    let n: Vec<u64> = c.query("SELECT seq FROM seq_1_to_200000").await.unwrap();
    assert_eq!(n.len(), 200_000);
    assert_eq!(n[199_999], 200_000);
    c.disconnect().await.unwrap();
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

// --- a raw client, for what real clients never send -------------------------------

async fn read_packet(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Packet> {
    let decoder = PacketDecoder::new(1 << 24);
    loop {
        if let Some(p) = decoder.decode(buf).unwrap() {
            return Some(p);
        }
        match tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Logs in with the token as a `mysql_clear_password` response.
async fn raw_login(gw: &TestGateway, token: &str) -> (TcpStream, BytesMut) {
    let mut s = TcpStream::connect(
        gw.gateway
            .listener(warden_core::ConnectionKind::Mysql)
            .unwrap(),
    )
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    let greeting = read_packet(&mut s, &mut buf).await.unwrap();
    let mut token_bytes = token.as_bytes().to_vec();
    token_bytes.push(0);
    let response = HandshakeResponse {
        capabilities: caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::PLUGIN_AUTH_LENENC_CLIENT_DATA
            | caps::CONNECT_WITH_DB,
        max_packet: 1 << 24,
        collation: 45,
        user: "raw".into(),
        auth_response: token_bytes,
        database: Some("shop".into()),
        auth_plugin: Some("mysql_clear_password".into()),
        attributes: vec![],
    };
    let mut out = BytesMut::new();
    let mut seq = greeting.next_seq();
    put_packet(&mut out, &mut seq, &response.encode());
    s.write_all(&out).await.unwrap();
    let ok = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(ok.payload[0], 0, "{:?}", ok.payload);
    (s, buf)
}

/// The error number of an `ERR` packet (panics on anything else).
fn err_code(p: &Packet) -> u16 {
    assert_eq!(p.payload[0], 0xFF, "not an ERR: {:?}", p.payload);
    u16::from_le_bytes([p.payload[1], p.payload[2]])
}

async fn send_raw(s: &mut TcpStream, seq: u8, payload: &[u8]) {
    let mut out = BytesMut::new();
    let mut seq = seq;
    put_packet(&mut out, &mut seq, payload);
    s.write_all(&out).await.unwrap();
}

async fn session_end_reasons(gw: &TestGateway) -> Vec<String> {
    let (_, sessions) = gw.admin("GET", "/api/sessions?connection=shop", None).await;
    sessions
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["end_reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_end_only_their_session() {
    let (gw, token) = setup_with(
        TestGateway::sqlite_with(|c| {
            c.mysql.max_packet_bytes = 1 << 20;
        })
        .await,
    )
    .await;
    let mut healthy = connect(&gw, "shop", &token).await.unwrap();

    // Garbage instead of a handshake response: an ERR that says so, then close.
    let mut s = TcpStream::connect(
        gw.gateway
            .listener(warden_core::ConnectionKind::Mysql)
            .unwrap(),
    )
    .await
    .unwrap();
    let mut buf = BytesMut::new();
    read_packet(&mut s, &mut buf).await.unwrap();
    s.write_all(b"\x05\x00\x00\x01garbage, not a handshake")
        .await
        .unwrap();
    let err = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(err.payload[0], 0xFF);
    assert_eq!(err_code(&err), 1043);
    assert!(read_packet(&mut s, &mut buf).await.is_none());

    // An absurd length: an ERR naming the limit, then the session ends.
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    s.write_all(&[0xFF, 0xFF, 0xFF, 0x00, 0x03]).await.unwrap();
    s.write_all(&vec![b'x'; 70_000]).await.unwrap();
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(err_code(&p), 1153);
    assert!(read_packet(&mut s, &mut buf).await.is_none());

    // A command with the wrong sequence id.
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    send_raw(&mut s, 5, b"\x03SELECT 1").await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(err_code(&p), 1156);
    assert!(read_packet(&mut s, &mut buf).await.is_none());

    // A truncated command: an ERR, then the session ends.
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    send_raw(&mut s, 0, &[0x17, 9, 0]).await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(p.payload[0], 0xFF);
    assert!(String::from_utf8_lossy(&p.payload).contains("malformed"));
    assert!(read_packet(&mut s, &mut buf).await.is_none());

    // An execution of a statement never prepared: refused, the session goes on.
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    send_raw(&mut s, 0, &[0x17, 9, 0, 0, 0, 0, 1, 0, 0, 0]).await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(err_code(&p), 1243);
    send_raw(&mut s, 0, b"\x03SELECT 'still here'").await;
    let p = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(p.payload[0], 1, "one column");

    // Everyone else goes on.
    let one: i64 = healthy.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    let mut fresh = connect(&gw, "shop", &token).await.unwrap();
    let one: i64 = fresh.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reasons = session_end_reasons(&gw).await;
    assert!(
        reasons.iter().any(|r| r.contains("sequence id")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("exceeds the limit")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("malformed")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_s_query_is_killed() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let marker = unique("sleepy");
    let (mut s, _buf) = raw_login(&gw, &token).await;
    send_raw(
        &mut s,
        0,
        format!("\x03SELECT SLEEP(60) AS {marker}").as_bytes(),
    )
    .await;
    let mut admin = root().await;
    let running = format!(
        "SELECT COUNT(*) FROM information_schema.processlist WHERE info LIKE '%AS {marker}'"
    );
    for _ in 0..50 {
        let n: i64 = admin.query_first(&running).await.unwrap().unwrap();
        if n == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(s);
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 = admin.query_first(&running).await.unwrap().unwrap();
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "the query kept running after its client left");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        session_end_reasons(&gw)
            .await
            .contains(&"client disconnected".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mysql_cli_works_and_cannot_read_local_files() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let table = unique("loaded");
    let mut admin = root().await;
    admin
        .query_drop(format!("CREATE TABLE {table} (line TEXT)"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret.csv");
    std::fs::write(&secret_file, "do-not-leak\n").unwrap();
    let mysql = |args: &[&str]| {
        std::process::Command::new("mysql")
            .args([
                "-h127.0.0.1",
                &format!("-P{}", port(&gw)),
                "-ume",
                "--batch",
            ])
            .args(args)
            .env("MYSQL_PWD", &token)
            .output()
            .unwrap()
    };
    let out = mysql(&[
        "shop",
        "-e",
        "SELECT 'a@example.com' AS e; SELECT 1 + 1 AS two",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("[redacted:email]") && stdout.contains("\n2\n"),
        "{stdout}"
    );
    let out = mysql(&[
        "--local-infile=1",
        "shop",
        "-e",
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {table}",
            secret_file.display()
        ),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 4166") || stderr.contains("ERROR 1148"),
        "{stderr}"
    );
    let n: i64 = admin
        .query_first(format!("SELECT COUNT(*) FROM {table}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the file reached the server");
    let out = mysql(&["shop", "-e", "DROP TABLE whatever"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ERROR 1227") && stderr.contains("no-drops/no-ddl"),
        "{stderr}"
    );
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_can_upgrade_to_tls_with_verification() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("my.crt"), dir.path().join("my.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let mut config = base_config(dir.path(), store_url, vec![]);
    config.mysql.tls_cert = Some(cert_path.clone());
    config.mysql.tls_key = Some(key_path);
    let (gw, token) = setup_with(TestGateway::with_config(config, dir).await).await;
    let ca = cert_path.display().to_string();
    let out = std::process::Command::new("mysql")
        .args([
            "-hlocalhost",
            "--protocol=TCP",
            &format!("-P{}", port(&gw)),
            "-ume",
            "--batch",
            "--ssl",
            &format!("--ssl-ca={ca}"),
            "--ssl-verify-server-cert",
            "shop",
            "-e",
            "SELECT 'tls ok'",
        ])
        .env("MYSQL_PWD", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tls ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_leg_uses_verified_tls() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let target =
        std::env::var("WARDEN_TEST_MYSQL_TLS_HOSTPORT").unwrap_or_else(|_| "127.0.0.1:3307".into());
    let (ca, name) = pg_server_ca();
    let add = |conn: &'static str, tls: serde_json::Value| {
        let target = target.clone();
        let gw = &gw;
        async move {
            let (status, body) = gw
                .admin(
                    "POST",
                    "/api/connections",
                    Some(json!({
                        "name": conn, "kind": "mysql", "target": format!("{target}/warden_t"),
                        "username": "warden_t_tls", "secret": "tls-pw-1", "allowed_groups": ["dba"],
                        "tls": tls
                    })),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    add(
        "tls-ok",
        json!({"mode": "verify", "ca_pem": ca, "server_name": name}),
    )
    .await;
    add(
        "tls-wrong-name",
        json!({"mode": "verify", "ca_pem": ca, "server_name": "db.example.org"}),
    )
    .await;
    add("tls-off", json!({"mode": "disable"})).await;
    let mut c = connect(&gw, "tls-ok", &token).await.unwrap();
    let cipher: Row = c
        .query_first("SHOW STATUS LIKE 'Ssl_cipher'")
        .await
        .unwrap()
        .unwrap();
    assert!(!cipher.get::<String, _>(1).unwrap().is_empty());
    c.disconnect().await.unwrap();
    // A certificate for another name: no session, and the reason says TLS.
    let err = connect(&gw, "tls-wrong-name", &token).await.unwrap_err();
    assert!(server_message(&err).contains("TLS"), "{err}");
    assert!(server_message(&err).contains("tls.server_name"), "{err}");
    // Without TLS the server itself refuses an account that requires it.
    let err = connect(&gw, "tls-off", &token).await.unwrap_err();
    assert!(server_message(&err).contains("could not log in"), "{err}");
    assert!(!server_message(&err).contains("tls-pw-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_pass_only_when_the_listener_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("rows.csv");
    std::fs::write(&data, "alpha\nbeta\ngamma\n").unwrap();
    let store_url = warden_store::testing::fresh_url(Backend::Sqlite, dir.path())
        .await
        .unwrap();
    let mut config = base_config(dir.path(), store_url, vec![]);
    config.mysql.allow_local_infile = true;
    let (gw, token) = setup_with(TestGateway::with_config(config, dir).await).await;
    let table = unique("loaded");
    let mut admin = root().await;
    admin
        .query_drop(format!("CREATE TABLE {table} (line TEXT)"))
        .await
        .unwrap();
    let out = std::process::Command::new("mysql")
        .args([
            "-h127.0.0.1",
            &format!("-P{}", port(&gw)),
            "-ume",
            "--local-infile=1",
            "shop",
            "-e",
        ])
        .arg(format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE {table}",
            data.display()
        ))
        .env("MYSQL_PWD", &token)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = admin
        .query(format!("SELECT line FROM {table} ORDER BY line"))
        .await
        .unwrap();
    assert_eq!(lines, vec!["alpha", "beta", "gamma"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load is audited, and the recording says how much came in.
    let queries = gw.audit_events("mysql.query").await;
    assert!(queries.iter().any(|e| {
        e["event"]["payload"]["sql"]
            .as_str()
            .unwrap()
            .starts_with("LOAD DATA LOCAL")
    }));
    let (_, sessions) = gw.admin("GET", "/api/sessions?connection=shop", None).await;
    let id = sessions[0]["id"].as_str().unwrap();
    let (_, rec) = gw
        .admin("GET", &format!("/api/sessions/{id}/recording"), None)
        .await;
    assert!(
        rec["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "copy" && e["bytes"] == 17),
        "{rec}"
    );
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statement_housekeeping_and_long_data() {
    let (gw, token) = setup(Backend::Sqlite).await;
    // Through a driver: close, ping, reset.
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    let stmt = c.prep("SELECT CONCAT(?, '@example.com')").await.unwrap();
    let v: String = c.exec_first(&stmt, ("ann",)).await.unwrap().unwrap();
    assert_eq!(v, "[redacted:email]");
    c.close(stmt).await.unwrap();
    c.ping().await.unwrap();
    c.reset().await.unwrap();
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    c.disconnect().await.unwrap();

    // Raw: a parameter sent in pieces with COM_STMT_SEND_LONG_DATA (no answer), a
    // client without DEPRECATE_EOF (the server's EOFs pass as they are).
    let (mut s, mut buf) = raw_login(&gw, &token).await;
    send_raw(&mut s, 0, b"\x16SELECT ? AS v").await;
    let ok = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(ok.payload[0], 0, "{:?}", ok.payload);
    let id = [ok.payload[1], ok.payload[2], ok.payload[3], ok.payload[4]];
    // One parameter definition and one column definition, each followed by an EOF.
    for _ in 0..4 {
        read_packet(&mut s, &mut buf).await.unwrap();
    }
    for piece in [&b"write to bob"[..], b"@example.com today"] {
        let mut p = vec![0x18];
        p.extend_from_slice(&id);
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(piece);
        send_raw(&mut s, 0, &p).await;
    }
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.push(0); // no cursor
    exec.extend_from_slice(&1u32.to_le_bytes());
    exec.push(0); // NULL bitmap
    exec.push(1); // types bound
    exec.extend_from_slice(&[253, 0]); // VAR_STRING; its value came as long data
    send_raw(&mut s, 0, &exec).await;
    let head = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(&head.payload[..], &[1]);
    read_packet(&mut s, &mut buf).await.unwrap(); // column
    let eof = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(eof.payload[0], 0xFE);
    let row = read_packet(&mut s, &mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&row.payload);
    assert!(text.contains("write to [redacted:email] today"), "{text}");
    let end = read_packet(&mut s, &mut buf).await.unwrap();
    assert_eq!(end.payload[0], 0xFE);
    drop(s);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queries = gw.audit_events("mysql.query").await;
    // The long value is summarized by its size, never shown.
    let e = queries
        .iter()
        .find(|e| e["event"]["payload"]["sql"] == "SELECT ? AS v")
        .unwrap();
    assert_eq!(e["event"]["payload"]["via"], "COM_STMT_EXECUTE");
    assert_eq!(e["event"]["payload"]["params"]["bytes"], json!([30]), "{e}");
    assert!(!e.to_string().contains("bob@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_query_by_the_id_the_client_was_given() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let mut sleeper = connect(&gw, "shop", &token).await.unwrap();
    // The id the client knows is the gateway's, not the server thread's.
    let ours = sleeper.id();
    let mut probe = connect(&gw, "shop", &token).await.unwrap();
    let server_side: u32 = probe
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(probe.id(), server_side);
    let running = tokio::spawn(async move {
        let r: Result<Option<i64>, _> = sleeper.query_first("SELECT SLEEP(60)").await;
        r
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What the mysql client sends on Ctrl-C, from a second session.
    probe
        .query_drop(format!("KILL QUERY {ours}"))
        .await
        .unwrap();
    // The query ends now with "interrupted" (1317) instead of after a minute.
    let interrupted = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the query was not interrupted")
        .unwrap();
    assert_eq!(server_code(&interrupted.unwrap_err()), 1317);
    // An id that is not one of the gateway's goes to the server as it is.
    let err = probe.query_drop("KILL QUERY 4000000000").await.unwrap_err();
    assert_eq!(server_code(&err), 1094, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_never_answers_does_not_hold_the_client() {
    let (gw, token) = setup_with(
        TestGateway::sqlite_with(|c| {
            c.mysql.login_timeout_secs = 1;
        })
        .await,
    )
    .await;
    // A "database" that accepts connections and never sends its greeting.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(
                json!({"name": "hung", "kind": "mysql", "target": format!("{silent_addr}/x"),
                        "username": "u", "secret": "p", "allowed_groups": ["dba"],
                        "tls": {"mode": "disable"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let err = connect(&gw, "hung", &token).await.unwrap_err();
    assert!(server_message(&err).contains("in time"), "{err}");
    // Everyone else goes on.
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, sessions) = gw.admin("GET", "/api/sessions?connection=hung", None).await;
    assert!(
        sessions[0]["end_reason"]
            .as_str()
            .unwrap()
            .contains("in time"),
        "{sessions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_wait_for_review_and_grants_end_sessions() {
    let gw = TestGateway::start(Backend::Sqlite, None).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": "shop-held", "kind": "mysql", "target": format!("{}/warden_t", mariadb()),
                "username": "warden_t_native", "secret": NATIVE_PASSWORD, "allowed_groups": ["dba"],
                "policies": {"reviews": ["held-for-review"]}, "tls": {"mode": "disable"},
                "access": {"request_required": true, "reviewers": ["sre"], "review_timeout_secs": 60}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (dev, sre) = (
        gw.key_for("dev1", &["dba"]).await,
        gw.key_for("sre1", &["sre"]).await,
    );
    let err = connect(&gw, "shop-held", &dev).await.err().unwrap();
    assert!(
        err.to_string().contains("warden request shop-held"),
        "{err}"
    );
    let (_, request) = gw
        .call(
            "POST",
            "/api/access-requests",
            Some(&dev),
            Some(json!({"connection": "shop-held", "duration": "1h", "reason": "clean up"})),
        )
        .await;
    let rid = request["id"].as_str().unwrap().to_string();
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{rid}/approve"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200);

    let table = unique("held");
    let mut admin = root().await;
    admin
        .query_drop(format!(
            "CREATE TABLE warden_t.{table} (id INT PRIMARY KEY); INSERT INTO warden_t.{table} VALUES (1), (2)"
        ))
        .await
        .unwrap();
    let mut conn = connect(&gw, "shop-held", &dev).await.unwrap();
    let delete = format!("DELETE FROM {table} WHERE id = 1");
    let held = tokio::spawn({
        let delete = delete.clone();
        async move {
            let r = conn.query_drop(&delete).await;
            (r, conn)
        }
    });
    let id = gw.pending_review(&sre, &delete).await;
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/reviews/{id}/approve"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (result, mut conn) = held.await.unwrap();
    result.unwrap();
    let left: Vec<i32> = admin
        .query(format!("SELECT id FROM warden_t.{table}"))
        .await
        .unwrap();
    assert_eq!(left, [2]);

    // Revoking the grant ends the session with ER_CONNECTION_KILLED.
    let (status, _) = gw
        .call(
            "POST",
            &format!("/api/access-requests/{rid}/revoke"),
            Some(&sre),
            None,
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = conn.query_drop("SELECT 1").await.unwrap_err();
    assert_eq!(server_code(&err), 1927, "{err}");
    assert!(server_message(&err).contains("revoked by sre1"), "{err}");
    admin
        .query_drop(format!("DROP TABLE warden_t.{table}"))
        .await
        .unwrap();
}

/// MariaDB runs what `/*M! ... */` holds and MySQL ignores it: Warden reads it as the
/// server behind the connection does. Account and server changes are not plain `SET`s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_executable_comments_and_account_changes_are_guarded() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let (status, body) = gw
        .admin(
            "POST",
            "/api/connections",
            Some(json!({
                "name": "shop-ro", "kind": "mysql", "target": format!("{}/warden_t", mariadb()),
                "username": "warden_t_native", "secret": NATIVE_PASSWORD,
                "allowed_groups": ["dba"], "policies": {"guardrails": ["read-only"]},
                "tls": {"mode": "disable"}
            })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let table = unique("kept");
    let mut admin = root().await;
    admin
        .query_drop(format!("CREATE TABLE {table} (id INT)"))
        .await
        .unwrap();
    let max_connections = || async {
        let mut admin = root().await;
        admin
            .query_first::<u64, _>("SELECT @@global.max_connections")
            .await
            .unwrap()
    };
    let before = max_connections().await;

    // A DROP inside an executable comment, through mysql_async and the mariadb
    // client keeping comments.
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    for sql in [
        format!("/*M! DROP TABLE {table} */"),
        format!("/*M!100000 DROP TABLE {table} */"),
        format!("SELECT 1; /*M!100100 DROP TABLE {table} */"),
    ] {
        let err = c.query_drop(&sql).await.unwrap_err();
        assert_eq!(server_code(&err), 1227, "{sql}: {err}");
    }
    let out = std::process::Command::new("mysql")
        .args([
            "-h127.0.0.1",
            &format!("-P{}", port(&gw)),
            "-ume",
            "--comments",
        ])
        .args(["shop", "-e", &format!("/*M! DROP TABLE {table} */")])
        .env("MYSQL_PWD", &token)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1227"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    admin
        .query_drop(format!("SELECT * FROM {table}"))
        .await
        .unwrap();

    // Account and server changes on a read-only connection.
    let mut ro = connect(&gw, "shop-ro", &token).await.unwrap();
    for sql in [
        "SET PASSWORD = PASSWORD('changed-1')",
        "SET PASSWORD FOR 'warden_t_native'@'%' = PASSWORD('changed-2')",
        "/*M! SET PASSWORD = PASSWORD('changed-3') */",
        "SET GLOBAL max_connections = 7",
        "SET @@global.max_connections = 7",
    ] {
        let err = ro.query_drop(sql).await.unwrap_err();
        assert_eq!(server_code(&err), 1227, "{sql}: {err}");
    }
    ro.query_drop("SELECT 1").await.unwrap();
    drop(ro);
    // The held account still logs in with its password; the server is unchanged.
    let direct = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(mariadb().rsplit_once(':').unwrap().1.parse().unwrap())
        .user(Some("warden_t_native"))
        .pass(Some(NATIVE_PASSWORD));
    Conn::new(direct).await.unwrap();
    assert_eq!(max_connections().await, before);
    admin
        .query_drop(format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// A card number the server spells as a double or with group separators is masked
/// like its digits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_in_other_spellings_are_masked() {
    let (gw, token) = setup(Backend::Sqlite).await;
    let mut c = connect(&gw, "shop", &token).await.unwrap();
    let row: Row = c
        .query_first("SELECT CAST(4111111111111111 AS DOUBLE), FORMAT(4111111111111111, 0)")
        .await
        .unwrap()
        .unwrap();
    for i in 0..2 {
        let v: String = row.get::<Value, _>(i).map(|v| format!("{v:?}")).unwrap();
        assert!(!v.contains("4111") && !v.contains("4.111"), "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_character_sets_that_can_hide_quotes_are_refused_at_login() {
    // In gbk or sjis a character can end in `\`: the server would read quotes where
    // the gateway does not. Chosen in the handshake, or later with SET NAMES.
    let (gw, token) = setup(Backend::Sqlite).await;
    let mysql = |charset: &str, sql: &str| {
        std::process::Command::new("mysql")
            .args([
                "-h127.0.0.1",
                &format!("-P{}", port(&gw)),
                "-ume",
                &format!("--default-character-set={charset}"),
                "shop",
                "-e",
                sql,
            ])
            .env("MYSQL_PWD", &token)
            .env("LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN", "1")
            .output()
            .unwrap()
    };
    for charset in ["gbk", "sjis", "big5"] {
        let out = mysql(charset, "SELECT 1");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{charset} logged in");
        assert!(
            err.contains("1115") && err.contains("character set"),
            "{err}"
        );
    }
    let out = mysql("utf8mb4", "SET NAMES gbk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("Warden denied"),
        "{err}"
    );
    let out = mysql("utf8mb4", "SET NAMES latin1; SELECT 1");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
