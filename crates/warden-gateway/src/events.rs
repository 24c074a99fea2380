//! Event delivery: webhooks (signed HTTP POSTs) and SIEM sinks (JSON Lines files,
//! RFC 5424 syslog over UDP or TCP, as Warden events or OCSF). Each target walks
//! the chained audit log from its cursor, so an event is delivered at least once
//! whatever restarts in between; a target retries one event with exponential
//! backoff and jitter, in order, and after `events.max_attempts` files it as a
//! dead letter and moves on. Receivers de-duplicate by event id.

use aws_lc_rs::hmac;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;
use warden_core::{Decision, Event, timefmt};
use warden_store::audit::{AuditEntry, AuditFilter};
use warden_store::outbox::{Cursor, DeadLetter, webhook_target};
use warden_store::{Store, hex};

use crate::config::{EventFormat, EventsConfig, SinkConfig, SinkKind, SyslogTransport};

/// Events read from the log per round.
const BATCH: i64 = 200;
/// How often a target looks at the log without being woken (appends made by
/// another gateway sharing the store).
const POLL: Duration = Duration::from_secs(1);
/// How often the set of webhooks is re-read without being told it changed.
const WEBHOOK_RELOAD: Duration = Duration::from_secs(5);

/// Which events a target takes.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    kinds: Vec<String>,
    decisions: Vec<String>,
}

impl EventFilter {
    pub fn new(kinds: Vec<String>, decisions: Vec<String>) -> Self {
        Self { kinds, decisions }
    }

    pub fn matches(&self, event: &Event) -> bool {
        let kind_ok =
            self.kinds.is_empty() || self.kinds.iter().any(|k| kind_matches(k, &event.kind));
        let decision_ok = self.decisions.is_empty()
            || event
                .decision
                .as_ref()
                .is_some_and(|d| self.decisions.iter().any(|x| x == decision_name(d)));
        kind_ok && decision_ok
    }
}

/// `*`, an exact kind, `access.*` (a family) or `*.query` (a kind in every family).
fn kind_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" || pattern == kind {
        return true;
    }
    if let Some(family) = pattern.strip_suffix(".*") {
        return kind
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.'));
    }
    if let Some(name) = pattern.strip_prefix("*.") {
        return kind
            .strip_suffix(name)
            .is_some_and(|rest| rest.ends_with('.'));
    }
    false
}

pub fn decision_name(d: &Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny { .. } => "deny",
        Decision::Review { .. } => "review",
    }
}

/// The Warden shape of a delivered event: the audit event plus its place in the log.
pub fn warden_json(entry: &AuditEntry) -> Value {
    let mut v = serde_json::to_value(&entry.event).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("seq".into(), json!(entry.seq));
    }
    v
}

