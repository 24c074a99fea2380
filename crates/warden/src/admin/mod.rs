//! `warden admin`: the gateway's administration from the command line, through its
//! REST API as an admin — connections, API keys, policy sets (with the dry-run
//! evaluator), webhooks and SIEM sinks, network agents — plus `recover`, which works
//! offline on the store.
//!
//! Every noun has the same verbs where the API has them: `list` (a table; `--json`
//! for the API's JSON), `show`, `create`, `update`, `delete`. Bodies come from
//! `-f FILE` (JSON, or TOML when the name ends in `.toml`; `-` reads standard input),
//! `--set FIELD=TEXT` (a string), `--set FIELD:=JSON` and `--set-file FIELD=FILE`
//! (FIELD a dotted path). Updates are partial: only the fields given change, and the answer
//! names each changed field with its value before and after. `--dry-run` asks the
//! gateway to check the request and say what it would change, storing nothing.

mod body;
mod connections;
mod keys;
mod policies;
mod webhooks;

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;

use crate::client::{Api, ApiArgs, str_of};
use crate::table::Table;

pub use body::BodyArgs;

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Issue a new admin API key when the bootstrap one is lost, revoked or expired
    /// (every earlier admin key is revoked; audited as `api_key.recover`). Prints it.
    /// Offline: runs against the store, not the API.
    Recover {
        #[command(flatten)]
        config: crate::ConfigArg,
    },
    /// Connections: list, show, create, update, delete.
    Connections {
        #[command(subcommand)]
        command: connections::Command,
    },
    /// API keys: list, show, create (prints the token once), revoke.
    Keys {
        #[command(subcommand)]
        command: keys::Command,
    },
    /// Guardrail and masking sets: list, show, create, update, delete, and `test`
    /// (the dry-run evaluator: what a statement or command would meet, how values
    /// would be masked).
    Policies {
        #[command(subcommand)]
        command: policies::Command,
    },
    /// Webhooks: list (with delivery state), show, create, update, delete,
    /// dead-letters, redeliver.
    Webhooks {
        #[command(subcommand)]
        command: webhooks::Command,
    },
    /// The configured SIEM sinks: delivery state and dead letters.
    Sinks {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Network agents: list (the default), show, add, update, revoke, rotate, delete
    /// (the same as `warden agents`).
    #[command(args_conflicts_with_subcommands = true)]
    Agents {
        #[command(subcommand)]
        command: Option<crate::agent::AgentsCommand>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// What changing commands share.
#[derive(Args)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub body: BodyArgs,
    /// Check the request and print what it would change; nothing is stored.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(command: AdminCommand) -> Result<ExitCode> {
    match command {
        AdminCommand::Recover { config } => crate::recover(&config.load()?).await,
        AdminCommand::Connections { command } => connections::run(command).await,
        AdminCommand::Keys { command } => keys::run(command).await,
        AdminCommand::Policies { command } => policies::run(command).await,
        AdminCommand::Webhooks { command } => webhooks::run(command).await,
        AdminCommand::Sinks { api } => webhooks::sinks(api).await,
        AdminCommand::Agents { command, api } => crate::agent::agents(command, api).await,
    }
}

/// `?dry_run=true` when asked.
fn dry(path: &str, dry_run: bool) -> String {
    if dry_run {
        format!("{path}?dry_run=true")
    } else {
        path.to_string()
    }
}

/// A name or id as one URL path segment: everything but unreserved characters
/// percent-encoded, so `#`, `?` or `/` in it cannot change what the request means.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `--dry-run` answer must say it was one: a gateway that ignored the parameter
/// (an older one) has made the change, and that must not be reported as a dry run.
fn check_dry_run(answer: &serde_json::Value, dry_run: bool) -> Result<()> {
    if dry_run && answer["dry_run"] != serde_json::Value::Bool(true) {
        anyhow::bail!(
            "the gateway did not treat this as a dry run (an older gateway?): the change WAS MADE; check it with `show`"
        );
    }
    Ok(())
}

/// A list from `path`: printed as the API's JSON with `--json` (then `None`), else
/// returned for a table.
async fn list(args: &ApiArgs, path: &str) -> Result<Option<Value>> {
    let list = Api::new(args).await?.get(path).await?.unwrap_or_default();
    if args.json {
        println!("{list}");
        return Ok(None);
    }
    Ok(Some(list))
}

/// One object from `path`, as JSON or `field  value` lines.
async fn show(args: &ApiArgs, path: &str, missing: impl FnOnce() -> String) -> Result<()> {
    let one = Api::new(args)
        .await?
        .get(path)
        .await?
        .ok_or_else(|| anyhow::anyhow!(missing()))?;
    if args.json {
        println!("{one}");
    } else {
        print_object(&one);
    }
    Ok(())
}

/// Sends a create or update (`--dry-run` asked for and checked in the answer);
/// `missing` names what a 404 means.
async fn send_change(
    change: &ChangeArgs,
    method: reqwest::Method,
    path: &str,
    body: &Value,
    missing: impl FnOnce() -> String,
) -> Result<Value> {
    let answer = Api::new(&change.api)
        .await?
        .call(method, &dry(path, change.dry_run), Some(body))
        .await?
        .ok_or_else(|| anyhow::anyhow!(missing()))?;
    check_dry_run(&answer, change.dry_run)?;
    Ok(answer)
}

/// A dry run's answer to a create: what would be stored.
fn print_would_create(what: &str, answer: &Value) {
    println!("{what}:");
    print_object(answer);
    println!("dry run: nothing was stored");
}

/// An update's answer: JSON, or what changed (would change) and what it weakens.
fn print_update(change: &ChangeArgs, what: &str, answer: &Value) {
    if change.api.json {
        println!("{answer}");
    } else {
        print_outcome(what, answer, change.dry_run);
    }
}

/// Deletes what `path` names; `missing` names what a 404 means.
async fn delete(args: &ApiArgs, path: &str, missing: impl FnOnce() -> String) -> Result<()> {
    Api::new(args)
        .await?
        .call(reqwest::Method::DELETE, path, None)
        .await?
        .ok_or_else(|| anyhow::anyhow!(missing()))?;
    Ok(())
}

/// A value for a table cell or a `show` line: strings as they are, `null` as `-`,
/// the rest as compact JSON.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(Value::is_string) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

/// One object as `field  value` lines, in the object's order.
fn print_object(v: &Value) {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    if let Value::Object(map) = v {
        for (k, val) in map {
            t.row([k.clone(), cell(val)]);
        }
    }
    t.print();
}

/// What a create or update changed (or, in a dry run, would change), and what it
/// weakens.
fn print_outcome(what: &str, answer: &Value, dry_run: bool) {
    let changes = answer["changes"].as_array().cloned().unwrap_or_default();
    let verb = if dry_run { "would change" } else { "changed" };
    if changes.is_empty() {
        println!("{what}: nothing to change");
    } else {
        println!(
            "{what}: {} field{} {verb}",
            changes.len(),
            if changes.len() == 1 { "" } else { "s" }
        );
        let mut t = Table::new(&["FIELD", "BEFORE", "AFTER"]);
        for c in &changes {
            t.row([
                str_of(c, "field").to_string(),
                cell(&c["before"]),
                cell(&c["after"]),
            ]);
        }
        t.print();
    }
    print_weakened(answer);
    if dry_run {
        println!("dry run: nothing was stored");
    }
}

fn print_weakened(answer: &Value) {
    for w in answer["weakened"].as_array().into_iter().flatten() {
        println!("weakens: {}", w.as_str().unwrap_or_default());
    }
}
