//! `warden admin policies`: guardrail and masking sets, and the dry-run evaluator.

use anyhow::{Result, anyhow, bail};
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{Value, json};
use std::process::ExitCode;

use super::{ChangeArgs, cell, check_dry_run, delete, dry, list, print_outcome, seg};
use crate::client::{Api, ApiArgs, str_of};
use crate::table::Table;

#[derive(Clone, Copy, ValueEnum)]
pub enum Kind {
    Guardrails,
    Masking,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Guardrails => "guardrails",
            Kind::Masking => "masking",
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Every set: kind, name, where it is defined (config file sets are read-only),
    /// and how many rules or detectors it has.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One set, as JSON.
    Show {
        kind: Kind,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create a set from `-f FILE` and/or `--set`; refused if one has the name.
    Create {
        kind: Kind,
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Change the fields given (merged into the stored set, `null` removes; a list
    /// such as `rules` is replaced whole); prints each changed rule or field and
    /// anything the change weakens.
    Update {
        kind: Kind,
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Delete a set no connection uses.
    Delete {
        kind: Kind,
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// What a statement, shell command or HTTP request would meet, and how values
    /// would be masked, under a connection's sets or the sets named. Nothing runs.
    Test {
        /// Use this connection's sets.
        #[arg(long)]
        connection: Option<String>,
        /// Or these guardrail sets (repeat).
        #[arg(long = "guardrails")]
        guardrails: Vec<String>,
        /// And these masking sets (repeat).
        #[arg(long = "masking")]
        masking: Vec<String>,
        /// A SQL statement.
        #[arg(long, conflicts_with_all = ["shell", "http"])]
        sql: Option<String>,
        /// `postgres` or `mysql` (default: the connection's, else postgres).
        #[arg(long, requires = "sql")]
        dialect: Option<String>,
        /// A shell command.
        #[arg(long, conflicts_with = "http")]
        shell: Option<String>,
        /// An HTTP request: `METHOD /path`.
        #[arg(long)]
        http: Option<String>,
        /// A result value to mask (repeat); `COLUMN=VALUE` names its column
        /// (`table.column` or `schema.table.column`).
        #[arg(long = "value")]
        values: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::List { api: args } => {
            let Some(all) = list(&args, "/api/policies").await? else {
                return Ok(ExitCode::SUCCESS);
            };
            let mut t =
                Table::new(&["KIND", "NAME", "SOURCE", "RULES", "DESCRIPTION"]).numeric(&[3]);
            for kind in ["guardrails", "masking"] {
                for e in all[kind].as_array().into_iter().flatten() {
                    let count = ["rules", "detectors", "columns"]
                        .iter()
                        .map(|k| e[*k].as_array().map_or(0, Vec::len))
                        .sum::<usize>();
                    t.row([
                        kind.to_string(),
                        str_of(e, "name").to_string(),
                        str_of(e, "source").to_string(),
                        count.to_string(),
                        cell(&e["description"]),
                    ]);
                }
            }
            t.print();
        }
        Command::Show {
            kind,
            name,
            api: args,
        } => {
            let set = get(&Api::new(&args).await?, kind, &name)
                .await?
                .ok_or_else(|| anyhow!("no {} set named `{name}`", kind.path()))?;
            println!("{}", serde_json::to_string_pretty(&set)?);
        }
        Command::Create { kind, name, change } => {
            let api = Api::new(&change.api).await?;
            let body = change.body.body()?;
            // Asked first too, for a gateway too old to know If-None-Match.
            if get(&api, kind, &name).await?.is_some() {
                bail!(
                    "a {} set named `{name}` exists: use `warden admin policies update`",
                    kind.path()
                );
            }
            // Refused by the gateway if the name is taken meanwhile: never a replace.
            put(
                &api,
                kind,
                &name,
                body,
                &change,
                ("If-None-Match", "*".into()),
            )
            .await?;
        }
        Command::Update { kind, name, change } => {
            let api = Api::new(&change.api).await?;
            let (mut set, version) = api
                .call_with(
                    Method::GET,
                    &format!("/api/policies/{}/{}", kind.path(), seg(&name)),
                    None,
                    &[],
                )
                .await?
                .ok_or_else(|| anyhow!("no {} set named `{name}`", kind.path()))?;
            if set["source"] == "config" {
                bail!(
                    "{} set `{name}` is defined in the config file: change it there",
                    kind.path()
                );
            }
            if let Value::Object(map) = &mut set {
                map.remove("source");
            }
            merge(&mut set, change.body.body()?);
            // Written only over the version read: a change made meanwhile by someone
            // else is not overwritten (the gateway answers 412).
            let version =
                version.ok_or_else(|| anyhow!("the gateway gave no version of the set"))?;
            put(&api, kind, &name, set, &change, ("If-Match", version)).await?;
        }
        Command::Delete {
            kind,
            name,
            api: args,
        } => {
            let path = format!("/api/policies/{}/{}", kind.path(), seg(&name));
            delete(&args, &path, || {
                format!("no {} set named `{name}`", kind.path())
            })
            .await?;
            println!("{} set `{name}` deleted", kind.path());
        }
        Command::Test {
            connection,
            guardrails,
            masking,
            sql,
            dialect,
            shell,
            http,
            values,
            api: args,
        } => {
            return test(
                connection, guardrails, masking, sql, dialect, shell, http, values, args,
            )
            .await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A stored set with its `source`, flattened as the API gives it.
async fn get(api: &Api, kind: Kind, name: &str) -> Result<Option<Value>> {
    api.get(&format!("/api/policies/{}/{}", kind.path(), seg(name)))
        .await
}

async fn put(
    api: &Api,
    kind: Kind,
    name: &str,
    body: Value,
    change: &ChangeArgs,
    condition: (&str, String),
) -> Result<()> {
    let (answer, _) = api
        .call_with(
            Method::PUT,
            &dry(
                &format!("/api/policies/{}/{}", kind.path(), seg(name)),
                change.dry_run,
            ),
            Some(&body),
            &[(condition.0, condition.1.as_str())],
        )
        .await?
        .ok_or_else(|| anyhow!("the gateway has no policies API"))?;
    check_dry_run(&answer, change.dry_run)?;
    if change.api.json {
        println!("{answer}");
    } else {
        print_outcome(
            &format!("{} set `{name}`", kind.path()),
            &answer,
            change.dry_run,
        );
    }
    Ok(())
}

/// RFC 7396 merge patch: objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: Value) {
    match patch {
        Value::Object(fields) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(map) = target {
                for (k, v) in fields {
                    if v.is_null() {
                        map.remove(&k);
                    } else {
                        merge(map.entry(k).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other,
    }
}

#[allow(clippy::too_many_arguments)]
async fn test(
    connection: Option<String>,
    guardrails: Vec<String>,
    masking: Vec<String>,
    sql: Option<String>,
    dialect: Option<String>,
    shell: Option<String>,
    http: Option<String>,
    values: Vec<String>,
    args: ApiArgs,
) -> Result<ExitCode> {
    if connection.is_some() && !(guardrails.is_empty() && masking.is_empty()) {
        bail!("give --connection or --guardrails/--masking, not both");
    }
    let http = match http {
        Some(line) => {
            let (method, path) = line
                .split_once(' ')
                .ok_or_else(|| anyhow!("--http takes `METHOD /path`"))?;
            Some(json!({"method": method, "path": path.trim()}))
        }
        None => None,
    };
    let values: Vec<Value> = values
        .iter()
        .map(|v| match v.split_once('=') {
            Some((column, value)) if !column.is_empty() && !column.contains(' ') => {
                json!({"column": column, "value": value})
            }
            _ => json!({"value": v}),
        })
        .collect();
    let body = json!({
        "connection": connection,
        "policies": {"guardrails": guardrails, "masking": masking},
        "sql": sql, "dialect": dialect, "shell": shell, "http": http, "values": values,
    });
    let answer = Api::new(&args)
        .await?
        .call(Method::POST, "/api/policies/evaluate", Some(&body))
        .await?
        .ok_or_else(|| anyhow!("no connection named `{}`", connection.unwrap_or_default()))?;
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let d = &answer["decision"];
    match d["outcome"].as_str() {
        None => {}
        Some(decision) => {
            let rule = d["rule"]
                .as_str()
                .map(|r| format!(" (rule {r})"))
                .unwrap_or_default();
            let reason = d["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!("decision: {decision}{rule}{reason}");
        }
    }
    for (given, masked) in values
        .iter()
        .zip(answer["masked"].as_array().into_iter().flatten())
    {
        let found = cell(&masked["found"]);
        println!(
            "{} → {}{}",
            str_of(given, "value"),
            masked["value"].as_str().unwrap_or("NULL"),
            if found == "-" || found.is_empty() {
                String::new()
            } else {
                format!("  ({found})")
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
