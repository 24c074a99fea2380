//! The gateway's side of every database proxy: who may connect to what, with which
//! credential and policies, and where sessions and statements are recorded. Proxies
//! reach it through `warden_core::SessionHooks`; nothing here knows a wire format.

use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;
use warden_core::{
    AccessOptions, Action, AuditEntry, AuditError, AuthMethod, BackendTarget, BoxFuture,
    ConnectionKind, Decision, Dialer, EndReason, Event, Identity, KeyLogin, LoginRequest,
    RecordingError, RecordingHeader, Refusal, RefusalKind, ReviewHold, ReviewOutcome, SecretKind,
    Session, SessionEnd, SessionHandle, SessionHooks, SessionParts, SessionRecorder, SessionSink,
    SessionStatus, TerminalRecorder, TerminalSpec, TimelineEvent, Traffic, timefmt,
};
use warden_store::sessions::SessionCounts;
use warden_store::{AuditJournal, Store};

use crate::access::{AccessControl, GrantError, Holder};
use crate::auth::{Authenticator, TokenShape};
use crate::policy::PolicyRegistry;
use crate::recording::{FileRecorder, RECORDING_VERSION, RecordingWriter, recording_name};
use crate::repeats::RepeatLog;
use crate::session_watch::{Credential, SessionWatch, Watched};

/// How often an active session's counters are written to its row.
const COUNTS_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Opens, records and closes the sessions of every database listener.
pub struct SessionGate {
    pub store: Arc<Store>,
    /// Statements are journaled: durable before they are forwarded, chained soon after.
    journal: Arc<AuditJournal>,
    pub auth: Arc<Authenticator>,
    pub policies: Arc<PolicyRegistry>,
    access: Arc<AccessControl>,
    /// Ends sessions whose credential or grant ends.
    watch: Arc<SessionWatch>,
    recordings_dir: PathBuf,
    rows_per_result: usize,
    /// Bytes of an SSH exec's terminal kept in its recording (0: all).
    exec_output_bytes: u64,
    /// How sessions reach their targets.
    dialer: Arc<dyn Dialer>,
    /// Connections that name an agent are dialed through it.
    agents: Arc<warden_agent::AgentHub>,
    /// Writes every session's timeline.
    writer: RecordingWriter,
    /// This gateway instance, recorded with each session it serves.
    instance: Option<String>,
    /// Where failed logins are recorded, repeats counted.
    repeats: Arc<RepeatLog>,
}

/// The gateway's side of one open session: what its events name and where they go.
/// Protocols reach it through the [`SessionHandle`] only.
struct OpenSession {
    id: Uuid,
    identity: Identity,
    connection: String,
    names: ProtocolNames,
    timeline: Arc<StatementTimeline>,
    /// The connection's review settings, as the session opened.
    access_options: AccessOptions,
    store: Arc<Store>,
    journal: Arc<AuditJournal>,
    access: Arc<AccessControl>,
    watch: Arc<SessionWatch>,
    recordings_dir: PathBuf,
    exec_output_bytes: u64,
    /// Counters not yet written to the session row: one row update per statement
    /// would double the store writes on the statement path.
    counts: Mutex<(SessionCounts, Instant)>,
    /// Set when the session is closed: nothing is admitted after its end.
    closed: std::sync::atomic::AtomicBool,
}

/// A session's recording file, plus the statements' outcomes as audit events.
struct StatementTimeline {
    file: FileRecorder,
    /// `pg.outcome`, `mysql.outcome`.
    outcome_kind: &'static str,
    journal: Arc<AuditJournal>,
    identity: Identity,
    connection: String,
    session: Uuid,
}

