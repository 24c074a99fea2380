//! What a configuration change takes away: the protections an old connection or
//! policy set had that the new one lacks, each named in words an admin reads in the
//! `policy.weakened` event and the API answer. Every matcher is monotone (one more
//! statement kind, glob, pattern, detector or column matches more), so anything but
//! an addition can match less and is reported. Over-reporting a harmless edit costs a
//! glance; missing a weakening costs an incident.

use warden_core::{Connection, TlsMode};

use crate::spec::{Fallback, GuardrailSet, MaskingSet, RuleAction, RuleSpec};

fn fallback_rank(f: Fallback) -> u8 {
    match f {
        Fallback::Deny => 2,
        Fallback::Review => 1,
        Fallback::Allow => 0,
    }
}

fn action_rank(a: RuleAction) -> u8 {
    match a {
        RuleAction::Deny => 1,
        RuleAction::Review => 0,
    }
}

fn tls_rank(m: TlsMode) -> u8 {
    match m {
        TlsMode::Verify => 2,
        TlsMode::Insecure => 1,
        TlsMode::Disable => 0,
    }
}

fn as_str<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// `what: x, y dropped` for entries of `old` missing from `new`.
fn dropped<T: PartialEq + std::fmt::Display>(
    what: &str,
    old: &[T],
    new: &[T],
    out: &mut Vec<String>,
) {
    let gone: Vec<String> = old
        .iter()
        .filter(|o| !new.contains(o))
        .map(|o| format!("`{o}`"))
        .collect();
    if gone.is_empty() {
        return;
    }
    let emptied = if new.is_empty() { " (now empty)" } else { "" };
    out.push(format!("{what}: {} removed{emptied}", gone.join(", ")));
}

fn turned_off(what: &str, old: bool, new: bool, out: &mut Vec<String>) {
    if old && !new {
        out.push(format!("{what} turned off"));
    }
}

fn turned_on(what: &str, old: bool, new: bool, out: &mut Vec<String>) {
    if !old && new {
        out.push(format!("{what} turned on"));
    }
}

