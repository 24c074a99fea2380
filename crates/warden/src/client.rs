//! `warden request` and `warden review`: thin clients of the gateway's REST API for
//! just-in-time access and command reviews. The token is `WARDEN_TOKEN` (an OIDC
//! access token or a Warden API key) or the cached `warden login`; output is a human
//! table, or the API's JSON with `--json`.

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::process::ExitCode;
use std::time::Duration;

/// Where the gateway is and who is asking.
#[derive(Args)]
pub struct ApiArgs {
    /// The gateway's API URL.
    #[arg(long, env = "WARDEN_GATEWAY", default_value = "http://127.0.0.1:8009")]
    pub(crate) gateway: String,
    /// An OIDC access token or a Warden API key.
    #[arg(long, env = "WARDEN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Print JSON instead of a table (`connect`: where the tunnel listens, one line).
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Reviews and access requests waiting for a decision you may make (and your
    /// own pending ones).
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Every status, not only pending.
        #[arg(long)]
        all: bool,
    },
    /// One review or access request.
    Show {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Approve a review or an access request.
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Reject a review or an access request.
    Reject {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

pub(crate) struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    /// The token is `warden login`'s (so a refusal means: log in again).
    from_login: bool,
}

impl ApiArgs {
    pub async fn whoami(&self) -> Result<()> {
        crate::login::whoami(&self.gateway, self.token.as_deref(), self.json).await
    }
}

impl Api {
    pub(crate) async fn new(args: &ApiArgs) -> Result<Self> {
        let token = crate::login::token_for(&args.gateway, args.token.as_deref()).await?;
        Ok(Self {
            base: crate::login::gateway_key(&args.gateway),
            token,
            from_login: args.token.as_deref().is_none_or(str::is_empty),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
        })
    }

    /// Sends a request; `Ok(None)` for 404, an error naming the gateway's reason
    /// for other failures.
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>> {
        Ok(self
            .call_with(method, path, body, &[])
            .await?
            .map(|(answer, _)| answer))
    }

    /// [`Api::call`] with extra request headers; the answer comes with its `ETag`.
    pub(crate) async fn call_with(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<Option<(Value, Option<String>)>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = resp.status();
        let etag = resp
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(Some((answer, etag)));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let message = answer["error"]["message"]
            .as_str()
            .unwrap_or("no reason given");
        let code = answer["error"]["code"].as_str().unwrap_or("error");
        if status == reqwest::StatusCode::UNAUTHORIZED {
            let hint = if self.from_login {
                format!("; run `warden login --gateway {}`", self.base)
            } else {
                String::new()
            };
            bail!("the gateway refused the token ({code}): {message}{hint}");
        }
        bail!("{message} ({code}, HTTP {})", status.as_u16())
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Option<Value>> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// A text answer (`None` for 404).
    async fn get_text(&self, path: &str) -> Result<Option<String>> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp.text().await?)),
            reqwest::StatusCode::NOT_FOUND => Ok(None),
            s => bail!("the gateway answered HTTP {}", s.as_u16()),
        }
    }
}

pub(crate) fn short(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut s: String = one_line.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("-")
}

fn approvals(v: &Value) -> String {
    format!(
        "{}/{}",
        v["approvals"].as_array().map_or(0, Vec::len),
        v["required"].as_u64().unwrap_or(1)
    )
}

