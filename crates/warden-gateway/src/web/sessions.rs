//! Console sessions. The cookie holds only a random name for a session; the
//! credential it stands for (an OIDC access token with its refresh token, or an API
//! key) stays in the gateway's memory, and every request checks it again exactly as
//! the API checks a bearer token. So a revoked key ends its console sessions at once.
//! Each session has its own CSRF token, which every request made with the cookie must
//! carry in a header a page of another site cannot set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warden_core::Secret;

use super::random_token;

/// Why a cookie does not stand for a usable session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the console session has ended; log in again")]
    Ended,
    #[error("the request lacks this session's CSRF token")]
    Csrf,
}

impl SessionError {
    pub fn code(self) -> &'static str {
        match self {
            SessionError::Ended => "session_ended",
            SessionError::Csrf => "csrf_failed",
        }
    }
}

struct Entry {
    token: Secret<String>,
    refresh: Option<Secret<String>>,
    csrf: String,
    subject: String,
    created: Instant,
    last_used: Instant,
    /// Held while the token is renewed, so one request renews and the others wait
    /// for its result instead of racing it.
    renewal: Arc<tokio::sync::Mutex<()>>,
    /// When renewal last failed for want of the provider: requests that waited for
    /// it answer at once instead of each trying again.
    renewal_failed: Option<Instant>,
}

/// Sessions one subject may hold at once; beyond, that subject's least recently used
/// ends (so nobody's logins can push everyone else's sessions out).
pub const MAX_PER_SUBJECT: usize = 20;

/// What a request made with a session's cookie may use.
pub struct Current {
    pub token: Secret<String>,
    pub subject: String,
    pub refresh: Option<Secret<String>>,
    pub renewal: Arc<tokio::sync::Mutex<()>>,
    pub renewal_failed: Option<Instant>,
}

pub struct SessionStore {
    sessions: Mutex<HashMap<[u8; 32], Entry>>,
    idle: Duration,
    max_age: Duration,
    max: usize,
}

fn key(cookie: &str) -> [u8; 32] {
    super::sha256(cookie.as_bytes())
}

impl SessionStore {
    pub fn new(idle: Duration, max_age: Duration, max: usize) -> Self {
        Self {
            sessions: Mutex::new(HashMap::new()),
            idle,
            max_age,
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for a checked credential. At the limit, the least recently
    /// used session ends to make room.
    pub fn create(
        &self,
        token: Secret<String>,
        refresh: Option<Secret<String>>,
        subject: &str,
    ) -> Option<Secret<String>> {
        let cookie = random_token(32)?;
        let csrf = random_token(32)?;
        let now = Instant::now();
        let mut sessions = self.lock();
        self.drop_stale(&mut sessions, now);
        let least_recently_used = |sessions: &HashMap<[u8; 32], Entry>, subject: Option<&str>| {
            sessions
                .iter()
                .filter(|(_, e)| subject.is_none_or(|s| e.subject == s))
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
        };
        while sessions.values().filter(|e| e.subject == subject).count() >= MAX_PER_SUBJECT {
            let Some(oldest) = least_recently_used(&sessions, Some(subject)) else {
                break;
            };
            sessions.remove(&oldest);
        }
        while sessions.len() >= self.max {
            let Some(oldest) = least_recently_used(&sessions, None) else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions.insert(
            key(&cookie),
            Entry {
                token,
                refresh,
                csrf,
                subject: subject.to_string(),
                created: now,
                last_used: now,
                renewal: Arc::new(tokio::sync::Mutex::new(())),
                renewal_failed: None,
            },
        );
        Some(Secret::new(cookie))
    }

    fn drop_stale(&self, sessions: &mut HashMap<[u8; 32], Entry>, now: Instant) {
        sessions.retain(|_, e| !self.is_stale(e, now));
    }

    fn is_stale(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.last_used) >= self.idle
            || now.duration_since(e.created) >= self.max_age
    }

    /// The session a cookie names, checked against the CSRF token the request carries
    /// (`None`: the gateway's own second look, after the first was checked).
    pub fn use_session(&self, cookie: &str, csrf: Option<&str>) -> Result<Current, SessionError> {
        let now = Instant::now();
        let mut sessions = self.lock();
        let k = key(cookie);
        let Some(entry) = sessions.get_mut(&k) else {
            return Err(SessionError::Ended);
        };
        if self.is_stale(entry, now) {
            sessions.remove(&k);
            return Err(SessionError::Ended);
        }
        if let Some(presented) = csrf
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                presented.as_bytes(),
                entry.csrf.as_bytes(),
            )
            .is_err()
        {
            return Err(SessionError::Csrf);
        }
        entry.last_used = now;
        Ok(Current {
            token: entry.token.clone(),
            subject: entry.subject.clone(),
            refresh: entry.refresh.clone(),
            renewal: entry.renewal.clone(),
            renewal_failed: entry.renewal_failed,
        })
    }

    /// The CSRF token of a live session (for the page that reads it once).
    pub fn csrf_of(&self, cookie: &str) -> Option<String> {
        let sessions = self.lock();
        sessions
            .get(&key(cookie))
            .filter(|e| !self.is_stale(e, Instant::now()))
            .map(|e| e.csrf.clone())
    }

    /// Stores renewed tokens (a provider may or may not rotate the refresh token).
    pub fn renewed(&self, cookie: &str, token: Secret<String>, refresh: Option<Secret<String>>) {
        if let Some(entry) = self.lock().get_mut(&key(cookie)) {
            entry.token = token;
            entry.renewal_failed = None;
            if refresh.is_some() {
                entry.refresh = refresh;
            }
        }
    }

    /// Notes that renewal failed because the provider could not be reached.
    pub fn renewal_failed(&self, cookie: &str) {
        if let Some(entry) = self.lock().get_mut(&key(cookie)) {
            entry.renewal_failed = Some(Instant::now());
        }
    }

    /// Ends a session; returns its subject when there was one.
    pub fn remove(&self, cookie: &str) -> Option<String> {
        self.lock().remove(&key(cookie)).map(|e| e.subject)
    }

    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max: usize) -> SessionStore {
        SessionStore::new(Duration::from_secs(60), Duration::from_secs(600), max)
    }

