//! A map shared by all sessions of a listener.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// What a listener's sessions register for one another: the cancel keys the
/// PostgreSQL proxy hands out, the connection ids the MySQL proxy does, each mapped
/// to the server session behind it. A poisoned lock reads as empty (nothing found)
/// rather than taking the listener down.
#[derive(Debug)]
pub struct SessionRegistry<K, V>(Arc<Mutex<HashMap<K, V>>>);

impl<K, V> Clone for SessionRegistry<K, V> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<K, V> Default for SessionRegistry<K, V> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(HashMap::new())))
    }
}

impl<K: Eq + Hash, V: Clone> SessionRegistry<K, V> {
    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, value);
        }
    }

    /// Inserts `value` under a key drawn from `draw` that no entry holds (drawn
    /// again while taken) and returns the key: unique by construction, so one
    /// session's entry never overwrites another's, however the keys are drawn.
    pub fn insert_unique(&self, mut draw: impl FnMut() -> K, value: V) -> K
    where
        K: Clone,
    {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            let key = draw();
            if !m.contains_key(&key) {
                m.insert(key.clone(), value);
                return key;
            }
        }
    }

    pub fn remove(&self, key: &K) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(key);
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.0.lock().ok().and_then(|m| m.get(key).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_map() {
        let a: SessionRegistry<u32, String> = SessionRegistry::default();
        let b = a.clone();
        a.insert(7, "seven".into());
        assert_eq!(b.get(&7).as_deref(), Some("seven"));
        b.remove(&7);
        assert_eq!(a.get(&7), None);
    }

    #[test]
    fn unique_keys_never_overwrite_even_when_draws_collide() {
        let map: SessionRegistry<u32, &str> = SessionRegistry::default();
        // A draw that repeats itself: 1, 1, 1, 2, 2, 3.
        let mut draws = [1, 1, 1, 2, 2, 3].into_iter();
        let mut draw = || draws.next().unwrap();
        assert_eq!(map.insert_unique(&mut draw, "a"), 1);
        assert_eq!(map.insert_unique(&mut draw, "b"), 2);
        assert_eq!(map.insert_unique(&mut draw, "c"), 3);
        assert_eq!(map.get(&1), Some("a"));
        assert_eq!(map.get(&2), Some("b"));
    }
}
