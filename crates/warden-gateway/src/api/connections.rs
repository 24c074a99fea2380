//! `/api/connections`: registered targets. Admins manage them; other callers see only
//! the connections their groups may use. Backend secrets are write-only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};
use warden_core::{
    AccessOptions, Connection, ConnectionKind, Event, HttpOptions, KubernetesOptions, PolicyRefs,
    Secret, SecretKind, SshOptions, TlsOptions, timefmt, validate_connection_name,
};
use warden_store::StoreError;
use warden_store::connections::SecretChange;

use super::changes::{DryRun, FieldChange, changes};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{ApiError, AppState, ErrorBody};

const MAX_SECRET_BYTES: usize = 64 * 1024;

/// A new connection.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionCreate {
    /// Lowercase letters, digits, `-`, `_`; what clients name as database or SSH user.
    pub name: String,
    pub kind: ConnectionKind,
    /// `host:port` for `ssh`; `host:port/database` or `host:port` for `postgres` (the
    /// `postgres` database) and `mysql` (no default database); an `http(s)://` URL for
    /// `kubernetes` and `http`.
    pub target: String,
    /// User name on the backend.
    pub username: Option<String>,
    /// The credential the gateway holds (password, private key or bearer token). Write-only.
    #[schema(value_type = Option<String>, write_only)]
    pub secret: Option<Secret<String>>,
    /// Defaults from the connection kind and the secret's shape.
    pub secret_kind: Option<SecretKind>,
    #[serde(default)]
    pub tls: TlsOptions,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    #[serde(default)]
    pub policies: PolicyRefs,
    /// SSH host key pin and forwarding (ssh connections).
    #[serde(default)]
    pub ssh: SshOptions,
    /// Just-in-time access requests and reviewers.
    #[serde(default)]
    pub access: AccessOptions,
    /// Impersonation, port forwarding and Secret values (kubernetes connections).
    #[serde(default)]
    pub kubernetes: KubernetesOptions,
    /// The header the held credential goes in (http connections).
    #[serde(default)]
    pub http: HttpOptions,
    /// The registered network agent that reaches the target; none: the gateway
    /// dials it directly.
    pub agent: Option<String>,
    pub description: Option<String>,
}

/// A partial update, as a JSON merge patch (RFC 7396): absent fields keep their value,
/// `null` clears one (a nested object's field returns to its default), nested objects
/// (`tls`, `policies`, `ssh`, `access`, `kubernetes`, `http`) are merged field by field, lists are replaced
/// whole. The name cannot change (sealed secrets are bound to it).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionUpdate {
    pub kind: Option<ConnectionKind>,
    pub target: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub username: Option<Option<String>>,
    /// A new secret, or `null` to remove the held one. Write-only.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub secret: Option<Option<Secret<String>>>,
    pub secret_kind: Option<SecretKind>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<TlsOptions>)]
    pub tls: Option<Value>,
    pub allowed_groups: Option<Vec<String>>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<PolicyRefs>)]
    pub policies: Option<Value>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<SshOptions>)]
    pub ssh: Option<Value>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<AccessOptions>)]
    pub access: Option<Value>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<KubernetesOptions>)]
    pub kubernetes: Option<Value>,
    #[serde(default, deserialize_with = "patch")]
    #[schema(value_type = Option<HttpOptions>)]
    pub http: Option<Value>,
    /// An agent's name, or `null` to dial the target directly.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub agent: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// Distinguishes a field sent as `null` (`Some(None)`) from one left out (`None`).
pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A nested object's patch, `null` included (it resets the object to its defaults).
fn patch<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// RFC 7396: members of `patch` replace those of `doc`, objects merge recursively,
/// `null` removes.
fn merge_patch(doc: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target) = doc {
        for (key, value) in fields {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// `current` with `patch` merged in, read back through the type (so unknown fields
/// and wrong types are refused, and removed fields take their defaults).
fn merged<T: Serialize + DeserializeOwned>(
    field: &str,
    current: &T,
    patch: &Value,
) -> Result<T, ApiError> {
    let mut doc = serde_json::to_value(current).map_err(|e| invalid(format!("{field}: {e}")))?;
    match patch {
        Value::Null => doc = Value::Object(serde_json::Map::new()),
        Value::Object(_) => merge_patch(&mut doc, patch),
        _ => return Err(invalid(format!("{field} must be an object or null"))),
    }
    serde_json::from_value(doc).map_err(|e| invalid(format!("{field}: {e}")))
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_connection", message)
}

fn check_target(kind: ConnectionKind, target: &str) -> Result<(), ApiError> {
    if target.is_empty() || target.len() > 512 || target.chars().any(char::is_whitespace) {
        return Err(invalid("target must be 1 to 512 characters without spaces"));
    }
    match kind {
        ConnectionKind::Postgres | ConnectionKind::Mysql | ConnectionKind::Ssh => {
            // Databases may name the backend database: `host:port/dbname`.
            let target = match (kind, target.split_once('/')) {
                (ConnectionKind::Postgres | ConnectionKind::Mysql, Some((addr, db)))
                    if !db.is_empty() =>
                {
                    addr
                }
                _ => target,
            };
            // The one rule, said the same way here, in the README and in the gate.
            let form = match kind {
                ConnectionKind::Postgres => {
                    "host:port or host:port/database (without one, the `postgres` database)"
                }
                ConnectionKind::Mysql => "host:port or host:port/database (without one, none)",
                _ => "host:port",
            };
            let (host, port) = target
                .rsplit_once(':')
                .ok_or_else(|| invalid(format!("target for {kind} must be {form}")))?;
            if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(format!(
                    "target for {kind} must be {form}, with a port 1-65535"
                )));
            }
        }
        ConnectionKind::Kubernetes | ConnectionKind::Http => {
            let url = reqwest::Url::parse(target)
                .map_err(|_| invalid(format!("target for {kind} must be an http(s) URL")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(invalid(format!("target for {kind} must be an http(s) URL")));
            }
            // A credential belongs in `secret` (sealed), never in the target.
            if !url.username().is_empty() || url.password().is_some() {
                return Err(invalid(format!(
                    "target for {kind} must not carry a user name or password: put the credential in `secret`"
                )));
            }
        }
    }
    Ok(())
}

fn check_common(conn: &Connection) -> Result<(), ApiError> {
    check_target(conn.kind, &conn.target)?;
    if conn
        .username
        .as_ref()
        .is_some_and(|u| u.is_empty() || u.len() > 256)
    {
        return Err(invalid("username must be 1 to 256 characters"));
    }
    if conn.description.as_ref().is_some_and(|d| d.len() > 2048) {
        return Err(invalid("description must be at most 2048 characters"));
    }
    if conn.allowed_groups.len() > 256
        || conn
            .allowed_groups
            .iter()
            .any(|g| g.is_empty() || g.len() > 256)
    {
        return Err(invalid(
            "allowed_groups must hold at most 256 non-empty names",
        ));
    }
    if let Some(h) = &conn.http.credential_header {
        let name = h.to_ascii_lowercase();
        let forbidden = [
            "host",
            "connection",
            "transfer-encoding",
            "content-length",
            "upgrade",
        ];
        if h.is_empty()
            || h.len() > 128
            || !h
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            || forbidden.contains(&name.as_str())
            || name.starts_with("impersonate-")
        {
            return Err(invalid(
                "http.credential_header must be a header name (letters, digits, `-`, `_`), not a hop-by-hop, Host or Impersonate-* header",
            ));
        }
    }
    if let Some(ca) = &conn.tls.ca_pem
        && (ca.len() > MAX_SECRET_BYTES || !ca.contains("-----BEGIN CERTIFICATE-----"))
    {
        return Err(invalid("tls.ca_pem must be a PEM certificate bundle"));
    }
    // The gateway logs in as the connection's account, never as whatever user a
    // client names: database and SSH connections must name it.
    if matches!(
        conn.kind,
        ConnectionKind::Ssh | ConnectionKind::Postgres | ConnectionKind::Mysql
    ) && conn.username.is_none()
    {
        return Err(invalid(format!(
            "{} connections need the username to log in to the target as",
            conn.kind.as_str()
        )));
    }
    let names = conn
        .policies
        .guardrails
        .iter()
        .chain(&conn.policies.masking)
        .chain(&conn.policies.reviews);
    if names.clone().any(|n| n.is_empty() || n.len() > 128) {
        return Err(invalid("policy names must be 1 to 128 characters"));
    }
    let access = &conn.access;
    if access.approvals == 0 || access.approvals > 10 {
        return Err(invalid("access.approvals must be 1 to 10"));
    }
    if access.max_duration_secs < 60 || access.max_duration_secs > 30 * 86_400 {
        return Err(invalid(
            "access.max_duration_secs must be 60 seconds to 30 days",
        ));
    }
    if access.review_timeout_secs == 0 || access.review_timeout_secs > 7 * 86_400 {
        return Err(invalid(
            "access.review_timeout_secs must be 1 second to 7 days",
        ));
    }
    if access
        .reviewers
        .iter()
        .any(|g| g.is_empty() || g.len() > 256)
    {
        return Err(invalid(
            "access.reviewers: group names must be 1 to 256 characters",
        ));
    }
    Ok(())
}

/// Checks a pinned host key and stores it in canonical form (no comment), the form
/// the proxy compares and pins.
fn canonical_ssh(conn: &mut Connection) -> Result<(), ApiError> {
    if let Some(key) = &conn.ssh.host_key {
        let line = warden_ssh::keys::PublicKeyLine::parse(key)
            .map_err(|e| invalid(format!("ssh.host_key: {e}")))?;
        conn.ssh.host_key = Some(line.line);
    }
    Ok(())
}

/// Attached policy sets must exist, so a typo cannot silently leave a connection
/// unprotected.
async fn check_policy_refs(state: &AppState, refs: &PolicyRefs) -> Result<(), ApiError> {
    let unknown = state.policies.unknown_refs(refs).await.map_err(|e| {
        tracing::error!(error = %e, "policy lookup failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "policies could not be read",
        )
    })?;
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "unknown_policy",
            format!("no such policy set: {}", unknown.join(", ")),
        ))
    }
}

