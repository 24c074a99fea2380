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
            Action::Kube(request)
                if request.subresource.eq_ignore_ascii_case("portforward")
                    && !self.port_forwarding =>
            {
                Decision::Deny {
                    rule: format!("{}.port_forwarding", self.kind.as_str()),
                    reason: "port forwarding is not allowed on this connection".into(),
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
