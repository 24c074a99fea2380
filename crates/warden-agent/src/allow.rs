//! The agent's allowlist: which `host:port` targets it will dial for the gateway.
//!
//! An entry is `HOST[:PORTS]`. HOST is an address or a network (`10.0.0.5`,
//! `10.0.0.0/8`, `[fd00::/8]`), a name (`db.internal`) or every name under a domain
//! (`*.corp.example`); PORTS is a port, a range (`5432-5440`) or `*` (the default).
//! A target given by name is allowed when its name matches a name entry, or else for
//! those of its resolved addresses that match a network entry; the agent then
//! connects to exactly the addresses it checked, so a name cannot be re-resolved
//! somewhere else between the check and the dial. Nothing matches the unspecified
//! addresses (`0.0.0.0`, `::`). An empty allowlist allows nothing.

use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowlist entry `{entry}`: {reason}")]
pub struct AllowlistError {
    pub entry: String,
    pub reason: String,
}

/// Reads a list of networks (`10.1.0.0/16`, `192.0.2.7`, `fd00::/8`), as an agent's
/// registration limits where its tunnels may come from.
pub fn parse_networks<S: AsRef<str>>(list: &[S]) -> Result<Vec<IpNet>, String> {
    list.iter()
        .map(|s| {
            let s = s.as_ref().trim();
            s.parse::<IpNet>()
                .ok()
                .filter(|n| *n == n.trunc())
                .or_else(|| {
                    s.parse::<IpAddr>()
                        .ok()
                        .map(|ip| IpNet::from(ip.to_canonical()))
                })
                .ok_or_else(|| format!("`{s}` is not an address or a network (a.b.c.0/n)"))
        })
        .collect()
}

/// Whether `ip` is in one of `networks`.
pub fn in_networks(networks: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    networks.iter().any(|n| n.contains(&ip))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hosts {
    Net(IpNet),
    Name(String),
    /// `*.corp.example` kept as `.corp.example`.
    Under(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    low: u16,
    high: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    hosts: Hosts,
    ports: Ports,
}

/// The targets an agent may dial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowlist {
    entries: Vec<Entry>,
}

impl Allowlist {
    /// Reads entries; one bad entry refuses them all (an agent must not start with an
    /// allowlist other than the one its operator wrote).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowlistError> {
        let entries = entries
            .iter()
            .map(|e| parse_entry(e.as_ref().trim()))
            .collect::<Result<_, _>>()?;
        Ok(Self { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any address or network entry covers `port` (else a name that no
    /// name entry allows is not even looked up).
    pub fn has_networks_for(&self, port: u16) -> bool {
        self.entries
            .iter()
            .any(|e| e.ports.contains(port) && matches!(e.hosts, Hosts::Net(_)))
    }

    /// Whether a target named `host` (not an address) may be dialed on `port` by its
    /// name alone.
    pub fn allows_name(&self, host: &str, port: u16) -> bool {
        let host = normalize_name(host);
        if host.parse::<IpAddr>().is_ok() {
            return false;
        }
        self.entries.iter().any(|e| {
            e.ports.contains(port)
                && match &e.hosts {
                    Hosts::Name(n) => *n == host,
                    Hosts::Under(suffix) => host.ends_with(suffix.as_str()),
                    Hosts::Net(_) => false,
                }
        })
    }

    /// Whether address `ip` may be dialed on `port`.
    pub fn allows_addr(&self, ip: IpAddr, port: u16) -> bool {
        let ip = ip.to_canonical();
        if ip.is_unspecified() {
            return false;
        }
        self.entries.iter().any(|e| {
            e.ports.contains(port) && matches!(&e.hosts, Hosts::Net(net) if net.contains(&ip))
        })
    }
}

impl Ports {
    const ALL: Ports = Ports {
        low: 1,
        high: u16::MAX,
    };

    fn contains(self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

fn normalize_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn bad(entry: &str, reason: &str) -> AllowlistError {
    AllowlistError {
        entry: entry.to_string(),
        reason: reason.to_string(),
    }
}

fn parse_entry(entry: &str) -> Result<Entry, AllowlistError> {
    if entry.is_empty() {
        return Err(bad(entry, "empty"));
    }
    // `[v6 or v6 net]:ports`, `v6 net` (several colons, no port), or `host[:ports]`.
    let (host, ports) = if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(entry, "missing `]`"))?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad(entry, "expected `:PORTS` after `]`"))?,
                ),
            ),
        }
    } else if entry.matches(':').count() > 1 {
        (entry, None)
    } else {
        match entry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (entry, None),
        }
    };
    let ports = match ports {
        None | Some("*") => Ports::ALL,
        Some(p) => parse_ports(p).ok_or_else(|| bad(entry, "ports must be N, N-M or *"))?,
    };
    Ok(Entry {
        hosts: parse_hosts(host).ok_or_else(|| {
            bad(
                entry,
                "expected an address, a network (a.b.c.d/n), a name or *.domain",
            )
        })?,
        ports,
    })
}

