//! Masking the values of Kubernetes Secrets in API answers: `data` (base64, replaced
//! by the base64 of `[masked]` so clients still decode it), `stringData`, and the
//! copy `kubectl apply` keeps in the last-applied annotation. Key names, types and
//! metadata stay, so `kubectl get`, `describe` and `apply` still work.

use serde_json::{Map, Value};

/// What a masked value reads as.
pub const MASKED: &str = "[masked]";
/// `MASKED`, base64-encoded, for `data` values (clients decode them).
const MASKED_BASE64: &str = "W21hc2tlZF0=";
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Masks every Secret in a JSON answer. With `secrets_request` (the request named the
/// `secrets` resource), every object holding `data` or `stringData` is taken for a
/// Secret: list items and table rows carry no `kind`. Returns whether anything changed.
pub fn mask(value: &mut Value, secrets_request: bool) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            let is_secret = map.get("kind").and_then(Value::as_str) == Some("Secret");
            if is_secret
                || (secrets_request && (map.contains_key("data") || map.contains_key("stringData")))
            {
                changed |= mask_secret(map);
            } else if secrets_request && map.contains_key("metadata") {
                // Metadata-only answers (`as=PartialObjectMetadata`, table rows) still
                // carry the last-applied copy of the values.
                changed |= mask_last_applied(map);
            }
            for (key, child) in map.iter_mut() {
                // A Secret's own fields are done; its metadata may hold the annotation,
                // handled above.
                if (is_secret || secrets_request) && matches!(key.as_str(), "data" | "stringData") {
                    continue;
                }
                changed |= mask(child, secrets_request);
            }
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, v| mask(v, secrets_request) | changed),
        _ => false,
    }
}

/// Masks one Secret object's values.
fn mask_secret(secret: &mut Map<String, Value>) -> bool {
    let mut changed = false;
    for (field, masked) in [("data", MASKED_BASE64), ("stringData", MASKED)] {
        match secret.get_mut(field) {
            Some(Value::Object(values)) => {
                for v in values.values_mut() {
                    if !v.is_null() {
                        *v = Value::String(masked.to_string());
                        changed = true;
                    }
                }
            }
            Some(Value::Null) | None => {}
            // Not the shape a Secret has: nothing of it is shown.
            Some(other) => {
                *other = Value::String(masked.to_string());
                changed = true;
            }
        }
    }
    changed | mask_last_applied(secret)
}

/// Masks the values in the copy `kubectl apply` keeps in an object's annotations.
fn mask_last_applied(object: &mut Map<String, Value>) -> bool {
    let Some(Value::Object(annotations)) = object
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
    else {
        return false;
    };
    let Some(Value::String(applied)) = annotations.get_mut(LAST_APPLIED) else {
        return false;
    };
    *applied = match serde_json::from_str::<Value>(applied) {
        Ok(Value::Object(mut copy)) => {
            mask_secret(&mut copy);
            Value::Object(copy).to_string()
        }
        _ => MASKED.to_string(),
    };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn masks_secrets_wherever_they_appear() {
        let mut one = json!({"kind": "Secret", "apiVersion": "v1",
            "metadata": {"name": "db", "annotations": {LAST_APPLIED:
                "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"stringData\":{\"password\":\"hunter2\"}}"}},
            "data": {"password": "aHVudGVyMg=="}, "type": "Opaque"});
        assert!(mask(&mut one, false));
        let text = one.to_string();
        assert!(
            !text.contains("aHVudGVyMg==") && !text.contains("hunter2"),
            "{text}"
        );
        assert_eq!(one["data"]["password"], MASKED_BASE64);
        assert_eq!(one["metadata"]["name"], "db");

        // A list's items carry no kind; a watch event wraps the object.
        let mut list = json!({"kind": "SecretList", "items": [{"metadata": {"name": "a"},
            "data": {"k": "c2VjcmV0"}}]});
        assert!(mask(&mut list, true));
        assert_eq!(list["items"][0]["data"]["k"], MASKED_BASE64);
        let mut event = json!({"type": "ADDED", "object": {"kind": "Secret",
            "stringData": {"k": "v"}}});
        assert!(mask(&mut event, false));
        assert_eq!(event["object"]["stringData"]["k"], MASKED);

        // Other objects keep their data (a ConfigMap is not a Secret).
        let mut cm = json!({"kind": "ConfigMap", "data": {"k": "v"}});
        assert!(!mask(&mut cm, false));
        assert_eq!(cm["data"]["k"], "v");
    }

    #[test]
    fn metadata_only_answers_hide_the_last_applied_copy() {
        let applied = "{\"kind\":\"Secret\",\"data\":{\"k\":\"c2VjcmV0\"}}";
        let mut partial = json!({"kind": "PartialObjectMetadataList", "items": [
            {"kind": "PartialObjectMetadata", "metadata": {"name": "a", "annotations": {LAST_APPLIED: applied}}}]});
        assert!(mask(&mut partial, true));
        assert!(!partial.to_string().contains("c2VjcmV0"), "{partial}");
        let mut table = json!({"kind": "Table", "rows": [{"cells": ["a"], "object":
            {"kind": "PartialObjectMetadata", "metadata": {"annotations": {LAST_APPLIED: applied}}}}]});
        assert!(mask(&mut table, true));
        assert!(!table.to_string().contains("c2VjcmV0"), "{table}");
    }

    #[test]
    fn an_odd_shape_hides_everything() {
        let mut odd = json!({"kind": "Secret", "data": "c2VjcmV0",
            "metadata": {"annotations": {LAST_APPLIED: "not json"}}});
        assert!(mask(&mut odd, false));
        assert_eq!(odd["data"], MASKED_BASE64);
        assert_eq!(odd["metadata"]["annotations"][LAST_APPLIED], MASKED);
    }
}
