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
/// Distinct keys kept per window; beyond them, further keys are counted under one
/// `overflow` key, so memory stays bounded under a flood from many addresses.
const MAX_KEYS: usize = 10_000;

struct Repeats {
    /// The first event in full, as the summary's template.
    first: Event,
    count: u64,
    first_repeat: Option<OffsetDateTime>,
    last_repeat: Option<OffsetDateTime>,
}

pub struct RepeatLog {
    journal: Arc<AuditJournal>,
    window: Mutex<HashMap<String, Repeats>>,
}

impl RepeatLog {
    pub fn new(journal: Arc<AuditJournal>) -> Arc<Self> {
        Arc::new(Self {
            journal,
            window: Mutex::new(HashMap::new()),
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
        let mut key = format!("{}|{client}|{reason}|{named}", event.kind);
        let now = timefmt::now();
        let first = {
            let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            if window.len() >= MAX_KEYS && !window.contains_key(&key) {
                key = format!("{}|overflow", event.kind);
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
            self.journal.append_later(&event);
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
            if key.ends_with("|overflow") {
                payload["overflow"] = json!(true);
            }
            let mut summary = Event::new(&r.first.kind, payload);
            summary.identity = r.first.identity.clone();
            summary.connection = r.first.connection.clone();
            self.journal.append_later(&summary);
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
