//! `/api/agents`: network agent registrations (admins) and `/api/agent-tunnel`, where
//! a running `warden agent` opens its tunnel with its key. A key is shown once, at
//! registration or rotation; revoking, rotating or deleting closes the agent's open
//! tunnels at once, and the sessions they carry end with them.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use time::OffsetDateTime;
use warden_agent::wire::{
    HOST_HEADER, INSTANCE_HEADER, UPGRADE_PROTOCOL, VERSION_HEADER, printable,
};
use warden_agent::{AgentPeer, ReserveError, TunnelStatus};
use warden_core::{Event, timefmt, validate_connection_name};
use warden_store::StoreError;
use warden_store::agents::AgentRecord;

use super::extract::{ApiJson, Caller, ClientAddr, bearer_of};
use super::{ApiError, AppState, ErrorBody};
use crate::agents::{self, KeyRefusal};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentCreate {
    /// What connections name (`"agent": "dc-east"`): lowercase letters, digits, `-`, `_`.
    pub name: String,
    pub description: Option<String>,
    /// Networks its tunnels may come from (`10.20.0.0/16`); empty: anywhere. A copy
    /// of the key used from elsewhere is refused.
    #[serde(default)]
    pub sources: Vec<String>,
}

/// A change to an agent (admins): fields left out keep their value.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentUpdate {
    pub description: Option<String>,
    pub sources: Option<Vec<String>>,
}

/// One connected agent process.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentProcess {
    /// The process's random id (several processes may share an agent's name and key).
    pub instance: String,
    pub host: String,
    pub version: String,
    /// Where its tunnel comes from, as this gateway sees it.
    pub address: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub connected_at: OffsetDateTime,
    /// Backend connections open through it now.
    pub open_streams: usize,
    /// Backend connections it opened since it connected.
    pub dials: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentView {
    pub name: String,
    pub description: Option<String>,
    /// Networks its tunnels may come from; empty: anywhere.
    pub sources: Vec<String>,
    /// `online` (a process is connected to this gateway), `offline` or `revoked`.
    pub status: &'static str,
    pub created_by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_seen_at: Option<OffsetDateTime>,
    pub last_address: Option<String>,
    pub version: Option<String>,
    /// Sessions the agent has carried, over all its processes and gateways.
    pub sessions_carried: i64,
    /// Processes connected to this gateway now.
    pub processes: Vec<AgentProcess>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentIssued {
    #[serde(flatten)]
    pub agent: AgentView,
    /// The agent key (`warden agent --token`). Shown only in this answer; store it now.
    pub key: String,
}

fn view(record: &AgentRecord, live: &[TunnelStatus]) -> AgentView {
    let processes: Vec<AgentProcess> = live
        .iter()
        .filter(|t| t.peer.agent == record.name)
        .map(|t| AgentProcess {
            instance: t.peer.instance.clone(),
            host: t.peer.host.clone(),
            version: t.peer.version.clone(),
            address: t.peer.address.to_string(),
            connected_at: OffsetDateTime::from(t.connected_at),
            open_streams: t.open_streams,
            dials: t.dials,
        })
        .collect();
    let status = if record.revoked_at.is_some() {
        "revoked"
    } else if processes.is_empty() {
        "offline"
    } else {
        "online"
    };
    AgentView {
        name: record.name.clone(),
        description: record.description.clone(),
        sources: record.sources.clone(),
        status,
        created_by: record.created_by.clone(),
        created_at: record.created_at,
        revoked_at: record.revoked_at,
        last_seen_at: if processes.is_empty() {
            record.last_seen_at
        } else {
            Some(timefmt::now())
        },
        last_address: processes
            .last()
            .map(|p| p.address.clone())
            .or_else(|| record.last_address.clone()),
        version: processes
            .last()
            .map(|p| p.version.clone())
            .or_else(|| record.last_version.clone()),
        sessions_carried: record.sessions_carried,
        processes,
    }
}

async fn find(state: &AppState, name: &str) -> Result<AgentRecord, ApiError> {
    state
        .store
        .agent(name)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("agent `{name}`")))
}

