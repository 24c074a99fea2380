//! Gateway configuration: one TOML file plus `WARDEN_*` environment overrides.
//!
//! Every field has a default, so no file at all runs the embedded default. Unknown
//! fields are errors (a typo must not silently disable a setting), and errors name
//! the field and, for the file, its line.

use serde::{Deserialize, Serialize, Serializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use warden_core::Secret;

/// Top-level keys, so unrelated `WARDEN_*` variables (such as a CLI's `WARDEN_TOKEN`)
/// are not mistaken for overrides.
const TOP_LEVEL_KEYS: &[&str] = &[
    "data_dir",
    "admin_token",
    "admin_groups",
    "api",
    "store",
    "secrets",
    "auth",
    "policies",
    "pg",
    "mysql",
    "ssh",
    "kubernetes",
    "http",
    "backends",
    "agents",
    "connections",
    "recordings",
    "audit",
    "events",
    "web",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the embedded default keeps its state: SQLite file, master key.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Sets the bootstrap admin token instead of generating one (for automation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<Secret<String>>,
    /// Members of these groups administer Warden.
    #[serde(default = "default_admin_groups")]
    pub admin_groups: Vec<String>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreConfig,
    #[serde(default)]
    pub secrets: SecretsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Guardrail, review and masking sets defined here are read-only in the API.
    #[serde(default)]
    pub policies: warden_policy::PolicyConfig,
    #[serde(default)]
    pub pg: warden_pg::PgSettings,
    #[serde(default)]
    pub mysql: warden_mysql::MysqlSettings,
    #[serde(default)]
    pub ssh: warden_ssh::SshSettings,
    #[serde(default)]
    pub kubernetes: warden_http::KubernetesSettings,
    #[serde(default)]
    pub http: warden_http::HttpSettings,
    #[serde(default)]
    pub backends: BackendsConfig,
    /// Network agents (`warden agent`) that carry connections into private networks.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// How many client connections each proxy listener holds at once.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    #[serde(default)]
    pub recordings: RecordingsConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    #[serde(default)]
    pub events: EventsConfig,
    #[serde(default)]
    pub web: crate::web::WebConfig,
}

/// Client connections each proxy listener (PostgreSQL, MySQL, SSH) holds at once.
/// Beyond them, and beyond what the process's open-files limit leaves room for, new
/// connections are turned away with the protocol's "too many connections" error.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Per listener (0: only the open-files budget limits it).
    #[serde(default = "default_max_per_listener")]
    pub max_per_listener: usize,
    /// Per client address, per listener (0: no limit).
    #[serde(default = "default_max_per_client")]
    pub max_per_client: usize,
}

fn default_max_per_listener() -> usize {
    10_000
}
fn default_max_per_client() -> usize {
    512
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max_per_listener: default_max_per_listener(),
            max_per_client: default_max_per_client(),
        }
    }
}

/// How the gateway uses network agents.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// How long a session's dial waits for its connection's agent to be connected
    /// (an agent reconnecting after a restart) before it fails, naming the agent.
    #[serde(default = "default_agent_dial_wait")]
    pub dial_wait_secs: u64,
    /// Processes of one agent connected to this gateway at once; more are refused.
    #[serde(default = "default_agent_processes")]
    pub max_processes: usize,
}

fn default_agent_dial_wait() -> u64 {
    10
}
fn default_agent_processes() -> usize {
    32
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            dial_wait_secs: default_agent_dial_wait(),
            max_processes: default_agent_processes(),
        }
    }
}

/// How the gateway reaches targets, for every protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendsConfig {
    /// How long opening a connection to a target may take (each protocol's
    /// `login_timeout_secs` then bounds its login).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: u64,
}

fn default_connect_timeout() -> u64 {
    10
}

impl Default for BackendsConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: default_connect_timeout(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// Delivery of audit events to webhooks and SIEM sinks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Attempts at one event before it goes to the target's dead letters.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles (with jitter).
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// The longest delay between two attempts.
    #[serde(default = "default_backoff_max_secs")]
    pub backoff_max_secs: u64,
    /// How long a webhook receiver has to answer.
    #[serde(default = "default_webhook_timeout")]
    pub webhook_timeout_secs: u64,
    /// SIEM sinks: JSON Lines files and syslog (RFC 5424) receivers.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
}