impl StatementTimeline {
    async fn write(
        &self,
        statement: Option<Uuid>,
        event: TimelineEvent,
    ) -> Result<(), RecordingError> {
        // The outcome follows the statement's (durable) event; nothing waits for it:
        // it is written with the next append or a moment later. Naming the statement
        // lets the store fold it into the statement's row when both are chained in
        // one shipment (see `warden_store::fold`).
        let outcome = match &event {
            TimelineEvent::Result {
                tag,
                rows_total,
                rows_affected,
                duration_us,
                ..
            } => Some(
                json!({"tag": tag, "rows": rows_total, "rows_affected": rows_affected,
                       "duration_us": duration_us}),
            ),
            TimelineEvent::Error {
                code,
                message,
                duration_us,
            } => Some(
                json!({"error": {"code": code, "message": message}, "duration_us": duration_us}),
            ),
            TimelineEvent::Exit {
                channel,
                status,
                signal,
            } => Some(json!({"channel": channel, "exit_status": status, "signal": signal})),
            TimelineEvent::Response {
                status,
                bytes,
                duration_us,
            } => Some(json!({"status": status, "bytes": bytes, "duration_us": duration_us})),
            _ => None,
        };
        if let Some(mut body) = outcome {
            if let Some(id) = statement {
                body["statement"] = json!(id);
            }
            let event = Event::new(self.outcome_kind, body)
                .by(&self.identity)
                .on_connection(&self.connection)
                .in_session(self.session);
            self.journal.append_later(event);
        }
        self.file.record(event).await
    }
}

impl SessionRecorder for StatementTimeline {
    fn record(&self, event: TimelineEvent) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.write(None, event))
    }

    fn record_outcome(
        &self,
        statement: Option<Uuid>,
        event: TimelineEvent,
    ) -> BoxFuture<'_, Result<(), RecordingError>> {
        Box::pin(self.write(statement, event))
    }

    fn rows_per_result(&self) -> usize {
        self.file.rows_per_result()
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), RecordingError>> {
        self.file.flush()
    }
}

/// Where and how sessions are recorded.
pub struct Recordings {
    pub dir: PathBuf,
    /// Rows kept per result.
    pub rows_per_result: usize,
    pub writer: RecordingWriter,
}

/// How sessions reach their targets: directly, or through the agent their
/// connection names.
pub struct Routes {
    pub direct: Arc<dyn Dialer>,
    pub agents: Arc<warden_agent::AgentHub>,
}

/// What watches over open sessions and failed logins.
pub struct Oversight {
    /// Grants and reviews.
    pub access: Arc<AccessControl>,
    /// Ends sessions whose credential or grant ends.
    pub watch: Arc<SessionWatch>,
    /// Records failed logins, counting repeats.
    pub repeats: Arc<RepeatLog>,
}

impl SessionGate {
    pub fn new(
        store: Arc<Store>,
        journal: Arc<AuditJournal>,
        auth: Arc<Authenticator>,
        policies: Arc<PolicyRegistry>,
        oversight: Oversight,
        recordings: Recordings,
        routes: Routes,
    ) -> Self {
        let Oversight {
            access,
            watch,
            repeats,
        } = oversight;
        let Recordings {
            dir: recordings_dir,
            rows_per_result,
            writer,
        } = recordings;
        Self {
            store,
            journal,
            auth,
            policies,
            access,
            watch,
            recordings_dir,
            rows_per_result,
            exec_output_bytes: 0,
            dialer: routes.direct,
            agents: routes.agents,
            writer,
            instance: None,
            repeats,
        }
    }

    /// Sessions are recorded as served by gateway instance `id`.
    pub fn with_instance(mut self, id: &str) -> Self {
        self.instance = Some(id.to_string());
        self
    }

    /// The dialer of a session of `conn`: through its agent, or direct.
    fn dialer_for(&self, conn: &warden_core::Connection, session: Uuid) -> Arc<dyn Dialer> {
        let Some(agent) = &conn.agent else {
            return self.dialer.clone();
        };
        self.agents.dialer(
            agent,
            warden_agent::DialContext {
                session: Some(session),
                connection: conn.name.clone(),
            },
        )
    }

    /// Caps SSH exec recordings (see `recordings.exec_output_bytes`).
    pub fn with_exec_output_limit(mut self, bytes: u64) -> Self {
        self.exec_output_bytes = bytes;
        self
    }

    /// A refused login: its `auth.failure` is recorded in full the first time this
    /// window for the client and reason, then counted (see [`RepeatLog`]).
    fn failed_login(
        &self,
        client: std::net::SocketAddr,
        code: &str,
        event: Event,
        message: String,
    ) -> Refusal {
        self.repeats.record(&client.ip().to_string(), code, event);
        Refusal {
            kind: RefusalKind::BadCredentials,
            message,
        }
    }

    async fn refuse(&self, event: Event, kind: RefusalKind, message: String) -> Refusal {
        if let Err(e) = self.journal.append(event).await {
            tracing::error!(error = %e, "could not record a refused login");
        }
        Refusal { kind, message }
    }
}