/// Every registered agent with its status (admins).
#[utoipa::path(get, path = "/api/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = Vec<AgentView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    caller.require_admin(&state, "agent.list").await?;
    let records = state
        .store
        .list_agents()
        .await
        .map_err(|e| ApiError::store(&e))?;
    let live = state.agents.status();
    Ok(Json(records.iter().map(|r| view(r, &live)).collect()))
}

/// One agent with its status (admins).
#[utoipa::path(get, path = "/api/agents/{name}", tag = "agents", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require_admin(&state, "agent.get").await?;
    let record = find(&state, &name).await?;
    Ok(Json(view(&record, &state.agents.status())))
}

/// Register an agent (admins). The answer holds its key once.
#[utoipa::path(post, path = "/api/agents", tag = "agents", security(("bearer" = [])),
    request_body = AgentCreate,
    responses((status = 201, body = AgentIssued), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<AgentCreate>,
) -> Result<(StatusCode, Json<AgentIssued>), ApiError> {
    caller.require_admin(&state, "agent.create").await?;
    validate_connection_name(&req.name)
        .map_err(|e| ApiError::bad_request("invalid_agent", format!("name: {e}")))?;
    if req.description.as_ref().is_some_and(|d| d.len() > 2048) {
        return Err(ApiError::bad_request(
            "invalid_agent",
            "description must be at most 2048 characters",
        ));
    }
    check_sources(&req.sources)?;
    let issued = agents::issue_key().map_err(|e| ApiError::from_auth(&e))?;
    let record = AgentRecord {
        name: req.name,
        sources: req.sources,
        key_id: issued.key_id,
        key_hash: issued.key_hash,
        description: req.description,
        created_by: caller.identity.subject.clone(),
        created_at: timefmt::now(),
        revoked_at: None,
        last_seen_at: None,
        last_address: None,
        last_version: None,
        sessions_carried: 0,
    };
    let event = Event::new(
        "agent.create",
        json!({"agent": record.name, "key_id": record.key_id, "sources": record.sources}),
    )
    .by(&caller.identity);
    state
        .store
        .insert_agent(&record, &event)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                "agent_exists",
                format!("an agent named `{}` already exists", record.name),
            ),
            other => ApiError::store(&other),
        })?;
    Ok((
        StatusCode::CREATED,
        Json(AgentIssued {
            agent: view(&record, &[]),
            key: issued.token.expose().clone(),
        }),
    ))
}

fn check_sources(sources: &[String]) -> Result<(), ApiError> {
    if sources.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_agent",
            "sources must hold at most 256 networks",
        ));
    }
    warden_agent::allow::parse_networks(sources)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request("invalid_agent", format!("sources: {e}")))
}

/// Change an agent's description or source networks (admins). New sources apply to
/// tunnels that connect from now on; open ones from elsewhere are closed.
#[utoipa::path(patch, path = "/api/agents/{name}", tag = "agents", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = AgentUpdate,
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AgentUpdate>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require_admin(&state, "agent.update").await?;
    let before = find(&state, &name).await?;
    let sources = req.sources.unwrap_or_else(|| before.sources.clone());
    check_sources(&sources)?;
    let description = req.description.or_else(|| before.description.clone());
    if description.as_ref().is_some_and(|d| d.len() > 2048) {
        return Err(ApiError::bad_request(
            "invalid_agent",
            "description must be at most 2048 characters",
        ));
    }
    // Fewer or no source limits let a copied key in from more places.
    let widened = !before.sources.is_empty()
        && (sources.is_empty() || sources.iter().any(|s| !before.sources.contains(s)));
    let event = Event::new(
        "agent.update",
        json!({"agent": name, "sources": {"from": before.sources, "to": sources},
               "widened": widened}),
    )
    .by(&caller.identity);
    let found = state
        .store
        .update_agent(&name, description.as_deref(), &sources, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !found {
        return Err(ApiError::not_found(format!("agent `{name}`")));
    }
    if let Ok(networks) = warden_agent::allow::parse_networks(&sources)
        && !networks.is_empty()
    {
        state.agents.close_where(
            |p| p.agent == name && !warden_agent::allow::in_networks(&networks, p.address.ip()),
            "the agent's source networks changed",
        );
    }
    let record = AgentRecord {
        description,
        sources,
        ..before
    };
    Ok(Json(view(&record, &state.agents.status())))
}

