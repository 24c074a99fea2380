//! `warden admin webhooks` and `warden admin sinks`: event delivery and its state.

use anyhow::{Result, anyhow};
use clap::Subcommand;
use reqwest::Method;
use serde_json::Value;
use std::process::ExitCode;

use super::{
    ChangeArgs, cell, delete, list, print_update, print_would_create, seg, send_change, show,
};
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
    let missing = |id: &str| {
        let id = id.to_string();
        move || format!("no webhook {id}")
    };
    match command {
        Command::List { api: args } => {
            let Some(list) = list(&args, "/api/webhooks").await? else {
                return Ok(ExitCode::SUCCESS);
            };
            let mut t = Table::new(&["ID", "URL", "KINDS", "DECISIONS", "DELIVERED", "STATE"])
                .numeric(&[4]);
            for w in list.as_array().into_iter().flatten() {
                let (seq, state) = delivery(&w["delivery"]);
                t.row([
                    str_of(w, "id").to_string(),
                    warden_store::url_origin(str_of(w, "url")),
                    cell(&w["kinds"]),
                    cell(&w["decisions"]),
                    seq,
                    state,
                ]);
            }
            t.print();
        }
        Command::Show { id, api: args } => {
            show(&args, &format!("/api/webhooks/{}", seg(&id)), missing(&id)).await?;
        }
        Command::Create { change } => {
            let body = change.body.body()?;
            let answer = send_change(&change, Method::POST, "/api/webhooks", &body, || {
                "the gateway has no webhooks API".into()
            })
            .await?;
            if change.api.json {
                println!("{answer}");
            } else if change.dry_run {
                print_would_create("webhook would be created", &answer);
            } else {
                println!(
                    "webhook {} created for {}",
                    str_of(&answer, "id"),
                    warden_store::url_origin(str_of(&answer, "url"))
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
            let path = format!("/api/webhooks/{}", seg(&id));
            let answer = send_change(&change, Method::PATCH, &path, &body, missing(&id)).await?;
            print_update(&change, &format!("webhook {id}"), &answer);
        }
        Command::Delete { id, api: args } => {
            delete(&args, &format!("/api/webhooks/{}", seg(&id)), missing(&id)).await?;
            println!("webhook {id} deleted");
        }
        Command::DeadLetters { id, api: args } => {
            let path = format!("/api/webhooks/{}/dead-letters", seg(&id));
            if let Some(letters) = list(&args, &path).await? {
                print_letters(&letters);
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
    let Some(list) = list(&args, "/api/event-sinks").await? else {
        return Ok(ExitCode::SUCCESS);
    };
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
