//! How many client connections a listener holds at once: in all, per client address,
//! and — across every listener of the process — within the open-files budget, so a
//! flood of sockets is refused at the door while the connections already in (and the
//! store, journal and recordings) keep the descriptors they need.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Limits of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections the listener holds at once (0: no limit of its own).
    pub max_per_listener: usize,
    /// Connections one client address holds at once (0: no limit).
    pub max_per_client: usize,
}

/// Connections the whole process may hold, from its open-files limit.
#[derive(Debug)]
pub struct DescriptorBudget {
    max: usize,
    open: AtomicUsize,
}

impl DescriptorBudget {
    /// Each client connection costs about `per_connection` descriptors (its socket,
    /// the target's, a recording); `reserved` stay for everything else.
    pub fn new(open_files_limit: u64, per_connection: usize, reserved: usize) -> Arc<Self> {
        let limit = usize::try_from(open_files_limit).unwrap_or(usize::MAX);
        // A small limit keeps half for connections rather than none.
        let reserved = reserved.min(limit / 2);
        Arc::new(Self {
            max: limit.saturating_sub(reserved) / per_connection.max(1),
            open: AtomicUsize::new(0),
        })
    }

    /// Connections it allows at once.
    pub fn max(&self) -> usize {
        self.max
    }
}

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    Listener(usize),
    Client(usize),
    Descriptors(usize),
}

impl Overload {
    /// Short stable name, for events.
    pub fn code(self) -> &'static str {
        match self {
            Overload::Listener(_) => "listener_full",
            Overload::Client(_) => "client_limit",
            Overload::Descriptors(_) => "descriptors_low",
        }
    }
}

impl fmt::Display for Overload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overload::Listener(n) => {
                write!(
                    f,
                    "too many connections: this listener holds its limit of {n}"
                )
            }
            Overload::Client(n) => write!(
                f,
                "too many connections from your address: its limit is {n} at once"
            ),
            Overload::Descriptors(n) => write!(
                f,
                "too many connections: the gateway holds the {n} its open-files limit allows"
            ),
        }
    }
}

/// One listener's door.
#[derive(Debug)]
pub struct ConnectionGate {
    limits: ConnectionLimits,
    budget: Arc<DescriptorBudget>,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionGate {
    pub fn new(limits: ConnectionLimits, budget: Arc<DescriptorBudget>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            budget,
            open: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a connection from `client` in, or says why not. The permit gives its
    /// place back when dropped.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<Permit, Overload> {
        let client = client_key(client);
        let mut per_client = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let from_client = per_client.get(&client).copied().unwrap_or(0);
        if self.limits.max_per_client > 0 && from_client >= self.limits.max_per_client {
            return Err(Overload::Client(self.limits.max_per_client));
        }
        if self.limits.max_per_listener > 0
            && self.open.load(Ordering::SeqCst) >= self.limits.max_per_listener
        {
            return Err(Overload::Listener(self.limits.max_per_listener));
        }
        if self
            .budget
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.budget.max).then_some(n + 1)
            })
            .is_err()
        {
            return Err(Overload::Descriptors(self.budget.max));
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        per_client.insert(client, from_client + 1);
        Ok(Permit {
            gate: self.clone(),
            client,
        })
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Who a connection counts against: an IPv4 address (IPv4-mapped IPv6 included), or
/// an IPv6 /64 — what one client usually holds, so a /64 cannot multiply its share.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

/// A connection's place in its listener; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<ConnectionGate>,
    client: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per_client = self
            .gate
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match per_client.get_mut(&self.client) {
            Some(n) if *n > 1 => *n -= 1,
            _ => {
                per_client.remove(&self.client);
            }
        }
        self.gate.open.fetch_sub(1, Ordering::SeqCst);
        self.gate.budget.open.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn each_limit_refuses_with_its_reason_and_places_come_back() {
        let budget = DescriptorBudget::new(30, 3, 15);
        assert_eq!(budget.max(), 5);
        let gate = ConnectionGate::new(
            ConnectionLimits {
                max_per_listener: 4,
                max_per_client: 2,
            },
            budget.clone(),
        );
        let a1 = gate.admit(ip(1)).unwrap();
        let _a2 = gate.admit(ip(1)).unwrap();
        assert_eq!(gate.admit(ip(1)).unwrap_err(), Overload::Client(2));
        let _b1 = gate.admit(ip(2)).unwrap();
        let _b2 = gate.admit(ip(2)).unwrap();
        assert_eq!(gate.admit(ip(3)).unwrap_err(), Overload::Listener(4));
        drop(a1);
        let _c = gate.admit(ip(3)).unwrap();
        // Another listener shares the process's budget.
        // One IPv6 /64 is one client; an IPv4-mapped address is its IPv4 address.
        let v6 = ConnectionGate::new(
            ConnectionLimits {
                max_per_listener: 0,
                max_per_client: 1,
            },
            DescriptorBudget::new(1 << 20, 1, 0),
        );
        let _a = v6.admit("2001:db8::1".parse().unwrap()).unwrap();
        assert!(v6.admit("2001:db8::ffff:2".parse().unwrap()).is_err());
        let _m = v6.admit("10.9.9.9".parse().unwrap()).unwrap();
        assert!(v6.admit("::ffff:10.9.9.9".parse().unwrap()).is_err());
        let other = ConnectionGate::new(
            ConnectionLimits {
                max_per_listener: 0,
                max_per_client: 0,
            },
            budget,
        );
        let _d = other.admit(ip(4)).unwrap();
        assert_eq!(other.admit(ip(5)).unwrap_err(), Overload::Descriptors(5));
        assert_eq!(gate.open(), 4);
    }
}