/// The OCSF (1.3) shape: Authentication (3002) for logins, SSH Activity (4007),
/// Datastore Activity (6005) for database statements, API Activity (6003) for the
/// rest. Warden's own fields are kept under `unmapped`.
pub fn ocsf_json(entry: &AuditEntry) -> Value {
    let e = &entry.event;
    let kind = e.kind.as_str();
    let (class_uid, class_name) = if kind.starts_with("auth.") {
        (3002, "Authentication")
    } else if kind.starts_with("ssh.") {
        (4007, "SSH Activity")
    } else if kind.starts_with("pg.") || kind.starts_with("mysql.") {
        (6005, "Datastore Activity")
    } else {
        (6003, "API Activity")
    };
    let refused = kind == "auth.failure"
        || kind == "access.denied"
        || matches!(e.decision, Some(Decision::Deny { .. }));
    let flagged = refused || matches!(e.decision, Some(Decision::Review { .. }));
    // A statement's outcome: folded into its event, or an event of its own.
    let outcome = if kind.ends_with(".outcome") {
        Some(&e.payload)
    } else {
        e.payload.get("outcome")
    };
    let error = outcome
        .and_then(|o| o.get("error"))
        .filter(|err| err.is_object());
    let failed = refused || error.is_some();
    let (activity_id, activity_name) = match class_uid {
        3002 => (1, "Logon"),
        _ => (99, kind),
    };
    let mut out = json!({
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": class_uid / 1000,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": timefmt::to_micros(e.time) / 1000,
        "severity_id": if flagged { 3 } else { 1 },
        "status_id": if failed { 2 } else { 1 },
        "status": if failed { "Failure" } else { "Success" },
        "message": match &e.decision {
            Some(Decision::Deny { rule, reason }) => format!("{kind} denied by {rule}: {reason}"),
            Some(Decision::Review { rule }) => format!("{kind} held for review by {rule}"),
            _ => kind.to_string(),
        },
        "metadata": {
            "version": "1.3.0",
            "uid": e.id,
            "sequence": entry.seq,
            "event_code": kind,
            "log_name": "warden-audit",
            "product": {"name": "Warden", "vendor_name": "Warden", "version": env!("CARGO_PKG_VERSION")},
        },
        "unmapped": {"connection": e.connection, "decision": e.decision, "payload": e.payload},
    });
    if let Some(us) = outcome
        .and_then(|o| o.get("duration_us"))
        .and_then(Value::as_u64)
    {
        // OCSF durations are milliseconds.
        out["duration"] = json!(us / 1000);
    }
    if let Some(err) = error {
        out["status_code"] = err["code"].clone();
        out["status_detail"] = err["message"].clone();
    }
    if let Some(id) = &e.identity {
        out["actor"] = json!({
            "user": {"name": id.subject, "uid": id.subject,
                     "groups": id.groups.iter().map(|g| json!({"name": g})).collect::<Vec<_>>()},
        });
        if let Some(s) = e.session_id {
            out["actor"]["session"] = json!({"uid": s});
        }
    }
    if class_uid == 6005 {
        if let Some(sql) = e.payload.get("sql") {
            out["query_info"] = json!({"query_string": sql});
        }
        out["database"] = json!({"name": e.connection});
    }
    if class_uid == 3002 {
        let user = e.payload.get("user").cloned().unwrap_or(Value::Null);
        out["user"] = json!({ "name": user });
    }
    out
}

/// Signs a webhook body: `v1=` + hex HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("v1={}", hex(ctx.sign().as_ref()))
}

/// Where a target sends events.
enum Sender {
    Webhook {
        url: String,
        secret: warden_core::Secret<Vec<u8>>,
        http: reqwest::Client,
    },
    Jsonl {
        path: PathBuf,
        file: Option<tokio::fs::File>,
        format: EventFormat,
    },
    Syslog {
        address: String,
        transport: SyslogTransport,
        format: EventFormat,
        tcp: Option<tokio::net::TcpStream>,
        hostname: String,
    },
}

