//! `warden admin connections`.

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

use super::{ChangeArgs, cell, check_dry_run, dry, print_object, print_outcome, seg};
use crate::client::{Api, ApiArgs, str_of};
use crate::table::Table;

#[derive(Subcommand)]
pub enum Command {
    /// Every connection: kind, target, groups, policies, agent.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One connection's settings (never its secret).
    Show {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Register a connection from `-f FILE` and/or `--set` (name, kind, target,
    /// username, secret, tls, allowed_groups, policies, access, ssh, kubernetes,
    /// http, agent, description).
    Create {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Change the fields given (a JSON merge patch; `null` removes a value); prints
    /// each changed field before and after, and any protection it weakens.
    Update {
        name: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Remove a connection and its held secret.
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::List { api: args } => {
            let list = Api::new(&args)
                .await?
                .get("/api/connections")
                .await?
                .unwrap_or_default();
            if args.json {
                println!("{list}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&[
                "NAME",
                "KIND",
                "TARGET",
                "GROUPS",
                "GUARDRAILS",
                "MASKING",
                "AGENT",
            ]);
            for c in list.as_array().into_iter().flatten() {
                t.row([
                    str_of(c, "name").to_string(),
                    str_of(c, "kind").to_string(),
                    str_of(c, "target").to_string(),
                    cell(&c["allowed_groups"]),
                    cell(&c["policies"]["guardrails"]),
                    cell(&c["policies"]["masking"]),
                    cell(&c["agent"]),
                ]);
            }
            t.print();
        }
        Command::Show { name, api: args } => {
            let c = Api::new(&args)
                .await?
                .get(&format!("/api/connections/{}", seg(&name)))
                .await?
                .ok_or_else(|| anyhow!("no connection named `{name}`"))?;
            if args.json {
                println!("{c}");
            } else {
                print_object(&c);
            }
        }
        Command::Create { change } => {
            let body = change.body.body()?;
            let name = body["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() {
                bail!("a connection needs a name: --set name=NAME or `name` in the file");
            }
            let answer = Api::new(&change.api)
                .await?
                .call(
                    Method::POST,
                    &dry("/api/connections", change.dry_run),
                    Some(&body),
                )
                .await?
                .ok_or_else(|| anyhow!("the gateway has no connections API"))?;
            check_dry_run(&answer, change.dry_run)?;
            if change.api.json {
                println!("{answer}");
            } else if change.dry_run {
                println!("connection `{name}` would be created:");
                print_object(&answer);
                println!("dry run: nothing was stored");
            } else {
                println!("connection `{name}` created");
            }
        }
        Command::Update { name, change } => {
            let body = change.body.body()?;
            if body
                .get("name")
                .is_some_and(|n| n.as_str() != Some(name.as_str()))
            {
                bail!("a connection's name cannot change (its secret is sealed to it)");
            }
            let mut body = body;
            if let Value::Object(map) = &mut body {
                map.remove("name");
            }
            let answer = Api::new(&change.api)
                .await?
                .call(
                    Method::PATCH,
                    &dry(&format!("/api/connections/{}", seg(&name)), change.dry_run),
                    Some(&body),
                )
                .await?
                .ok_or_else(|| anyhow!("no connection named `{name}`"))?;
            check_dry_run(&answer, change.dry_run)?;
            if change.api.json {
                println!("{answer}");
            } else {
                print_outcome(&format!("connection `{name}`"), &answer, change.dry_run);
            }
        }
        Command::Delete { name, api: args } => {
            Api::new(&args)
                .await?
                .call(
                    Method::DELETE,
                    &format!("/api/connections/{}", seg(&name)),
                    None,
                )
                .await?
                .ok_or_else(|| anyhow!("no connection named `{name}`"))?;
            println!("connection `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