fn default_max_attempts() -> u32 {
    8
}
fn default_backoff_base_ms() -> u64 {
    500
}
fn default_backoff_max_secs() -> u64 {
    300
}
fn default_webhook_timeout() -> u64 {
    10
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_secs: default_backoff_max_secs(),
            webhook_timeout_secs: default_webhook_timeout(),
            sinks: Vec::new(),
        }
    }
}

/// One SIEM sink.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// Names the sink's place in the log (`siem:<name>`); keep it stable.
    pub name: String,
    /// `jsonl` (append to `path`) or `syslog` (to `address` over `transport`).
    pub kind: SinkKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// `host:port` of the syslog receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default)]
    pub transport: SyslogTransport,
    /// `warden` (the audit event as stored) or `ocsf` (OCSF 1.x classes).
    #[serde(default)]
    pub format: EventFormat,
    /// Event kinds sent (`*`, `access.*`, `pg.query`); empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events with these decisions (`allow`, `deny`, `review`); empty: any.
    #[serde(default)]
    pub decisions: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    Jsonl,
    Syslog,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    #[default]
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventFormat {
    #[default]
    Warden,
    Ocsf,
}

/// The audit log's journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `true`: an event is on disk (`fdatasync`) before the action it records goes
    /// ahead. `false`: it is handed to the operating system, which survives the
    /// gateway being killed but not the machine crashing.
    #[serde(default = "default_true")]
    pub journal_sync: bool,
    /// Events kept in the store; older ones are moved into archive files (0: keep
    /// everything in the store).
    #[serde(default)]
    pub keep_events: u64,
    /// Where archives go; default `<data_dir>/audit-archive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<PathBuf>,
    /// Events per archive file, at most.
    #[serde(default = "default_archive_events")]
    pub archive_events: u64,
    /// How often retention (archiving, recording pruning) runs.
    #[serde(default = "default_retention_interval")]
    pub retention_interval_secs: u64,
}

fn default_archive_events() -> u64 {
    100_000
}
fn default_retention_interval() -> u64 {
    3600
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            journal_sync: true,
            keep_events: 0,
            archive_dir: None,
            archive_events: default_archive_events(),
            retention_interval_secs: default_retention_interval(),
        }
    }
}

/// Session recordings (timelines of database sessions).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingsConfig {
    /// Directory of recording files; default `<data_dir>/recordings`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Rows of each result kept in a recording (the rest are counted).
    #[serde(default = "default_rows_per_result")]
    pub rows_per_result: usize,
    /// Bytes of an SSH command's (exec without a PTY) input and output kept in its
    /// terminal recording; the rest is counted. 0 keeps everything. Shells with a
    /// PTY are always recorded whole.
    #[serde(default = "default_exec_output_bytes")]
    pub exec_output_bytes: u64,
    /// Recordings of sessions that ended longer ago than this are deleted (0: kept).
    #[serde(default)]
    pub keep_days: u64,
    /// When recordings take more than this, those of the oldest ended sessions are
    /// deleted until they fit (0: no limit).
    #[serde(default)]
    pub max_total_bytes: u64,
}

