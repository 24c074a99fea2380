//! The SAML login's short-lived state, in memory: logins started and not finished,
//! answers finished and not yet collected, and the replay cache. Every map is bounded;
//! unauthenticated clients fill the first one, so it is also bounded per client and per
//! client network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// Entries one client may hold in an [`Expiring`] map: an IPv4 address, or an IPv6
/// /64 (one host usually holds a whole /64).
pub const MAX_PER_CLIENT: usize = 32;
/// Entries one client network may hold: an IPv4 /24 or an IPv6 /48 (what one site or
/// subscriber is usually given).
pub const MAX_PER_NETWORK: usize = 256;

/// A counted range: its first address and prefix length.
type Range = (IpAddr, u8);

/// The ranges a client counts against, each with its limit.
fn ranges(ip: IpAddr) -> [(Range, usize); 2] {
    let v6 = |a: std::net::Ipv6Addr, bits: u8| {
        let mask = !0u128 << (128 - u32::from(bits));
        (IpAddr::V6((u128::from(a) & mask).into()), bits)
    };
    match ip {
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => ranges(IpAddr::V4(v4)),
            None => [(v6(a, 64), MAX_PER_CLIENT), (v6(a, 48), MAX_PER_NETWORK)],
        },
        IpAddr::V4(a) => [
            ((IpAddr::V4(a), 32), MAX_PER_CLIENT),
            (
                (IpAddr::V4((u32::from(a) & 0xffff_ff00).into()), 24),
                MAX_PER_NETWORK,
            ),
        ],
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
    per_client: HashMap<Range, usize>,
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
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.entries.len() >= self.max {
            purge(&mut inner, now);
        }
        if inner.entries.len() >= self.max {
            return Err(Full::Total);
        }
        if let Some(ip) = client {
            if at_limit(&inner, ip) {
                purge(&mut inner, now);
            }
            if at_limit(&inner, ip) {
                return Err(Full::Client);
            }
            for (range, _) in ranges(ip) {
                *inner.per_client.entry(range).or_insert(0) += 1;
            }
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
        let mut inner = self.lock();
        let full =
            |i: &Inner<V>| i.entries.len() >= self.max || client.is_some_and(|ip| at_limit(i, ip));
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

/// Whether `ip` or its network holds its limit.
fn at_limit<V>(inner: &Inner<V>, ip: IpAddr) -> bool {
    ranges(ip)
        .iter()
        .any(|(range, max)| inner.per_client.get(range).copied().unwrap_or(0) >= *max)
}

fn release<V>(inner: &mut Inner<V>, client: Option<IpAddr>) {
    let Some(ip) = client else { return };
    for (range, _) in ranges(ip) {
        if let Some(held) = inner.per_client.get_mut(&range) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                inner.per_client.remove(&range);
            }
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

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `key` was recorded and has not expired.
    pub fn seen(&self, key: &str, now: SystemTime) -> bool {
        self.lock().get(key).is_some_and(|t| *t > now)
    }

    /// Records every key until its time, all or none: `Client` when one was seen
    /// before, `Total` when the cache is full of unexpired ids (fail closed: nothing is
    /// accepted that might be a replay).
    pub fn record_all(&self, keys: &[(String, SystemTime)], now: SystemTime) -> Result<(), Full> {
        let mut seen = self.lock();
        if keys
            .iter()
            .any(|(k, _)| seen.get(k).is_some_and(|t| *t > now))
        {
            return Err(Full::Client);
        }
        if seen.len() + keys.len() > self.max {
            seen.retain(|_, t| *t > now);
        }
        if seen.len() + keys.len() > self.max {
            return Err(Full::Total);
        }
        for (k, until) in keys {
            seen.insert(k.clone(), *until);
        }
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
        assert_eq!(ranges(mapped), ranges("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_network_is_bounded_beyond_its_clients() {
        let map = Expiring::new(10_000);
        let mut n = 0;
        // Eight /64s of one /48, 32 each: the /48's 256 places.
        for net in 0..8 {
            for host in 0..MAX_PER_CLIENT {
                let ip: IpAddr = format!("2001:db8:0:{net:x}::{:x}", host + 1)
                    .parse()
                    .unwrap();
                map.insert(n.to_string(), n, Duration::from_secs(60), Some(ip))
                    .unwrap();
                n += 1;
            }
        }
        let same_48: IpAddr = "2001:db8:0:ff::1".parse().unwrap();
        assert_eq!(
            map.insert("x".into(), 0, Duration::from_secs(60), Some(same_48)),
            Err(Full::Client)
        );
        assert!(map.has_room(Some("2001:db8:1::1".parse().unwrap())));
        // The same for an IPv4 /24.
        let v4 = Expiring::new(10_000);
        for i in 0..MAX_PER_NETWORK {
            let ip: IpAddr = format!("10.0.0.{}", i / MAX_PER_CLIENT).parse().unwrap();
            v4.insert(i.to_string(), i, Duration::from_secs(60), Some(ip))
                .unwrap();
        }
        assert!(!v4.has_room(Some("10.0.0.200".parse().unwrap())));
        assert!(v4.has_room(Some("10.0.1.1".parse().unwrap())));
        // Taking one frees its place in both counts.
        v4.take("0");
        assert!(v4.has_room(Some("10.0.0.200".parse().unwrap())));
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
        let cache = ReplayCache::new(3);
        let now = SystemTime::now();
        let later = now + Duration::from_secs(60);
        let one = |k: &str| vec![(k.to_string(), later)];
        assert!(cache.record_all(&one("a"), now).is_ok());
        assert!(cache.seen("a", now));
        assert_eq!(cache.record_all(&one("a"), now), Err(Full::Client));
        // All or none: a seen id keeps the new one beside it out.
        let pair = vec![("b".to_string(), later), ("a".to_string(), later)];
        assert_eq!(cache.record_all(&pair, now), Err(Full::Client));
        assert!(!cache.seen("b", now));
        // After its expiry the id is gone (an expired assertion is refused anyway).
        assert!(!cache.seen("a", later));
        assert!(cache.record_all(&one("a"), later).is_ok());
        assert!(cache.record_all(&one("b"), now).is_ok());
        assert!(cache.record_all(&one("c"), now).is_ok());
        assert_eq!(cache.record_all(&one("d"), now), Err(Full::Total));
    }
}