fn unavailable(message: &str) -> Refusal {
    Refusal {
        kind: RefusalKind::Unavailable,
        message: message.to_string(),
    }
}

/// How a protocol is named to people, and the kinds of its statement events.
#[derive(Clone, Copy)]
struct ProtocolNames {
    /// `pg`, `mysql`, `ssh`: the prefix of its other event kinds.
    prefix: &'static str,
    display: &'static str,
    query: &'static str,
    outcome: &'static str,
    /// What the statement text is called in events: `sql`, or `command` for SSH.
    text_key: &'static str,
}

fn protocol_names(kind: ConnectionKind) -> ProtocolNames {
    let (prefix, display, query, outcome) = match kind {
        ConnectionKind::Postgres => ("pg", "PostgreSQL", "pg.query", "pg.outcome"),
        ConnectionKind::Mysql => ("mysql", "MySQL", "mysql.query", "mysql.outcome"),
        ConnectionKind::Ssh => ("ssh", "SSH", "ssh.exec", "ssh.outcome"),
        ConnectionKind::Kubernetes => ("k8s", "Kubernetes", "k8s.request", "k8s.outcome"),
        ConnectionKind::Http => ("http", "HTTP", "http.request", "http.outcome"),
    };
    ProtocolNames {
        prefix,
        display,
        query,
        outcome,
        text_key: match kind {
            ConnectionKind::Ssh => "command",
            ConnectionKind::Kubernetes | ConnectionKind::Http => "request",
            ConnectionKind::Postgres | ConnectionKind::Mysql => "sql",
        },
    }
}

/// `host:port/dbname` → (`host:port`, `dbname`); without a database, PostgreSQL
/// logs in to `postgres` and MySQL to none.
fn split_target(target: &str, kind: ConnectionKind) -> (String, String) {
    match target.split_once('/') {
        Some((addr, db)) if !db.is_empty() => (addr.to_string(), db.to_string()),
        Some((addr, _)) => (addr.to_string(), String::new()),
        None if kind == ConnectionKind::Postgres => (target.to_string(), "postgres".to_string()),
        None => (target.to_string(), String::new()),
    }
}

