//! Open sessions and what they stand on: the credential their identity logged in
//! with and, where the connection needs one, an access grant. When either ends the
//! session ends too, with a reason the client sees and a `session.terminate` event:
//!
//! - expiry (a token's `exp` plus the accepted clock skew, an API key's or SSH key
//!   registration's end, a grant's end) from memory, on time even when the store is
//!   unreachable;
//! - revocation in this gateway (an API key revoked, an SSH key deleted, a grant
//!   revoked) at once, called by the API;
//! - revocation by another gateway sharing the store, found by asking the store
//!   every few seconds about what open sessions stand on.

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;
use warden_core::{AuthMethod, Event, Identity, SessionEnder, timefmt};
use warden_store::access::RequestStatus;
use warden_store::{AuditJournal, Store};

/// How often expiries are checked.
const TICK: Duration = Duration::from_secs(1);
/// Every this many ticks, the store is asked whether what open sessions stand on
/// was revoked by another gateway.
const STORE_CHECK_TICKS: u32 = 2;

/// The credential a session's identity logged in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A JWT: it cannot be revoked here, only expire.
    Token,
    /// An API key, and the hash of its secret at login: a key whose secret is
    /// replaced (the configured admin token changed) ends its sessions too.
    ApiKey { id: String, secret_hash: String },
    /// A registered SSH key, and the API key that registered it (which takes the
    /// registration with it).
    SshKey {
        fingerprint: String,
        registered_with: Option<String>,
    },
}

impl Credential {
    /// The credential of `identity`; `registered_with` is an SSH key's API key,
    /// `secret_hash` an API key's at login.
    pub fn of(
        identity: &Identity,
        registered_with: Option<String>,
        secret_hash: Option<String>,
    ) -> Self {
        match &identity.method {
            AuthMethod::Oidc { .. } => Credential::Token,
            AuthMethod::ApiKey { key_id } => Credential::ApiKey {
                id: key_id.clone(),
                secret_hash: secret_hash.unwrap_or_default(),
            },
            AuthMethod::SshKey { fingerprint } => Credential::SshKey {
                fingerprint: fingerprint.clone(),
                registered_with,
            },
        }
    }

    fn api_key(&self) -> Option<&str> {
        match self {
            Credential::ApiKey { id, .. } => Some(id),
            Credential::SshKey {
                registered_with, ..
            } => registered_with.as_deref(),
            Credential::Token => None,
        }
    }

    fn ssh_key(&self) -> Option<&str> {
        match self {
            Credential::SshKey { fingerprint, .. } => Some(fingerprint),
            _ => None,
        }
    }

    /// How its end is named to the client.
    fn expired_message(&self, at: OffsetDateTime) -> String {
        let at = timefmt::rfc3339(at);
        match self {
            Credential::Token => {
                format!("your token expired at {at}: sign in again and reconnect")
            }
            Credential::ApiKey { id, .. } => format!("your API key {id} expired at {at}"),
            Credential::SshKey { fingerprint, .. } => format!(
                "your SSH key registration {fingerprint} expired at {at}: register it again"
            ),
        }
    }
}

/// Why the watch ended a session (the `cause` of its `session.terminate` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    CredentialExpired,
    CredentialRevoked,
    GrantEnded,
    GrantRevoked,
}

impl Cause {
    fn as_str(self) -> &'static str {
        match self {
            Cause::CredentialExpired => "credential_expired",
            Cause::CredentialRevoked => "credential_revoked",
            Cause::GrantEnded => "grant_ended",
            Cause::GrantRevoked => "grant_revoked",
        }
    }
}

/// What one open session stands on.
pub struct Watched {
    pub identity: Identity,
    pub connection: String,
    pub credential: Credential,
    /// When the credential stops being accepted, if it does.
    pub credential_ends: Option<OffsetDateTime>,
    /// The grant it opened under and when that ends.
    pub grant: Option<(Uuid, OffsetDateTime)>,
    pub ender: SessionEnder,
}

pub struct SessionWatch {
    store: Arc<Store>,
    journal: Arc<AuditJournal>,
    sessions: Mutex<HashMap<Uuid, Watched>>,
}

