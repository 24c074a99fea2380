//! `warden exec <connection> -i "SQL"`: one statement (or several) through a tunnel
//! to the gateway's PostgreSQL proxy (MySQL: `exec_mysql`), printed as a table, CSV
//! or JSON; or a command on an SSH connection. A statement
//! held for review shows the gateway's notice (the review id) while it waits; the
//! exit status says whether everything ran.

use anyhow::{Result, anyhow, bail};
use futures_util::StreamExt;
use serde_json::{Map, Value};
use std::fmt::Write as _;
use std::process::ExitCode;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

use crate::client::ApiArgs;
use crate::connect::{TunnelError, connection_kind, open_tunnel};
use crate::login::{gateway_key, token_for};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// `warden exec`: SQL (`-i`) on a PostgreSQL connection, or a command (after
/// `--`) on an SSH one.
pub async fn exec(
    connection: String,
    sql: Option<String>,
    command: Vec<String>,
    format: Format,
    args: ApiArgs,
) -> Result<ExitCode> {
    let gateway = gateway_key(&args.gateway);
    let token = token_for(&gateway, args.token.as_deref()).await?;
    let http = reqwest::Client::builder().http1_only().build()?;
    let kind = connection_kind(&http, &gateway, &connection, &token).await?;
    match (kind.as_str(), sql, command.is_empty()) {
        ("postgres", Some(sql), true) => {
            let stream = tunnel(&http, &gateway, &connection, &token).await?;
            run_sql(stream, &connection, &sql, format).await
        }
        ("ssh", None, false) => {
            let stream = tunnel(&http, &gateway, &connection, &token).await?;
            run_command(stream, &connection, &shell_words(&command)).await
        }
        ("mysql", Some(sql), true) => {
            let stream = tunnel(&http, &gateway, &connection, &token).await?;
            crate::exec_mysql::run_sql(stream, &connection, &sql, format).await
        }
        ("postgres" | "mysql", _, _) => {
            bail!("give the SQL with -i \"...\" (and no command after --)")
        }
        ("ssh", _, _) => {
            bail!("give the command after --, e.g. `warden exec {connection} -- uname -a`")
        }
        (other, _, _) => {
            bail!(
                "`warden exec` runs on PostgreSQL, MySQL and SSH connections; `{connection}` is {other}"
            )
        }
    }
}

async fn tunnel(
    http: &reqwest::Client,
    gateway: &str,
    connection: &str,
    token: &str,
) -> Result<reqwest::Upgraded> {
    match open_tunnel(http, gateway, connection, token).await {
        Ok(s) => Ok(s),
        Err(TunnelError::Refused(m)) => bail!("{m}"),
        Err(TunnelError::Failed(e)) => Err(e),
    }
}

/// Joins arguments into one command line for the remote shell, quoting what the
/// shell would otherwise split or expand.
fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The gateway's SSH side is authenticated by the tunnel's transport (the API's
/// TLS), so its host key is not checked again here.
struct TunnelHost;

impl russh::client::Handler for TunnelHost {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Runs one command over SSH through the tunnel; its output goes to ours, its exit
/// status becomes ours (a review notice, if it is held, arrives on stderr).
async fn run_command(
    stream: reqwest::Upgraded,
    connection: &str,
    command: &str,
) -> Result<ExitCode> {
    use std::io::Write;
    let config = std::sync::Arc::new(russh::client::Config::default());
    let mut handle = russh::client::connect_stream(config, stream, TunnelHost)
        .await
        .map_err(|e| anyhow!("SSH through the tunnel failed: {e}"))?;
    let auth = handle.authenticate_none(connection).await?;
    if !auth.success() {
        bail!("the gateway refused the SSH login through the tunnel");
    }
    let mut channel = handle.channel_open_session().await?;
    channel.exec(true, command).await?;
    let (mut stdout, mut stderr) = (std::io::stdout(), std::io::stderr());
    let spinner = ReviewSpinner::default();
    let mut status = None;
    while let Some(msg) = channel.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => {
                spinner.stop();
                // A reader that went away (`| head`) ends the command quietly.
                if let Err(e) = stdout.write_all(&data).and_then(|()| stdout.flush()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(e.into());
                }
            }
            russh::ChannelMsg::ExtendedData { data, .. } => {
                spinner.stop();
                stderr.write_all(&data)?;
                stderr.flush()?;
                spinner.start_if_held(&String::from_utf8_lossy(&data));
            }
            russh::ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
            russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    spinner.stop();
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, "", "en")
        .await;
    Ok(match status {
        Some(s) => ExitCode::from(u8::try_from(s).unwrap_or(255)),
        None => ExitCode::from(255),
    })
}

async fn run_sql(
    stream: reqwest::Upgraded,
    connection: &str,
    sql: &str,
    format: Format,
) -> Result<ExitCode> {
    let (client, mut conn) = tokio_postgres::Config::new()
        .user("warden")
        .dbname(connection)
        .application_name("warden exec")
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(|e| anyhow!("{}", db_message(&e)))?;
    // Notices (a statement held for review names its review) go to stderr as they
    // come, so a waiting user sees what to ask for.
    let waiting = ReviewSpinner::default();
    let spinner = waiting.clone();
    let messages = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(message) = stream.next().await {
            match message {
                Ok(AsyncMessage::Notice(n)) => {
                    eprintln!("warden: {}", n.message());
                    spinner.start_if_held(n.message());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("warden: {}", db_message(&e));
                    break;
                }
            }
        }
    });
    // Read as a stream, so the results of the statements before a failing one are
    // printed too (the server ran them), then its error.
    let mut answers = Vec::new();
    let mut failure = None;
    match client.simple_query_raw(sql).await {
        Ok(stream) => {
            futures_util::pin_mut!(stream);
            while let Some(next) = stream.next().await {
                match next {
                    Ok(m) => answers.push(m),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
        }
        Err(e) => failure = Some(e),
    }
    waiting.stop();
    drop(client);
    let _ = messages.await;
    print_results(&answers, format);
    match failure {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("ERROR: {}", db_message(&e));
            Ok(ExitCode::from(1))
        }
    }
}

