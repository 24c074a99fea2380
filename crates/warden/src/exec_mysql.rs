//! `warden exec` on a MySQL connection: the SQL goes through a tunnel to the
//! gateway's MySQL proxy, spoken by a real MySQL client (mysql_async) over a Unix
//! socket that leads into the tunnel. The socket lives in a new directory only this
//! user can enter, and takes one connection, so nobody else can ride the tunnel.

use anyhow::{Context, Result, anyhow};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row, Value};
use std::process::ExitCode;

use crate::exec::{Format, ResultSet, print_sets};

pub async fn run_sql(
    tunnel: reqwest::Upgraded,
    connection: &str,
    sql: &str,
    format: Format,
) -> Result<ExitCode> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::Builder::new()
        .prefix("warden-exec-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()
        .context("creating a private directory for the client's socket")?;
    let owner = std::fs::metadata(dir.path())?.uid();
    let path = dir.path().join("mysql.sock");
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("listening on {}", path.display()))?;
    let bridge = tokio::spawn(async move {
        // Only this user's process rides the tunnel: anyone else is turned away.
        let mut local = loop {
            let (local, _) = listener.accept().await?;
            if local.peer_cred().is_ok_and(|c| c.uid() == owner) {
                break local;
            }
        };
        drop(listener);
        let mut tunnel = tunnel;
        tokio::io::copy_bidirectional(&mut local, &mut tunnel).await
    });
    let opts = OptsBuilder::default()
        .socket(Some(path.to_string_lossy().into_owned()))
        .prefer_socket(false)
        .user(Some("warden"))
        .db_name(Some(connection))
        // Given here, so the client asks the server nothing of its own: the audit
        // log holds the user's statements only.
        .max_allowed_packet(Some(64 * 1024 * 1024))
        .wait_timeout(Some(28_800))
        .stmt_cache_size(0);
    let mut conn = Conn::new(opts)
        .await
        .map_err(|e| anyhow!("{}", message(&e)))?;
    let outcome = run(&mut conn, sql).await;
    let _ = conn.disconnect().await;
    let _ = bridge.await;
    match outcome {
        Ok(sets) => {
            print_sets(&sets, format);
            Ok(ExitCode::SUCCESS)
        }
        // The result sets before the failing statement are printed, then its error.
        Err((sets, e)) => {
            print_sets(&sets, format);
            eprintln!("ERROR: {}", message(&e));
            Ok(ExitCode::from(1))
        }
    }
}

/// Every result set of `sql` (several statements give several), or those before the
/// error with the error.
async fn run(
    conn: &mut Conn,
    sql: &str,
) -> Result<Vec<ResultSet>, (Vec<ResultSet>, mysql_async::Error)> {
    let mut sets = Vec::new();
    let mut result = conn.query_iter(sql).await.map_err(|e| (Vec::new(), e))?;
    loop {
        let columns: Vec<String> = result
            .columns_ref()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        // A statement without rows is answered by its OK packet, already read; the
        // count is read before moving on, which reads the next statement's answer.
        let affected = columns.is_empty().then(|| result.affected_rows());
        let rows: Vec<Row> = match result.collect().await {
            Ok(rows) => rows,
            Err(e) => return Err((sets, e)),
        };
        sets.push(ResultSet {
            rows: rows.into_iter().map(text_row).collect(),
            columns,
            affected,
        });
        if result.is_empty() {
            // mysql_async can say "no more" while an error answering a later
            // statement is still unread; reading once more surfaces it.
            return match result.collect::<Row>().await {
                Ok(_) => Ok(sets),
                Err(e) => Err((sets, e)),
            };
        }
    }
}

/// A text-protocol row: every value arrives as bytes or NULL.
fn text_row(row: Row) -> Vec<Option<String>> {
    row.unwrap()
        .into_iter()
        .map(|v| match v {
            Value::NULL => None,
            Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            other => Some(other.as_sql(true)),
        })
        .collect()
}

fn message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("{} ({} {})", s.message, s.code, s.state),
        other => other.to_string(),
    }
}
