//! Kubernetes request patterns: `VERBS RESOURCE [in NAMESPACE] [named NAME]`, matched
//! against the request as the API server reads it ([`KubeRequest`]).
//!
//! - `VERBS`: `*` or a comma list of API verbs (`get,list,watch`, `delete`, `create`);
//!   `get` also covers `list` and `watch`, `delete` covers `deletecollection`,
//!   `update` covers `patch`.
//! - `RESOURCE`: `*` (everything, subresources included), `pods`, `pods/exec`,
//!   `pods/*` (every subresource of pods), `deployments.apps`, `*.apps`. Without a
//!   group the resource matches in any group. `pods` alone does not cover its
//!   subresources, as in RBAC.
//! - `in NAMESPACE`, `named NAME`: globs. A request that reaches many objects (a list,
//!   a watch, a deletecollection, a request across all namespaces) reaches the ones a
//!   pattern names too, so it matches: a deny rule cannot be walked around by asking
//!   for everything.

use warden_core::KubeRequest;

use crate::glob;

/// A compiled Kubernetes request pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubePattern {
    verbs: Option<Vec<String>>,
    resource: String,
    group: Option<String>,
    subresource: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
}

impl KubePattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("kubernetes pattern `{text}`: {why}");
        let mut words = text.split_whitespace();
        let verbs = words.next().ok_or_else(|| bad("empty"))?;
        let resource = words
            .next()
            .ok_or_else(|| bad("must be `VERBS RESOURCE [in NAMESPACE] [named NAME]`"))?;
        let mut namespace = None;
        let mut name = None;
        while let Some(word) = words.next() {
            let value = words
                .next()
                .ok_or_else(|| bad(&format!("`{word}` needs a value")))?;
            let slot = match word {
                "in" => &mut namespace,
                "named" => &mut name,
                other => {
                    return Err(bad(&format!(
                        "unknown word `{other}` (use `in` or `named`)"
                    )));
                }
            };
            if slot.replace(value.to_ascii_lowercase()).is_some() {
                return Err(bad(&format!("`{word}` given twice")));
            }
        }
        let verbs = (verbs != "*").then(|| {
            verbs
                .split(',')
                .filter(|v| !v.is_empty())
                .map(str::to_ascii_lowercase)
                .collect::<Vec<_>>()
        });
        if verbs.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad("no verb"));
        }
        let resource = resource.to_ascii_lowercase();
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) if !r.is_empty() && !s.is_empty() && !s.contains('/') => {
                (r.to_string(), Some(s.to_string()))
            }
            Some(_) => return Err(bad("the resource must be `resource[.group][/subresource]`")),
            None => (resource, None),
        };
        let (resource, group) = match resource.split_once('.') {
            Some((r, g)) if !r.is_empty() && !g.is_empty() => (r.to_string(), Some(g.to_string())),
            Some(_) => return Err(bad("the resource must be `resource[.group][/subresource]`")),
            None => (resource, None),
        };
        Ok(Self {
            verbs,
            resource,
            group,
            subresource,
            namespace,
            name,
        })
    }

    pub fn matches(&self, request: &KubeRequest) -> bool {
        if request.resource.is_empty() {
            // URLs that name no resource are matched by `http` rules.
            return false;
        }
        if let Some(verbs) = &self.verbs
            && !verbs.iter().any(|v| covers(v, &request.verb))
        {
            return false;
        }
        let lower = |s: &str| s.to_ascii_lowercase();
        if !glob::matches(&self.resource, &lower(&request.resource)) {
            return false;
        }
        if let Some(group) = &self.group
            && !glob::matches(group, &lower(&request.group))
        {
            return false;
        }
        // `*` alone covers subresources; a named resource covers only itself unless
        // the pattern names a subresource.
        let subresource_ok = match &self.subresource {
            None => {
                request.subresource.is_empty() || (self.resource == "*" && self.group.is_none())
            }
            Some(s) => {
                !request.subresource.is_empty() && glob::matches(s, &lower(&request.subresource))
            }
        };
        if !subresource_ok {
            return false;
        }
        let collection = request.name.is_empty();
        if let Some(ns) = &self.namespace {
            let across_namespaces = request.namespace.is_empty() && collection;
            if !across_namespaces && !glob::matches(ns, &lower(&request.namespace)) {
                return false;
            }
        }
        if let Some(name) = &self.name
            && !collection
            && !glob::matches(name, &lower(&request.name))
        {
            return false;
        }
        true
    }
}