impl Sender {
    async fn send(&mut self, entry: &AuditEntry) -> Result<(), String> {
        match self {
            Sender::Webhook { url, secret, http } => {
                let body = serde_json::to_vec(&warden_json(entry)).map_err(|e| e.to_string())?;
                let ts = timefmt::now().unix_timestamp();
                let resp = http
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .header("warden-event-id", entry.event.id.to_string())
                    .header("warden-timestamp", ts.to_string())
                    .header("warden-signature", signature(secret.expose(), ts, &body))
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| without_url(&e))?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("receiver answered HTTP {}", resp.status().as_u16()))
                }
            }
            Sender::Jsonl { path, file, format } => {
                let mut line =
                    serde_json::to_vec(&shaped(*format, entry)).map_err(|e| e.to_string())?;
                line.push(b'\n');
                if file.is_none() {
                    let mut opts = tokio::fs::OpenOptions::new();
                    opts.create(true).append(true).mode(0o600);
                    *file = Some(
                        opts.open(&*path)
                            .await
                            .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
                    );
                }
                let Some(f) = file.as_mut() else {
                    return Err("no file".into());
                };
                if let Err(e) = warden_net::write_flushed(f, &line).await {
                    *file = None;
                    return Err(format!("cannot write {}: {e}", path.display()));
                }
                Ok(())
            }
            Sender::Syslog {
                address,
                transport,
                format,
                tcp,
                hostname,
            } => {
                let msg = syslog_message(hostname, *format, entry);
                match transport {
                    SyslogTransport::Udp => {
                        let socket = tokio::net::UdpSocket::bind(if address.starts_with('[') {
                            "[::]:0"
                        } else {
                            "0.0.0.0:0"
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                        // One datagram per message; 64 KiB is the most UDP carries.
                        let end = msg.len().min(65_000);
                        socket
                            .send_to(&msg.as_bytes()[..end], address.as_str())
                            .await
                            .map_err(|e| format!("syslog send to {address} failed: {e}"))?;
                        Ok(())
                    }
                    SyslogTransport::Tcp => {
                        if tcp.is_none() {
                            *tcp = Some(
                                tokio::net::TcpStream::connect(address.as_str())
                                    .await
                                    .map_err(|e| {
                                        format!("syslog connect to {address} failed: {e}")
                                    })?,
                            );
                        }
                        let Some(stream) = tcp.as_mut() else {
                            return Err("no connection".into());
                        };
                        // RFC 6587 octet counting: "<length> <message>".
                        let framed = format!("{} {msg}", msg.len());
                        if let Err(e) = warden_net::write_flushed(stream, framed.as_bytes()).await {
                            *tcp = None;
                            return Err(format!("syslog write to {address} failed: {e}"));
                        }
                        Ok(())
                    }
                }
            }
        }
    }

    /// Pushes what `send` wrote out of user space (files are flushed per round).
    async fn flush(&mut self) -> Result<(), String> {
        if let Sender::Jsonl {
            file: Some(f),
            path,
            ..
        } = self
        {
            f.flush()
                .await
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// What went wrong, by its root cause (connection refused, a name that does not
/// resolve, a refused certificate), never the URL (it may carry credentials in its
/// query).
fn without_url(e: &reqwest::Error) -> String {
    let mut root = e.to_string();
    let mut cause: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cause {
        root = c.to_string();
        cause = c.source();
    }
    if let Some(url) = e.url() {
        root = root.replace(url.as_str(), "<url>");
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        format!("cannot connect: {root}")
    } else {
        root
    }
}

fn shaped(format: EventFormat, entry: &AuditEntry) -> Value {
    match format {
        EventFormat::Warden => warden_json(entry),
        EventFormat::Ocsf => ocsf_json(entry),
    }
}

/// One RFC 5424 message: facility authpriv (10); severity warning for denials,
/// notice for reviews, informational otherwise; MSGID the event kind.
pub fn syslog_message(hostname: &str, format: EventFormat, entry: &AuditEntry) -> String {
    let e = &entry.event;
    let severity = match &e.decision {
        Some(Decision::Deny { .. }) => 4,
        Some(Decision::Review { .. }) => 5,
        _ if e.kind == "auth.failure" => 4,
        _ => 6,
    };
    let msgid: String = e
        .kind
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    let body = serde_json::to_string(&shaped(format, entry)).unwrap_or_default();
    format!(
        "<{}>1 {} {} warden - {} [warden@32473 seq=\"{}\" id=\"{}\"] {}",
        10 * 8 + severity,
        timefmt::rfc3339(e.time),
        hostname,
        if msgid.is_empty() { "-".into() } else { msgid },
        entry.seq,
        e.id,
        body
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

/// Backoff before attempt `attempts + 1`: base × 2^(attempts−1), capped, times a
/// random factor in [0.5, 1) so failing targets do not retry in step.
pub fn backoff(config: &EventsConfig, attempts: u32) -> Duration {
    let base = config.backoff_base_ms.max(1);
    let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(30));
    let capped = exp.min(config.backoff_max_secs.saturating_mul(1000).max(base));
    let mut r = [0u8; 2];
    let _ = aws_lc_rs::rand::fill(&mut r);
    let jitter = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX) / 2.0;
    Duration::from_millis((capped as f64 * jitter) as u64)
}

/// One delivery target's loop.
struct TargetWorker {
    store: Arc<Store>,
    config: EventsConfig,
    name: String,
    filter: EventFilter,
    sender: Sender,
}

impl TargetWorker {
    async fn run(mut self, mut changes: watch::Receiver<u64>) {
        let mut cursor = loop {
            match self.store.ensure_cursor(&self.name).await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(target_name = %self.name, error = %e, "delivery cursor unreadable");
                    tokio::time::sleep(POLL).await;
                }
            }
        };
        loop {
            if let Some(next) = cursor.next_attempt_at {
                let wait: Duration = (next - timefmt::now()).try_into().unwrap_or(Duration::ZERO);
                tokio::time::sleep(wait).await;
            }
            match self.round(&mut cursor).await {
                Ok(true) => continue,
                Ok(false) => {
                    let _ = tokio::time::timeout(POLL, changes.changed()).await;
                }
                Err(e) => {
                    tracing::warn!(target_name = %self.name, error = %e, "event delivery stalled");
                    tokio::time::sleep(POLL).await;
                    if let Ok(Some(c)) = self.store.cursor(&self.name).await {
                        cursor = c;
                    }
                }
            }
        }
    }

    /// Delivers one batch; true when there may be more right away.
    async fn round(&mut self, cursor: &mut Cursor) -> Result<bool, warden_store::StoreError> {
        let batch = self
            .store
            .list_audit(&AuditFilter {
                after_seq: Some(cursor.seq),
                limit: BATCH,
                ..AuditFilter::default()
            })
            .await?;
        let Some(last) = batch.last().map(|e| e.seq) else {
            return Ok(false);
        };
        let mut done_to = cursor.seq;
        let mut failure = None;
        for entry in &batch {
            if self.filter.matches(&entry.event)
                && let Err(e) = self.sender.send(entry).await
            {
                failure = Some((entry, e));
                break;
            }
            done_to = entry.seq;
        }
        if let Err(e) = self.sender.flush().await {
            // Nothing of this round is known to be out: retry it all.
            failure = batch.first().map(|b| (b, e));
            done_to = cursor.seq;
        }
        if done_to > cursor.seq {
            if !self
                .store
                .advance_cursor(&self.name, cursor.seq, done_to)
                .await?
            {
                // Another gateway sharing the store moved it: continue from there.
                if let Some(c) = self.store.cursor(&self.name).await? {
                    *cursor = c;
                }
                return Ok(true);
            }
            cursor.seq = done_to;
            cursor.attempts = 0;
            cursor.next_attempt_at = None;
            cursor.last_error = None;
        }
        let Some((entry, error)) = failure else {
            return Ok(done_to < last || batch.len() as i64 == BATCH);
        };
        let attempts = cursor.attempts.saturating_add(1);
        if attempts >= self.config.max_attempts {
            tracing::warn!(target_name = %self.name, seq = entry.seq, %error, "event dead-lettered");
            let letter = DeadLetter {
                id: Uuid::now_v7(),
                target: self.name.clone(),
                seq: entry.seq,
                event_id: entry.event.id,
                kind: entry.event.kind.clone(),
                attempts,
                last_error: error,
                failed_at: timefmt::now(),
            };
            if self.store.dead_letter(cursor.seq, &letter).await? {
                cursor.seq = entry.seq;
            }
            cursor.attempts = 0;
            cursor.next_attempt_at = None;
            return Ok(true);
        }
        let next = timefmt::now()
            + time::Duration::try_from(backoff(&self.config, attempts))
                .unwrap_or(time::Duration::SECOND);
        tracing::info!(target_name = %self.name, seq = entry.seq, attempts, %error, "event delivery failed; retrying");
        self.store
            .note_delivery_failure(&self.name, cursor.seq, attempts, next, &error)
            .await?;
        cursor.attempts = attempts;
        cursor.next_attempt_at = Some(next);
        cursor.last_error = Some(error);
        Ok(true)
    }
}