/// `warden request <connection> --for 1h --reason "..."`.
pub async fn request(
    connection: String,
    duration: String,
    reason: String,
    wait: bool,
    args: ApiArgs,
) -> Result<ExitCode> {
    let api = Api::new(&args).await?;
    let body =
        serde_json::json!({"connection": connection, "duration": duration, "reason": reason});
    let created = api
        .call(reqwest::Method::POST, "/api/access-requests", Some(&body))
        .await?
        .ok_or_else(|| anyhow!("there is no connection `{connection}` that you may use"))?;
    let id = str_of(&created, "id").to_string();
    if args.json && !wait {
        println!("{created}");
        return Ok(ExitCode::SUCCESS);
    }
    if !args.json {
        println!(
            "access request {id} for `{connection}` ({duration}) is pending: {} approval(s) needed",
            created["required"].as_u64().unwrap_or(1)
        );
    }
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = api
            .get(&format!("/api/access-requests/{id}"))
            .await?
            .ok_or_else(|| anyhow!("access request {id} disappeared"))?;
        match str_of(&now, "status") {
            "pending" => continue,
            "approved" => {
                if args.json {
                    println!("{now}");
                } else {
                    println!("granted until {}", str_of(&now, "ends_at"));
                }
                return Ok(ExitCode::SUCCESS);
            }
            other => {
                if args.json {
                    println!("{now}");
                } else {
                    let by = str_of(&now, "decided_by");
                    let comment = now["comment"]
                        .as_str()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default();
                    println!("{other} by {by}{comment}");
                }
                return Ok(ExitCode::from(1));
            }
        }
    }
}

