//! Events a flood repeats — the same client failing to authenticate the same way,
//! connections turned away at a listener's door — recorded so that a flood cannot
//! grow the audit log without bound while the record of who tried stays complete:
//! the first of each (kind, client, reason) in a window is recorded in full at once,
//! and at the window's end one event of the same kind says how many more came
//! (`repeats`, `first_repeat_at`, `last_repeat_at`, `window_secs`).

use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use time::OffsetDateTime;
use warden_core::{Event, timefmt};
use warden_store::AuditJournal;

/// The window repeats are counted over.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);
/// Distinct keys kept per window; beyond them, further keys are counted together per
/// kind, so memory stays bounded under a flood from many addresses.
const MAX_KEYS: usize = 10_000;

/// What the events of one key are counted under.
#[derive(PartialEq, Eq, Hash)]
enum Key {
    /// Kind, client, reason and what the event names.
    One(String),
    /// Every further key of a kind once the window holds [`MAX_KEYS`].
    Overflow(String),
}

/// The payload fields an overflow count keeps: what kind of failure or refusal, not
/// whose (anything else — client, key, issuer, user, subject, a reason naming a key —
/// belonged to the first overflowing event alone), and the count's own fields.
const OVERFLOW_KEEPS: [&str; 7] = [
    "protocol",
    "code",
    "token_kind",
    "repeats",
    "first_repeat_at",
    "last_repeat_at",
    "window_secs",
];

struct Repeats {
    /// The first event in full, as the summary's template.
    first: Event,
    count: u64,
    first_repeat: Option<OffsetDateTime>,
    last_repeat: Option<OffsetDateTime>,
}

pub struct RepeatLog {
    journal: Arc<AuditJournal>,
    window: Mutex<HashMap<Key, Repeats>>,
    max_keys: usize,
}

impl RepeatLog {
    pub fn new(journal: Arc<AuditJournal>) -> Arc<Self> {
        Arc::new(Self {
            journal,
            window: Mutex::new(HashMap::new()),
            max_keys: MAX_KEYS,
        })
    }

    /// Records `event` (identified by `client` and `reason` with its kind): in full
    /// when it is the first of its key this window, else counted.
    pub fn record(&self, client: &str, reason: &str, event: Event) {
        // What tells failures apart beyond address and reason: the key or issuer they
        // named and the connection, so one flood does not hide another's failures.
        let named = ["key_id", "issuer", "connection", "fingerprint"]
            .iter()
            .filter_map(|k| event.payload.get(*k).and_then(|v| v.as_str()))
            .collect::<Vec<_>>()
            .join("|");
        let mut key = Key::One(format!("{}|{client}|{reason}|{named}", event.kind));
        let now = timefmt::now();
        let first = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            if window.len() >= self.max_keys && !window.contains_key(&key) {
                key = Key::Overflow(event.kind.clone());
            }
            match window.get_mut(&key) {
                Some(r) => {
                    r.count += 1;
                    r.first_repeat.get_or_insert(now);
                    r.last_repeat = Some(now);
                    None
                }
                None => {
                    window.insert(
                        key,
                        Repeats {
                            first: event.clone(),
                            count: 0,
                            first_repeat: None,
                            last_repeat: None,
                        },
                    );
                    Some(event)
                }
            }
        };
        if let Some(event) = first {
            self.journal.append_later(event);
        }
    }

    /// Ends the window: one summary per key that repeated.
    pub fn flush(&self) {
        let ended =
            std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, r) in ended {
            if r.count == 0 {
                continue;
            }
            let mut payload = r.first.payload.clone();
            payload["repeats"] = json!(r.count);
            payload["first_repeat_at"] = json!(r.first_repeat.map(timefmt::rfc3339));
            payload["last_repeat_at"] = json!(r.last_repeat.map(timefmt::rfc3339));
            payload["window_secs"] = json!(REPEAT_WINDOW.as_secs());
            let summary = if matches!(key, Key::Overflow(_)) {
                // Many clients' events: the first one's address, key or connection
                // would put all of them on it.
                if let Some(fields) = payload.as_object_mut() {
                    fields.retain(|k, _| OVERFLOW_KEEPS.contains(&k.as_str()));
                }
                payload["overflow"] = json!(true);
                payload["distinct_keys_kept"] = json!(self.max_keys);
                Event::new(&r.first.kind, payload)
            } else {
                let mut summary = Event::new(&r.first.kind, payload);
                summary.identity = r.first.identity.clone();
                summary.connection = r.first.connection.clone();
                summary
            };
            self.journal.append_later(summary);
        }
    }

    /// Ends a window every [`REPEAT_WINDOW`] until shutdown, and once more then.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REPEAT_WINDOW) => self.flush(),
                _ = shutdown.changed() => {
                    self.flush();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Beyond the distinct keys kept, events are counted per kind, and the count
    /// names no client: it is many clients' count.
    #[tokio::test]
    async fn an_overflow_count_names_no_client() {
        let dir = tempfile::tempdir().unwrap();
        let url = warden_store::testing::fresh_url(warden_store::Backend::Sqlite, dir.path())
            .await
            .unwrap();
        let key = warden_store::MasterKey::generate().unwrap();
        let store = Arc::new(warden_store::Store::open(&url, &key).await.unwrap());
        let journal = AuditJournal::open(&dir.path().join("j"), store.clone(), Default::default())
            .await
            .unwrap();
        let log = Arc::new(RepeatLog {
            journal: journal.clone(),
            window: Mutex::new(HashMap::new()),
            max_keys: 2,
        });
        for i in 0..5 {
            let client = format!("10.0.0.{i}:1234");
            let event = Event::new(
                "auth.failure",
                json!({"client": client, "code": "invalid_token", "issuer": format!("i{i}"),
                       "user": format!("u{i}"), "reason": format!("signing key `k{i}` unknown")}),
            );
            log.record(&client, "invalid_token", event);
        }
        log.flush();
        journal.ship_now().await.unwrap();
        let events = store
            .list_audit(&warden_store::audit::AuditFilter {
                kind: Some("auth.failure".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap();
        let payloads: Vec<&serde_json::Value> = events.iter().map(|e| &e.event.payload).collect();
        // Two kept in full, the first overflowing one in full, then one count of two.
        assert_eq!(payloads.len(), 4, "{payloads:?}");
        let summary = payloads[3];
        assert_eq!(summary["repeats"], 2);
        assert_eq!(summary["overflow"], true);
        assert!(summary.get("client").is_none() && summary.get("issuer").is_none());
        assert!(summary.get("reason").is_none() && summary.get("user").is_none());
        assert_eq!(summary["code"], "invalid_token");
    }
}