impl SessionGate {
    /// Opens a session for an authenticated identity: checks its access to the
    /// connection, resolves policies and the held credential, starts the recording.
    async fn open_for(
        &self,
        identity: Identity,
        registered_with: Option<String>,
        protocol: ConnectionKind,
        database: &str,
        user: &str,
        client: std::net::SocketAddr,
    ) -> Result<SessionHandle, Refusal> {
        let names = protocol_names(protocol);
        let protocol_name = names.display;
        let conn = match self.store.get_connection(database).await {
            Ok(Some(c)) if c.kind == protocol && identity.in_any_group(&c.allowed_groups) => c,
            Ok(_) => {
                let event = Event::new(
                    "access.denied",
                    json!({"protocol": protocol.as_str(), "client": client.to_string(),
                    "reason": format!("no such {protocol_name} connection for the caller's groups")}),
                )
                .by(&identity)
                .on_connection(database);
                return Err(self
                    .refuse(
                        event,
                        RefusalKind::NoAccess,
                        format!(
                            "there is no {protocol_name} connection `{database}` that you may use"
                        ),
                    )
                    .await);
            }
            Err(e) => {
                tracing::error!(error = %e, "connection lookup failed");
                return Err(unavailable("the gateway's store is unavailable"));
            }
        };
        let (guard, masker) = self.policies.resolve(&conn.policies).await.map_err(|e| {
            tracing::error!(error = %e, connection = %conn.name, "policies cannot be resolved");
            // Fail closed: no session without its policies.
            Refusal {
                kind: RefusalKind::PolicyUnusable,
                message: format!("the connection's policies cannot be applied: {e}"),
            }
        })?;
        // Stored connections from before `username` was required may lack it: the
        // backend account is never the one a client names.
        // Kubernetes and HTTP targets need none: their credential is a token or a
        // certificate (a username only joins a password for HTTP Basic).
        let needs_user = !matches!(protocol, ConnectionKind::Kubernetes | ConnectionKind::Http);
        let Some(backend_user) = conn
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .or_else(|| (!needs_user).then(String::new))
        else {
            return Err(Refusal {
                kind: RefusalKind::PolicyUnusable,
                message: format!(
                    "the connection `{}` names no username to log in to the target as; an administrator must set it",
                    conn.name
                ),
            });
        };
        let grant = match self.access.grant_for(&identity, &conn).await {
            Ok(g) => g,
            Err(GrantError::Missing(message)) => {
                let event = Event::new(
                    "access.denied",
                    json!({"protocol": protocol.as_str(), "client": client.to_string(),
                           "reason": "no approved access request"}),
                )
                .by(&identity)
                .on_connection(&conn.name);
                return Err(self.refuse(event, RefusalKind::NoAccess, message).await);
            }
            Err(GrantError::Store(e)) => {
                tracing::error!(error = %e, "grant lookup failed");
                return Err(unavailable("the gateway's store is unavailable"));
            }
        };
        // An API key's secret as it logged in: one replaced later ends the session.
        let key_secret = match &identity.method {
            AuthMethod::ApiKey { key_id } => match self.store.api_key(key_id).await {
                Ok(k) => k.map(|k| k.secret_hash),
                Err(e) => {
                    tracing::error!(error = %e, "api key lookup failed");
                    return Err(unavailable("the gateway's store is unavailable"));
                }
            },
            _ => None,
        };
        let secret = match self.store.connection_secret(&conn.name).await {
            Ok(Some((SecretKind::Password, s))) => Some((SecretKind::Password, s)),
            Ok(Some((SecretKind::PrivateKey, s))) if protocol == ConnectionKind::Ssh => {
                Some((SecretKind::PrivateKey, s))
            }
            // Kubernetes and HTTP targets take any of them: a token (bearer or a
            // named header), a password (HTTP Basic), a private key (TLS client
            // certificate).
            Ok(Some((kind, s)))
                if matches!(protocol, ConnectionKind::Kubernetes | ConnectionKind::Http) =>
            {
                Some((kind, s))
            }
            Ok(None) => None,
            Ok(Some(_)) => {
                return Err(Refusal {
                    kind: RefusalKind::Unavailable,
                    message: format!("the connection holds no password for {protocol_name}"),
                });
            }
            Err(e) => {
                tracing::error!(error = %e, "secret unavailable");
                return Err(unavailable("the connection's credential cannot be read"));
            }
        };
        let id = Uuid::now_v7();
        let session = Session {
            id,
            connection: conn.name.clone(),
            protocol: protocol.as_str().into(),
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
            recording: Some(recording_name(id)),
        };
        let start = Event::new(
            "session.start",
            json!({"protocol": protocol.as_str(), "client": client.to_string(), "user": user,
                   "grant": grant.as_ref().map(|g| g.id),
                   "grant_ends_at": grant.as_ref().and_then(|g| g.ends_at).map(timefmt::rfc3339)}),
        )
        .by(&identity)
        .on_connection(&conn.name)
        .in_session(id);
        let header = RecordingHeader {
            version: RECORDING_VERSION,
            session: id.to_string(),
            connection: conn.name.clone(),
            protocol: protocol.as_str().into(),
            subject: identity.subject.clone(),
            started_at: timefmt::rfc3339(session.started_at),
            rows_per_result: self.rows_per_result,
        };
        let file = match FileRecorder::create(&self.recordings_dir, &header, self.writer.clone()) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot create a session recording");
                return Err(unavailable("the session cannot be recorded"));
            }
        };
        if self
            .store
            .create_session(&session, self.instance.as_deref())
            .await
            .is_err()
            || self.journal.append(start).await.is_err()
        {
            return Err(unavailable("the session cannot be recorded"));
        }
        // Every protocol's sessions are logged the same way, here and at their end.
        tracing::info!(session = %id, protocol = protocol.as_str(), connection = %conn.name,
            subject = %identity.subject, %client, "session opened");
        let timeline = Arc::new(StatementTimeline {
            file,
            outcome_kind: names.outcome,
            journal: self.journal.clone(),
            identity: identity.clone(),
            connection: conn.name.clone(),
            session: id,
        });
        let (ender, ended) = SessionEnd::pair();
        self.watch.watch(
            id,
            Watched {
                credential: Credential::of(&identity, registered_with, key_secret),
                credential_ends: self.auth.accepted_until(&identity),
                identity: identity.clone(),
                connection: conn.name.clone(),
                grant: grant.as_ref().and_then(|g| g.ends_at.map(|e| (g.id, e))),
                ender,
            },
        );
        let (addr, database) = match protocol {
            // The proxy reads the URL itself (scheme, host, port, base path).
            ConnectionKind::Kubernetes | ConnectionKind::Http => {
                (conn.target.clone(), String::new())
            }
            _ => split_target(&conn.target, protocol),
        };
        let port_forwarding = match protocol {
            ConnectionKind::Kubernetes => conn.kubernetes.port_forwarding,
            _ => conn.ssh.port_forwarding,
        };
        let http = warden_core::HttpTarget {
            kubernetes: conn.kubernetes.clone(),
            http: conn.http.clone(),
            impersonate: conn
                .kubernetes
                .impersonate
                .then(|| warden_core::Impersonation {
                    user: identity.subject.clone(),
                    groups: identity.groups.clone(),
                }),
        };
        // A MySQL session stays in the database its connection names.
        let database_pin = (protocol == ConnectionKind::Mysql).then(|| database.clone());
        let guard =
            warden_policy::ConnectionGuard::new(guard, protocol, database_pin, port_forwarding);
        let target = BackendTarget {
            addr,
            user: backend_user,
            database,
            secret_kind: secret.as_ref().map(|s| s.0),
            secret: secret.map(|s| s.1),
            ssh: conn.ssh.clone(),
            tls: conn.tls.clone(),
            http,
        };
        let sink = OpenSession {
            id,
            identity,
            connection: conn.name.clone(),
            names,
            timeline: timeline.clone(),
            access_options: conn.access.clone(),
            store: self.store.clone(),
            journal: self.journal.clone(),
            access: self.access.clone(),
            watch: self.watch.clone(),
            recordings_dir: self.recordings_dir.clone(),
            exec_output_bytes: self.exec_output_bytes,
            counts: Mutex::new((SessionCounts::default(), Instant::now())),
            closed: std::sync::atomic::AtomicBool::new(false),
        };
        Ok(SessionHandle::new(SessionParts {
            id,
            target,
            guard: Arc::new(guard),
            masker: Arc::new(masker),
            recorder: timeline,
            sink: Arc::new(sink),
            dialer: self.dialer_for(&conn, id),
            ended,
            verbatim_statements: conn.policies.verbatim_statements,
        }))
    }
}