pub async fn review(command: ReviewCommand) -> Result<ExitCode> {
    match command {
        ReviewCommand::List { api: args, all } => {
            let api = Api::new(&args).await?;
            let filter = if all { "" } else { "?status=pending" };
            let reviews = api
                .get(&format!("/api/reviews{filter}"))
                .await?
                .unwrap_or_default();
            let requests = api
                .get(&format!("/api/access-requests{filter}"))
                .await?
                .unwrap_or_default();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"reviews": reviews, "access_requests": requests})
                );
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = crate::table::Table::new(&[
                "KIND",
                "ID",
                "CONNECTION",
                "REQUESTER",
                "STATUS",
                "OK",
                "WHAT",
            ]);
            for r in reviews.as_array().into_iter().flatten() {
                table.row([
                    "review".to_string(),
                    str_of(r, "id").to_string(),
                    str_of(r, "connection").to_string(),
                    str_of(r, "subject").to_string(),
                    str_of(r, "status").to_string(),
                    approvals(r),
                    short(str_of(r, "command"), 60),
                ]);
            }
            for r in requests.as_array().into_iter().flatten() {
                let what = format!(
                    "{} s: {}",
                    r["duration_secs"].as_u64().unwrap_or(0),
                    str_of(r, "reason")
                );
                table.row([
                    "access".to_string(),
                    str_of(r, "id").to_string(),
                    str_of(r, "connection").to_string(),
                    str_of(r, "subject").to_string(),
                    str_of(r, "status").to_string(),
                    approvals(r),
                    short(&what, 60),
                ]);
            }
            table.print();
            Ok(ExitCode::SUCCESS)
        }
        ReviewCommand::Show { id, api: args } => {
            let api = Api::new(&args).await?;
            let (kind, item) = find(&api, &id).await?;
            if args.json {
                println!("{item}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("{kind} {id}");
            for key in [
                "status",
                "connection",
                "subject",
                "command",
                "rule",
                "reason",
                "duration_secs",
                "created_at",
                "expires_at",
                "ends_at",
                "used_at",
                "decided_by",
                "comment",
            ] {
                match &item[key] {
                    Value::Null => {}
                    Value::String(s) => println!("  {key:<14} {s}"),
                    v => println!("  {key:<14} {v}"),
                }
            }
            println!("  {:<14} {}", "approvals", approvals(&item));
            for a in item["approvals"].as_array().into_iter().flatten() {
                println!(
                    "    by {} at {}{}",
                    str_of(a, "subject"),
                    str_of(a, "at"),
                    a["comment"]
                        .as_str()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ReviewCommand::Approve { id, comment, api } => decide(&id, "approve", comment, api).await,
        ReviewCommand::Reject { id, comment, api } => decide(&id, "reject", comment, api).await,
    }
}

/// A review or an access request by id (ids of both are UUIDs and never collide).
async fn find(api: &Api, id: &str) -> Result<(&'static str, Value)> {
    if let Some(r) = api.get(&format!("/api/reviews/{id}")).await? {
        return Ok(("review", r));
    }
    if let Some(r) = api.get(&format!("/api/access-requests/{id}")).await? {
        return Ok(("access request", r));
    }
    bail!("no review or access request {id} that you may see")
}

async fn decide(id: &str, verb: &str, comment: Option<String>, args: ApiArgs) -> Result<ExitCode> {
    let api = Api::new(&args).await?;
    let (kind, _) = find(&api, id).await?;
    let path = match kind {
        "review" => format!("/api/reviews/{id}/{verb}"),
        _ => format!("/api/access-requests/{id}/{verb}"),
    };
    let body = serde_json::json!({ "comment": comment });
    let answer = match api.call(reqwest::Method::POST, &path, Some(&body)).await {
        Ok(Some(a)) => a,
        Ok(None) => bail!("{kind} {id} is gone"),
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(1));
        }
    };
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let status = str_of(&answer, "status");
    let outcome = match (kind, status) {
        ("review", "approved") => "approved: the command runs now".to_string(),
        ("review", "rejected") => "rejected: the command is refused".to_string(),
        ("review", "abandoned") => "abandoned: the client left, nothing runs".to_string(),
        (_, "approved") => format!("approved: granted until {}", str_of(&answer, "ends_at")),
        (_, "rejected") => "rejected".to_string(),
        _ => format!("{status}, {} approvals so far", approvals(&answer)),
    };
    println!("{kind} {id} {outcome}");
    Ok(ExitCode::SUCCESS)
}

/// `warden connections`.
pub async fn connections(args: ApiArgs) -> Result<ExitCode> {
    let api = Api::new(&args).await?;
    let list = api.get("/api/connections").await?.unwrap_or_default();
    if args.json {
        println!("{list}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = crate::table::Table::new(&["NAME", "KIND", "TARGET", "GROUPS", "ACCESS"]);
    for c in list.as_array().into_iter().flatten() {
        let groups: Vec<&str> = c["allowed_groups"]
            .as_array()
            .map(|g| g.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let groups = groups.join(",");
        let access = if c["access"]["request_required"].as_bool() == Some(true) {
            "request (warden request)"
        } else {
            "standing"
        };
        table.row([
            str_of(c, "name"),
            str_of(c, "kind"),
            str_of(c, "target"),
            groups.as_str(),
            access,
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `warden sessions`.
pub async fn sessions(
    connection: Option<String>,
    user: Option<String>,
    since: Option<String>,
    limit: u32,
    args: ApiArgs,
) -> Result<ExitCode> {
    let api = Api::new(&args).await?;
    let mut url = reqwest::Url::parse("http://x/api/sessions")?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("limit", &limit.to_string());
        for (k, v) in [
            ("connection", &connection),
            ("subject", &user),
            ("since", &since),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let answer = api.get(&path).await?.unwrap_or_default();
    if args.json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = answer
        .as_array()
        .or_else(|| answer["sessions"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut table = crate::table::Table::new(&[
        "ID",
        "CONNECTION",
        "PROTOCOL",
        "SUBJECT",
        "STARTED",
        "STATUS",
        "CMDS",
        "DENIED",
    ])
    .numeric(&[6, 7]);
    for s in &list {
        table.row([
            str_of(s, "id").to_string(),
            str_of(s, "connection").to_string(),
            str_of(s, "protocol").to_string(),
            str_of(s, "subject").to_string(),
            str_of(s, "started_at").to_string(),
            str_of(s, "status").to_string(),
            s["commands"].as_i64().unwrap_or(0).to_string(),
            s["denied"].as_i64().unwrap_or(0).to_string(),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// A session's recording from the API, with its terminals (or only `only`).
pub async fn remote_recording(
    gateway: &str,
    token: Option<&str>,
    id: uuid::Uuid,
    only: Option<u32>,
) -> Result<(
    Option<warden_gateway::recording::Recording>,
    std::collections::HashMap<u32, Result<warden_gateway::terminal::Cast, String>>,
)> {
    let api = Api::new(&ApiArgs {
        gateway: gateway.to_string(),
        token: token.map(String::from),
        json: false,
    })
    .await?;
    let fetch = |channel: u32| {
        let api = &api;
        async move {
            match api
                .get_text(&format!("/api/sessions/{id}/terminals/{channel}"))
                .await
            {
                Ok(Some(text)) => warden_gateway::terminal::Cast::from_asciicast(&text)
                    .ok_or_else(|| format!("terminal {channel} is not asciicast")),
                Ok(None) => Err(format!("there is no terminal {channel} in session {id}")),
                Err(e) => Err(format!("{e:#}")),
            }
        }
    };
    let mut casts = std::collections::HashMap::new();
    if let Some(channel) = only {
        casts.insert(channel, fetch(channel).await);
        return Ok((None, casts));
    }
    let answer = api
        .get(&format!("/api/sessions/{id}/recording"))
        .await?
        .ok_or_else(|| anyhow!("no recording of session {id} that you may see"))?;
    let rec = warden_gateway::recording::Recording {
        header: serde_json::from_value(answer["header"].clone())
            .context("the recording's header is not readable")?,
        entries: serde_json::from_value(answer["entries"].clone())
            .context("the recording's entries are not readable")?,
        truncated: answer["truncated"].as_bool().unwrap_or(false),
    };
    for entry in &rec.entries {
        if let warden_core::TimelineEvent::Terminal { channel, .. } = &entry.event {
            casts.insert(*channel, fetch(*channel).await);
        }
    }
    Ok((Some(rec), casts))
}

fn remote_api_args(gateway: &str, token: Option<String>, json: bool) -> ApiArgs {
    ApiArgs {
        gateway: gateway.to_string(),
        token,
        json,
    }
}

/// `warden audit verify --gateway`: the gateway walks its chain.
pub async fn audit_verify(gateway: &str, token: Option<String>, json: bool) -> Result<ExitCode> {
    let api = Api::new(&remote_api_args(gateway, token, json)).await?;
    let report = api
        .get("/api/audit/verify")
        .await?
        .ok_or_else(|| anyhow!("this gateway has no audit API"))?;
    let ok = report["ok"].as_bool() == Some(true);
    if json {
        println!("{report}");
    } else if ok {
        println!(
            "audit log intact: {} events, head {} (seq {})",
            report["events_checked"],
            str_of(&report, "head_hash"),
            report["head_seq"]
        );
    } else {
        let p = &report["problem"];
        println!(
            "AUDIT LOG TAMPERED at event seq {} (id {}):\n  {}\n  {} events before it verified",
            p["seq"],
            p["event_id"].as_str().unwrap_or("unknown"),
            str_of(p, "reason"),
            report["events_checked"]
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `warden audit list --gateway`: events, oldest first, as the API pages them.
pub async fn audit_list(
    gateway: &str,
    token: Option<String>,
    filters: &[(&str, Option<String>)],
    json: bool,
) -> Result<ExitCode> {
    let api = Api::new(&remote_api_args(gateway, token, json)).await?;
    let mut url = reqwest::Url::parse("http://x/api/audit")?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in filters {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
    }
    let path = format!("{}?{}", url.path(), url.query().unwrap_or(""));
    let page = api
        .get(&path)
        .await?
        .ok_or_else(|| anyhow!("this gateway has no audit API"))?;
    let mut events: Vec<&Value> = page["events"].as_array().into_iter().flatten().collect();
    // The newest, asked for newest first, are printed in chain order like the rest.
    if filters
        .iter()
        .any(|(k, v)| *k == "order" && v.as_deref() == Some("newest"))
    {
        events.reverse();
    }
    for e in events {
        if json {
            println!("{e}");
            continue;
        }
        let ev = &e["event"];
        println!(
            "{:>6}  {}  {:<20} {:<16} {:<16} {}",
            e["seq"],
            str_of(ev, "time"),
            str_of(ev, "kind"),
            ev["identity"]["subject"].as_str().unwrap_or("-"),
            ev["connection"].as_str().unwrap_or("-"),
            ev["payload"]
        );
    }
    Ok(ExitCode::SUCCESS)
}
