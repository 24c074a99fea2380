//! `warden admin connections`.

use anyhow::{Result, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

use super::{
    ChangeArgs, cell, delete, list, print_update, print_would_create, seg, send_change, show,
};
use crate::client::{ApiArgs, str_of};
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
    let missing = |name: &str| {
        let name = name.to_string();
        move || format!("no connection named `{name}`")
    };
    match command {
        Command::List { api: args } => {
            let Some(list) = list(&args, "/api/connections").await? else {
                return Ok(ExitCode::SUCCESS);
            };
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
            show(
                &args,
                &format!("/api/connections/{}", seg(&name)),
                missing(&name),
            )
            .await?;
        }
        Command::Create { change } => {
            let body = change.body.body()?;
            let name = body["name"].as_str().unwrap_or_default().to_string();
            if name.is_empty() {
                bail!("a connection needs a name: --set name=NAME or `name` in the file");
            }
            let answer = send_change(&change, Method::POST, "/api/connections", &body, || {
                "the gateway has no connections API".into()
            })
            .await?;
            if change.api.json {
                println!("{answer}");
            } else if change.dry_run {
                print_would_create(&format!("connection `{name}` would be created"), &answer);
            } else {
                println!("connection `{name}` created");
            }
        }
        Command::Update { name, change } => {
            let mut body = change.body.body()?;
            if body
                .get("name")
                .is_some_and(|n| n.as_str() != Some(name.as_str()))
            {
                bail!("a connection's name cannot change (its secret is sealed to it)");
            }
            if let Value::Object(map) = &mut body {
                map.remove("name");
            }
            let path = format!("/api/connections/{}", seg(&name));
            let answer = send_change(&change, Method::PATCH, &path, &body, missing(&name)).await?;
            print_update(&change, &format!("connection `{name}`"), &answer);
        }
        Command::Delete { name, api: args } => {
            delete(
                &args,
                &format!("/api/connections/{}", seg(&name)),
                missing(&name),
            )
            .await?;
            println!("connection `{name}` deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}
