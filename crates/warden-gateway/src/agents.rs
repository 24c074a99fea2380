//! Network agents, gateway side: agent keys (`wagt_<id>_<secret>`, stored as a
//! SHA-256 of the whole token), the audit trail of tunnels and dials, and keeping
//! connected tunnels in step with the store, so that revoking, rotating or deleting
//! an agent on any gateway sharing the store closes its tunnels here too.

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use warden_agent::{AgentHub, HubEvent, HubEvents};
use warden_core::{BoxFuture, Event, Secret, timefmt};
use warden_store::agents::AgentRecord;
use warden_store::{AuditJournal, Store};

use crate::auth::AuthError;
use crate::auth::api_key::{constant_time_eq, hash_token, random_hex};

pub const KEY_PREFIX: &str = "wagt_";
/// How often connected tunnels are checked against the store.
const SYNC_EVERY: Duration = Duration::from_secs(3);
/// How often an online agent's `last_seen_at` is written.
const SEEN_EVERY: Duration = Duration::from_secs(60);

/// A new agent key: the token is shown once and never stored.
pub struct IssuedAgentKey {
    pub key_id: String,
    pub token: Secret<String>,
    pub key_hash: String,
}

pub fn issue_key() -> Result<IssuedAgentKey, AuthError> {
    let key_id = random_hex(8)?;
    let token = format!("{KEY_PREFIX}{key_id}_{}", random_hex(32)?);
    Ok(IssuedAgentKey {
        key_hash: hash_token(&token),
        key_id,
        token: Secret::new(token),
    })
}

/// Why an agent's tunnel was refused at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Invalid,
    Revoked,
    StoreUnavailable,
}

impl KeyRefusal {
    pub fn code(self) -> &'static str {
        match self {
            KeyRefusal::Invalid => "invalid_agent_key",
            KeyRefusal::Revoked => "agent_revoked",
            KeyRefusal::StoreUnavailable => "store_unavailable",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            KeyRefusal::Invalid => "the agent key is not valid",
            KeyRefusal::Revoked => "this agent was revoked",
            KeyRefusal::StoreUnavailable => "the gateway cannot check agent keys right now",
        }
    }
}

/// The registration `token` belongs to, if it is valid and not revoked.
pub async fn verify_key(store: &Store, token: &str) -> Result<AgentRecord, KeyRefusal> {
    let key_id = token
        .strip_prefix(KEY_PREFIX)
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .filter(|id| !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or(KeyRefusal::Invalid)?;
    let record = store
        .agent_by_key_id(key_id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "agent key lookup failed");
            KeyRefusal::StoreUnavailable
        })?
        .ok_or(KeyRefusal::Invalid)?;
    if !constant_time_eq(hash_token(token).as_bytes(), record.key_hash.as_bytes()) {
        return Err(KeyRefusal::Invalid);
    }
    if record.revoked_at.is_some() {
        return Err(KeyRefusal::Revoked);
    }
    Ok(record)
}

/// Writes the hub's events to the audit log and the agents' last-seen notes.
pub struct AuditedHub {
    pub journal: Arc<AuditJournal>,
    pub store: Arc<Store>,
}

impl HubEvents for AuditedHub {
    fn record(&self, event: HubEvent) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let (audit, seen) = match event {
                HubEvent::Connected(peer) => (
                    Event::new(
                        "agent.connect",
                        json!({"agent": peer.agent, "key_id": peer.key_id, "instance": peer.instance,
                               "host": peer.host, "version": peer.version,
                               "address": peer.address.to_string()}),
                    ),
                    Some((peer, 0)),
                ),
                HubEvent::Disconnected {
                    peer,
                    reason,
                    dials,
                } => (
                    Event::new(
                        "agent.disconnect",
                        json!({"agent": peer.agent, "instance": peer.instance,
                               "address": peer.address.to_string(), "reason": reason,
                               "dials": dials}),
                    ),
                    Some((peer, 0)),
                ),
                HubEvent::Dialed {
                    peer,
                    agent,
                    addr,
                    context,
                    outcome,
                    message,
                    new_session,
                } => {
                    let mut event = Event::new(
                        "agent.dial",
                        json!({"agent": agent, "instance": peer.as_ref().map(|p| p.instance.clone()),
                               "key_id": peer.as_ref().map(|p| p.key_id.clone()),
                               "address": peer.as_ref().map(|p| p.address.to_string()),
                               "target": addr, "outcome": outcome.as_str(), "message": message}),
                    );
                    if !context.connection.is_empty() {
                        event = event.on_connection(&context.connection);
                    }
                    if let Some(session) = context.session {
                        event = event.in_session(session);
                    }
                    // A session's extra legs (cancels, catalog reads) write nothing more.
                    (event, peer.filter(|_| new_session).map(|p| (p, 1)))
                }
            };
            if let Some((peer, sessions)) = seen {
                let noted = self
                    .store
                    .note_agent_seen(
                        &peer.agent,
                        timefmt::now(),
                        &peer.address.to_string(),
                        &peer.version,
                        sessions,
                    )
                    .await;
                if let Err(e) = noted {
                    tracing::warn!(error = %e, "could not note when an agent was seen");
                }
            }
            match self.journal.append(audit).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::error!(error = %e, "could not record an agent event");
                    false
                }
            }
        })
    }
}

/// Closes tunnels whose agent was revoked, rotated or deleted (here or on another
/// gateway sharing the store), and notes online agents as seen, until shutdown.
pub async fn keep_in_step(
    hub: Arc<AgentHub>,
    store: Arc<Store>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut last_seen_note = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SYNC_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let connected = hub.status();
        if connected.is_empty() {
            continue;
        }
        // Tunnels that connect after this snapshot are judged at the next round.
        let snapshot = std::time::SystemTime::now();
        let records = match store.list_agents().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not read agents to check their tunnels");
                continue;
            }
        };
        for status in connected.iter().filter(|t| t.connected_at < snapshot) {
            let peer = &status.peer;
            let valid = records
                .iter()
                .any(|r| r.name == peer.agent && r.key_id == peer.key_id && r.revoked_at.is_none());
            if !valid {
                hub.close_key(
                    &peer.key_id,
                    "the agent was revoked, deleted or given a new key",
                );
            }
        }
        // Source networks narrowed here or on another gateway sharing the store.
        for record in records.iter().filter(|r| !r.sources.is_empty()) {
            let networks = warden_agent::allow::parse_networks(&record.sources).unwrap_or_default();
            hub.close_where(
                |p| {
                    p.agent == record.name
                        && !warden_agent::allow::in_networks(&networks, p.address.ip())
                },
                "the agent's tunnel comes from outside its source networks",
            );
        }
        if last_seen_note.elapsed() >= SEEN_EVERY {
            last_seen_note = tokio::time::Instant::now();
            for status in &connected {
                let peer = &status.peer;
                let _ = store
                    .note_agent_seen(
                        &peer.agent,
                        timefmt::now(),
                        &peer.address.to_string(),
                        &peer.version,
                        0,
                    )
                    .await;
            }
        }
    }
}