/// A spinner on a terminal's stderr while a held command waits, naming its review.
#[derive(Clone, Default)]
struct ReviewSpinner(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl ReviewSpinner {
    /// Starts spinning if `message` is the gateway's "held for review" notice and
    /// stderr is a terminal (scripts get the notice line only).
    fn start_if_held(&self, message: &str) {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        let Some(rest) = message.split("for review ").nth(1) else {
            return;
        };
        let id: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        if !std::io::stderr().is_terminal() || self.0.swap(true, Ordering::SeqCst) {
            return;
        }
        let running = self.0.clone();
        tokio::spawn(async move {
            let frames = ['|', '/', '-', '\\'];
            let started = std::time::Instant::now();
            let mut i = 0usize;
            while running.load(Ordering::SeqCst) {
                eprint!(
                    "\r{} waiting for review {id} ({} s)",
                    frames[i % frames.len()],
                    started.elapsed().as_secs()
                );
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
            }
            eprint!("\r\x1b[2K");
        });
    }

    fn stop(&self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

/// One statement's rows (with their column names) or its affected-row count.
pub(crate) struct ResultSet {
    pub(crate) columns: Vec<String>,
    pub(crate) rows: Vec<Vec<Option<String>>>,
    pub(crate) affected: Option<u64>,
}

fn result_sets(messages: &[SimpleQueryMessage]) -> Vec<ResultSet> {
    let mut sets = Vec::new();
    let mut current = ResultSet {
        columns: Vec::new(),
        rows: Vec::new(),
        affected: None,
    };
    for m in messages {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                current.columns = cols.iter().map(|c| c.name().to_string()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                if current.columns.is_empty() {
                    current.columns = row.columns().iter().map(|c| c.name().to_string()).collect();
                }
                current.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(String::from))
                        .collect(),
                );
            }
            SimpleQueryMessage::CommandComplete(n) => {
                current.affected = Some(*n);
                sets.push(std::mem::replace(
                    &mut current,
                    ResultSet {
                        columns: Vec::new(),
                        rows: Vec::new(),
                        affected: None,
                    },
                ));
            }
            _ => {}
        }
    }
    sets
}

fn print_results(messages: &[SimpleQueryMessage], format: Format) {
    print_sets(&result_sets(messages), format);
}

pub(crate) fn print_sets(sets: &[ResultSet], format: Format) {
    let mut out = String::new();
    for set in sets {
        match format {
            Format::Json => {
                let rows: Vec<Value> = set
                    .rows
                    .iter()
                    .map(|r| {
                        let mut o = Map::new();
                        for (c, v) in set.columns.iter().zip(r) {
                            o.insert(c.clone(), v.clone().map_or(Value::Null, Value::String));
                        }
                        Value::Object(o)
                    })
                    .collect();
                if set.columns.is_empty() {
                    let _ = writeln!(out, "{}", serde_json::json!({"affected": set.affected}));
                } else {
                    let _ = writeln!(out, "{}", Value::Array(rows));
                }
            }
            Format::Csv => {
                if !set.columns.is_empty() {
                    let _ = writeln!(
                        out,
                        "{}",
                        csv_line(set.columns.iter().map(|c| Some(c.as_str())))
                    );
                }
                for r in &set.rows {
                    let _ = writeln!(out, "{}", csv_line(r.iter().map(Option::as_deref)));
                }
            }
            Format::Table => print_table(set, &mut out),
        }
    }
    emit(&out);
}

fn csv_line<'a>(fields: impl Iterator<Item = Option<&'a str>>) -> String {
    fields
        .map(|f| match f {
            None => String::new(),
            Some(v) if v.contains([',', '"', '\n', '\r']) => {
                format!("\"{}\"", v.replace('"', "\"\""))
            }
            Some(v) => v.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn print_table(set: &ResultSet, out: &mut String) {
    if set.columns.is_empty() {
        if let Some(n) = set.affected {
            let _ = writeln!(out, "({n} rows affected)");
        }
        return;
    }
    let cell = |v: &Option<String>| v.clone().unwrap_or_else(|| "NULL".into());
    let mut widths: Vec<usize> = set.columns.iter().map(|c| c.chars().count()).collect();
    for r in &set.rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell(v).chars().count());
        }
    }
    let line = |values: Vec<String>| {
        values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let _ = writeln!(out, "{}", line(set.columns.clone()));
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    for r in &set.rows {
        let _ = writeln!(out, "{}", line(r.iter().map(cell).collect()));
    }
    let _ = writeln!(
        out,
        "({} row{})",
        set.rows.len(),
        if set.rows.len() == 1 { "" } else { "s" }
    );
}

/// Writes the results at once; a reader that went away (`| head`) ends it quietly.
fn emit(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        eprintln!("warden: cannot write the results: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_quote_what_the_shell_would_touch() {
        let args = ["echo", "a b", "it's", "$HOME", "x=1"].map(String::from);
        assert_eq!(shell_words(&args), "echo 'a b' 'it'\\''s' '$HOME' x=1");
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let line = csv_line([Some("a"), None, Some("b,c"), Some("say \"hi\"")].into_iter());
        assert_eq!(line, "a,,\"b,c\",\"say \"\"hi\"\"\"");
    }
}