/// Sends one event to a webhook now, outside its queue (redelivering a dead
/// letter); the error says why it failed.
pub async fn deliver_now(
    store: &Store,
    config: &EventsConfig,
    webhook: Uuid,
    seq: i64,
) -> Result<(), String> {
    let w = store
        .webhook(webhook)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such webhook")?;
    let secret = store
        .webhook_secret(webhook)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no such webhook")?;
    let entry = store
        .list_audit(&AuditFilter {
            after_seq: Some(seq - 1),
            limit: 1,
            ..AuditFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|e| e.seq == seq)
        .ok_or("the event is no longer in the audit log")?;
    let mut sender = Sender::Webhook {
        url: w.url,
        secret,
        http: webhook_client(config)?,
    };
    sender.send(&entry).await
}

fn webhook_client(config: &EventsConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(config.webhook_timeout_secs))
        // A receiver must not bounce deliveries (and their signatures) elsewhere.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("warden/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("webhook client: {e}"))
}

/// Runs every target: the configured SIEM sinks, and the webhooks in the store
/// (re-read when the API changes them).
pub struct Delivery {
    store: Arc<Store>,
    config: EventsConfig,
    http: reqwest::Client,
    /// The API pokes this after creating or deleting a webhook.
    pub webhooks_changed: Arc<Notify>,
}

