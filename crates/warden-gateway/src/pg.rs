//! The gateway's side of the PostgreSQL proxy: who may connect to what, with which
//! credential and policies, and where sessions and statements are recorded.

use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use uuid::Uuid;
use warden_core::{
    ConnectionKind, Decision, Event, Identity, SecretKind, Session, SessionStatus, timefmt,
};
use warden_pg::proxy::{ProxyHooks, ProxySession, Refusal, StatementRecord};
use warden_pg::sqlstate;
use warden_store::Store;
use warden_store::sessions::SessionCounts;

use crate::auth::{Authenticator, TokenShape};
use crate::policy::PolicyRegistry;

pub struct PgHooks {
    pub store: Arc<Store>,
    pub auth: Arc<Authenticator>,
    pub policies: Arc<PolicyRegistry>,
    /// Open sessions: who and on which connection, for the statement records.
    open: Mutex<HashMap<String, (Identity, String)>>,
}

impl PgHooks {
    pub fn new(store: Arc<Store>, auth: Arc<Authenticator>, policies: Arc<PolicyRegistry>) -> Self {
        Self {
            store,
            auth,
            policies,
            open: Mutex::new(HashMap::new()),
        }
    }

    async fn refuse(&self, event: Event, sqlstate: &'static str, message: String) -> Refusal {
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, "could not record a refused PostgreSQL login");
        }
        Refusal { sqlstate, message }
    }
}

/// `host:port/dbname` → (`host:port`, `dbname`), defaulting to `postgres`.
fn split_target(target: &str) -> (String, String) {
    match target.split_once('/') {
        Some((addr, db)) if !db.is_empty() => (addr.to_string(), db.to_string()),
        _ => (target.to_string(), "postgres".to_string()),
    }
}

impl ProxyHooks for PgHooks {
    async fn open(
        &self,
        database: &str,
        user: &str,
        token: &str,
        client: SocketAddr,
    ) -> Result<ProxySession, Refusal> {
        let identity = match self.auth.authenticate(token).await {
            Ok(i) => i,
            Err(e) => {
                let event = Event::new(
                    "auth.failure",
                    json!({"code": e.code(), "reason": e.to_string(), "protocol": "postgres",
                           "token_kind": TokenShape::of(token).as_str(), "key_id": Authenticator::key_id_of(token),
                           "client": client.to_string(), "connection": database, "user": user}),
                );
                return Err(self
                    .refuse(
                        event,
                        sqlstate::INVALID_PASSWORD,
                        format!("authentication failed: {e}"),
                    )
                    .await);
            }
        };
        let conn = match self.store.get_connection(database).await {
            Ok(Some(c))
                if c.kind == ConnectionKind::Postgres
                    && identity.in_any_group(&c.allowed_groups) =>
            {
                c
            }
            Ok(_) => {
                let event = Event::new(
                    "access.denied",
                    json!({"protocol": "postgres", "client": client.to_string(),
                    "reason": "no such PostgreSQL connection for the caller's groups"}),
                )
                .by(&identity)
                .on_connection(database);
                return Err(self
                    .refuse(
                        event,
                        sqlstate::INVALID_CATALOG_NAME,
                        format!("there is no PostgreSQL connection `{database}` that you may use"),
                    )
                    .await);
            }
            Err(e) => {
                tracing::error!(error = %e, "connection lookup failed");
                return Err(Refusal {
                    sqlstate: sqlstate::CONNECTION_FAILURE,
                    message: "the gateway's store is unavailable".into(),
                });
            }
        };
        let (guard, masker) = self.policies.resolve(&conn.policies).await.map_err(|e| {
            tracing::error!(error = %e, connection = %conn.name, "policies cannot be resolved");
            // Fail closed: no session without its policies.
            Refusal {
                sqlstate: sqlstate::INSUFFICIENT_PRIVILEGE,
                message: format!("the connection's policies cannot be applied: {e}"),
            }
        })?;
        let secret = match self.store.connection_secret(&conn.name).await {
            Ok(Some((SecretKind::Password, s))) => Some(s),
            Ok(None) => None,
            Ok(Some(_)) => {
                return Err(Refusal {
                    sqlstate: sqlstate::CONNECTION_FAILURE,
                    message: "the connection holds no password for PostgreSQL".into(),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "secret unavailable");
                return Err(Refusal {
                    sqlstate: sqlstate::CONNECTION_FAILURE,
                    message: "the connection's credential cannot be read".into(),
                });
            }
        };
        let id = Uuid::now_v7();
        let session = Session {
            id,
            connection: conn.name.clone(),
            protocol: "postgres".into(),
            subject: identity.subject.clone(),
            groups: identity.groups.clone(),
            client_addr: Some(client.to_string()),
            started_at: timefmt::now(),
            ended_at: None,
            status: SessionStatus::Active,
            end_reason: None,
            commands: 0,
            denied: 0,
            bytes_in: 0,
            bytes_out: 0,
            recording: None,
        };
        let start = Event::new(
            "session.start",
            json!({"protocol": "postgres", "client": client.to_string(), "user": user}),
        )
        .by(&identity)
        .on_connection(&conn.name)
        .in_session(id);
        if self.store.create_session(&session).await.is_err()
            || self.store.append_audit(&start).await.is_err()
        {
            return Err(Refusal {
                sqlstate: sqlstate::CONNECTION_FAILURE,
                message: "the session cannot be recorded".into(),
            });
        }
        if let Ok(mut open) = self.open.lock() {
            open.insert(id.to_string(), (identity, conn.name.clone()));
        }
        let (backend_addr, backend_database) = split_target(&conn.target);
        Ok(ProxySession {
            id: id.to_string(),
            backend_addr,
            backend_user: conn.username.clone().unwrap_or_else(|| user.to_string()),
            backend_database,
            secret,
            guard: Arc::new(guard),
            masker: Arc::new(masker),
        })
    }

    async fn record(&self, record: StatementRecord) -> Result<(), String> {
        let who = self
            .open
            .lock()
            .ok()
            .and_then(|o| o.get(&record.session).cloned());
        let (identity, connection) = who.ok_or("unknown session")?;
        let session_id: Uuid = record.session.parse().map_err(|_| "bad session id")?;
        let denied = matches!(record.decision, Decision::Deny { .. });
        let event = Event::new("pg.query", json!({"sql": record.sql, "via": record.via}))
            .by(&identity)
            .on_connection(connection)
            .in_session(session_id)
            .with_decision(record.decision);
        self.store
            .append_audit(&event)
            .await
            .map_err(|e| e.to_string())?;
        let counts = SessionCounts {
            commands: 1,
            denied: i64::from(denied),
            ..Default::default()
        };
        if let Err(e) = self.store.add_session_counts(session_id, counts).await {
            tracing::warn!(error = %e, "session counters not updated");
        }
        Ok(())
    }

    async fn closed(&self, session: &str, reason: Option<String>) {
        let who = self.open.lock().ok().and_then(|mut o| o.remove(session));
        let Ok(id) = session.parse::<Uuid>() else {
            return;
        };
        let status = if reason.is_some() {
            SessionStatus::Terminated
        } else {
            SessionStatus::Closed
        };
        if let Err(e) = self
            .store
            .end_session(id, status, reason.as_deref(), timefmt::now())
            .await
        {
            tracing::error!(error = %e, "could not end session");
        }
        let mut event = Event::new("session.end", json!({"reason": reason})).in_session(id);
        if let Some((identity, connection)) = who {
            event = event.by(&identity).on_connection(connection);
        }
        if let Err(e) = self.store.append_audit(&event).await {
            tracing::error!(error = %e, "could not record session end");
        }
    }
}
