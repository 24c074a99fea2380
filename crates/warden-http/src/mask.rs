//! Masking HTTP answers with a connection's masking sets. JSON is walked value by
//! value: a member's key is its column name (so a column rule `*password*` or
//! `customers.email` masks it whatever it holds; the parent's key is the table), and
//! the content detectors run on every string and number. Other text is masked as one
//! value. What cannot be read (compressed, or not text) is never relayed unmasked.

use serde_json::Value;
use warden_core::{ColumnPlan, ColumnRef, Masked, Masker, ValueKind};

/// How an answer's body is masked, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Text,
    /// Images, archives, octet streams: detectors look for text.
    Opaque,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> Self {
        let Some(ct) = content_type else {
            return BodyKind::Text;
        };
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence == "application/json" || essence.ends_with("+json") {
            BodyKind::Json
        } else if essence.starts_with("text/")
            || essence.ends_with("+xml")
            || matches!(
                essence.as_str(),
                "application/xml"
                    | "application/javascript"
                    | "application/x-www-form-urlencoded"
                    | "application/yaml"
                    | "application/x-ndjson"
            )
        {
            BodyKind::Text
        } else {
            BodyKind::Opaque
        }
    }
}

/// Masks a whole answer body; `None`: nothing changed.
pub fn mask_body(
    masker: &dyn Masker,
    kind: BodyKind,
    body: &[u8],
) -> Result<Option<Vec<u8>>, String> {
    match kind {
        BodyKind::Opaque => Ok(None),
        BodyKind::Text => Ok(match masker.mask(ColumnPlan::Detect, body) {
            Masked::Unchanged => None,
            Masked::Replaced(bytes) => Some(bytes),
            Masked::Null => Some(b"[masked]".to_vec()),
        }),
        BodyKind::Json => {
            let mut value: Value = serde_json::from_slice(body)
                .map_err(|e| format!("the JSON answer cannot be read to mask it: {e}"))?;
            if mask_value(masker, &mut value, None, None) {
                serde_json::to_vec(&value)
                    .map(Some)
                    .map_err(|e| e.to_string())
            } else {
                Ok(None)
            }
        }
    }
}

/// Masks one JSON value found under `key` (in an object found under `parent`).
fn mask_value(
    masker: &dyn Masker,
    value: &mut Value,
    parent: Option<&str>,
    key: Option<&str>,
) -> bool {
    match value {
        Value::Object(map) => map
            .iter_mut()
            .fold(false, |c, (k, v)| mask_value(masker, v, key, Some(k)) | c),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |c, v| mask_value(masker, v, parent, key) | c),
        Value::String(_) | Value::Number(_) => {
            let (text, kind) = match &*value {
                Value::String(s) => (s.clone(), ValueKind::Text),
                other => (other.to_string(), ValueKind::Number),
            };
            let plan = match key {
                Some(column) => masker.plan(&ColumnRef {
                    schema: None,
                    table: parent,
                    column,
                    kind,
                }),
                None => ColumnPlan::Detect,
            };
            match masker.mask(plan, text.as_bytes()) {
                Masked::Unchanged => false,
                Masked::Replaced(bytes) => {
                    *value = Value::String(String::from_utf8_lossy(&bytes).into_owned());
                    true
                }
                Masked::Null => {
                    *value = Value::Null;
                    true
                }
            }
        }
        Value::Bool(_) | Value::Null => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            BodyKind::of(Some("application/json; charset=utf-8")),
            BodyKind::Json
        );
        assert_eq!(
            BodyKind::of(Some("application/problem+json")),
            BodyKind::Json
        );
        assert_eq!(BodyKind::of(Some("text/html")), BodyKind::Text);
        assert_eq!(BodyKind::of(Some("image/png")), BodyKind::Opaque);
        assert_eq!(BodyKind::of(None), BodyKind::Text);
    }
}