/// Revoke an agent (admins): its key stops working and its tunnels close now,
/// ending the sessions they carry. `rotate` makes it usable again with a new key.
#[utoipa::path(post, path = "/api/agents/{name}/revoke", tag = "agents", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = AgentView), (status = 404, body = ErrorBody)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    caller.require_admin(&state, "agent.revoke").await?;
    let before = find(&state, &name).await?;
    let event = Event::new(
        "agent.revoke",
        json!({"agent": name, "key_id": before.key_id}),
    )
    .by(&caller.identity);
    let found = state
        .store
        .revoke_agent(&name, timefmt::now(), &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !found {
        return Err(ApiError::not_found(format!("agent `{name}`")));
    }
    let reason = format!("the agent was revoked by {}", caller.identity.subject);
    state.agents.close_key(&before.key_id, &reason);
    state.agents.close_where(|p| p.agent == name, &reason);
    let record = AgentRecord {
        revoked_at: before.revoked_at.or_else(|| Some(timefmt::now())),
        ..before
    };
    Ok(Json(view(&record, &state.agents.status())))
}

/// Give an agent a new key (admins): the old key stops working and tunnels opened
/// with it close now; a revoked agent becomes usable again. The answer holds the key once.
#[utoipa::path(post, path = "/api/agents/{name}/rotate", tag = "agents", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = AgentIssued), (status = 404, body = ErrorBody)))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<AgentIssued>, ApiError> {
    caller.require_admin(&state, "agent.rotate").await?;
    let before = find(&state, &name).await?;
    let issued = agents::issue_key().map_err(|e| ApiError::from_auth(&e))?;
    let event = Event::new(
        "agent.rotate",
        json!({"agent": name, "key_id": issued.key_id}),
    )
    .by(&caller.identity);
    let found = state
        .store
        .rotate_agent_key(&name, &issued.key_id, &issued.key_hash, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !found {
        return Err(ApiError::not_found(format!("agent `{name}`")));
    }
    let reason = format!(
        "the agent's key was replaced by {}",
        caller.identity.subject
    );
    state.agents.close_key(&before.key_id, &reason);
    state
        .agents
        .close_where(|p| p.agent == name && p.key_id != issued.key_id, &reason);
    // The answer is built from what is in hand: the new key must reach the caller.
    let record = AgentRecord {
        key_id: issued.key_id.clone(),
        key_hash: issued.key_hash.clone(),
        revoked_at: None,
        ..before
    };
    Ok(Json(AgentIssued {
        agent: view(&record, &state.agents.status()),
        key: issued.token.expose().clone(),
    }))
}

/// Delete an agent no connection names (admins); its tunnels close now.
#[utoipa::path(delete, path = "/api/agents/{name}", tag = "agents", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "agent.delete").await?;
    let before = find(&state, &name).await?;
    let event = Event::new("agent.delete", json!({"agent": name})).by(&caller.identity);
    let found = state
        .store
        .delete_agent(&name, &event)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "agent_in_use", message)
            }
            other => ApiError::store(&other),
        })?;
    if !found {
        return Err(ApiError::not_found(format!("agent `{name}`")));
    }
    let reason = format!("the agent was deleted by {}", caller.identity.subject);
    state.agents.close_key(&before.key_id, &reason);
    state.agents.close_where(|p| p.agent == name, &reason);
    Ok(StatusCode::NO_CONTENT)
}