impl SessionHooks for SessionGate {
    async fn open(&self, login: LoginRequest<'_>) -> Result<SessionHandle, Refusal> {
        let LoginRequest {
            protocol,
            connection: database,
            user,
            token,
            client,
        } = login;
        let identity = match self.auth.authenticate(token).await {
            Ok(i) => i,
            Err(e) => {
                let event = Event::new(
                    "auth.failure",
                    json!({"code": e.code(), "reason": e.to_string(), "protocol": protocol.as_str(),
                           "token_kind": TokenShape::of(token).as_str(), "key_id": Authenticator::key_id_of(token),
                           "client": client.to_string(), "connection": database, "user": user}),
                );
                return Err(self.failed_login(
                    client,
                    e.code(),
                    event,
                    format!("authentication failed: {e}"),
                ));
            }
        };
        self.open_for(identity, None, protocol, database, user, client)
            .await
    }

    async fn open_with_key(&self, login: KeyLogin<'_>) -> Result<SessionHandle, Refusal> {
        let bad = |message: &str| Refusal {
            kind: RefusalKind::BadCredentials,
            message: message.to_string(),
        };
        let key = match self.store.ssh_user_key(login.fingerprint).await {
            Ok(Some(k)) if k.public_key == login.public_key => k,
            // Clients offer every key they have; unknown ones are not worth an event.
            Ok(_) => return Err(bad("this key is not registered with Warden")),
            Err(e) => {
                tracing::error!(error = %e, "ssh key lookup failed");
                return Err(unavailable("the gateway's store is unavailable"));
            }
        };
        // Registered with an API key: revoked or expired, it takes the key with it.
        let registered_with = key.api_key_id.clone();
        if let Some(key_id) = &key.api_key_id {
            let origin = match self.store.api_key(key_id).await {
                Ok(k) => k,
                Err(e) => {
                    tracing::error!(error = %e, "api key lookup failed");
                    return Err(unavailable("the gateway's store is unavailable"));
                }
            };
            let now = timefmt::now();
            let gone = match &origin {
                None => Some("was deleted"),
                Some(k) if k.revoked_at.is_some() => Some("was revoked"),
                Some(k) if k.expires_at.is_some_and(|e| e <= now) => Some("has expired"),
                Some(_) => None,
            };
            if let Some(how) = gone {
                let event = Event::new(
                    "auth.failure",
                    json!({"code": "api_key_revoked", "reason": format!("the API key that registered this SSH key {how}"),
                           "protocol": "ssh", "fingerprint": key.fingerprint, "subject": key.subject,
                           "key_id": key_id, "client": login.client.to_string(), "connection": login.connection}),
                );
                return Err(self.failed_login(
                    login.client,
                    "api_key_revoked",
                    event,
                    format!(
                        "the API key this SSH key was registered with {how}; register it again"
                    ),
                ));
            }
        }
        if key.expires_at <= timefmt::now() {
            let event = Event::new(
                "auth.failure",
                json!({"code": "key_expired", "reason": "the registered SSH key has expired",
                       "protocol": "ssh", "fingerprint": key.fingerprint, "subject": key.subject,
                       "client": login.client.to_string(), "connection": login.connection}),
            );
            return Err(self.failed_login(
                login.client,
                "key_expired",
                event,
                "the registered SSH key has expired; register it again".into(),
            ));
        }
        let identity = Identity {
            subject: key.subject,
            groups: key.groups,
            method: AuthMethod::SshKey {
                fingerprint: key.fingerprint,
            },
            expires_at: Some(key.expires_at),
        };
        self.open_for(
            identity,
            registered_with,
            ConnectionKind::Ssh,
            login.connection,
            login.user,
            login.client,
        )
        .await
    }
}

