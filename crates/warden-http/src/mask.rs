//! Masking HTTP answers with a connection's masking sets. JSON is walked value by
//! value: a member's key is its column name (so a column rule `*password*` or
//! `customers.email` masks it whatever it holds; the parent's key is the table), and
//! the content detectors run on every string, number and key. Anything else is masked
//! as one text value unless its type cannot hold text (images, archives); what cannot
//! be read (compressed) is never relayed unmasked. Header values are masked too.

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
    /// JSON when the type says JSON (`application/json`, `+json`, `x-json`);
    /// opaque only for types that cannot hold text (images, audio, video, fonts,
    /// archives, PDF); everything else — unknown, missing or malformed types
    /// included — is masked as text, since the server picks the label.
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
        let Some((kind, subtype)) = essence.split_once('/') else {
            return BodyKind::Text;
        };
        if subtype.contains([',', ' ']) {
            return BodyKind::Text;
        }
        if kind == "application" && matches!(subtype, "json" | "x-json")
            || subtype.ends_with("+json")
        {
            BodyKind::Json
        } else if matches!(kind, "image" | "audio" | "video" | "font")
            || (kind == "application"
                && matches!(
                    subtype,
                    "zip" | "gzip" | "x-gzip" | "x-tar" | "x-7z-compressed" | "pdf" | "wasm"
                ))
        {
            BodyKind::Opaque
        } else {
            BodyKind::Text
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
        Value::Object(map) => {
            let mut changed = map
                .iter_mut()
                .fold(false, |c, (k, v)| mask_value(masker, v, key, Some(k)) | c);
            // Keys are data too (`{"alice@example.com": 3}`).
            if map
                .keys()
                .any(|k| masker.mask(ColumnPlan::Detect, k.as_bytes()) != Masked::Unchanged)
            {
                let old = std::mem::take(map);
                for (k, v) in old {
                    let k = match masker.mask(ColumnPlan::Detect, k.as_bytes()) {
                        Masked::Unchanged => k,
                        Masked::Replaced(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        Masked::Null => "[masked]".to_string(),
                    };
                    map.insert(k, v);
                }
                changed = true;
            }
            changed
        }
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

/// Masks an answer's header values (`Location`, custom headers echoing input) with
/// the detectors; framing headers are left alone.
pub fn mask_headers(masker: &dyn Masker, headers: &mut hyper::HeaderMap) {
    for (name, value) in headers.iter_mut() {
        if matches!(
            name.as_str(),
            "content-type" | "content-length" | "content-encoding" | "date" | "etag"
        ) {
            continue;
        }
        let replaced = match masker.mask(ColumnPlan::Detect, value.as_bytes()) {
            Masked::Unchanged => continue,
            Masked::Replaced(bytes) => bytes,
            Masked::Null => b"[masked]".to_vec(),
        };
        *value = hyper::header::HeaderValue::from_bytes(&replaced)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("[masked]"));
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
        for text in [
            "application/x-json; charset=utf-8",
            "application/jsonl",
            "application/csv",
            "application/octet-stream",
            "application/json, text/plain",
            "nonsense",
        ] {
            assert_ne!(BodyKind::of(Some(text)), BodyKind::Opaque, "{text}");
        }
    }
}
