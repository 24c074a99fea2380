//! `warden admin keys`.

use anyhow::{Result, anyhow, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use std::process::ExitCode;

use super::{cell, check_dry_run, delete, dry, list, print_object, print_would_create, seg};
use crate::client::{Api, ApiArgs, str_of};
use crate::table::Table;

#[derive(Subcommand)]
pub enum Command {
    /// Every API key (never a token): subject, groups, status, expiry.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One key, by id (the part after `wdn_`) or name.
    Show {
        key: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Issue a key; prints its token once (only a hash is stored).
    Create {
        /// A label, e.g. the CI job that uses it.
        name: String,
        /// A group its identity belongs to (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Lifetime in seconds (default and maximum: the gateway's `auth.api_key_*`).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// The identity it acts as (default `apikey:NAME`).
        #[arg(long)]
        subject: Option<String>,
        /// Check the request and print the key it would issue; nothing is stored.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a key now: requests with it fail and its open sessions end (keys are
    /// never deleted: the audit log names them).
    #[command(visible_alias = "delete")]
    Revoke {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::List { api: args } => {
            let Some(list) = list(&args, "/api/api-keys").await? else {
                return Ok(ExitCode::SUCCESS);
            };
            let mut t = Table::new(&["ID", "NAME", "SUBJECT", "GROUPS", "STATUS", "EXPIRES"]);
            for k in list.as_array().into_iter().flatten() {
                t.row([
                    str_of(k, "id").to_string(),
                    str_of(k, "name").to_string(),
                    str_of(k, "subject").to_string(),
                    cell(&k["groups"]),
                    str_of(k, "status").to_string(),
                    cell(&k["expires_at"]),
                ]);
            }
            t.print();
        }
        Command::Show { key, api: args } => {
            let list = Api::new(&args)
                .await?
                .get("/api/api-keys")
                .await?
                .unwrap_or_default();
            let id = key.strip_prefix("wdn_").unwrap_or(&key);
            let found: Vec<&Value> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|k| str_of(k, "id") == id || str_of(k, "name") == key)
                .collect();
            let one = match found.as_slice() {
                [one] => *one,
                [] => bail!("no API key with the id or name `{key}`"),
                _ => bail!("several API keys are named `{key}`: give the id"),
            };
            if args.json {
                println!("{one}");
            } else {
                print_object(one);
            }
        }
        Command::Create {
            name,
            groups,
            ttl_secs,
            subject,
            dry_run,
            api: args,
        } => {
            let body =
                json!({"name": name, "groups": groups, "ttl_secs": ttl_secs, "subject": subject});
            let answer = Api::new(&args)
                .await?
                .call(Method::POST, &dry("/api/api-keys", dry_run), Some(&body))
                .await?
                .ok_or_else(|| anyhow!("the gateway has no API keys API"))?;
            check_dry_run(&answer, dry_run)?;
            if args.json {
                println!("{answer}");
            } else if dry_run {
                print_would_create(&format!("API key `{name}` would be issued"), &answer);
            } else {
                println!(
                    "API key `{name}` (id {}, as {}, expires {}). Its token, shown once:\n\n    {}\n",
                    str_of(&answer, "id"),
                    str_of(&answer, "subject"),
                    str_of(&answer, "expires_at"),
                    str_of(&answer, "token")
                );
            }
        }
        Command::Revoke { id, api: args } => {
            let id = id.strip_prefix("wdn_").unwrap_or(&id).to_string();
            delete(&args, &format!("/api/api-keys/{}", seg(&id)), || {
                format!("no API key with the id `{id}`")
            })
            .await?;
            println!("API key {id} revoked; its open sessions end now");
        }
    }
    Ok(ExitCode::SUCCESS)
}