fn default_rows_per_result() -> usize {
    20
}
fn default_exec_output_bytes() -> u64 {
    16 * 1024 * 1024
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        Self {
            dir: None,
            rows_per_result: default_rows_per_result(),
            exec_output_bytes: default_exec_output_bytes(),
            keep_days: 0,
            max_total_bytes: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    #[serde(default = "default_api_listen")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with `tls_key`, the API listener speaks HTTPS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// How people reach the API (`https://warden.example.com`), for the messages
    /// that tell a held client where its review is approved. Default: the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://...`; default: SQLite in `data_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<StoreUrl>,
}

/// A store URL; printed with its password hidden.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct StoreUrl(pub Secret<String>);

impl Serialize for StoreUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&warden_store::redact_url(self.0.expose()))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretsConfig {
    /// Base64 of 32 random bytes. Prefer `master_key_file` or the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key: Option<Secret<String>>,
    /// File holding the base64 master key; default `<data_dir>/master.key`, generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Tolerance for `exp`/`nbf` against the gateway's clock.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// Least time between two JWKS fetches triggered by an unknown `kid`.
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh_secs: u64,
    /// How long a fetched JWKS is used before it is fetched again.
    #[serde(default = "default_jwks_max_age")]
    pub jwks_max_age_secs: u64,
    /// Lifetime of an API key when the request names none.
    #[serde(default = "default_api_key_ttl")]
    pub api_key_default_ttl_secs: u64,
    /// Longest lifetime an API key may be issued with.
    #[serde(default = "default_api_key_max_ttl")]
    pub api_key_max_ttl_secs: u64,
    /// Lifetime of the bootstrap admin key (generated, configured as `admin_token`, or
    /// issued by `warden admin recover`) from when it is stored; 0: it never expires.
    #[serde(default = "default_admin_key_ttl")]
    pub admin_key_ttl_secs: u64,
    #[serde(default)]
    pub oidc: Vec<OidcIssuerConfig>,
    /// How the `warden` CLI logs people in (`warden login`); without it, people use
    /// `WARDEN_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cli: Option<CliLoginConfig>,
    /// SAML 2.0 single sign-on for the console and `warden login --saml`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saml: Option<crate::auth::saml::SamlConfig>,
}

/// The OpenID provider client the `warden` CLI logs in with, as `GET
/// /api/auth/config` tells it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CliLoginConfig {
    /// One of `auth.oidc`'s issuers.
    pub issuer: String,
    /// A public client registered there for the CLI: authorization code with PKCE
    /// (loopback redirect) and the device authorization grant.
    pub client_id: String,
    #[serde(default = "default_cli_scopes")]
    pub scopes: Vec<String>,
    /// A resource indicator (RFC 8707) to ask for, when the provider needs one to
    /// issue access tokens for the gateway's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

fn default_cli_scopes() -> Vec<String> {
    vec!["openid".into(), "offline_access".into()]
}