fn check_secret(secret: &Secret<String>) -> Result<(), ApiError> {
    let len = secret.expose().len();
    if len == 0 || len > MAX_SECRET_BYTES {
        return Err(invalid("secret must be 1 byte to 64 KiB"));
    }
    Ok(())
}

/// A private key must be usable before it is stored (the error names no key material).
fn check_secret_kind(
    kind: ConnectionKind,
    secret_kind: SecretKind,
    secret: &Secret<String>,
) -> Result<(), ApiError> {
    if secret_kind == SecretKind::PrivateKey && kind == ConnectionKind::Ssh {
        warden_ssh::keys::parse_private_key(secret.expose())
            .map_err(|e| invalid(format!("secret: {e}")))?;
    }
    // Kubernetes and HTTP targets take a private key as a TLS client certificate:
    // the PEM bundle must hold the certificate chain and its key.
    if secret_kind == SecretKind::PrivateKey
        && matches!(kind, ConnectionKind::Kubernetes | ConnectionKind::Http)
    {
        warden_http::check_client_identity(secret.expose())
            .map_err(|e| invalid(format!("secret: {e}")))?;
    }
    Ok(())
}

/// A secret's kind when the request does not say: keys look like PEM/OpenSSH blocks,
/// HTTP-ish targets take bearer tokens, everything else a password.
fn infer_secret_kind(kind: ConnectionKind, secret: &Secret<String>) -> SecretKind {
    if secret.expose().trim_start().starts_with("-----BEGIN") {
        SecretKind::PrivateKey
    } else if matches!(kind, ConnectionKind::Kubernetes | ConnectionKind::Http) {
        SecretKind::Token
    } else {
        SecretKind::Password
    }
}

fn store_error(name: &str, e: &StoreError) -> ApiError {
    match e {
        StoreError::Conflict(_) => ApiError::new(
            StatusCode::CONFLICT,
            "connection_exists",
            format!("a connection named `{name}` already exists"),
        ),
        StoreError::NotFound(_) => ApiError::not_found(format!("connection `{name}`")),
        other => ApiError::store(other),
    }
}

/// What an audit event says about a connection: its settings, never its secret.
fn describe(conn: &Connection) -> serde_json::Value {
    json!({
        "kind": conn.kind,
        "target": conn.target,
        "username": conn.username,
        "secret_kind": conn.secret_kind,
        "tls_mode": conn.tls.mode,
        "allowed_groups": conn.allowed_groups,
        "policies": conn.policies,
        "ssh": conn.ssh,
        "access": conn.access,
        "kubernetes": conn.kubernetes,
        "http": conn.http,
        "agent": conn.agent,
    })
}

/// A named agent must be registered, so a typo cannot leave a connection unreachable
/// (or waiting for an agent someone registers later under that name).
async fn check_agent(state: &AppState, agent: Option<&str>) -> Result<(), ApiError> {
    let Some(name) = agent else { return Ok(()) };
    match state.store.agent(name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ApiError::bad_request(
            "unknown_agent",
            format!("no agent named `{name}` is registered (POST /api/agents)"),
        )),
        Err(e) => Err(ApiError::store(&e)),
    }
}