impl OpenSession {
    fn event(&self, kind: &str, payload: serde_json::Value) -> Event {
        Event::new(kind, payload)
            .by(&self.identity)
            .on_connection(&self.connection)
            .in_session(self.id)
    }

    /// The event kind and payload of an admitted-or-refused action.
    fn audit_event(&self, entry: &AuditEntry<'_>) -> Event {
        let (kind, mut payload) = match entry.action {
            Action::Forward { .. } => (
                format!("{}.forward", self.names.prefix),
                entry.detail.cloned().unwrap_or_else(|| json!({})),
            ),
            Action::Feature { name } => {
                let mut detail = entry.detail.cloned().unwrap_or_else(|| json!({}));
                detail["what"] = json!(name);
                (format!("{}.refused", self.names.prefix), detail)
            }
            _ => {
                let mut payload = json!({self.names.text_key: entry.text, "via": entry.via});
                if let Some(detail) = entry.detail {
                    payload["detail"] = detail.clone();
                }
                (self.names.query.to_string(), payload)
            }
        };
        if let Some(review) = entry.review {
            payload["review"] = json!(review);
        }
        if let Some(lengths) = entry.parameters {
            payload["params"] = json!({"count": lengths.len(), "bytes": lengths});
        }
        let mut event = self
            .event(&kind, payload)
            .with_decision(entry.decision.clone());
        event.id = entry.id;
        event
    }

    /// Adds one command to the session's counters; writes them to its row at most
    /// once per [`COUNTS_FLUSH_INTERVAL`], in the background.
    fn count(&self, denied: bool) {
        let due = self.counts.lock().ok().and_then(|mut c| {
            c.0.commands += 1;
            c.0.denied += i64::from(denied);
            (c.1.elapsed() >= COUNTS_FLUSH_INTERVAL).then(|| {
                c.1 = Instant::now();
                std::mem::take(&mut c.0)
            })
        });
        if let Some(counts) = due {
            let store = self.store.clone();
            let id = self.id;
            tokio::spawn(async move {
                if let Err(e) = store.add_session_counts(id, counts).await {
                    tracing::warn!(error = %e, "session counters not updated");
                }
            });
        }
    }
}

