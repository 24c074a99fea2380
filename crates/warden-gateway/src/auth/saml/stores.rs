//! The SAML login's short-lived state, in memory: logins started and not finished,
//! answers finished and not yet collected, and the replay cache. Every map is bounded;
//! unauthenticated clients fill the first one, so it is also bounded per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Entries a single client address may hold in a [`Expiring`] map.
pub const MAX_PER_CLIENT: usize = 32;

/// The client a limit counts: an IPv4 address, or an IPv6 address's /64 (one host
/// usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// Why an entry was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The map holds its maximum.
    Total,
    /// This client address holds its maximum.
    Client,
}

struct Entry<V> {
    value: V,
    until: Instant,
    client: Option<IpAddr>,
}

struct Inner<V> {
    entries: HashMap<String, Entry<V>>,
    per_client: HashMap<IpAddr, usize>,
}

/// One-time entries that expire: stored once, taken once.
pub struct Expiring<V> {
    inner: Mutex<Inner<V>>,
    max: usize,
}

impl<V> Expiring<V> {
    pub fn new(max: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                per_client: HashMap::new(),
            }),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `value` under `key` for `ttl`, counted against `client` when given.
    pub fn insert(
        &self,
        key: String,
        value: V,
        ttl: Duration,
        client: Option<IpAddr>,
    ) -> Result<(), Full> {
        let client = client.map(client_key);
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.entries.len() >= self.max {
            purge(&mut inner, now);
        }
        if inner.entries.len() >= self.max {
            return Err(Full::Total);
        }
        if let Some(ip) = client {
            if inner.per_client.get(&ip).copied().unwrap_or(0) >= MAX_PER_CLIENT {
                purge(&mut inner, now);
            }
            let held = inner.per_client.entry(ip).or_insert(0);
            if *held >= MAX_PER_CLIENT {
                return Err(Full::Client);
            }
            *held += 1;
        }
        let entry = Entry {
            value,
            until: now + ttl,
            client,
        };
        if let Some(old) = inner.entries.insert(key, entry) {
            release(&mut inner, old.client);
        }
        Ok(())
    }

    /// Takes the entry under `key`, if it is there and has not expired.
    pub fn take(&self, key: &str) -> Option<V> {
        let mut inner = self.lock();
        let entry = inner.entries.remove(key)?;
        release(&mut inner, entry.client);
        (entry.until > Instant::now()).then_some(entry.value)
    }

    /// A copy of the unexpired entry under `key`, left in place.
    pub fn get(&self, key: &str) -> Option<V>
    where
        V: Clone,
    {
        self.lock()
            .entries
            .get(key)
            .filter(|e| e.until > Instant::now())
            .map(|e| e.value.clone())
    }

    /// Whether an entry for `client` would be stored now (expired entries are dropped
    /// to make room).
    pub fn has_room(&self, client: Option<IpAddr>) -> bool {
        let client = client.map(client_key);
        let mut inner = self.lock();
        let full = |i: &Inner<V>| {
            i.entries.len() >= self.max
                || client
                    .is_some_and(|ip| i.per_client.get(&ip).copied().unwrap_or(0) >= MAX_PER_CLIENT)
        };
        if full(&inner) {
            purge(&mut inner, Instant::now());
        }
        !full(&inner)
    }

    /// Whether an unexpired entry is under `key` (left in place).
    pub fn contains(&self, key: &str) -> bool {
        self.lock()
            .entries
            .get(key)
            .is_some_and(|e| e.until > Instant::now())
    }
}

fn release<V>(inner: &mut Inner<V>, client: Option<IpAddr>) {
    if let Some(ip) = client
        && let Some(held) = inner.per_client.get_mut(&ip)
    {
        *held = held.saturating_sub(1);
        if *held == 0 {
            inner.per_client.remove(&ip);
        }
    }
}

fn purge<V>(inner: &mut Inner<V>, now: Instant) {
    let expired: Vec<String> = inner
        .entries
        .iter()
        .filter(|(_, e)| e.until <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for key in expired {
        if let Some(e) = inner.entries.remove(&key) {
            release(inner, e.client);
        }
    }
}

/// Ids of responses and assertions already used, until they would have expired anyway.
pub struct ReplayCache {
    seen: Mutex<HashMap<String, SystemTime>>,
    max: usize,
}

impl ReplayCache {
    pub fn new(max: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Records `key` until `until`; false when it was seen before, or when the cache
    /// is full of unexpired ids (fail closed: nothing is accepted that might be a replay).
    pub fn first_use(&self, key: String, until: SystemTime, now: SystemTime) -> Result<(), Full> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(&key).is_some_and(|t| *t > now) {
            return Err(Full::Client);
        }
        if seen.len() >= self.max {
            seen.retain(|_, t| *t > now);
        }
        if seen.len() >= self.max {
            return Err(Full::Total);
        }
        seen.insert(key, until);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_taken_once_and_bounded_per_client() {
        let map = Expiring::new(100);
        let ip: IpAddr = [10, 0, 0, 1].into();
        for i in 0..MAX_PER_CLIENT {
            assert!(
                map.insert(i.to_string(), i, Duration::from_secs(60), Some(ip))
                    .is_ok()
            );
        }
        assert_eq!(
            map.insert("x".into(), 0, Duration::from_secs(60), Some(ip)),
            Err(Full::Client)
        );
        let other: IpAddr = [10, 0, 0, 2].into();
        assert!(
            map.insert("y".into(), 1, Duration::from_secs(60), Some(other))
                .is_ok()
        );
        assert!(!map.has_room(Some(ip)));
        assert!(map.has_room(Some(other)));
        assert_eq!(map.get("3"), Some(3), "looked at, left in place");
        assert_eq!(map.take("3"), Some(3));
        assert_eq!(map.take("3"), None);
        // Taking one frees a place for its client.
        assert!(
            map.insert("x".into(), 0, Duration::from_secs(60), Some(ip))
                .is_ok()
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_64() {
        let map = Expiring::new(1000);
        for i in 0..MAX_PER_CLIENT {
            let ip: IpAddr = format!("2001:db8::{:x}", i + 1).parse().unwrap();
            map.insert(i.to_string(), i, Duration::from_secs(60), Some(ip))
                .unwrap();
        }
        let same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let other_64: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(!map.has_room(Some(same_64)));
        assert!(map.has_room(Some(other_64)));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn expired_entries_are_not_taken_and_make_room() {
        let map = Expiring::new(2);
        map.insert("a".into(), 1, Duration::ZERO, None).unwrap();
        map.insert("b".into(), 2, Duration::ZERO, None).unwrap();
        assert_eq!(map.take("a"), None);
        map.insert("c".into(), 3, Duration::from_secs(60), None)
            .unwrap();
        map.insert("d".into(), 4, Duration::from_secs(60), None)
            .unwrap();
        assert_eq!(
            map.insert("e".into(), 5, Duration::from_secs(60), None),
            Err(Full::Total)
        );
    }

    #[test]
    fn replays_are_caught_until_expiry_and_a_full_cache_refuses() {
        let cache = ReplayCache::new(2);
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        assert!(cache.first_use("a".into(), later, now).is_ok());
        assert!(cache.first_use("a".into(), later, now).is_err());
        // After its expiry the id is gone (an expired assertion is refused anyway).
        assert!(cache.first_use("a".into(), later, later).is_ok());
        assert!(cache.first_use("b".into(), later, now).is_ok());
        assert_eq!(cache.first_use("c".into(), later, now), Err(Full::Total));
    }
}