impl Delivery {
    pub fn new(store: Arc<Store>, config: EventsConfig) -> Result<Self, String> {
        let http = webhook_client(&config)?;
        Ok(Self {
            store,
            config,
            http,
            webhooks_changed: Arc::new(Notify::new()),
        })
    }

    fn spawn(&self, name: String, filter: EventFilter, sender: Sender) -> JoinHandle<()> {
        let worker = TargetWorker {
            store: self.store.clone(),
            config: self.config.clone(),
            name,
            filter,
            sender,
        };
        tokio::spawn(worker.run(self.store.chain_changes()))
    }

    fn sink_sender(sink: &SinkConfig, host: &str) -> Sender {
        match sink.kind {
            SinkKind::Jsonl => Sender::Jsonl {
                path: sink.path.clone().unwrap_or_default(),
                file: None,
                format: sink.format,
            },
            SinkKind::Syslog => Sender::Syslog {
                address: sink.address.clone().unwrap_or_default(),
                transport: sink.transport,
                format: sink.format,
                tcp: None,
                hostname: host.to_string(),
            },
        }
    }

    /// Runs until shutdown; workers stop with it (at-least-once: whatever was in
    /// flight is delivered again after the next start).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let host = hostname();
        let mut workers: Vec<JoinHandle<()>> = self
            .config
            .sinks
            .iter()
            .map(|s| {
                self.spawn(
                    format!("siem:{}", s.name),
                    EventFilter::new(s.kinds.clone(), s.decisions.clone()),
                    Self::sink_sender(s, &host),
                )
            })
            .collect();
        // Each webhook's worker with what it was started with: a webhook changed by
        // any gateway sharing the store (URL, filters, secret) gets a new worker at the
        // next reload; delivery is at-least-once, so a delivery cut short is repeated.
        let mut hooks: HashMap<Uuid, (Vec<u8>, JoinHandle<()>)> = HashMap::new();
        loop {
            match self.store.list_webhooks().await {
                Ok(list) => {
                    hooks.retain(|id, (_, task)| {
                        let keep = list.iter().any(|w| w.id == *id);
                        if !keep {
                            task.abort();
                        }
                        keep
                    });
                    for w in list {
                        let secret = match self.store.webhook_secret(w.id).await {
                            Ok(Some(s)) => s,
                            Ok(None) => continue,
                            Err(e) => {
                                tracing::error!(webhook = %w.id, error = %e, "webhook secret unreadable");
                                continue;
                            }
                        };
                        let fingerprint = webhook_fingerprint(&w, secret.expose());
                        match hooks.get(&w.id) {
                            Some((running, _)) if *running == fingerprint => continue,
                            Some((_, task)) => task.abort(),
                            None => {}
                        }
                        let sender = Sender::Webhook {
                            url: w.url.clone(),
                            secret,
                            http: self.http.clone(),
                        };
                        hooks.insert(
                            w.id,
                            (
                                fingerprint,
                                self.spawn(
                                    webhook_target(w.id),
                                    EventFilter::new(w.kinds, w.decisions),
                                    sender,
                                ),
                            ),
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "webhooks not read"),
            }
            tokio::select! {
                _ = self.webhooks_changed.notified() => {}
                _ = tokio::time::sleep(WEBHOOK_RELOAD) => {}
                _ = shutdown.changed() => break,
            }
        }
        for w in workers
            .drain(..)
            .chain(hooks.into_values().map(|(_, task)| task))
        {
            w.abort();
        }
    }
}

/// What a webhook's worker depends on, as a digest (the secret never kept in clear).
fn webhook_fingerprint(w: &warden_store::outbox::Webhook, secret: &[u8]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [w.url.as_bytes(), secret] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    for list in [&w.kinds, &w.decisions] {
        ctx.update(&(list.len() as u64).to_be_bytes());
        for item in list {
            ctx.update(&(item.len() as u64).to_be_bytes());
            ctx.update(item.as_bytes());
        }
    }
    ctx.finish().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: &str, decision: Option<Decision>) -> AuditEntry {
        let mut event = Event::new(kind, json!({"sql": "DELETE FROM t"}));
        event.decision = decision;
        AuditEntry {
            seq: 7,
            prev_hash: String::new(),
            hash: String::new(),
            event,
        }
    }

