//! The proxy between a real client (tokio-postgres) and the real PostgreSQL, with a
//! test gateway that holds the backend password (the `warden_t_scram` role).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Test clients write plain TCP, which holds back no unflushed bytes.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio_postgres::NoTls;
use warden_core::testing::{Audited, MemorySink, MemoryTimeline};
use warden_core::{
    BackendTarget, Decision, LoginRequest, Refusal, RefusalKind, Secret, SessionHandle,
    SessionHooks, TimelineEvent, TlsMode, TlsOptions,
};
use warden_pg::proxy::{ProxyConfig, serve_client};
use warden_policy::{Guardrails, MaskingEngine, PolicyConfig};

const TOKEN: &str = "test-token-for-the-proxy";

/// The test gateway: every session records into the same memory sink and timeline
/// (two rows per result).
struct Hooks {
    sink: Arc<MemorySink>,
    timeline: Arc<MemoryTimeline>,
}

impl Hooks {
    fn records(&self) -> Vec<Audited> {
        self.sink.audited()
    }
}

const POLICY: &str = r#"
[[guardrails]]
name = "prod"
[[guardrails.rules]]
name = "no-ddl"
sql_statements = ["ddl"]
[[guardrails.rules]]
name = "no-unbounded"
sql_unbounded_writes = true

[[masking]]
name = "pii"
detectors = ["email"]
columns = [{ pattern = "warden_t.undescribed.pin" }]
"#;

impl SessionHooks for Hooks {
    async fn open(&self, login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        if login.token != TOKEN {
            return Err(Refusal {
                kind: RefusalKind::BadCredentials,
                message: "invalid token".into(),
            });
        }
        if login.connection != "billing" {
            return Err(Refusal {
                kind: RefusalKind::NoAccess,
                message: format!("no connection `{}`", login.connection),
            });
        }
        let policy: PolicyConfig = toml::from_str(POLICY).unwrap();
        let target = BackendTarget {
            addr: std::env::var("WARDEN_TEST_PG_HOSTPORT")
                .unwrap_or_else(|_| "127.0.0.1:5432".into()),
            user: "warden_t_scram".into(),
            database: "postgres".into(),
            secret: Some(Secret::new("scram-pw-1".into())),
            secret_kind: Some(warden_core::SecretKind::Password),
            ssh: Default::default(),
            tls: TlsOptions {
                mode: TlsMode::Disable,
                ..TlsOptions::default()
            },
            http: Default::default(),
        };
        Ok(self.sink.open(
            target,
            Arc::new(Guardrails::compile(&policy.guardrails, &[]).unwrap()),
            Arc::new(MaskingEngine::from_sets(&policy.masking, b"k").unwrap()),
            self.timeline.clone(),
            warden_core::SessionEnd::never(),
        ))
    }
}

async fn start() -> (SocketAddr, Arc<Hooks>) {
    let hooks = Arc::new(Hooks {
        sink: Arc::default(),
        timeline: Arc::new(MemoryTimeline::new(2)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h = hooks.clone();
    let cancels = warden_pg::proxy::CancelMap::default();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = listener.accept().await.unwrap();
            let config = ProxyConfig {
                cancels: cancels.clone(),
                allow_plaintext_tokens: false,
                tls: None,
                max_message: 1 << 24,
                login_timeout: std::time::Duration::from_secs(10),
            };
            tokio::spawn(serve_client(stream, peer, h.clone(), config));
        }
    });
    (addr, hooks)
}