fn parse_ports(p: &str) -> Option<Ports> {
    let (low, high) = match p.split_once('-') {
        Some((l, h)) => (l.parse().ok()?, h.parse().ok()?),
        None => {
            let port = p.parse().ok()?;
            (port, port)
        }
    };
    (low >= 1 && low <= high).then_some(Ports { low, high })
}

fn parse_hosts(host: &str) -> Option<Hosts> {
    if let Ok(net) = host.parse::<IpNet>() {
        // `10.0.0.5/8` is a typo or a misunderstanding: refused, not widened.
        return (net == net.trunc()).then_some(Hosts::Net(net));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(Hosts::Net(IpNet::from(ip.to_canonical())));
    }
    let (under, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let name = normalize_name(name);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    // A name whose last label is a number (`10.0.0`, `0x7f`) is an address to the
    // resolver: not a name entry.
    let numeric_tld = name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()) || tld.starts_with("0x"));
    if !valid || numeric_tld {
        return None;
    }
    Some(if under {
        Hosts::Under(format!(".{name}"))
    } else {
        Hosts::Name(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(entries).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn networks_and_ports() {
        let a = list(&["10.0.0.0/8:5432", "192.168.1.7:22", "[fd00::/8]:3306-3307"]);
        assert!(a.allows_addr(ip("10.1.2.3"), 5432));
        assert!(!a.allows_addr(ip("10.1.2.3"), 5433));
        assert!(!a.allows_addr(ip("11.0.0.1"), 5432));
        assert!(a.allows_addr(ip("192.168.1.7"), 22));
        assert!(!a.allows_addr(ip("192.168.1.8"), 22));
        assert!(a.allows_addr(ip("fd00::1"), 3307));
        assert!(!a.allows_addr(ip("fd00::1"), 3308));
        // An IPv4 address written as IPv6 is the IPv4 address.
        assert!(a.allows_addr(ip("::ffff:10.0.0.1"), 5432));
        assert!(!a.allows_name("10.1.2.3", 5432));
    }

    #[test]
    fn names_are_exact_or_under_a_domain() {
        let a = list(&["db.internal:5432", "*.corp.example"]);
        assert!(a.allows_name("db.internal", 5432));
        assert!(a.allows_name("DB.Internal.", 5432));
        assert!(!a.allows_name("db.internal", 22));
        assert!(!a.allows_name("x.db.internal", 5432));
        assert!(a.allows_name("a.corp.example", 22));
        assert!(a.allows_name("b.a.corp.example", 22));
        assert!(!a.allows_name("corp.example", 22));
        assert!(!a.allows_name("evilcorp.example", 22));
        assert!(!a.allows_addr(ip("10.0.0.1"), 5432));
    }

    #[test]
    fn unspecified_and_empty_allow_nothing() {
        let a = list(&["0.0.0.0/0", "::/0"]);
        assert!(a.allows_addr(ip("8.8.8.8"), 1));
        assert!(!a.allows_addr(ip("0.0.0.0"), 5432));
        assert!(!a.allows_addr(ip("::"), 5432));
        let none = list(&[]);
        assert!(none.is_empty());
        assert!(!none.allows_addr(ip("127.0.0.1"), 5432));
        assert!(!none.allows_name("localhost", 5432));
    }

    #[test]
    fn bad_entries_are_refused() {
        for entry in [
            "",
            "10.0.0.0/33",
            "host:0",
            "host:9-1",
            "host:x",
            "[fd00::1",
            "[fd00::1]5432",
            "bad host",
            "a..b",
            "*.",
            "*",
            "10.0.0.5/8",
            "10.0.0",
            "db.0x7f",
        ] {
            assert!(
                Allowlist::parse(&[entry]).is_err(),
                "{entry:?} was accepted"
            );
        }
    }
}
