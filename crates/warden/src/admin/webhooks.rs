//! `warden admin webhooks` and `warden admin sinks`: event delivery and its state.

use anyhow::{Result, anyhow};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

use super::{ChangeArgs, cell, check_dry_run, dry, print_object, print_outcome, seg};
use crate::client::{Api, ApiArgs, str_of};
use crate::table::Table;

#[derive(Subcommand)]
pub enum Command {
    /// Every webhook with its delivery state: last event delivered, failures.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One webhook and its delivery state.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Subscribe a URL (`url`, `kinds`, `decisions`, `secret`, `description`);
    /// prints the generated signing secret once.
    Create {
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Change the fields given; its delivery position is kept.
    Update {
        id: String,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Unsubscribe (its dead letters stay listed).
    Delete {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Events a webhook gave up on, newest first.
    DeadLetters {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Deliver a dead letter again now; on success it leaves the list.
    Redeliver {
        id: String,
        letter: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// A delivery state in a few words.
fn delivery(d: &Value) -> (String, String) {
    if d.is_null() {
        return ("-".into(), "-".into());
    }
    let state = match d["last_error"].as_str() {
        Some(e) => format!(
            "failing ({} attempts): {e}",
            d["attempts"].as_u64().unwrap_or(0)
        ),
        None => "ok".into(),
    };
    (cell(&d["seq"]), state)
}

pub async fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::List { api: args } => {
            let list = Api::new(&args)
                .await?
                .get("/api/webhooks")
                .await?
                .unwrap_or_default();
            if args.json {
                println!("{list}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new(&["ID", "URL", "KINDS", "DECISIONS", "DELIVERED", "STATE"])
                .numeric(&[4]);
            for w in list.as_array().into_iter().flatten() {
                let (seq, state) = delivery(&w["delivery"]);
                t.row([
                    str_of(w, "id").to_string(),
                    str_of(w, "url").to_string(),
                    cell(&w["kinds"]),
                    cell(&w["decisions"]),
                    seq,
                    state,
                ]);
            }
            t.print();
        }
        Command::Show { id, api: args } => {
            let w = Api::new(&args)
                .await?
                .get(&format!("/api/webhooks/{}", seg(&id)))
                .await?
                .ok_or_else(|| anyhow!("no webhook {id}"))?;
            if args.json {
                println!("{w}");
            } else {
                print_object(&w);
            }
        }
        Command::Create { change } => {
            let body = change.body.body()?;
            let answer = Api::new(&change.api)
                .await?
                .call(
                    Method::POST,
                    &dry("/api/webhooks", change.dry_run),
                    Some(&body),
                )
                .await?
                .ok_or_else(|| anyhow!("the gateway has no webhooks API"))?;
            check_dry_run(&answer, change.dry_run)?;
            if change.api.json {
                println!("{answer}");
            } else if change.dry_run {
                println!("webhook would be created:");
                print_object(&answer);
                println!("dry run: nothing was stored");
            } else {
                println!(
                    "webhook {} created for {}",
                    str_of(&answer, "id"),
                    str_of(&answer, "url")
                );
                if let Some(secret) = answer["secret"].as_str() {
                    println!(
                        "Its signing secret (shown once; receivers check X-Warden-Signature with it):\n\n    {secret}\n"
                    );
                }
            }
        }
        Command::Update { id, change } => {
            let body = change.body.body()?;
            let answer = Api::new(&change.api)
                .await?
                .call(
                    Method::PATCH,
                    &dry(&format!("/api/webhooks/{}", seg(&id)), change.dry_run),
                    Some(&body),
                )
                .await?
                .ok_or_else(|| anyhow!("no webhook {id}"))?;
            check_dry_run(&answer, change.dry_run)?;
            if change.api.json {
                println!("{answer}");
            } else {
                print_outcome(&format!("webhook {id}"), &answer, change.dry_run);
            }
        }
        Command::Delete { id, api: args } => {
            Api::new(&args)
                .await?
                .call(Method::DELETE, &format!("/api/webhooks/{}", seg(&id)), None)
                .await?
                .ok_or_else(|| anyhow!("no webhook {id}"))?;
            println!("webhook {id} deleted");
        }
        Command::DeadLetters { id, api: args } => {
            let list = Api::new(&args)
                .await?
                .get(&format!("/api/webhooks/{}/dead-letters", seg(&id)))
                .await?
                .unwrap_or_default();
            if args.json {
                println!("{list}");
            } else {
                print_letters(&list);
            }
        }
        Command::Redeliver {
            id,
            letter,
            api: args,
        } => {
            Api::new(&args)
                .await?
                .call(
                    Method::POST,
                    &format!(
                        "/api/webhooks/{}/dead-letters/{}/redeliver",
                        seg(&id),
                        seg(&letter)
                    ),
                    None,
                )
                .await?
                .ok_or_else(|| anyhow!("no dead letter {letter} of webhook {id}"))?;
            println!("dead letter {letter} delivered");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_letters(list: &Value) {
    let mut t =
        Table::new(&["LETTER", "SEQ", "KIND", "ATTEMPTS", "FAILED AT", "ERROR"]).numeric(&[1, 3]);
    for l in list.as_array().into_iter().flatten() {
        t.row([
            str_of(l, "id").to_string(),
            cell(&l["seq"]),
            str_of(l, "kind").to_string(),
            cell(&l["attempts"]),
            str_of(l, "failed_at").to_string(),
            str_of(l, "last_error").to_string(),
        ]);
    }
    t.print();
}

/// `warden admin sinks`.
pub async fn sinks(args: ApiArgs) -> Result<ExitCode> {
    let list = Api::new(&args)
        .await?
        .get("/api/event-sinks")
        .await?
        .unwrap_or_default();
    if args.json {
        println!("{list}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "NAME",
        "KIND",
        "FORMAT",
        "DELIVERED",
        "STATE",
        "DEAD LETTERS",
    ])
    .numeric(&[3, 5]);
    for s in list.as_array().into_iter().flatten() {
        let (seq, state) = delivery(&s["delivery"]);
        t.row([
            str_of(s, "name").to_string(),
            str_of(s, "kind").to_string(),
            str_of(s, "format").to_string(),
            seq,
            state,
            s["dead_letters"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}
