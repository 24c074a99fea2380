//! The rules a connection's own settings add to its guardrails: the database a MySQL
//! session is pinned to, whether SSH and Kubernetes port forwarding is allowed, and the protocol
//! features Warden never relays. Proxies ask for all of them as [`Action`]s, so each
//! refusal is a decision like any other: audited, and in the recording.

use warden_core::{Action, ConnectionKind, Decision, Guard, SqlDialect};

use crate::sql;

/// A connection's guard: its own settings first, then its guardrail sets.
pub struct ConnectionGuard<G> {
    inner: G,
    kind: ConnectionKind,
    /// MySQL: the only database `COM_INIT_DB` and `USE` may switch to.
    database_pin: Option<String>,
    /// SSH: whether `direct-tcpip` channels (`ssh -L`) may be opened.
    port_forwarding: bool,
}

/// The rule name of a database pin's refusals.
pub const DATABASE_PIN_RULE: &str = "connection-database";

impl<G: Guard> ConnectionGuard<G> {
    pub fn new(
        inner: G,
        kind: ConnectionKind,
        database_pin: Option<String>,
        port_forwarding: bool,
    ) -> Self {
        Self {
            inner,
            kind,
            database_pin: database_pin.filter(|d| !d.is_empty()),
            port_forwarding,
        }
    }

    fn pin_refusal(&self, pin: &str) -> Decision {
        Decision::Deny {
            rule: DATABASE_PIN_RULE.into(),
            reason: format!("this connection is limited to the database `{pin}`"),
        }
    }

    /// `USE` statements inside a MySQL query must name the pinned database.
    fn check_use(&self, dialect: SqlDialect, text: &str) -> Option<Decision> {
        let pin = self.database_pin.as_deref()?;
        // Cheap test first: no `use` anywhere, no USE statement.
        if !text
            .as_bytes()
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"use"))
        {
            return None;
        }
        match sql::used_databases(dialect, text) {
            Ok(names) => names
                .iter()
                .any(|n| n != pin)
                .then(|| self.pin_refusal(pin)),
            // The guardrails decide unparsable text; with a pin it is refused here
            // too, since a USE could hide in it.
            Err(e) => Some(Decision::Deny {
                rule: DATABASE_PIN_RULE.into(),
                reason: format!(
                    "this connection is limited to the database `{pin}`, and the statement cannot be checked ({e})"
                ),
            }),
        }
    }
}

impl<G: Guard> Guard for ConnectionGuard<G> {
    fn decide(&self, action: &Action<'_>) -> Decision {
        match action {
            Action::UseDatabase { name } => match self.database_pin.as_deref() {
                Some(pin) if *name != pin => self.pin_refusal(pin),
                _ => self.inner.decide(action),
            },
            Action::Sql { dialect, text } if dialect.is_mysql_family() => {
                let decision = self.inner.decide(action);
                if matches!(decision, Decision::Deny { .. }) {
                    return decision;
                }
                self.check_use(*dialect, text).unwrap_or(decision)
            }
            Action::Forward { .. } if !self.port_forwarding => Decision::Deny {
                rule: format!("{}.port_forwarding", self.kind.as_str()),
                reason: "port forwarding is not allowed on this connection".into(),
            },
            // The kubelet's API behind a node proxy runs commands in any pod (`exec`,
            // `run`) around every rule: never relayed.
            Action::Kube(request) if reaches_kubelet(request) => Decision::Deny {
                rule: format!("{}.node_proxy", self.kind.as_str()),
                reason: "the node proxy reaches the kubelet API (exec, run, logs of any pod) around Warden's rules".into(),
            },
            // Port-forwards and the pod and service proxies open the cluster's ports
            // to the client.
            Action::Kube(request) if reaches_ports(request) && !self.port_forwarding => {
                Decision::Deny {
                    rule: format!("{}.port_forwarding", self.kind.as_str()),
                    reason: "port forwarding (and the pod and service proxies) is not allowed on this connection".into(),
                }
            }
            Action::Feature { name } => Decision::Deny {
                rule: format!("{}.{name}", self.kind.as_str()),
                reason: format!("{} is not allowed through Warden", name.replace('_', " ")),
            },
            _ => self.inner.decide(action),
        }
    }
}

/// A request to a node's proxy subresource (or the legacy `/proxy/nodes/` form).
fn reaches_kubelet(request: &warden_core::KubeRequest) -> bool {
    request.resource.eq_ignore_ascii_case("nodes")
        && (request.subresource.eq_ignore_ascii_case("proxy")
            || request.verb.eq_ignore_ascii_case("proxy"))
}