/// What `new` no longer protects that `old` did, for one connection.
pub fn connection_weakening(old: &Connection, new: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    if old.kind != new.kind {
        out.push(format!(
            "kind changed from {} to {}: rules written for one protocol may not apply to the other",
            old.kind, new.kind
        ));
    }
    if old.target != new.target {
        out.push(format!(
            "target changed from {} to {}: the held credential is sent there",
            old.target, new.target
        ));
    }
    if old.agent != new.agent {
        let route = |a: &Option<String>| {
            a.as_ref().map_or("the gateway directly".to_string(), |a| {
                format!("agent `{a}`")
            })
        };
        out.push(format!(
            "the route changed from {} to {}: the held credential and every session cross that path",
            route(&old.agent),
            route(&new.agent)
        ));
    }
    if old.username != new.username {
        out.push(format!(
            "username changed from {:?} to {:?}: sessions run with that account's privileges",
            old.username, new.username
        ));
    }
    let (o, n) = (&old.policies, &new.policies);
    // The first set that names a column or detector decides its style: a set added
    // or moved ahead of another can reveal what that one masked.
    let kept: Vec<&String> = o.masking.iter().filter(|m| n.masking.contains(m)).collect();
    let kept_new: Vec<&String> = n.masking.iter().filter(|m| o.masking.contains(m)).collect();
    if kept != kept_new || n.masking.iter().any(|m| !o.masking.contains(m)) {
        out.push(format!(
            "policies.masking changed from {:?} to {:?}: a set added or moved ahead may decide a column's or detector's style first",
            o.masking, n.masking
        ));
    }
    dropped(
        "policies.guardrails",
        &o.guardrails,
        &n.guardrails,
        &mut out,
    );
    dropped("policies.masking", &o.masking, &n.masking, &mut out);
    dropped("policies.reviews", &o.reviews, &n.reviews, &mut out);
    turned_on(
        "policies.verbatim_statements (statement text no longer masked in the record)",
        o.verbatim_statements,
        n.verbatim_statements,
        &mut out,
    );
    let (o, n) = (&old.access, &new.access);
    turned_off(
        "access.request_required",
        o.request_required,
        n.request_required,
        &mut out,
    );
    if n.approvals < o.approvals {
        out.push(format!(
            "access.approvals lowered from {} to {}",
            o.approvals, n.approvals
        ));
    }
    let added: Vec<&String> = n
        .reviewers
        .iter()
        .filter(|g| !o.reviewers.contains(g))
        .collect();
    if !added.is_empty() || (!o.reviewers.is_empty() && n.reviewers.is_empty()) {
        out.push(format!(
            "access.reviewers widened from {:?} to {:?} (empty: the admin groups)",
            o.reviewers, n.reviewers
        ));
    }
    if n.max_duration_secs > o.max_duration_secs {
        out.push(format!(
            "access.max_duration_secs raised from {} to {}",
            o.max_duration_secs, n.max_duration_secs
        ));
    }
    if n.reuse_approved_reviews && n.review_timeout_secs > o.review_timeout_secs {
        out.push(format!(
            "access.review_timeout_secs raised from {} to {} (approved reviews stay reusable longer)",
            o.review_timeout_secs, n.review_timeout_secs
        ));
    }
    turned_on(
        "access.reuse_approved_reviews",
        o.reuse_approved_reviews,
        n.reuse_approved_reviews,
        &mut out,
    );
    let added: Vec<&String> = new
        .allowed_groups
        .iter()
        .filter(|g| !old.allowed_groups.contains(g))
        .collect();
    if !added.is_empty() {
        out.push(format!("allowed_groups: {added:?} added"));
    }
    let (o, n) = (&old.ssh, &new.ssh);
    match (&o.host_key, &n.host_key) {
        (Some(_), None) => out.push("ssh.host_key unpinned".into()),
        (Some(a), Some(b)) if a != b => out.push("ssh.host_key replaced by another key".into()),
        _ => {}
    }
    turned_on(
        "ssh.trust_on_first_use",
        o.trust_on_first_use,
        n.trust_on_first_use,
        &mut out,
    );
    turned_on(
        "ssh.port_forwarding",
        o.port_forwarding,
        n.port_forwarding,
        &mut out,
    );
    let (o, n) = (&old.kubernetes, &new.kubernetes);
    turned_off(
        "kubernetes.impersonate (requests run with the held credential's rights, not the person's)",
        o.impersonate,
        n.impersonate,
        &mut out,
    );
    turned_on(
        "kubernetes.port_forwarding",
        o.port_forwarding,
        n.port_forwarding,
        &mut out,
    );
    turned_on(
        "kubernetes.reveal_secrets (Secret values no longer masked)",
        o.reveal_secrets,
        n.reveal_secrets,
        &mut out,
    );
    if old.http.credential_header != new.http.credential_header {
        out.push(format!(
            "http.credential_header changed from {:?} to {:?}: the held credential goes in another header",
            old.http.credential_header, new.http.credential_header
        ));
    }
    let (o, n) = (&old.tls, &new.tls);
    if tls_rank(n.mode) < tls_rank(o.mode) {
        out.push(format!(
            "tls.mode lowered from {} to {}",
            as_str(&o.mode),
            as_str(&n.mode)
        ));
    } else if n.mode != TlsMode::Disable {
        if o.ca_pem != n.ca_pem {
            out.push("tls.ca_pem: the trusted CA changed".into());
        }
        if o.server_name != n.server_name {
            out.push("tls.server_name changed".into());
        }
    }
    out
}

fn rule_weakening(set: &str, o: &RuleSpec, n: &RuleSpec, out: &mut Vec<String>) {
    let what = |field: &str| format!("{set}: rule `{}` {field}", o.name);
    if action_rank(n.action) < action_rank(o.action) {
        out.push(format!(
            "{set}: rule `{}` action lowered from {} to {}",
            o.name,
            as_str(&o.action),
            as_str(&n.action)
        ));
    }
    dropped(
        &what("sql_statements"),
        &o.sql_statements,
        &n.sql_statements,
        out,
    );
    dropped(
        &what("sql_write_tables"),
        &o.sql_write_tables,
        &n.sql_write_tables,
        out,
    );
    dropped(
        &what("sql_functions"),
        &o.sql_functions,
        &n.sql_functions,
        out,
    );
    dropped(&what("shell"), &o.shell, &n.shell, out);
    dropped(&what("http"), &o.http, &n.http, out);
    dropped(&what("kubernetes"), &o.kubernetes, &n.kubernetes, out);
    turned_off(
        &what("sql_unbounded_writes"),
        o.sql_unbounded_writes,
        n.sql_unbounded_writes,
        out,
    );
    turned_off(
        &what("sql_read_only"),
        o.sql_read_only,
        n.sql_read_only,
        out,
    );
}