/// A header the agent reports about itself, kept printable and short.
fn reported(headers: &HeaderMap, name: &str, max: usize) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| printable(v, max))
        .unwrap_or_default()
}

/// Open an agent's tunnel: `GET` with `Connection: Upgrade`, `Upgrade: warden-agent/1`
/// and the agent key as bearer token, over HTTP/1.1. After `101` the gateway speaks
/// HTTP/2 to the agent over the connection and opens one `CONNECT` stream per dial.
#[utoipa::path(get, path = "/api/agent-tunnel", tag = "agents",
    responses((status = 101, description = "the tunnel is open"), (status = 401, body = ErrorBody),
              (status = 426, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn tunnel(State(state): State<AppState>, mut req: Request) -> Result<Response, ApiError> {
    super::upgrade::require(req.headers(), UPGRADE_PROTOCOL)?;
    // The TCP peer, as the listener saw it (no forwarding header is trusted); a
    // login without one is refused rather than given a made-up address.
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0)
        .ok_or_else(|| ApiError::internal("the client address is unknown"))?;
    let refuse = |code: &str, reason: &str, key_id: Option<&str>| {
        Event::new(
            "agent.refused",
            json!({"client": client.to_string(), "code": code, "reason": reason,
                   "key_id": key_id}),
        )
    };
    // Refusals are counted per address and reason, not each written: a copied key
    // looping logins cannot flood the audit log.
    let repeat = |code: &str, event: Event| {
        state.repeats.record(&client.ip().to_string(), code, event);
    };
    let token = bearer_of(req.headers()).unwrap_or_default().to_string();
    let record = match agents::verify_key(&state.store, &token).await {
        Ok(record) => record,
        Err(refusal) => {
            repeat(
                refusal.code(),
                refuse(refusal.code(), refusal.message(), None),
            );
            let status = match refusal {
                KeyRefusal::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
                KeyRefusal::Invalid | KeyRefusal::Revoked => StatusCode::UNAUTHORIZED,
            };
            return Err(ApiError::new(status, refusal.code(), refusal.message()));
        }
    };
    // A registration limited to some networks refuses its key from anywhere else.
    let sources = warden_agent::allow::parse_networks(&record.sources).unwrap_or_default();
    if !record.sources.is_empty()
        && (sources.is_empty() || !warden_agent::allow::in_networks(&sources, client.ip()))
    {
        let message = format!(
            "agent `{}` may not connect from {}",
            record.name,
            client.ip()
        );
        repeat(
            "agent_source_refused",
            refuse("agent_source_refused", &message, Some(&record.key_id)),
        );
        return Err(ApiError::forbidden(message));
    }
    let limit = state.config.agents.max_processes;
    let reservation = match state.agents.reserve(&record.name, &record.key_id, limit) {
        Ok(r) => r,
        Err(e) => {
            let (status, code) = match e {
                ReserveError::TooMany { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, "too_many_processes")
                }
                ReserveError::KeyClosed => (StatusCode::UNAUTHORIZED, "agent_revoked"),
                ReserveError::Stopping => (StatusCode::SERVICE_UNAVAILABLE, "gateway_stopping"),
            };
            let message = e.to_string();
            repeat(code, refuse(code, &message, Some(&record.key_id)));
            return Err(ApiError::new(status, code, message));
        }
    };
    let peer = AgentPeer {
        agent: record.name,
        key_id: record.key_id,
        instance: reported(req.headers(), INSTANCE_HEADER, 64),
        host: reported(req.headers(), HOST_HEADER, 255),
        version: reported(req.headers(), VERSION_HEADER, 64),
        address: client,
    };
    let hub = state.agents.clone();
    Ok(super::upgrade::switch(
        &mut req,
        UPGRADE_PROTOCOL,
        move |io| async move { hub.serve(io, peer, reservation).await },
    ))
}