    #[test]
    fn filters() {
        let deny = Some(Decision::Deny {
            rule: "r".into(),
            reason: "x".into(),
        });
        let f = EventFilter::new(vec!["access.*".into(), "pg.query".into()], vec![]);
        assert!(f.matches(&entry("access.grant", None).event));
        assert!(f.matches(&entry("pg.query", None).event));
        assert!(!f.matches(&entry("pg.outcome", None).event));
        assert!(!f.matches(&entry("accessory", None).event));
        let f = EventFilter::new(vec!["*.query".into()], vec![]);
        assert!(f.matches(&entry("mysql.query", None).event));
        assert!(!f.matches(&entry("pg.outcome", None).event));
        assert!(!f.matches(&entry("pgquery", None).event));
        let f = EventFilter::new(vec![], vec!["deny".into()]);
        assert!(f.matches(&entry("mysql.query", deny.clone()).event));
        assert!(!f.matches(&entry("mysql.query", Some(Decision::Allow)).event));
        assert!(!f.matches(&entry("session.start", None).event));
        assert!(EventFilter::default().matches(&entry("anything", None).event));
    }

    #[test]
    fn signature_is_hmac_over_timestamp_and_body() {
        // Independently: HMAC-SHA256("key", "1700000000.{}").
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"key");
        let want = hex(hmac::sign(&key, b"1700000000.{}").as_ref());
        assert_eq!(
            signature(b"key", 1_700_000_000, b"{}"),
            format!("v1={want}")
        );
        assert_ne!(
            signature(b"key", 1_700_000_001, b"{}"),
            format!("v1={want}")
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let c = EventsConfig {
            backoff_base_ms: 100,
            backoff_max_secs: 1,
            ..EventsConfig::default()
        };
        let first = backoff(&c, 1);
        assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(100));
        let fourth = backoff(&c, 4);
        assert!(fourth >= Duration::from_millis(400) && fourth < Duration::from_millis(800));
        assert!(backoff(&c, 30) < Duration::from_millis(1000));
    }

    #[test]
    fn ocsf_classes_and_syslog_frame() {
        let deny = Some(Decision::Deny {
            rule: "no-delete".into(),
            reason: "x".into(),
        });
        let o = ocsf_json(&entry("pg.query", deny.clone()));
        assert_eq!(o["class_uid"], 6005);
        assert_eq!(o["category_uid"], 6);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["query_info"]["query_string"], "DELETE FROM t");
        assert_eq!(ocsf_json(&entry("auth.failure", None))["class_uid"], 3002);
        assert_eq!(ocsf_json(&entry("ssh.exec", None))["class_uid"], 4007);
        assert_eq!(ocsf_json(&entry("review.approve", None))["class_uid"], 6003);
        let line = syslog_message("gw1", EventFormat::Warden, &entry("pg.query", deny));
        // PRI = authpriv (10) * 8 + warning (4).
        assert!(line.starts_with("<84>1 "), "{line}");
        assert!(
            line.contains(" gw1 warden - pg.query [warden@32473 seq=\"7\""),
            "{line}"
        );
        let json_part = &line[line.find("] ").map(|i| i + 2).unwrap_or(0)..];
        let v: Value = serde_json::from_str(json_part).unwrap();
        assert_eq!(v["kind"], "pg.query");
        assert_eq!(v["seq"], 7);
    }

    #[test]
    fn ocsf_reads_a_statements_outcome_folded_or_on_its_own() {
        let mut folded = entry("pg.query", Some(Decision::Allow));
        folded.event.payload["outcome"] = json!({"error": {"code": "42P01",
            "message": "relation \"t\" does not exist"}, "duration_us": 2500});
        let o = ocsf_json(&folded);
        assert_eq!(o["status"], "Failure");
        assert_eq!(o["status_code"], "42P01");
        assert_eq!(o["duration"], 2);
        // An error the database answered is not a refusal: not flagged.
        assert_eq!(o["severity_id"], 1);
        let mut alone = entry("pg.outcome", None);
        alone.event.payload = json!({"tag": "DELETE 3", "rows_affected": 3,
            "duration_us": 900, "statement": uuid::Uuid::now_v7()});
        let o = ocsf_json(&alone);
        assert_eq!(o["status"], "Success");
        assert_eq!(o["duration"], 0);
        let ok = ocsf_json(&entry("pg.query", Some(Decision::Allow)));
        assert_eq!(ok["status"], "Success");
        assert!(ok.get("duration").is_none(), "{ok}");
    }
}