/// What `new` no longer guards that `old` did, for one guardrail (or review) set.
pub fn guardrail_weakening(old: &GuardrailSet, new: &GuardrailSet) -> Vec<String> {
    let mut out = Vec::new();
    let set = &old.name;
    for (field, o, n) in [
        ("unparsable_sql", old.unparsable_sql, new.unparsable_sql),
        (
            "unparsable_shell",
            old.unparsable_shell,
            new.unparsable_shell,
        ),
    ] {
        if fallback_rank(n) < fallback_rank(o) {
            out.push(format!(
                "{set}: {field} relaxed from {} to {}",
                as_str(&o),
                as_str(&n)
            ));
        }
    }
    if old.default_schema != new.default_schema {
        out.push(format!(
            "{set}: default_schema changed from {:?} to {:?} (unqualified tables match differently)",
            old.default_schema, new.default_schema
        ));
    }
    for o in &old.rules {
        match new.rules.iter().find(|n| n.name == o.name) {
            None => out.push(format!("{set}: rule `{}` removed", o.name)),
            Some(n) => rule_weakening(set, o, n, &mut out),
        }
    }
    out
}

/// What `new` no longer masks that `old` did, for one masking set.
pub fn masking_weakening(old: &MaskingSet, new: &MaskingSet) -> Vec<String> {
    let mut out = Vec::new();
    let set = &old.name;
    let detectors = |s: &MaskingSet| s.detectors.iter().map(as_str).collect::<Vec<_>>();
    dropped(
        &format!("{set}: detectors"),
        &detectors(old),
        &detectors(new),
        &mut out,
    );
    if old.style != new.style {
        out.push(format!(
            "{set}: style changed from {} to {}",
            old.style, new.style
        ));
    }
    for o in &old.custom {
        match new.custom.iter().find(|n| n.name == o.name) {
            None => out.push(format!("{set}: custom detector `{}` removed", o.name)),
            Some(n) if n.regex != o.regex => {
                out.push(format!("{set}: custom detector `{}` regex changed", o.name));
            }
            Some(n)
                if n.style.as_deref().unwrap_or(&new.style)
                    != o.style.as_deref().unwrap_or(&old.style) =>
            {
                out.push(format!("{set}: custom detector `{}` style changed", o.name));
            }
            Some(_) => {}
        }
    }
    for o in &old.columns {
        match new.columns.iter().find(|n| n.pattern == o.pattern) {
            None => out.push(format!("{set}: column rule `{}` removed", o.pattern)),
            Some(n)
                if n.style.as_deref().unwrap_or("full") != o.style.as_deref().unwrap_or("full") =>
            {
                out.push(format!("{set}: column rule `{}` style changed", o.pattern));
            }
            Some(_) => {}
        }
    }
    // The first column rule matching a column decides it, and content detectors are
    // then not run on it: a rule added, or moved ahead, that shows more than `full`
    // or `null` can reveal what detectors masked.
    let order = |s: &MaskingSet| {
        s.columns
            .iter()
            .map(|c| c.pattern.clone())
            .collect::<Vec<_>>()
    };
    let (old_order, new_order) = (order(old), order(new));
    let kept_new: Vec<&String> = new_order.iter().filter(|p| old_order.contains(p)).collect();
    let kept_old: Vec<&String> = old_order.iter().filter(|p| new_order.contains(p)).collect();
    if kept_new != kept_old {
        out.push(format!(
            "{set}: column rules reordered (the first match decides)"
        ));
    }
    for n in &new.columns {
        if !old_order.contains(&n.pattern) && !strict(n.style.as_deref().unwrap_or("full")) {
            out.push(format!(
                "{set}: column rule `{}` added with style {} (detectors no longer run on what it matches)",
                n.pattern,
                n.style.as_deref().unwrap_or("full")
            ));
        }
    }
    // A set's style decides a detector's style when it is the first set of a
    // connection naming it: detectors added under a revealing style can override a
    // stricter set's.
    if !strict(&new.style) {
        let added: Vec<String> = detectors(new)
            .into_iter()
            .filter(|d| !detectors(old).contains(d))
            .collect();
        if !added.is_empty() {
            out.push(format!(
                "{set}: detectors {added:?} added with style {} (it may take precedence over a stricter set)",
                new.style
            ));
        }
    }
    for n in &new.custom {
        let style = n.style.as_deref().unwrap_or(&new.style);
        if !old.custom.iter().any(|o| o.name == n.name) && !strict(style) {
            out.push(format!(
                "{set}: custom detector `{}` added with style {style}",
                n.name
            ));
        }
    }
    out
}

/// Styles that reveal nothing of a value.
fn strict(style: &str) -> bool {
    matches!(style, "full" | "null")
}

#[cfg(test)]
#[path = "weaken_tests.rs"]
mod tests;
