//! `warden agent` (run the network agent) and `warden agents` (register, list,
//! revoke, rotate and delete agents through the gateway's API).

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use warden_agent::{AgentSettings, Allowlist, GatewayAddress};
use warden_core::Secret;

use crate::client::{Api, ApiArgs, str_of};

/// `warden agent`: command-line settings; each may also come from the environment
/// or from the `--config` file (the command line wins, then the environment).
#[derive(Args)]
pub struct AgentArgs {
    /// TOML file with `gateway`, `key` or `key_file`, `ca_file`, `allow`,
    /// `max_streams`, `dial_timeout_secs`.
    #[arg(long, short = 'c', env = "WARDEN_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway's API URL (`https://gw:8009`); repeat for several gateways that
    /// share a store: the agent keeps a tunnel to each.
    #[arg(long = "gateway", env = "WARDEN_AGENT_GATEWAY", value_delimiter = ',')]
    gateways: Vec<String>,
    /// The agent key from `warden agents add`.
    #[arg(long, env = "WARDEN_AGENT_KEY", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the agent key (e.g. a systemd credential); `--token` wins.
    #[arg(long, env = "WARDEN_AGENT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// PEM file of the CA the gateway's certificate must chain to (default: the
    /// system's trusted CAs).
    #[arg(long = "ca", env = "WARDEN_AGENT_CA")]
    ca_file: Option<PathBuf>,
    /// Targets this agent may dial: `10.0.0.0/8:5432`, `db.internal:5432`,
    /// `*.corp.example:22`, `[fd00::/8]`; repeat or separate with commas. Empty:
    /// every dial is refused.
    #[arg(long, env = "WARDEN_AGENT_ALLOW", value_delimiter = ',')]
    allow: Vec<String>,
    /// Backend connections one tunnel carries at once.
    #[arg(long, env = "WARDEN_AGENT_MAX_STREAMS")]
    max_streams: Option<u32>,
    /// How long dialing a target may take, in seconds.
    #[arg(long, env = "WARDEN_AGENT_DIAL_TIMEOUT_SECS")]
    dial_timeout_secs: Option<u64>,
}

/// The agent's configuration file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default)]
    gateway: Vec<String>,
    key: Option<String>,
    key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow: Vec<String>,
    max_streams: Option<u32>,
    dial_timeout_secs: Option<u64>,
}

const DEFAULT_MAX_STREAMS: u32 = 1024;
const DEFAULT_DIAL_TIMEOUT_SECS: u64 = 10;