    #[test]
    fn a_session_needs_its_own_csrf_token() {
        let s = store(10);
        let a = s
            .create(Secret::new("tok-a".into()), None, "alice")
            .unwrap();
        let b = s.create(Secret::new("tok-b".into()), None, "bob").unwrap();
        let cur = s
            .use_session(a.expose(), Some(&s.csrf_of(a.expose()).unwrap()))
            .unwrap();
        assert_eq!(cur.token.expose(), "tok-a");
        assert_eq!(
            s.use_session(a.expose(), Some(&s.csrf_of(b.expose()).unwrap()))
                .err(),
            Some(SessionError::Csrf)
        );
        assert_eq!(
            s.use_session(a.expose(), Some("")).err(),
            Some(SessionError::Csrf)
        );
        assert_eq!(
            s.use_session("not-a-session", Some(&s.csrf_of(a.expose()).unwrap()))
                .err(),
            Some(SessionError::Ended)
        );
    }

    #[test]
    fn the_least_recently_used_session_makes_room_and_logout_ends_one() {
        let s = store(2);
        let a = s.create(Secret::new("a".into()), None, "a").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = s.create(Secret::new("b".into()), None, "b").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        s.use_session(a.expose(), None).unwrap();
        let _c = s.create(Secret::new("c".into()), None, "c").unwrap();
        assert_eq!(s.count(), 2);
        assert!(s.use_session(b.expose(), None).is_err());
        assert_eq!(s.remove(a.expose()).as_deref(), Some("a"));
        assert!(s.use_session(a.expose(), None).is_err());
    }

    #[test]
    fn idle_sessions_end() {
        let s = SessionStore::new(Duration::from_millis(20), Duration::from_secs(60), 10);
        let a = s.create(Secret::new("a".into()), None, "a").unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            s.use_session(a.expose(), None).err(),
            Some(SessionError::Ended)
        );
    }

    #[test]
    fn renewed_tokens_replace_the_old_ones() {
        let s = store(10);
        let a = s
            .create(Secret::new("a".into()), Some(Secret::new("r".into())), "a")
            .unwrap();
        let first = s.use_session(a.expose(), None).unwrap();
        assert_eq!(
            first.refresh.map(|r| r.expose().clone()).as_deref(),
            Some("r")
        );
        s.renewed(a.expose(), Secret::new("a2".into()), None);
        let cur = s.use_session(a.expose(), None).unwrap();
        assert_eq!(cur.token.expose(), "a2");
        assert_eq!(
            cur.refresh.map(|r| r.expose().clone()).as_deref(),
            Some("r")
        );
    }

    #[test]
    fn one_subject_cannot_push_out_everyone_elses_sessions() {
        let s = store(MAX_PER_SUBJECT + 5);
        let other = s.create(Secret::new("o".into()), None, "admin").unwrap();
        let first = s.create(Secret::new("m0".into()), None, "mallory").unwrap();
        for i in 1..MAX_PER_SUBJECT * 3 {
            s.create(Secret::new(format!("m{i}")), None, "mallory")
                .unwrap();
        }
        assert!(s.use_session(other.expose(), None).is_ok());
        assert!(s.use_session(first.expose(), None).is_err());
        assert_eq!(s.count(), MAX_PER_SUBJECT + 1);
    }
}