impl SessionWatch {
    pub fn new(store: Arc<Store>, journal: Arc<AuditJournal>) -> Self {
        Self {
            store,
            journal,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Watches `session` until it is forgotten or ended. One whose credential or
    /// grant has already ended is ended at once.
    pub fn watch(&self, session: Uuid, watched: Watched) {
        self.lock().insert(session, watched);
        self.end_due(timefmt::now());
    }

    /// The session closed by itself.
    pub fn forget(&self, session: Uuid) {
        self.lock().remove(&session);
    }

    /// Ends every open session under `grant` now.
    pub fn end_grant(&self, grant: Uuid, cause: Cause, reason: &str) {
        self.end_where(
            cause,
            |_| reason.to_string(),
            |w| w.grant.is_some_and(|(g, _)| g == grant),
        );
    }

    /// Ends every open session that stands on API key `key_id`: logged in with it,
    /// or with an SSH key it registered.
    pub fn end_api_key(&self, key_id: &str, reason: &str) {
        self.end_where(
            Cause::CredentialRevoked,
            |_| reason.to_string(),
            |w| w.credential.api_key() == Some(key_id),
        );
    }

    /// Ends the sessions that logged in with API key `key_id` when its secret was
    /// something other than `secret_hash` (it was replaced since).
    fn end_replaced(&self, key_id: &str, secret_hash: &str) {
        self.end_where(
            Cause::CredentialRevoked,
            |_| format!("your API key {key_id} was replaced"),
            |w| {
                matches!(&w.credential, Credential::ApiKey { id, secret_hash: at_login }
                    if id == key_id && at_login != secret_hash)
            },
        );
    }

    /// Ends every open session that logged in with SSH key `fingerprint`.
    pub fn end_ssh_key(&self, fingerprint: &str, reason: &str) {
        self.end_where(
            Cause::CredentialRevoked,
            |_| reason.to_string(),
            |w| w.credential.ssh_key() == Some(fingerprint),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Watched>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Ends (and forgets) the sessions `matches` picks, each with `reason_of` it.
    fn end_where(
        &self,
        cause: Cause,
        reason_of: impl Fn(&Watched) -> String,
        matches: impl Fn(&Watched) -> bool,
    ) {
        let ended: Vec<(Uuid, Watched)> = {
            let mut sessions = self.lock();
            let ids: Vec<Uuid> = sessions
                .iter()
                .filter(|(_, w)| matches(w))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| sessions.remove(&id).map(|w| (id, w)))
                .collect()
        };
        for (id, w) in ended {
            let reason = reason_of(&w);
            // Recorded before the session learns of it, so its `session.end`
            // follows this event in the log.
            let mut payload = json!({"cause": cause.as_str(), "reason": reason});
            if let Some((grant, _)) = w.grant {
                payload["grant"] = json!(grant);
            }
            if let Some(key) = w.credential.api_key() {
                payload["key_id"] = json!(key);
            }
            if let Some(fp) = w.credential.ssh_key() {
                payload["fingerprint"] = json!(fp);
            }
            let event = Event::new("session.terminate", payload)
                .by(&w.identity)
                .on_connection(&w.connection)
                .in_session(id);
            self.journal.append_later(event);
            tracing::info!(session = %id, cause = cause.as_str(), %reason, "ending session");
            w.ender.end(&reason);
        }
    }

    /// Ends the sessions whose credential or grant has ended by `now`.
    fn end_due(&self, now: OffsetDateTime) {
        self.end_where(
            Cause::CredentialExpired,
            |w| match w.credential_ends {
                Some(at) => w.credential.expired_message(at),
                None => String::new(),
            },
            |w| w.credential_ends.is_some_and(|at| at <= now),
        );
        self.end_where(
            Cause::GrantEnded,
            |w| match w.grant {
                Some((id, _)) => format!("your access grant {id} has ended"),
                None => String::new(),
            },
            |w| w.grant.is_some_and(|(_, ends)| ends <= now),
        );
    }

    /// Ends sessions whose grant, API key or SSH key another gateway revoked.
    async fn check_store(&self) {
        let (grants, api_keys, ssh_keys) = {
            let sessions = self.lock();
            let mut grants: Vec<Uuid> = sessions
                .values()
                .filter_map(|w| w.grant)
                .map(|g| g.0)
                .collect();
            let mut api_keys: Vec<String> = sessions
                .values()
                .filter_map(|w| w.credential.api_key().map(String::from))
                .collect();
            let mut ssh_keys: Vec<String> = sessions
                .values()
                .filter_map(|w| w.credential.ssh_key().map(String::from))
                .collect();
            grants.sort_unstable();
            grants.dedup();
            api_keys.sort_unstable();
            api_keys.dedup();
            ssh_keys.sort_unstable();
            ssh_keys.dedup();
            (grants, api_keys, ssh_keys)
        };
        if !grants.is_empty() {
            match self.store.access_statuses(&grants).await {
                Ok(statuses) => {
                    for id in grants {
                        let status = statuses.iter().find(|(i, _)| *i == id).map(|(_, s)| *s);
                        if status != Some(RequestStatus::Approved) {
                            let how = status.map_or("removed", RequestStatus::as_str);
                            self.end_grant(
                                id,
                                Cause::GrantRevoked,
                                &format!("your access grant {id} was {how}"),
                            );
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "grant statuses not checked"),
            }
        }
        if !api_keys.is_empty() {
            let now = timefmt::now();
            match self.store.api_keys_by_id(&api_keys).await {
                Ok(found) => {
                    for id in api_keys {
                        let how = match found.iter().find(|k| k.id == id) {
                            None => "was deleted",
                            Some(k) if k.revoked_at.is_some() => "was revoked",
                            Some(k) if k.expires_at.is_some_and(|e| e <= now) => "has expired",
                            Some(k) => {
                                self.end_replaced(&id, &k.secret_hash);
                                continue;
                            }
                        };
                        self.end_api_key(&id, &format!("your API key {id} {how}"));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "API keys of open sessions not checked"),
            }
        }
        if !ssh_keys.is_empty() {
            match self.store.ssh_user_keys_by_fingerprint(&ssh_keys).await {
                Ok(found) => {
                    for fp in ssh_keys {
                        if !found.iter().any(|k| k.fingerprint == fp) {
                            self.end_ssh_key(&fp, &format!("your SSH key {fp} was deleted"));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "SSH keys of open sessions not checked"),
            }
        }
    }

    /// Ends what is due every second, and asks the store every few, until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            ticks = ticks.wrapping_add(1);
            self.end_due(timefmt::now());
            if ticks.is_multiple_of(STORE_CHECK_TICKS) && !self.lock().is_empty() {
                self.check_store().await;
            }
        }
    }
}