/// A port-forward, or a pod or service proxy request.
fn reaches_ports(request: &warden_core::KubeRequest) -> bool {
    let proxied = request.subresource.eq_ignore_ascii_case("proxy")
        || request.verb.eq_ignore_ascii_case("proxy");
    (request.resource.eq_ignore_ascii_case("pods")
        && request.subresource.eq_ignore_ascii_case("portforward"))
        || (proxied
            && (request.resource.eq_ignore_ascii_case("pods")
                || request.resource.eq_ignore_ascii_case("services")))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AllowAll;
    impl Guard for AllowAll {
        fn decide(&self, _: &Action<'_>) -> Decision {
            Decision::Allow
        }
    }

    fn pinned() -> ConnectionGuard<AllowAll> {
        ConnectionGuard::new(AllowAll, ConnectionKind::Mysql, Some("app".into()), false)
    }

    fn denied(d: Decision) -> bool {
        matches!(d, Decision::Deny { .. })
    }

    #[test]
    fn the_pin_covers_init_db_and_use_in_any_spelling() {
        let g = pinned();
        assert_eq!(
            g.decide(&Action::UseDatabase { name: "app" }),
            Decision::Allow
        );
        assert!(denied(g.decide(&Action::UseDatabase { name: "mysql" })));
        for sql in [
            "USE mysql",
            "use `mysql`",
            "SELECT 1; USE mysql",
            "/* x */ USE mysql",
            "USE `my``sql`",
        ] {
            let d = g.decide(&Action::Sql {
                dialect: SqlDialect::Mysql,
                text: sql,
            });
            assert!(denied(d), "{sql}");
        }
        for sql in ["USE app", "use `app`", "SELECT * FROM users"] {
            let d = g.decide(&Action::Sql {
                dialect: SqlDialect::Mysql,
                text: sql,
            });
            assert_eq!(d, Decision::Allow, "{sql}");
        }
    }

    #[test]
    fn features_and_forwards_are_decisions() {
        let g = ConnectionGuard::new(AllowAll, ConnectionKind::Ssh, None, false);
        let d = g.decide(&Action::Forward {
            host: "db",
            port: 5432,
        });
        assert!(matches!(d, Decision::Deny { rule, .. } if rule == "ssh.port_forwarding"));
        let d = g.decide(&Action::Feature {
            name: "agent_forwarding",
        });
        assert!(matches!(d, Decision::Deny { rule, .. } if rule == "ssh.agent_forwarding"));
        let open = ConnectionGuard::new(AllowAll, ConnectionKind::Ssh, None, true);
        assert_eq!(
            open.decide(&Action::Forward {
                host: "db",
                port: 5432
            }),
            Decision::Allow
        );
        // Kubernetes: the kubelet's proxy never; ports only when allowed.
        let kube = |resource: &str, sub: &str, verb: &str| warden_core::KubeRequest {
            verb: verb.into(),
            resource: resource.into(),
            subresource: sub.into(),
            ..Default::default()
        };
        let k8s = ConnectionGuard::new(AllowAll, ConnectionKind::Kubernetes, None, true);
        for r in [kube("nodes", "proxy", "get"), kube("nodes", "", "proxy")] {
            assert!(matches!(k8s.decide(&Action::Kube(&r)),
                Decision::Deny { rule, .. } if rule == "kubernetes.node_proxy"));
        }
        let closed = ConnectionGuard::new(AllowAll, ConnectionKind::Kubernetes, None, false);
        for r in [
            kube("pods", "portforward", "create"),
            kube("pods", "proxy", "get"),
            kube("services", "proxy", "create"),
            kube("services", "", "proxy"),
        ] {
            assert!(matches!(closed.decide(&Action::Kube(&r)),
                Decision::Deny { rule, .. } if rule == "kubernetes.port_forwarding"));
            assert_eq!(k8s.decide(&Action::Kube(&r)), Decision::Allow);
        }
        assert_eq!(
            closed.decide(&Action::Kube(&kube("pods", "log", "get"))),
            Decision::Allow
        );
        // Without a pin, USE is the guardrails' to decide.
        let free = ConnectionGuard::new(AllowAll, ConnectionKind::Mysql, None, false);
        assert_eq!(
            free.decide(&Action::Sql {
                dialect: SqlDialect::Mysql,
                text: "USE mysql"
            }),
            Decision::Allow
        );
    }
}