/// Whether a pattern's verb covers a request's: a verb also names those that do the
/// same thing to many objects at once or by another method — `get` covers `list`
/// and `watch` (they return the same objects), `delete` covers `deletecollection`,
/// `update` covers `patch` — so a deny rule cannot be walked around by asking the
/// other way. (RBAC keeps them apart; a guardrail must not.)
fn covers(pattern: &str, verb: &str) -> bool {
    let verb = verb.to_ascii_lowercase();
    pattern == verb
        || matches!(
            (pattern, verb.as_str()),
            ("get", "list" | "watch") | ("delete", "deletecollection") | ("update", "patch")
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(verb: &str, resource: &str, sub: &str, ns: &str, name: &str) -> KubeRequest {
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        KubeRequest {
            method: "GET".into(),
            path: "/".into(),
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn p(text: &str) -> KubePattern {
        KubePattern::parse(text).unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn verbs_resources_and_groups() {
        let del = p("delete namespaces");
        assert!(del.matches(&req("delete", "namespaces", "", "prod", "prod")));
        assert!(!del.matches(&req("get", "namespaces", "", "prod", "prod")));
        let deploy = p("delete deployments.apps in prod");
        assert!(deploy.matches(&req("delete", "deployments.apps", "", "prod", "web")));
        assert!(!deploy.matches(&req("delete", "deployments.apps", "", "dev", "web")));
        assert!(!deploy.matches(&req("delete", "deployments.other", "", "prod", "web")));
        let any_group = p("list secrets");
        assert!(any_group.matches(&req("list", "secrets", "", "default", "")));
        assert!(!any_group.matches(&req("watch", "secrets", "", "default", "")));
        // A verb covers the ways to do the same to many objects, or by another method.
        let reads = p("get secrets");
        for verb in ["get", "list", "watch"] {
            assert!(
                reads.matches(&req(verb, "secrets", "", "prod", "")),
                "{verb}"
            );
        }
        assert!(p("delete deployments.apps").matches(&req(
            "deletecollection",
            "deployments.apps",
            "",
            "prod",
            ""
        )));
        assert!(p("update deployments").matches(&req(
            "patch",
            "deployments.apps",
            "",
            "prod",
            "x"
        )));
        assert!(!p("list secrets").matches(&req("get", "secrets", "", "prod", "x")));
    }

    #[test]
    fn subresources_follow_rbac() {
        let exec = p("create pods/exec in prod");
        assert!(exec.matches(&req("create", "pods", "exec", "prod", "web")));
        assert!(!exec.matches(&req("create", "pods", "", "prod", "web")));
        assert!(!p("create pods").matches(&req("create", "pods", "exec", "prod", "web")));
        assert!(p("* pods/*").matches(&req("get", "pods", "log", "a", "web")));
        assert!(p("* *").matches(&req("create", "pods", "attach", "a", "web")));
    }

    #[test]
    fn requests_that_reach_many_objects_match_named_patterns() {
        let named = p("get,list,watch secrets in prod named db-*");
        assert!(named.matches(&req("get", "secrets", "", "prod", "db-main")));
        assert!(!named.matches(&req("get", "secrets", "", "prod", "web")));
        // A list in the namespace, or across all of them, reaches db-main too.
        assert!(named.matches(&req("list", "secrets", "", "prod", "")));
        assert!(named.matches(&req("list", "secrets", "", "", "")));
        assert!(!named.matches(&req("list", "secrets", "", "dev", "")));
        // A cluster-scoped object with a name is in no namespace.
        assert!(!p("get nodes in prod").matches(&req("get", "nodes", "", "", "n1")));
    }

    #[test]
    fn bad_patterns_say_why() {
        for bad in [
            "",
            "delete",
            "delete pods/",
            "delete .apps",
            "get pods in",
            "get pods at x",
            "get pods in a in b",
            ", pods",
        ] {
            assert!(KubePattern::parse(bad).is_err(), "{bad}");
        }
    }
}