/// One trusted OpenID Connect issuer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuerConfig {
    /// Exactly as in the tokens' `iss` claim. `https` unless the host is loopback.
    pub issuer: String,
    /// Accepted `aud` values; at least one.
    pub audiences: Vec<String>,
    /// Claim holding the groups (dotted path for nested claims, e.g. `realm_access.roles`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claim naming the subject.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// Accepted signature algorithms (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Skip discovery and use this JWKS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./warden-data")
}
fn default_admin_groups() -> Vec<String> {
    vec!["warden-admins".into()]
}
fn default_api_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8009))
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_clock_skew() -> u64 {
    60
}
fn default_jwks_min_refresh() -> u64 {
    30
}
fn default_jwks_max_age() -> u64 {
    3600
}
fn default_api_key_ttl() -> u64 {
    24 * 3600
}
fn default_admin_key_ttl() -> u64 {
    24 * 3600
}
fn default_api_key_max_ttl() -> u64 {
    90 * 24 * 3600
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_subject_claim() -> String {
    "sub".into()
}
fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: default_api_listen(),
            tls_cert: None,
            tls_key: None,
            max_body_bytes: default_max_body_bytes(),
            public_url: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            clock_skew_secs: default_clock_skew(),
            jwks_min_refresh_secs: default_jwks_min_refresh(),
            jwks_max_age_secs: default_jwks_max_age(),
            api_key_default_ttl_secs: default_api_key_ttl(),
            api_key_max_ttl_secs: default_api_key_max_ttl(),
            admin_key_ttl_secs: default_admin_key_ttl(),
            oidc: Vec::new(),
            cli: None,
            saml: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            admin_token: None,
            admin_groups: default_admin_groups(),
            api: ApiConfig::default(),
            store: StoreConfig::default(),
            secrets: SecretsConfig::default(),
            auth: AuthConfig::default(),
            policies: warden_policy::PolicyConfig::default(),
            pg: warden_pg::PgSettings::default(),
            mysql: warden_mysql::MysqlSettings::default(),
            ssh: warden_ssh::SshSettings::default(),
            kubernetes: warden_http::KubernetesSettings::default(),
            http: warden_http::HttpSettings::default(),
            backends: BackendsConfig::default(),
            agents: AgentsConfig::default(),
            connections: ConnectionsConfig::default(),
            recordings: RecordingsConfig::default(),
            audit: AuditConfig::default(),
            events: EventsConfig::default(),
            web: crate::web::WebConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads `path` (if any), applies `WARDEN_*` overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        // Parse the file alone first, so its errors carry line and column.
        let file_path = path.map(Path::to_path_buf).unwrap_or_default();
        toml::from_str::<Config>(&text).map_err(|e| ConfigError::File {
            path: file_path.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::File {
            path: file_path,
            message: e.to_string(),
        })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("WARDEN_"))
            .collect();
        overrides.sort();
        for (var, raw) in overrides {
            let path: Vec<String> = var["WARDEN_".len()..]
                .to_ascii_lowercase()
                .split("__")
                .map(String::from)
                .collect();
            if !path
                .first()
                .is_some_and(|k| TOP_LEVEL_KEYS.contains(&k.as_str()))
            {
                continue;
            }
            set_path(&mut table, &path, env_value(&raw)).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            // Deserialize after each override so an error names the variable.
            toml::Table::try_into::<Config>(table.clone()).map_err(|e| ConfigError::Env {
                var: var.clone(),
                message: e.to_string().trim_end().to_string(),
            })?;
        }
        let config: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.api.tls_cert.is_some() != self.api.tls_key.is_some() {
            return invalid("api.tls_cert and api.tls_key must be set together".into());
        }
        if self.pg.tls_cert.is_some() != self.pg.tls_key.is_some() {
            return invalid("pg.tls_cert and pg.tls_key must be set together".into());
        }
        if self.mysql.login_timeout_secs == 0 {
            return invalid("mysql.login_timeout_secs must be at least 1".into());
        }
        if self.ssh.login_timeout_secs == 0 || self.ssh.auth_timeout_secs == 0 {
            return invalid(
                "ssh.login_timeout_secs and ssh.auth_timeout_secs must be at least 1".into(),
            );
        }
        if self.ssh.max_channels == 0 || self.ssh.user_key_max_ttl_secs < 60 {
            return invalid(
                "ssh.max_channels must be at least 1 and ssh.user_key_max_ttl_secs at least 60"
                    .into(),
            );
        }
        if self.mysql.tls_cert.is_some() != self.mysql.tls_key.is_some() {
            return invalid("mysql.tls_cert and mysql.tls_key must be set together".into());
        }
        self.kubernetes
            .validate("kubernetes")
            .and_then(|()| self.http.validate("http"))
            .map_err(ConfigError::Invalid)?;
        if let Some(token) = &self.admin_token {
            let t = token.expose();
            if t.len() < 24 {
                return invalid("admin_token must be at least 24 characters".into());
            }
            if t.starts_with("wdn_") && !t.starts_with("wdn_admin_") {
                return invalid(
                    "admin_token may not look like another API key (wdn_<id>_...)".into(),
                );
            }
        }
        if self.admin_groups.is_empty() {
            return invalid("admin_groups must name at least one group".into());
        }
        if let Some(cli) = &self.auth.cli
            && !self.auth.oidc.iter().any(|o| o.issuer == cli.issuer)
        {
            return invalid(format!(
                "auth.cli.issuer `{}` must be one of the auth.oidc issuers",
                cli.issuer
            ));
        }
        if let Some(saml) = &self.auth.saml {
            saml.validate(self.api.public_url.as_deref())
                .map_err(ConfigError::Invalid)?;
        }
        let issuers: Vec<&str> = self.auth.oidc.iter().map(|o| o.issuer.as_str()).collect();
        self.web.validate(&issuers).map_err(ConfigError::Invalid)?;
        if self.events.max_attempts == 0 || self.events.webhook_timeout_secs == 0 {
            return invalid(
                "events.max_attempts and events.webhook_timeout_secs must be at least 1".into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for sink in &self.events.sinks {
            let n = &sink.name;
            if n.is_empty() || n.len() > 64 || !names.insert(n.clone()) {
                return invalid(format!(
                    "events.sinks: name `{n}` must be 1 to 64 characters and unique"
                ));
            }
            match sink.kind {
                SinkKind::Jsonl if sink.path.is_none() => {
                    return invalid(format!("events.sinks `{n}`: a jsonl sink needs `path`"));
                }
                SinkKind::Syslog if sink.address.is_none() => {
                    return invalid(format!(
                        "events.sinks `{n}`: a syslog sink needs `address` (host:port)"
                    ));
                }
                _ => {}
            }
        }
        if let Some(url) = &self.store.url {
            warden_store::Backend::from_url(url.0.expose())
                .map_err(|e| ConfigError::Invalid(format!("store.url: {e}")))?;
        }
        const TEN_YEARS: u64 = 10 * 366 * 86_400;
        for (field, value) in [
            ("auth.admin_key_ttl_secs", self.auth.admin_key_ttl_secs),
            ("auth.api_key_max_ttl_secs", self.auth.api_key_max_ttl_secs),
        ] {
            if value > TEN_YEARS {
                return invalid(format!("{field} must be at most {TEN_YEARS} (ten years)"));
            }
        }
        if self.auth.api_key_default_ttl_secs > self.auth.api_key_max_ttl_secs {
            return invalid(
                "auth.api_key_default_ttl_secs exceeds auth.api_key_max_ttl_secs".into(),
            );
        }
        crate::policy::validate_config_sets(&self.policies).map_err(ConfigError::Invalid)?;
        for (i, o) in self.auth.oidc.iter().enumerate() {
            let at = format!("auth.oidc[{i}]");
            check_issuer_url(&o.issuer)
                .map_err(|m| ConfigError::Invalid(format!("{at}.issuer: {m}")))?;
            if let Some(j) = &o.jwks_uri {
                check_issuer_url(j)
                    .map_err(|m| ConfigError::Invalid(format!("{at}.jwks_uri: {m}")))?;
            }
            if o.audiences.is_empty() {
                return invalid(format!("{at}.audiences must name at least one audience"));
            }
            if o.algorithms.is_empty() {
                return invalid(format!("{at}.algorithms must name at least one algorithm"));
            }
            for alg in &o.algorithms {
                if !crate::auth::oidc::is_allowed_algorithm(alg) {
                    return invalid(format!(
                        "{at}.algorithms: `{alg}` is not allowed (asymmetric algorithms only: RS*, PS*, ES256, ES384, EdDSA)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The store URL, defaulting to SQLite in the data directory.
    pub fn store_url(&self) -> Secret<String> {
        match &self.store.url {
            Some(u) => u.0.clone(),
            None => Secret::new(format!(
                "sqlite://{}",
                self.data_dir.join("warden.db").display()
            )),
        }
    }

    /// Where session recordings are written.
    /// The SSH listener's host key file.
    pub fn ssh_host_key_path(&self) -> PathBuf {
        self.ssh
            .host_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ssh_host_ed25519_key"))
    }

    pub fn audit_archive_dir(&self) -> PathBuf {
        self.audit
            .archive_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-archive"))
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.recordings
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("recordings"))
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot print config: {e}\n"))
    }
}

/// Issuers must use https, except on loopback where tests and local providers run.
pub(crate) fn check_issuer_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let loopback = matches!(parsed.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be https (http is accepted only for loopback hosts)".into()),
    }
}

/// An environment value is read as TOML when it is a number, boolean or array, and
/// as a plain string otherwise.
fn env_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Array(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("`{first}` is not a section")),
            }
        }
    }
}

#[cfg(test)]
mod tests;
