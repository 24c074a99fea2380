//! The `warden` command. Thin: parses arguments and calls into the libraries.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use warden_gateway::{Config, Gateway};
use warden_store::audit::AuditFilter;

mod admin;
mod agent;
mod client;
mod connect;
mod exec;
mod exec_mysql;
mod login;
mod login_saml;
mod replay;
mod table;

/// mimalloc, for Rust and (`override`) for the C libraries (SQLite, zstd, aws-lc):
/// unlike glibc's per-thread arenas it gives freed memory back to the system, so the
/// memory of a burst (the audit backlog, the sessions) is returned once it is over.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns the pages freed since the last purge to the system, whatever their age
/// and whichever thread freed them (mimalloc's arenas are process-wide). Called when
/// the gateway is idle: under load, mimalloc's default (purge pages 10 ms after they
/// are freed) keeps pages that are about to be reused, where purging at once cost 9 %
/// more CPU per statement (page faults, zeroing, TLB shootdowns; pgbench -S, 8 clients,
/// interleaved runs), and after a burst this gives them back all the same.
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: mi_collect takes no pointers and may be called from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[derive(Parser)]
#[command(
    name = "warden",
    version,
    about = "Layer 7 access gateway for infrastructure"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (embedded default: SQLite under ./warden-data, API on 127.0.0.1:8009).
    Gateway {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the effective configuration (secrets redacted) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Administer the gateway through its API (connections, keys, policies,
    /// webhooks, sinks, agents), or offline (`recover`).
    Admin {
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    /// Inspect the audit log directly in the store (works while the gateway is down).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Print a session's recording from the recordings directory (works while the
    /// gateway is down).
    Replay {
        /// Session id, as in `GET /api/sessions`.
        session: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Replay with the session's own pacing, this many times faster (e.g. 1, 4);
        /// without it the whole timeline is printed at once.
        #[arg(long)]
        speed: Option<f64>,
        /// Print the recording's JSON lines as stored.
        #[arg(long)]
        json: bool,
        /// Only this SSH terminal (channel number, as the timeline names it).
        #[arg(long)]
        terminal: Option<u32>,
        /// Write the terminal (`--terminal`) to this file as plain asciicast v2, for
        /// `asciinema play`, instead of playing it.
        #[arg(long, requires = "terminal")]
        export: Option<PathBuf>,
        /// Fetch the recording from this gateway's API (as its owner or an admin)
        /// instead of reading the recordings directory.
        #[arg(long, env = "WARDEN_GATEWAY")]
        gateway: Option<String>,
        /// With `--gateway`: an OIDC access token or API key (default: `warden login`'s).
        #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Ask for time-boxed access to a connection that requires approval.
    Request {
        connection: String,
        /// How long, once approved: `30m`, `1h`, `1d`.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why; reviewers see it and the audit log keeps it.
        #[arg(long)]
        reason: String,
        /// Wait until it is approved (exit 0) or rejected (exit 1).
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Log in to a gateway through its OpenID provider (browser, or `--device`)
    /// and cache the token for the other commands.
    Login {
        #[arg(long, env = "WARDEN_GATEWAY", default_value = "http://127.0.0.1:8009")]
        gateway: String,
        /// Use the device authorization grant: a code to confirm on any device with a
        /// browser (for machines without one).
        #[arg(long)]
        device: bool,
        /// Print the login page's address without opening a browser.
        #[arg(long)]
        no_browser: bool,
        /// Log in through one of the gateway's SAML identity providers (named, or the
        /// only one) instead of its OpenID provider.
        #[arg(long, value_name = "IDP", num_args = 0..=1, default_missing_value = "", conflicts_with = "device")]
        saml: Option<String>,
    },
    /// Open a local port that leads to a connection through the gateway: local
    /// clients connect without a password; every policy still applies.
    Connect {
        connection: String,
        /// Local port (default: a free one, printed).
        #[arg(long, default_value_t = 0)]
        port: u16,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Run SQL (`-i`) on a PostgreSQL or MySQL connection, or a command (after `--`)
    /// on an SSH one, through the gateway; print the result.
    Exec {
        connection: String,
        /// The SQL (one or more statements).
        #[arg(short = 'i', long = "input")]
        sql: Option<String>,
        /// The command and its arguments (SSH connections).
        #[arg(last = true)]
        command: Vec<String>,
        #[arg(long, value_enum, default_value_t = exec::Format::Table)]
        format: exec::Format,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// The connections you may use.
    Connections {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Sessions (yours; everyone's for admins), newest first.
    Sessions {
        #[arg(long)]
        connection: Option<String>,
        /// Only this subject's.
        #[arg(long)]
        user: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Forget the cached login to a gateway.
    Logout {
        #[arg(long, env = "WARDEN_GATEWAY", default_value = "http://127.0.0.1:8009")]
        gateway: String,
    },
    /// Who the gateway takes you for: subject, groups, admin, token expiry.
    Whoami {
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// Run the network agent inside a private network: it dials out to the gateway
    /// and carries connections that name it to the targets its allowlist permits.
    Agent(agent::AgentArgs),
    /// Network agents (admins): list (the default), add, revoke, rotate, delete.
    #[command(args_conflicts_with_subcommands = true)]
    Agents {
        #[command(subcommand)]
        command: Option<agent::AgentsCommand>,
        #[command(flatten)]
        api: client::ApiArgs,
    },
    /// List, show, approve or reject held commands and access requests.
    Review {
        #[command(subcommand)]
        command: client::ReviewCommand,
    },
}

#[derive(Args)]
pub(crate) struct ConfigArg {
    /// TOML configuration file; `WARDEN_*` environment variables override it.
    #[arg(long, short = 'c', env = "WARDEN_CONFIG")]
    config: Option<PathBuf>,
}

impl ConfigArg {
    pub(crate) fn load(&self) -> Result<Config> {
        Ok(Config::load(self.config.as_deref(), std::env::vars())?)
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit status 1 and the first broken event if it was tampered with.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArg,
    },
    /// List events in chain order: the oldest `--limit` (default), or with `--tail` the
    /// newest.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        subject: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// The newest `--limit` matching events (still printed oldest first).
        #[arg(long)]
        tail: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArg,
    },
}

/// Ask a gateway's API (as an admin) instead of reading the store.
#[derive(Args)]
struct RemoteArg {
    /// The gateway's API URL.
    #[arg(long, env = "WARDEN_GATEWAY")]
    gateway: Option<String>,
    /// With `--gateway`: an OIDC access token or API key (default: `warden login`'s).
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARDEN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a journal or a log file gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("WARDEN_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A client command ends quietly when what reads its output goes away (`| head`), as
/// other Unix tools do. Long-running processes keep ignoring SIGPIPE: for them a
/// closed pipe or socket is an error to handle, never the end of the process.
#[allow(unsafe_code)]
fn die_on_broken_pipe() {
    // SAFETY: sets a signal's disposition to its default, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    warden_gateway::idle::set_allocator_release(release_freed_memory);
    let cli = Cli::parse();
    // Not for long-running processes: the gateway, the agent, and `connect`, whose
    // tunnels outlive a reader of its one message; nor `exec`, whose MySQL bridge
    // writes a Unix socket (a signal there would kill it mid-session; its output
    // handles a closed reader itself).
    if !matches!(
        cli.command,
        Command::Gateway { .. }
            | Command::Agent(_)
            | Command::Connect { .. }
            | Command::Exec { .. }
    ) {
        die_on_broken_pipe();
    }
    init_logging();
    // One crypto provider for every TLS user in the process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Gateway {
            config,
            print_config,
        } => {
            let config = config.load()?;
            if let Some(warning) = warden_core::ablation::warning() {
                eprintln!("warning: {warning}");
                tracing::warn!("{warning}");
            }
            if print_config {
                let text = config.to_redacted_toml();
                print!("{text}");
                if !text.ends_with('\n') {
                    println!();
                }
                return Ok(ExitCode::SUCCESS);
            }
            gateway(config).await
        }
        Command::Audit { command } => audit(command).await,
        Command::Admin { command } => admin::run(command).await,
        Command::Replay {
            session,
            config,
            speed,
            json,
            terminal,
            export,
            gateway,
            token,
        } => {
            let id: uuid::Uuid = session
                .parse()
                .with_context(|| format!("`{session}` is not a session id"))?;
            // Local terminals are read from here, which must outlive them.
            let dir;
            // A named gateway, else the one logged in to, else the recordings here.
            let gateway = gateway.or_else(login::only_cached_gateway);
            let (rec, terminals) = match &gateway {
                Some(gw) => {
                    let (rec, casts) =
                        client::remote_recording(gw, token.as_deref(), id, terminal).await?;
                    (rec, replay::Terminals::Fetched(casts))
                }
                None => {
                    dir = config.load()?.recordings_dir();
                    let rec = match terminal {
                        // A terminal alone needs no timeline.
                        Some(_) => None,
                        None => Some(warden_gateway::recording::read_recording(&dir, id).map_err(
                            |e| match e {
                                warden_gateway::recording::RecordingReadError::NotFound(_) => {
                                    anyhow::anyhow!(
                                        "no recording of session {id} in {} (the recordings \
                                             directory of the configuration here); to fetch it \
                                             from a gateway, pass --gateway or set \
                                             WARDEN_GATEWAY, or `warden login` first",
                                        std::path::absolute(&dir)
                                            .unwrap_or_else(|_| dir.clone())
                                            .display()
                                    )
                                }
                                other => other.into(),
                            },
                        )?),
                    };
                    (rec, replay::Terminals::Local(&dir))
                }
            };
            play(rec, &terminals, id, terminal, export, speed, json).await
        }
        Command::Request {
            connection,
            duration,
            reason,
            wait,
            api,
        } => client::request(connection, duration, reason, wait, api).await,
        Command::Review { command } => client::review(command).await,
        Command::Agent(args) => agent::run(args).await,
        Command::Agents { command, api } => agent::agents(command, api).await,
        Command::Login {
            gateway,
            device,
            no_browser,
            saml,
        } => {
            match saml {
                Some(idp) => {
                    let idp = Some(idp.as_str()).filter(|i| !i.is_empty());
                    login_saml::login(&gateway, idp, !no_browser).await?;
                }
                None => login::login(&gateway, device, !no_browser).await?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Connect {
            connection,
            port,
            api,
        } => connect::connect(connection, port, api).await,
        Command::Exec {
            connection,
            sql,
            command,
            format,
            api,
        } => exec::exec(connection, sql, command, format, api).await,
        Command::Connections { api } => client::connections(api).await,
        Command::Sessions {
            connection,
            user,
            since,
            limit,
            api,
        } => client::sessions(connection, user, since, limit, api).await,
        Command::Logout { gateway } => {
            login::logout(&gateway)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Whoami { api } => {
            api.whoami().await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Who runs this process, by its real user id (not `$USER`, which anyone sets).
fn os_user() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|r| r.split_whitespace().next().map(String::from))
        });
    let name = uid.as_ref().and_then(|uid| {
        std::fs::read_to_string("/etc/passwd")
            .ok()?
            .lines()
            .find_map(|l| {
                let fields: Vec<&str> = l.split(':').collect();
                (fields.len() > 2 && fields[2] == uid.as_str()).then(|| fields[0].to_string())
            })
    });
    match (name, uid) {
        (Some(name), _) => name,
        (None, Some(uid)) => format!("uid {uid}"),
        (None, None) => "unknown".into(),
    }
}

pub(crate) async fn recover(config: &Config) -> Result<ExitCode> {
    let store = warden_gateway::open_existing_store(config).await?;
    let (token, expires_at) =
        warden_gateway::recover_admin_key(&store, config, &format!("local:{}", os_user())).await?;
    // As at the first start: on a terminal, or else into an owner-only file.
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        println!("New Warden admin API key (shown once; every earlier admin key is revoked):");
        println!();
        println!("    {}", token.expose());
        println!();
    } else {
        let path = warden_gateway::write_admin_key_file(config, &token)?;
        println!(
            "New Warden admin API key written to {} (owner-only; every earlier admin key is revoked): read it, then delete the file",
            path.display()
        );
    }
    match expires_at {
        Some(at) => println!("It expires at {}.", warden_core::timefmt::rfc3339(at)),
        None => println!("It does not expire (auth.admin_key_ttl_secs = 0)."),
    }
    Ok(ExitCode::SUCCESS)
}

async fn gateway(config: Config) -> Result<ExitCode> {
    // Listen for stop signals before announcing readiness, so a supervisor that
    // signals right after the "listening" line still gets a clean stop.
    let stop = stop_signal()?;
    let mut gw = Gateway::start(config.clone())
        .await
        .context("starting the gateway")?;
    if let Some(token) = gw.take_generated_admin_token() {
        // Shown once, on a terminal and not through the logger, so it does not end
        // up in log aggregation; a service manager's stdout is a journal, so then it
        // goes to an owner-only file instead. Only its hash is stored.
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            println!("Warden bootstrap admin API key (shown once; only its hash is stored):");
            println!();
            println!("    {}", token.expose());
            println!();
        } else {
            let path = warden_gateway::write_admin_key_file(&config, &token)?;
            println!(
                "Warden bootstrap admin API key written to {} (owner-only): read it, then delete the file",
                path.display()
            );
        }
        println!(
            "Use it as `Authorization: Bearer <key>` against {}; it expires after auth.admin_key_ttl_secs ({} s, 0: never), and `warden admin recover` issues a new one",
            gw.api_url(),
            config.auth.admin_key_ttl_secs
        );
    }
    if let Some(mysql) = gw.listener(warden_core::ConnectionKind::Mysql) {
        println!("MySQL proxy listening on {mysql}");
    }
    if let Some(ssh) = gw.listener(warden_core::ConnectionKind::Ssh) {
        println!("SSH proxy listening on {ssh}");
    }
    if let Some(pg) = gw.listener(warden_core::ConnectionKind::Postgres) {
        println!("PostgreSQL proxy listening on {pg}");
    }
    if let Some(k8s) = gw.listener(warden_core::ConnectionKind::Kubernetes) {
        println!("Kubernetes proxy listening on {k8s}");
    }
    if let Some(http) = gw.listener(warden_core::ConnectionKind::Http) {
        println!("HTTP proxy listening on {http}");
    }
    println!("warden gateway listening on {}", gw.api_url());
    stop.await;
    tracing::info!("stopping");
    gw.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// Registers SIGINT and SIGTERM handlers now; the returned future ends at either.
#[cfg(unix)]
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(not(unix))]
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// Plays (or exports) a recording: one terminal, the JSON lines, or the timeline.
async fn play(
    rec: Option<warden_gateway::recording::Recording>,
    terminals: &replay::Terminals<'_>,
    id: uuid::Uuid,
    terminal: Option<u32>,
    export: Option<PathBuf>,
    speed: Option<f64>,
    json: bool,
) -> Result<ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Some(channel) = terminal {
        let cast = terminals
            .get(&id.to_string(), channel)
            .map_err(|e| anyhow::anyhow!(e))?;
        match export {
            Some(path) => std::fs::write(&path, cast.to_asciicast())
                .with_context(|| format!("writing {}", path.display()))?,
            None => replay::play_terminal(&cast, channel, speed, &mut out).await?,
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(rec) = rec else {
        anyhow::bail!("no recording of session {id}");
    };
    if json {
        writeln!(out, "{}", serde_json::to_string(&rec.header)?)?;
        for e in &rec.entries {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        }
    } else {
        replay::replay(&rec, terminals, speed, &mut out).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn audit(command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            remote:
                RemoteArg {
                    gateway: Some(gateway),
                    token,
                },
            json,
            ..
        } => client::audit_verify(&gateway, token, json).await,
        AuditCommand::List {
            remote:
                RemoteArg {
                    gateway: Some(gateway),
                    token,
                },
            kind,
            subject,
            connection,
            since,
            limit,
            tail,
            json,
            ..
        } => {
            let filters = [
                ("kind", kind),
                ("subject", subject),
                ("connection", connection),
                ("since", since),
                ("limit", Some(limit.to_string())),
                ("order", tail.then(|| "newest".to_string())),
            ];
            client::audit_list(&gateway, token, &filters, json).await
        }
        AuditCommand::Verify { config, json, .. } => {
            let store = warden_gateway::open_existing_store(&config.load()?).await?;
            let report = store
                .verify_audit_in(Some(&config.load()?.audit_archive_dir()))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else if report.ok {
                println!(
                    "audit log intact: {} events, head {} (seq {})",
                    report.events_checked, report.head_hash, report.head_seq
                );
            } else if let Some(p) = &report.problem {
                println!(
                    "AUDIT LOG TAMPERED at event seq {} (id {}):",
                    p.seq,
                    p.event_id.as_deref().unwrap_or("unknown")
                );
                println!("  {}", p.reason);
                println!("  {} events before it verified", report.events_checked);
            }
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::List {
            config,
            kind,
            subject,
            connection,
            since,
            limit,
            tail,
            json,
            ..
        } => {
            let store = warden_gateway::open_existing_store(&config.load()?).await?;
            let since = since
                .map(|s| {
                    time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                })
                .transpose()
                .context("--since must be an RFC 3339 time")?;
            let filter = AuditFilter {
                kind,
                subject,
                connection,
                since,
                limit,
                newest_first: tail,
                ..Default::default()
            };
            let mut entries = store.list_audit(&filter).await?;
            if tail {
                entries.reverse();
            }
            for e in &entries {
                if json {
                    println!("{}", serde_json::to_string(e)?);
                } else {
                    let ev = &e.event;
                    println!(
                        "{:>6}  {}  {:<20} {:<16} {:<16} {}",
                        e.seq,
                        warden_core::timefmt::rfc3339(ev.time),
                        ev.kind,
                        ev.identity.as_ref().map_or("-", |i| i.subject.as_str()),
                        ev.connection.as_deref().unwrap_or("-"),
                        ev.payload
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