impl AgentArgs {
    fn settings(self) -> Result<AgentSettings> {
        let file: AgentFile = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("{}", path.display()))?
            }
            None => AgentFile::default(),
        };
        let gateways = if self.gateways.is_empty() {
            file.gateway
        } else {
            self.gateways
        };
        let gateways = gateways
            .iter()
            .map(|g| GatewayAddress::parse(g.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        if gateways.is_empty() {
            bail!("no gateway: pass --gateway https://GATEWAY:8009 (or WARDEN_AGENT_GATEWAY)");
        }
        let key_file = self.key_file.or(file.key_file);
        let key = match (self.token, file.key, key_file) {
            (Some(k), _, _) | (None, Some(k), _) => k,
            (None, None, Some(path)) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading the agent key from {}", path.display()))?,
            (None, None, None) => {
                bail!("no agent key: pass --token (or WARDEN_AGENT_KEY), from `warden agents add`")
            }
        };
        let key = key.trim().to_string();
        if !key.starts_with("wagt_") {
            bail!("that is not an agent key (they start with `wagt_`; see `warden agents add`)");
        }
        let ca_pem = match self.ca_file.or(file.ca_file) {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .with_context(|| format!("reading the gateway CA from {}", path.display()))?,
            ),
            None => None,
        };
        let allow = if self.allow.is_empty() {
            file.allow
        } else {
            self.allow
        };
        let allow: Vec<String> = allow
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        Ok(AgentSettings {
            gateways,
            key: Secret::new(key),
            ca_pem,
            allow: Allowlist::parse(&allow)?,
            max_streams: self
                .max_streams
                .or(file.max_streams)
                .unwrap_or(DEFAULT_MAX_STREAMS),
            dial_timeout: Duration::from_secs(
                self.dial_timeout_secs
                    .or(file.dial_timeout_secs)
                    .unwrap_or(DEFAULT_DIAL_TIMEOUT_SECS),
            ),
            host: host_name(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// `warden agent`: runs until SIGINT or SIGTERM.
pub async fn run(args: AgentArgs) -> Result<ExitCode> {
    let settings = args.settings()?;
    let stop = crate::stop_signal()?;
    let (shutdown, rx) = tokio::sync::watch::channel(false);
    let gateways: Vec<String> = settings.gateways.iter().map(|g| g.to_string()).collect();
    tracing::info!(gateways = ?gateways, "warden agent starting");
    let running = tokio::spawn(warden_agent::agent::run(settings, rx));
    stop.await;
    tracing::info!("stopping");
    let _ = shutdown.send(true);
    running.await??;
    Ok(ExitCode::SUCCESS)
}

#[derive(Subcommand)]
pub enum AgentsCommand {
    /// Every registered agent: status, version, address, last seen, sessions carried.
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Register an agent; prints its key once.
    #[command(visible_alias = "create")]
    Add {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// A network its tunnels may come from (repeat); none: anywhere.
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One agent: status, connected processes, networks its tunnels may come from.
    Show {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change an agent's description or source networks (only those given).
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// The networks its tunnels may come from, replacing the list (repeat);
        /// `--source any` clears it.
        #[arg(long = "source", value_name = "CIDR")]
        sources: Vec<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke an agent: its key stops working and its tunnels close now.
    Revoke {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Give an agent a new key (prints it once); tunnels with the old key close.
    Rotate {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Delete an agent that no connection names.
    Delete {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// `warden agents ...`.
pub async fn agents(command: Option<AgentsCommand>, list_api: ApiArgs) -> Result<ExitCode> {
    let command = command.unwrap_or(AgentsCommand::List { api: list_api });
    let post = reqwest::Method::POST;
    let (api, answer) = match command {
        AgentsCommand::List { api } => {
            let client = Api::new(&api).await?;
            let list = client.get("/api/agents").await?.unwrap_or_default();
            if api.json {
                println!("{list}");
            } else {
                print_agents(&list);
            }
            return Ok(ExitCode::SUCCESS);
        }
        AgentsCommand::Add {
            name,
            description,
            sources,
            api,
        } => {
            let body = json!({"name": name, "description": description, "sources": sources});
            let answer = Api::new(&api)
                .await?
                .call(post, "/api/agents", Some(&body))
                .await?;
            (api, answer)
        }
        AgentsCommand::Show { name, api } => {
            let answer = Api::new(&api)
                .await?
                .get(&format!("/api/agents/{name}"))
                .await?;
            (api, answer)
        }
        AgentsCommand::Update {
            name,
            description,
            sources,
            api,
        } => {
            let mut body = json!({});
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            match sources.as_slice() {
                [] => {}
                [any] if any == "any" => body["sources"] = json!([]),
                list => body["sources"] = json!(list),
            }
            if body.as_object().is_some_and(serde_json::Map::is_empty) {
                bail!("nothing to change: pass --description or --source");
            }
            let answer = Api::new(&api)
                .await?
                .call(
                    reqwest::Method::PATCH,
                    &format!("/api/agents/{name}"),
                    Some(&body),
                )
                .await?;
            (api, answer)
        }
        AgentsCommand::Rotate { name, api } => {
            let answer = Api::new(&api)
                .await?
                .call(post, &format!("/api/agents/{name}/rotate"), None)
                .await?;
            (api, answer)
        }
        AgentsCommand::Revoke { name, api } => {
            let answer = Api::new(&api)
                .await?
                .call(post, &format!("/api/agents/{name}/revoke"), None)
                .await?;
            (api, answer)
        }
        AgentsCommand::Delete { name, api } => {
            let answer = Api::new(&api)
                .await?
                .call(
                    reqwest::Method::DELETE,
                    &format!("/api/agents/{name}"),
                    None,
                )
                .await?;
            if answer.is_none() {
                bail!("no agent named `{name}`");
            }
            println!("agent `{name}` deleted");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let Some(answer) = answer else {
        bail!("no such agent: `warden agents list` shows them");
    };
    if api.json {
        println!("{answer}");
    } else if let Some(key) = answer["key"].as_str() {
        println!(
            "Agent `{}` key (shown once; only its hash is stored):\n\n    {key}\n\n\
             Run inside the private network (the key in a file, not on the command line):\n    \
             warden agent --gateway {} --key-file KEY_FILE --allow HOST_OR_NETWORK:PORT",
            str_of(&answer, "name"),
            api.gateway
        );
    } else {
        print_agents(&Value::Array(vec![answer]));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_agents(list: &Value) {
    let mut t = crate::table::Table::new(&[
        "NAME",
        "STATUS",
        "VERSION",
        "ADDRESS",
        "LAST SEEN",
        "SESSIONS",
        "PROCESSES",
        "SOURCES",
    ])
    .numeric(&[5, 6]);
    for a in list.as_array().into_iter().flatten() {
        let sources: Vec<&str> = a["sources"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        t.row([
            str_of(a, "name").to_string(),
            str_of(a, "status").to_string(),
            str_of(a, "version").to_string(),
            str_of(a, "last_address").to_string(),
            str_of(a, "last_seen_at").to_string(),
            a["sessions_carried"].as_i64().unwrap_or(0).to_string(),
            a["processes"].as_array().map_or(0, Vec::len).to_string(),
            if sources.is_empty() {
                "any".to_string()
            } else {
                sources.join(",")
            },
        ]);
    }
    t.print();
}
