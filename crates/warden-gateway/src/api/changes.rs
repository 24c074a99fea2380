//! What a create or update changes, field by field, and the `dry_run` query the
//! admin API's create and update routes take (connections, API keys, policy sets,
//! webhooks): the same checks and the same answer, marked `"dry_run": true`, with
//! nothing stored and no event recorded.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// `?dry_run=true`: check and describe the change without making it.
/// Other parameters are refused (`?dryrun=true` must not quietly make the change).
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DryRun {
    /// Check the request and answer with what it would change; nothing is stored.
    #[serde(default)]
    pub dry_run: bool,
}

/// The routes that honour `dry_run` (their handlers take [`DryRun`]).
fn takes_dry_run(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    matches!(
        (method, parts.as_slice()),
        (
            &Method::POST,
            ["", "api", "connections" | "webhooks" | "api-keys"]
        ) | (&Method::PATCH, ["", "api", "connections" | "webhooks", _])
            | (&Method::PUT, ["", "api", "policies", _, _])
    )
}

/// Refuses a change that asks for a dry run (or something spelt like one) where none
/// is offered: a route that ignored it would make the change the caller meant only to
/// check.
pub async fn refuse_unhonoured_dry_run(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let changing = !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let asks = req.uri().query().is_some_and(|q| {
        q.split('&').any(|pair| {
            let key: String = pair
                .split('=')
                .next()
                .unwrap_or_default()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            key.contains("dryrun") || key == "dry"
        })
    });
    if changing && asks && !takes_dry_run(req.method(), req.uri().path()) {
        return super::ApiError::bad_request(
            "dry_run_unsupported",
            "this route has no dry run; nothing was done",
        )
        .into_response();
    }
    next.run(req).await
}

/// One changed value: its dotted path (`policies.masking`, `tls.mode`) with the value
/// before and after (`null` where there was or will be none).
#[derive(Serialize, Debug, PartialEq, utoipa::ToSchema)]
pub struct FieldChange {
    pub field: String,
    #[schema(value_type = Object)]
    pub before: Value,
    #[schema(value_type = Object)]
    pub after: Value,
}

/// The leaves that differ between two JSON documents. Objects are compared key by
/// key (a missing key and `null` are the same); arrays and scalars are compared whole.
pub fn changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    diff("", before, after, &mut out);
    out
}

fn diff(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                let none = Value::Null;
                diff(
                    &field,
                    b.get(key).unwrap_or(&none),
                    a.get(key).unwrap_or(&none),
                    out,
                );
            }
        }
        // Lists of named things (a set's rules, detectors): compared name by name.
        (Value::Array(b), Value::Array(a)) if b != a => match (named(b), named(a)) {
            (Some(bm), Some(am)) => {
                // Order decides (the first matching rule wins): a reordering is a
                // change even when every item stays the same.
                let order = |items: &[Value], other: &serde_json::Map<String, Value>| {
                    items
                        .iter()
                        .filter_map(|i| i.get("name")?.as_str())
                        .filter(|n| other.contains_key(*n))
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                };
                let (was, now) = (order(b, &am), order(a, &bm));
                if was != now {
                    out.push(FieldChange {
                        field: format!("{path} (order)"),
                        before: json!(was),
                        after: json!(now),
                    });
                }
                diff(path, &Value::Object(bm), &Value::Object(am), out);
            }
            _ => out.push(FieldChange {
                field: path.to_string(),
                before: Value::Array(b.clone()),
                after: Value::Array(a.clone()),
            }),
        },
        // A document that appears or goes (a create) is listed field by field, and a
        // list of named things item by item; inside, a value that appears or goes is
        // one change.
        (Value::Null, Value::Array(a)) if !a.is_empty() && named(a).is_some() => {
            diff(path, &Value::Array(Vec::new()), after, out)
        }
        (Value::Array(b), Value::Null) if !b.is_empty() && named(b).is_some() => {
            diff(path, before, &Value::Array(Vec::new()), out)
        }
        (Value::Object(_), Value::Null) if path.is_empty() => {
            diff(path, before, &Value::Object(Default::default()), out)
        }
        (Value::Null, Value::Object(_)) if path.is_empty() => {
            diff(path, &Value::Object(Default::default()), after, out)
        }
        (b, a) if b == a => {}
        (b, a) => out.push(FieldChange {
            field: path.to_string(),
            before: b.clone(),
            after: a.clone(),
        }),
    }
}

/// A list whose items are objects with distinct `name`s, keyed by name.
fn named(items: &[Value]) -> Option<serde_json::Map<String, Value>> {
    let mut map = serde_json::Map::new();
    for item in items {
        let name = item.get("name")?.as_str()?;
        if map.insert(name.to_string(), item.clone()).is_some() {
            return None;
        }
    }
    Some(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_leaves_are_named() {
        let before = json!({"target": "a:1", "tls": {"mode": "verify", "ca_pem": null},
                            "policies": {"masking": ["pii"]}, "description": "x"});
        let after = json!({"target": "a:1", "tls": {"mode": "disable"},
                           "policies": {"masking": ["pii", "cards"]}, "agent": "edge"});
        let got: Vec<(String, Value, Value)> = changes(&before, &after)
            .into_iter()
            .map(|c| (c.field, c.before, c.after))
            .collect();
        assert_eq!(
            got,
            vec![
                ("agent".into(), Value::Null, json!("edge")),
                ("description".into(), json!("x"), Value::Null),
                (
                    "policies.masking".into(),
                    json!(["pii"]),
                    json!(["pii", "cards"])
                ),
                ("tls.mode".into(), json!("verify"), json!("disable")),
            ]
        );
        assert!(changes(&before, &before).is_empty());
    }

    #[test]
    fn named_rules_are_compared_by_name() {
        let before =
            json!({"rules": [{"name": "a", "action": "deny"}, {"name": "b", "action": "review"}]});
        let after =
            json!({"rules": [{"name": "b", "action": "deny"}, {"name": "c", "action": "deny"}]});
        let fields: Vec<String> = changes(&before, &after)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["rules.a", "rules.b.action", "rules.c"]);
        // The same rules in another order: the order changed.
        let swapped =
            json!({"rules": [{"name": "b", "action": "review"}, {"name": "a", "action": "deny"}]});
        let got = changes(&before, &swapped);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].field, "rules (order)");
        assert_eq!(
            (&got[0].before, &got[0].after),
            (&json!(["a", "b"]), &json!(["b", "a"]))
        );
        // Unnamed lists change whole.
        let fields: Vec<String> = changes(&json!({"g": ["x"]}), &json!({"g": ["y"]}))
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, ["g"]);
    }
}