/// Connections the caller may use (all of them for admins).
#[utoipa::path(get, path = "/api/connections", tag = "connections", security(("bearer" = [])),
    responses((status = 200, body = Vec<Connection>), (status = 401, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<Connection>>, ApiError> {
    let all = state
        .store
        .list_connections()
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(
        all.into_iter()
            .filter(|c| caller.is_admin || caller.identity.in_any_group(&c.allowed_groups))
            .collect(),
    ))
}

/// Register a connection (admins).
#[utoipa::path(post, path = "/api/connections", tag = "connections", security(("bearer" = [])),
    params(DryRun),
    request_body = ConnectionCreate,
    responses((status = 201, body = Connection), (status = 200, description = "`dry_run`: the connection as it would be created", body = Connection),
              (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(dry): ApiQuery<DryRun>,
    ApiJson(req): ApiJson<ConnectionCreate>,
) -> Result<Response, ApiError> {
    caller.require_admin(&state, "connection.create").await?;
    validate_connection_name(&req.name).map_err(|e| invalid(e.to_string()))?;
    let secret = match req.secret {
        Some(s) => {
            check_secret(&s)?;
            let kind = req
                .secret_kind
                .unwrap_or_else(|| infer_secret_kind(req.kind, &s));
            check_secret_kind(req.kind, kind, &s)?;
            Some((kind, s))
        }
        None if req.secret_kind.is_some() => {
            return Err(invalid("secret_kind given without a secret"));
        }
        None => None,
    };
    let now = timefmt::now();
    let mut conn = Connection {
        name: req.name,
        kind: req.kind,
        target: req.target,
        username: req.username,
        secret_kind: secret.as_ref().map(|s| s.0),
        tls: req.tls,
        allowed_groups: req.allowed_groups,
        policies: req.policies,
        ssh: req.ssh,
        access: req.access,
        kubernetes: req.kubernetes,
        http: req.http,
        agent: req.agent,
        description: req.description,
        created_at: now,
        updated_at: now,
    };
    check_common(&conn)?;
    canonical_ssh(&mut conn)?;
    check_policy_refs(&state, &conn.policies).await?;
    check_agent(&state, conn.agent.as_deref()).await?;
    if dry.dry_run {
        if state
            .store
            .get_connection(&conn.name)
            .await
            .map_err(|e| ApiError::store(&e))?
            .is_some()
        {
            return Err(store_error(
                &conn.name,
                &StoreError::Conflict(format!("connection `{}` already exists", conn.name)),
            ));
        }
        let mut answer = serde_json::to_value(&conn).map_err(|e| invalid(e.to_string()))?;
        answer["dry_run"] = json!(true);
        return Ok((StatusCode::OK, Json(answer)).into_response());
    }
    let event = Event::new("connection.create", describe(&conn))
        .by(&caller.identity)
        .on_connection(&conn.name);
    state
        .store
        .create_connection(&conn, secret, &event)
        .await
        .map_err(|e| store_error(&conn.name, &e))?;
    Ok((StatusCode::CREATED, Json(conn)).into_response())
}

/// One connection, if the caller may use it.
#[utoipa::path(get, path = "/api/connections/{name}", tag = "connections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Connection name")),
    responses((status = 200, body = Connection), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<Connection>, ApiError> {
    let conn = state
        .store
        .get_connection(&name)
        .await
        .map_err(|e| ApiError::store(&e))?;
    match conn {
        // A connection the caller may not use is reported as absent: no probing names.
        Some(c) if caller.is_admin || caller.identity.in_any_group(&c.allowed_groups) => {
            Ok(Json(c))
        }
        _ => Err(ApiError::not_found(format!("connection `{name}`"))),
    }
}

/// Change a connection (admins).
#[utoipa::path(patch, path = "/api/connections/{name}", tag = "connections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Connection name"), DryRun),
    request_body = ConnectionUpdate,
    responses((status = 200, body = ConnectionChanged), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiQuery(dry): ApiQuery<DryRun>,
    ApiJson(req): ApiJson<ConnectionUpdate>,
) -> Result<Json<ConnectionChanged>, ApiError> {
    caller.require_admin(&state, "connection.update").await?;
    let mut conn = state
        .store
        .get_connection(&name)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("connection `{name}`")))?;
    let before = conn.clone();
    if let Some(k) = req.kind {
        conn.kind = k;
    }
    if let Some(t) = req.target {
        conn.target = t;
    }
    if let Some(u) = req.username {
        conn.username = u;
    }
    if let Some(t) = &req.tls {
        conn.tls = merged("tls", &conn.tls, t)?;
    }
    if let Some(g) = req.allowed_groups {
        conn.allowed_groups = g;
    }
    if let Some(p) = &req.policies {
        conn.policies = merged("policies", &conn.policies, p)?;
    }
    if let Some(o) = &req.access {
        conn.access = merged("access", &conn.access, o)?;
    }
    if let Some(o) = &req.ssh {
        conn.ssh = merged("ssh", &conn.ssh, o)?;
    }
    if let Some(o) = &req.kubernetes {
        conn.kubernetes = merged("kubernetes", &conn.kubernetes, o)?;
    }
    if let Some(o) = &req.http {
        conn.http = merged("http", &conn.http, o)?;
    }
    if let Some(a) = req.agent {
        check_agent(&state, a.as_deref()).await?;
        conn.agent = a;
    }
    if let Some(d) = req.description {
        conn.description = d;
    }
    let secret_change = match (req.secret, req.secret_kind) {
        (None, None) => SecretChange::Keep,
        (Some(Some(s)), kind) => {
            check_secret(&s)?;
            let kind = kind.unwrap_or_else(|| infer_secret_kind(conn.kind, &s));
            check_secret_kind(conn.kind, kind, &s)?;
            conn.secret_kind = Some(kind);
            SecretChange::Set(kind, s)
        }
        (Some(None), None) => {
            conn.secret_kind = None;
            SecretChange::Clear
        }
        (Some(None), Some(_)) | (None, Some(_)) => {
            return Err(invalid(
                "secret_kind can only change together with a new secret",
            ));
        }
    };
    check_common(&conn)?;
    canonical_ssh(&mut conn)?;
    check_policy_refs(&state, &conn.policies).await?;
    let weakened = warden_policy::weaken::connection_weakening(&before, &conn);
    let mut changes = changes(&settings(&before), &settings(&conn));
    match &secret_change {
        SecretChange::Keep => {}
        change => changes.push(FieldChange {
            field: "secret".into(),
            before: json!(before.secret_kind.map(|_| "(held)")),
            after: json!(matches!(change, SecretChange::Set(..)).then_some("(new)")),
        }),
    }
    if dry.dry_run || changes.is_empty() {
        return Ok(Json(ConnectionChanged {
            connection: conn,
            changes,
            weakened,
            dry_run: dry.dry_run,
        }));
    }
    conn.updated_at = timefmt::now();
    let mut changed: Vec<&str> = changes
        .iter()
        .map(|c| c.field.split('.').next().unwrap_or_default())
        .collect();
    changed.dedup();
    let mut payload = describe(&conn);
    payload["changed"] = json!(changed);
    if !weakened.is_empty() {
        payload["weakened"] = json!(weakened);
    }
    let event = Event::new("connection.update", payload)
        .by(&caller.identity)
        .on_connection(&name);
    state
        .store
        .update_connection(&conn, secret_change, &event)
        .await
        .map_err(|e| store_error(&name, &e))?;
    if !weakened.is_empty() {
        let event = Event::new(
            "policy.weakened",
            json!({"object": "connection", "name": name, "weakened": weakened,
                   "before": describe(&before), "after": describe(&conn)}),
        )
        .by(&caller.identity)
        .on_connection(&name);
        super::record_weakening(&state, &event).await;
    }
    Ok(Json(ConnectionChanged {
        connection: conn,
        changes,
        weakened,
        dry_run: false,
    }))
}

/// A changed connection, and what the change took away.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConnectionChanged {
    #[serde(flatten)]
    pub connection: Connection,
    /// Every setting that changes, with its value before and after (the secret only
    /// as `(held)`/`(new)`). Empty: the request changed nothing and nothing was stored.
    pub changes: Vec<FieldChange>,
    /// Protections the change removed or relaxed (also a `policy.weakened` event).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub weakened: Vec<String>,
    /// `true`: checked only (`?dry_run=true`); nothing was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// A connection's settings as compared for `changes`: everything but its times.
fn settings(conn: &Connection) -> Value {
    let mut v = serde_json::to_value(conn).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.remove("created_at");
        map.remove("updated_at");
    }
    v
}

/// Remove a connection and its held secret (admins).
#[utoipa::path(delete, path = "/api/connections/{name}", tag = "connections", security(("bearer" = [])),
    params(("name" = String, Path, description = "Connection name")),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "connection.delete").await?;
    let event = Event::new("connection.delete", json!({}))
        .by(&caller.identity)
        .on_connection(&name);
    let existed = state
        .store
        .delete_connection(&name, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !existed {
        return Err(ApiError::not_found(format!("connection `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}