impl SessionSink for OpenSession {
    fn audit<'a>(&'a self, entry: AuditEntry<'a>) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(AuditError("the session has ended".into()));
            }
            let event = self.audit_event(&entry);
            self.journal
                .append(event)
                .await
                .map_err(|e| AuditError(e.to_string()))?;
            if entry.action.is_command() {
                self.count(matches!(entry.decision, Decision::Deny { .. }));
            }
            Ok(())
        })
    }

    fn note(&self, kind: &'static str, payload: serde_json::Value) {
        self.journal.append_later(self.event(kind, payload));
    }

    fn request_review<'a>(
        &'a self,
        command: &'a str,
        rule: &'a str,
    ) -> BoxFuture<'a, Result<ReviewHold, String>> {
        Box::pin(self.access.hold(
            Holder {
                session: self.id,
                identity: &self.identity,
                connection: &self.connection,
                access: &self.access_options,
            },
            command,
            rule,
        ))
    }

    fn await_review<'a>(&'a self, id: &'a str) -> BoxFuture<'a, ReviewOutcome> {
        Box::pin(self.access.wait(id))
    }

    fn abandon_review(&self, id: &str) {
        // Closed in the store (audited) so an approver is told nothing will run; the
        // wait itself ended with the session's admission.
        tracing::info!(session = %self.id, review = id, "client left while held for review");
        let Ok(id) = id.parse::<Uuid>() else {
            return;
        };
        let access = self.access.clone();
        tokio::spawn(async move { access.abandon_review(id).await });
    }

    fn terminal(
        &self,
        spec: TerminalSpec,
    ) -> BoxFuture<'_, Result<Arc<dyn TerminalRecorder>, RecordingError>> {
        Box::pin(async move {
            let title = match &spec.command {
                Some(c) => format!("{}: {c}", self.connection),
                None => format!("{}: shell", self.connection),
            };
            // Commands without a PTY move bulk data (`cat`, `tar`, dumps): keep their
            // first bytes, count the rest. Terminals a person drives are kept whole.
            let limit = (spec.term.is_none() && self.exec_output_bytes > 0)
                .then_some(self.exec_output_bytes);
            let session = self.id.to_string();
            let recorder = crate::terminal::CastRecorder::create(
                &self.recordings_dir,
                &session,
                &title,
                &spec,
                limit,
            )
            .map_err(|e| RecordingError(e.to_string()))?;
            self.timeline
                .record(TimelineEvent::Terminal {
                    channel: spec.channel,
                    file: crate::terminal::cast_name(&session, spec.channel),
                    command: spec.command.clone(),
                })
                .await?;
            Ok(recorder as Arc<dyn TerminalRecorder>)
        })
    }

    fn pin_host_key<'a>(&'a self, host_key: &'a str) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let event = self.event(
                "connection.host_key_pinned",
                json!({"host_key": host_key, "trust_on_first_use": true}),
            );
            let pinned = self
                .store
                .pin_ssh_host_key(&self.connection, host_key, &event)
                .await
                .map_err(|e| format!("the store cannot pin it: {e}"))?;
            if pinned.as_deref() == Some(host_key) {
                Ok(())
            } else {
                Err("another host key was pinned for this connection meanwhile".into())
            }
        })
    }

    fn close<'a>(&'a self, reason: Option<&'a EndReason>, traffic: Traffic) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            let reason = reason.map(ToString::to_string);
            self.watch.forget(self.id);
            let ended = self
                .timeline
                .record(TimelineEvent::End {
                    reason: reason.clone(),
                })
                .await;
            // Whoever reads the recording once the session has ended reads all of it.
            if let Err(e) = async {
                ended?;
                self.timeline.flush().await
            }
            .await
            {
                tracing::error!(error = %e, "could not end the session recording");
            }
            let unflushed = self.counts.lock().map(|c| c.0).unwrap_or_default();
            let counts = SessionCounts {
                bytes_in: i64::try_from(traffic.from_client).unwrap_or(i64::MAX),
                bytes_out: i64::try_from(traffic.to_client).unwrap_or(i64::MAX),
                ..unflushed
            };
            if let Err(e) = self.store.add_session_counts(self.id, counts).await {
                tracing::warn!(error = %e, "session counters not updated");
            }
            let status = if reason.is_some() {
                SessionStatus::Terminated
            } else {
                SessionStatus::Closed
            };
            if let Err(e) = self
                .store
                .end_session(self.id, status, reason.as_deref(), timefmt::now())
                .await
            {
                tracing::error!(error = %e, "could not end session");
            }
            tracing::info!(session = %self.id, reason = reason.as_deref().unwrap_or("the client closed it"),
                bytes_in = traffic.from_client, bytes_out = traffic.to_client, "session ended");
            let event = self.event(
                "session.end",
                json!({"reason": reason, "bytes_in": traffic.from_client, "bytes_out": traffic.to_client}),
            );
            if let Err(e) = self.journal.append(event).await {
                tracing::error!(error = %e, "could not record session end");
            }
        })
    }
}