async fn client(
    addr: SocketAddr,
    database: &str,
    token: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let conn = format!(
        "host=127.0.0.1 port={} user=alice dbname={database} password={token}",
        addr.port()
    );
    let (client, connection) = tokio_postgres::connect(&conn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_are_relayed_masked_and_denied_in_order() {
    let (addr, hooks) = start().await;
    let c = client(addr, "billing", TOKEN).await.unwrap();

    // Simple protocol, masked.
    let rows = c
        .simple_query("SELECT 'mail bob@example.com' AS contact, 7 AS n")
        .await
        .unwrap();
    let row = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
        _ => None,
    });
    assert_eq!(row.unwrap().get("contact"), Some("mail [redacted:email]"));

    // Extended protocol with a parameter, binary results, masked.
    let rows = c
        .query(
            "SELECT $1::text AS contact, 42::int4 AS n",
            &[&"carol@example.org"],
        )
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, String>("contact"), "[redacted:email]");
    assert_eq!(rows[0].get::<_, i32>("n"), 42);

    // Denied: never reaches the server, 42501 naming the rule, session stays usable.
    let err = c.simple_query("DROP TABLE pg_class").await.unwrap_err();
    assert_eq!(code(&err), "42501");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("rule prod/no-ddl"),
        "{err}"
    );
    let err = c.query("DELETE FROM pg_class", &[]).await.unwrap_err();
    assert_eq!(code(&err), "42501");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("DELETE without a WHERE clause")
    );
    assert_eq!(
        c.query_one("SELECT 1::int4", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    // Inside a transaction a denial aborts it, exactly like a server error.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        code(&c.simple_query("TRUNCATE pg_class").await.unwrap_err()),
        "42501"
    );
    assert_eq!(
        code(&c.simple_query("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    c.batch_execute("ROLLBACK").await.unwrap();

    // Pipelined: allowed, denied, allowed — each answer in its place.
    let (a, b, d) = futures_util::join!(
        c.query_one("SELECT 'x@example.com'::text", &[]),
        c.query("DROP TABLE pg_class", &[]),
        c.query_one("SELECT 3::int4", &[]),
    );
    assert_eq!(a.unwrap().get::<_, String>(0), "[redacted:email]");
    assert_eq!(code(&b.unwrap_err()), "42501");
    assert_eq!(d.unwrap().get::<_, i32>(0), 3);

    let records = hooks.records();
    assert!(
        records
            .iter()
            .any(|r| r.text == "DROP TABLE pg_class" && matches!(r.decision, Decision::Deny { .. }))
    );
    assert!(records.iter().any(|r| r.via == "Bind"
        && r.decision == Decision::Allow
        && r.parameters.as_deref() == Some(&[Some(17)][..])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_failure_denies_and_bad_logins_are_refused() {
    let (addr, hooks) = start().await;
    let c = client(addr, "billing", TOKEN).await.unwrap();
    hooks.sink.audit_down.store(true, Ordering::SeqCst);
    // Refused with the code of a gateway fault, not of a policy: nothing ran.
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(code(&err), "58000");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("audit log cannot record"),
        "{err}"
    );
    // Extended protocol: the Parse prepares, the Bind (the execution) is refused.
    let err = c.query("SELECT 2::int4", &[]).await.unwrap_err();
    assert_eq!(code(&err), "58000", "{err}");
    let prepared = {
        hooks.sink.audit_down.store(false, Ordering::SeqCst);
        let p = c.prepare("SELECT $1::int4 + 1").await.unwrap();
        hooks.sink.audit_down.store(true, Ordering::SeqCst);
        p
    };
    let err = c.query(&prepared, &[&1i32]).await.unwrap_err();
    assert_eq!(code(&err), "58000", "{err}");
    hooks.sink.audit_down.store(false, Ordering::SeqCst);
    assert!(c.simple_query("SELECT 1").await.is_ok());
    let n: i32 = c.query_one(&prepared, &[&1i32]).await.unwrap().get(0);
    assert_eq!(n, 2);

    let err = client(addr, "billing", "wrong-token").await.err().unwrap();
    assert_eq!(code(&err), "28P01");
    let err = client(addr, "nonexistent", TOKEN).await.err().unwrap();
    assert_eq!(code(&err), "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_holds_statements_masked_rows_and_denials() {
    let (addr, hooks) = start().await;
    let c = client(addr, "billing", TOKEN).await.unwrap();
    c.simple_query(
        "SELECT g AS n, 'u' || g || '@example.com' AS mail FROM generate_series(1, 5) g; SELECT 2",
    )
    .await
    .unwrap();
    let rows = c
        .query("SELECT $1::text AS who", &[&"dave@example.net"])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(c.simple_query("DROP TABLE pg_class").await.is_err());

    let events = hooks.timeline.events();
    let results: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            TimelineEvent::Result {
                tag,
                columns,
                rows,
                rows_total,
                duration_us,
                ..
            } => Some((
                tag.clone(),
                columns.clone(),
                rows.clone(),
                *rows_total,
                *duration_us,
            )),
            _ => None,
        })
        .collect();
    // Five rows, two kept, masked as the client saw them.
    let (tag, columns, rows, total, duration) = &results[0];
    assert_eq!(tag, "SELECT 5");
    assert_eq!(columns, &["n", "mail"]);
    assert_eq!(*total, 5);
    assert_eq!(
        rows,
        &vec![
            vec![Some("1".to_string()), Some("[redacted:email]".to_string())],
            vec![Some("2".to_string()), Some("[redacted:email]".to_string())],
        ]
    );
    assert!(duration.is_some());
    assert_eq!(results[1].0, "SELECT 1");
    // Extended protocol, binary-format text column: masked too.
    assert_eq!(results[2].1, ["who"]);
    assert_eq!(
        results[2].2,
        vec![vec![Some("[redacted:email]".to_string())]]
    );
    assert!(events.iter().any(|e| matches!(e,
        TimelineEvent::Statement { sql, decision: Decision::Deny { .. }, .. } if sql == "DROP TABLE pg_class")));
    assert!(events.iter().any(|e| matches!(e,
        TimelineEvent::Error { code, message, .. } if code == "42501" && message.contains("prod/no-ddl"))));
    // Statement text is kept as sent; what came back is kept masked only.
    let answers: Vec<_> = events
        .iter()
        .filter(|e| !matches!(e, TimelineEvent::Statement { .. }))
        .collect();
    let dump = format!("{answers:?}");
    assert!(
        !dump.contains("@example"),
        "unmasked value recorded: {dump}"
    );

    // A recording that cannot be written ends the session before the statement runs.
    hooks.timeline.down.store(true, Ordering::SeqCst);
    assert!(c.simple_query("SELECT 1").await.is_err());
    hooks.timeline.down.store(false, Ordering::SeqCst);
    assert!(
        c.simple_query("SELECT 1").await.is_err(),
        "the session must be closed"
    );
}

/// A frame as a client sends it.
fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Reads server frames until `ReadyForQuery`, returning their tags.
async fn read_cycle(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    read_frames(s, buf)
        .await
        .into_iter()
        .map(|f| f[0])
        .collect()
}

/// Reads server frames until `ReadyForQuery`, whole.
async fn read_frames(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut tags = Vec::new();
    loop {
        while buf.len() >= 5 {
            let len = i32::from_be_bytes(buf[1..5].try_into().unwrap()) as usize + 1;
            if buf.len() < len {
                break;
            }
            let frame: Vec<u8> = buf.drain(..len).collect();
            let done = frame[0] == b'Z';
            tags.push(frame);
            if done {
                return tags;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed after {tags:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_message_before_login_is_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _hooks) = start().await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = b"\x00\x03\x00\x00user\x00alice\x00database\x00billing\x00\x00";
    let mut startup = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    s.write_all(&startup).await.unwrap();
    // A password message announcing 1 MiB: refused from its header, before the
    // gateway buffers it.
    s.write_all(b"p").await.unwrap();
    s.write_all(&(1_048_580i32).to_be_bytes()).await.unwrap();
    s.write_all(&[b'x'; 1024]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("the gateway closes the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01"), "{text}");
    assert!(text.contains("65536"), "the limit is named: {text}");
}

/// A raw protocol session through the proxy, logged in.
async fn raw_session(addr: SocketAddr) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut startup = Vec::new();
    let body = b"\x00\x03\x00\x00user\x00alice\x00database\x00billing\x00\x00";
    startup.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    startup.extend_from_slice(body);
    s.write_all(&startup).await.unwrap();
    let mut pw = TOKEN.as_bytes().to_vec();
    pw.push(0);
    s.write_all(&frame(b'p', &pw)).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_cycle(&mut s, &mut buf).await.first(), Some(&b'R'));
    (s, buf)
}

/// A simple Query of `sql`.
fn query_frame(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    frame(b'Q', &b)
}

/// A Parse of `sql` as statement `name`, no parameter types.
fn parse_frame(name: &str, sql: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(sql.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    frame(b'P', &b)
}

/// A Bind of statement `name` to the unnamed portal, no parameters, text results.
fn bind_frame(name: &str) -> Vec<u8> {
    bind_portal("", name)
}

/// A Bind of statement `name` to `portal`, no parameters, text results.
fn bind_portal(portal: &str, name: &str) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    frame(b'B', &b)
}

/// An Execute of `portal`, all rows.
fn execute_portal(portal: &str) -> Vec<u8> {
    let mut b = portal.as_bytes().to_vec();
    b.extend_from_slice(&[0, 0, 0, 0, 0]);
    frame(b'E', &b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_keeps_its_sql_when_a_second_parse_of_the_name_fails() {
    use tokio::io::AsyncWriteExt;
    let (addr, hooks) = start().await;
    let (mut s, mut buf) = raw_session(addr).await;
    let parse = |sql: &str| parse_frame("s1", sql);
    let sync = frame(b'S', b"");
    // Prepared and allowed.
    s.write_all(&[parse("SELECT 41 + 1"), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    // The same name again, denied: the server still holds the first statement.
    s.write_all(&[parse("SELECT 'other'"), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"EZ");
    // Executing it is audited with the SQL that runs.
    let execute = frame(b'E', b"\0\0\0\0\0");
    s.write_all(&[bind_frame("s1"), execute, sync].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"2DCZ");
    let records = hooks.records();
    let executed: Vec<&str> = records
        .iter()
        .filter(|r| r.via == "Bind")
        .map(|r| r.text.as_str())
        .collect();
    assert_eq!(executed, ["SELECT 41 + 1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_of_statements_the_client_never_described_are_masked_by_column() {
    use tokio::io::AsyncWriteExt;
    let (admin, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS warden_t;
             DROP TABLE IF EXISTS warden_t.undescribed;
             CREATE TABLE warden_t.undescribed (id int4, pin int4);
             INSERT INTO warden_t.undescribed VALUES (1, 4321);
             GRANT USAGE ON SCHEMA warden_t TO warden_t_scram;
             GRANT SELECT ON warden_t.undescribed TO warden_t_scram;",
        )
        .await
        .unwrap();
    let (addr, _hooks) = start().await;
    let (mut s, mut buf) = raw_session(addr).await;
    let sync = frame(b'S', b"");
    let execute = frame(b'E', b"\0\0\0\0\0");
    let select = "SELECT id, pin FROM warden_t.undescribed";
    let data_rows = |frames: &[Vec<u8>]| -> Vec<String> {
        frames
            .iter()
            .filter(|f| f[0] == b'D')
            .map(|f| String::from_utf8_lossy(&f[7..]).into_owned())
            .collect()
    };

    // Prepared, never described, executed: the proxy describes it itself, and the
    // client sees only the answers to what it sent.
    s.write_all(&[parse_frame("s1", select), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    s.write_all(&[bind_frame("s1"), execute.clone(), sync.clone()].concat())
        .await
        .unwrap();
    let frames = read_frames(&mut s, &mut buf).await;
    let tags: Vec<u8> = frames.iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"2DCZ");
    let rows = data_rows(&frames);
    assert!(!rows[0].contains("4321"), "{rows:?}");

    // The unnamed statement described as one thing, then parsed again as another and
    // executed without a new Describe: the new columns apply.
    s.write_all(
        &[
            parse_frame("", "SELECT 1 AS a, 2 AS b"),
            frame(b'D', b"S\0"),
            sync.clone(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1tTZ");
    s.write_all(&[parse_frame("", select), bind_frame(""), execute, sync].concat())
        .await
        .unwrap();
    let frames = read_frames(&mut s, &mut buf).await;
    let tags: Vec<u8> = frames.iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"12DCZ");
    let rows = data_rows(&frames);
    assert!(!rows[0].contains("4321"), "{rows:?}");

    // Two portals bound, then executed in the other order: each Execute's rows get
    // their own portal's columns, not the last Bind's.
    s.write_all(
        &[
            parse_frame("pins", "SELECT pin FROM warden_t.undescribed"),
            parse_frame("sevens", "SELECT 7 AS n"),
            frame(b'D', b"Spins\0"),
            frame(b'D', b"Ssevens\0"),
            bind_portal("p1", "pins"),
            bind_portal("p2", "sevens"),
            execute_portal("p1"),
            execute_portal("p2"),
            frame(b'S', b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let frames = read_frames(&mut s, &mut buf).await;
    let tags: Vec<u8> = frames.iter().map(|f| f[0]).collect();
    assert_eq!(tags, b"11tTtT22DCDCZ");
    let rows = data_rows(&frames);
    assert!(!rows[0].contains("4321"), "{rows:?}");
    assert!(rows[1].ends_with('7'), "{rows:?}");
}

/// A superuser connection straight to PostgreSQL, for setting up tables.
async fn superuser() -> tokio_postgres::Client {
    let url = std::env::var("WARDEN_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (c, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_of_statements_warden_cannot_attribute_are_refused_and_audited() {
    use tokio::io::AsyncWriteExt;
    let table = format!("warden_t_prep_{}", std::process::id());
    let admin = superuser().await;
    admin
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id int);
             INSERT INTO {table} VALUES (1), (2), (3), (4);
             GRANT ALL ON {table} TO warden_t_scram"
        ))
        .await
        .unwrap();
    let remaining = || async {
        let rows = admin
            .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>()
    };
    let (addr, hooks) = start().await;
    let (mut s, mut buf) = raw_session(addr).await;
    let sync = frame(b'S', b"");
    let query = query_frame;
    let execute = || [bind_frame("p1"), execute_portal(""), sync.clone()].concat();

    // SQL-level PREPARE, then a protocol Bind of it: the DELETE never runs.
    s.write_all(&query(&format!(
        "PREPARE p1 AS DELETE FROM {table} WHERE id = 1"
    )))
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"CZ");
    s.write_all(&execute()).await.unwrap();
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'E') && !tags.contains(&b'C'), "{tags:?}");
    assert_eq!(remaining().await, [1, 2, 3, 4]);
    let refused = hooks
        .records()
        .into_iter()
        .find(|r| r.via == "Bind")
        .expect("the Bind is audited");
    assert_eq!(refused.text, "EXECUTE \"p1\"");
    assert!(
        matches!(&refused.decision, Decision::Deny { rule, .. } if rule == "pg.unattributed_statement"),
        "{refused:?}"
    );

    // DEALLOCATE as a query, then a new Parse of the name: not attributable until the
    // name is closed, then it runs as what it is.
    let parse = |sql: &str| parse_frame("s2", sql);
    s.write_all(&[parse("SELECT 1"), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    s.write_all(&query("DEALLOCATE s2")).await.unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"CZ");
    let delete_2 = format!("DELETE FROM {table} WHERE id = 2");
    s.write_all(&[parse(&delete_2), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    s.write_all(&[bind_frame("s2"), execute_portal(""), sync.clone()].concat())
        .await
        .unwrap();
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'E') && !tags.contains(&b'C'), "{tags:?}");
    assert_eq!(remaining().await, [1, 2, 3, 4]);
    let close = frame(b'C', b"Ss2\0");
    s.write_all(&[close, parse(&delete_2), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"31Z");
    s.write_all(&[bind_frame("s2"), execute_portal(""), sync.clone()].concat())
        .await
        .unwrap();
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'C'), "{tags:?}");
    assert_eq!(remaining().await, [1, 3, 4]);

    // A Parse the server refused lends its SQL to nothing: the next Parse of the name
    // is what a Bind runs, and the audit says so.
    let parse = |sql: &str| parse_frame("s3", sql);
    s.write_all(&[parse("SELECT nothing FROM warden_t_missing"), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"EZ");
    let delete_3 = format!("DELETE FROM {table} WHERE id = 3");
    s.write_all(&[parse(&delete_3), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    s.write_all(&[bind_frame("s3"), execute_portal(""), sync.clone()].concat())
        .await
        .unwrap();
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'C'), "{tags:?}");
    assert_eq!(remaining().await, [1, 4]);
    let executed: Vec<String> = hooks
        .records()
        .into_iter()
        .filter(|r| r.via == "Bind" && r.decision == Decision::Allow)
        .map(|r| r.text)
        .collect();
    assert_eq!(executed, [delete_2, delete_3]);

    // Names the server cuts to 63 bytes are one name: a Close and Parse of the long
    // name's twin changes what a Bind of the first runs, and the audit follows.
    let long = |c: char| format!("{}{c}", "p".repeat(63));
    let (n1, n2) = (long('1'), long('2'));
    s.write_all(&[parse_frame(&n1, "SELECT 1 AS n"), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    let mut close = b"S".to_vec();
    close.extend_from_slice(n2.as_bytes());
    close.push(0);
    s.write_all(
        &[
            frame(b'C', &close),
            parse_frame(&n2, "SELECT 2 AS n"),
            sync.clone(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"31Z");
    s.write_all(&[bind_frame(&n1), execute_portal(""), sync.clone()].concat())
        .await
        .unwrap();
    let frames = read_frames(&mut s, &mut buf).await;
    let row = frames.iter().find(|f| f[0] == b'D').expect("a row");
    assert_eq!(row.last(), Some(&b'2'), "{row:?}");
    let last_bind = hooks
        .records()
        .into_iter()
        .rfind(|r| r.via == "Bind")
        .unwrap();
    assert_eq!(last_bind.text, "SELECT 2 AS n");

    // An error before a Close and a new Parse of the name in one pipeline: both are
    // skipped by the server, and the name still runs (and is audited as) its SQL.
    let delete_4 = format!("DELETE FROM {table} WHERE id = 4");
    let parse = |sql: &str| parse_frame("s4", sql);
    s.write_all(&[parse(&delete_4), sync.clone()].concat())
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1Z");
    let close = frame(b'C', b"Ss4\0");
    s.write_all(
        &[
            bind_frame("nosuch"),
            close,
            parse("SELECT 1"),
            sync.clone(),
            bind_frame("s4"),
            execute_portal(""),
            sync.clone(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'E'), "{tags:?}");
    let tags = read_cycle(&mut s, &mut buf).await;
    assert!(tags.contains(&b'C'), "{tags:?}");
    assert_eq!(remaining().await, [1]);
    let last_bind = hooks
        .records()
        .into_iter()
        .rfind(|r| r.via == "Bind")
        .unwrap();
    assert_eq!(last_bind.text, delete_4);
    assert_eq!(last_bind.decision, Decision::Allow);
    admin
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// Every outcome names the audit event of the statement it answers, however the
/// client orders its requests: the store folds each into its statement's row by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outcome_names_the_statement_it_answers() {
    use tokio::io::AsyncWriteExt;
    let (addr, hooks) = start().await;
    let (mut s, mut buf) = raw_session(addr).await;
    let sync = frame(b'S', b"");
    let query = query_frame;
    // Two portals bound, then executed in the other order, in one pipeline.
    s.write_all(
        &[
            parse_frame("a", "SELECT 1 AS one"),
            parse_frame("b", "SELECT 2 AS two"),
            bind_portal("pa", "a"),
            bind_portal("pb", "b"),
            execute_portal("pb"),
            execute_portal("pa"),
            sync.clone(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1122DCDCZ");
    // One query, two statements: both results answer it.
    s.write_all(&query("SELECT 3 AS three; SELECT 4 AS four"))
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"TDCTDCZ");
    // Denied as a query, and as a Parse (its Bind and Execute skipped).
    s.write_all(&query("DROP TABLE warden_t_nothing"))
        .await
        .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"EZ");
    s.write_all(
        &[
            parse_frame("c", "DROP TABLE warden_t_nothing"),
            bind_portal("pc", "c"),
            execute_portal("pc"),
            sync.clone(),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"EZ");

    let audited = hooks.records();
    let id_of = |via: &str, text: &str| {
        audited
            .iter()
            .find(|a| a.via == via && a.text == text)
            .unwrap_or_else(|| panic!("{via} {text} audited: {audited:#?}"))
            .id
    };
    let named = |id| {
        hooks
            .timeline
            .outcomes()
            .into_iter()
            .filter(|(s, _)| *s == Some(id))
            .map(|(_, e)| match e {
                TimelineEvent::Result { columns, .. } => columns.join(","),
                TimelineEvent::Error { code, .. } => code,
                other => panic!("not an outcome: {other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(named(id_of("Bind", "SELECT 1 AS one")), ["one"]);
    assert_eq!(named(id_of("Bind", "SELECT 2 AS two")), ["two"]);
    assert_eq!(
        named(id_of("Query", "SELECT 3 AS three; SELECT 4 AS four")),
        ["three", "four"]
    );
    assert_eq!(
        named(id_of("Query", "DROP TABLE warden_t_nothing")),
        ["42501"]
    );
    assert_eq!(
        named(id_of("Parse", "DROP TABLE warden_t_nothing")),
        ["42501"]
    );
    // Nothing answered is left without its statement.
    let unnamed: Vec<_> = hooks
        .timeline
        .outcomes()
        .into_iter()
        .filter(|(s, _)| s.is_none())
        .collect();
    assert!(unnamed.is_empty(), "{unnamed:?}");
}

/// An error answers the earliest request not yet answered: one for a `Describe`
/// names no statement, not the `Bind` after it that never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_an_execute_is_not_its_outcome() {
    use tokio::io::AsyncWriteExt;
    let (addr, hooks) = start().await;
    let (mut s, mut buf) = raw_session(addr).await;
    s.write_all(
        &[
            parse_frame("x", "SELECT 5 AS five"),
            frame(b'D', b"Snope\0"),
            bind_portal("px", "x"),
            execute_portal("px"),
            frame(b'S', b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    assert_eq!(read_cycle(&mut s, &mut buf).await, b"1EZ");
    let bind = hooks
        .records()
        .into_iter()
        .find(|a| a.via == "Bind")
        .expect("the Bind is audited");
    let outcomes = hooks.timeline.outcomes();
    assert!(
        matches!(&outcomes[..], [(None, TimelineEvent::Error { code, .. })] if code == "26000"),
        "{outcomes:?} (the Bind is {})",
        bind.id
    );
}

/// After an error among extended-protocol messages the server ignores everything up
/// to the `Sync`, a simple `Query` too: one sent before that `Sync` is refused, since
/// which answers follow it cannot be known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_inside_an_unsynced_extended_series_ends_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, _hooks) = start().await;
    let (mut s, _buf) = raw_session(addr).await;
    let query = query_frame("SELECT 2");
    s.write_all(
        &[
            parse_frame("", "SELECT 1/0"),
            bind_frame(""),
            execute_portal(""),
            query,
            frame(b'S', b""),
        ]
        .concat(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        s.read_to_end(&mut answer),
    )
    .await
    .expect("the gateway closes the connection")
    .unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("08P01"), "{text}");
    assert!(text.contains("send Sync first"), "{text}");
}
