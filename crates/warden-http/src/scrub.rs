//! Keeping the held credential out of answers. A target that echoes its request (a
//! debug page, an echo endpoint, an error that quotes a header) would hand the
//! credential Warden sent it to the client; every answer's headers and body are
//! searched for it (as sent: the token or password itself, and the Basic form) and
//! each occurrence is overwritten with `*` of the same length, so lengths hold.

use bytes::BytesMut;

use crate::body::Body;

/// Credentials shorter than this are not searched for: they would match by chance.
pub const MIN_SCRUBBED_BYTES: usize = 8;

/// What to search answers for.
#[derive(Debug, Clone, Default)]
pub struct Needles(Vec<Vec<u8>>);

impl Needles {
    /// The values, and the forms a target's JSON echo gives them (`"` and `\`
    /// escaped, `/` as `\/`, non-ASCII as `\uXXXX`).
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for v in values.into_iter().filter(|v| v.len() >= MIN_SCRUBBED_BYTES) {
            let json = serde_json::to_string(&v).unwrap_or_default();
            let json = json.trim_matches('"').to_string();
            let ascii: String = json
                .chars()
                .map(|c| {
                    if c.is_ascii() {
                        c.to_string()
                    } else {
                        let mut buf = [0u16; 2];
                        c.encode_utf16(&mut buf)
                            .iter()
                            .map(|u| format!("\\u{u:04x}"))
                            .collect()
                    }
                })
                .collect();
            for form in [
                json.replace('/', "\\/"),
                ascii.replace('/', "\\/"),
                ascii,
                json,
                v,
            ] {
                all.push(form.into_bytes());
            }
        }
        all.sort();
        all.dedup();
        Self(all)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn longest(&self) -> usize {
        self.0.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Overwrites every occurrence in `data`; returns whether any was found.
    pub fn scrub(&self, data: &mut [u8]) -> bool {
        let mut found = false;
        for needle in &self.0 {
            let mut from = 0;
            while let Some(at) = memchr::memmem::find(&data[from..], needle) {
                let start = from + at;
                data[start..start + needle.len()].fill(b'*');
                from = start + needle.len();
                found = true;
            }
        }
        found
    }

    /// How many bytes at the end of `data` could be the start of a needle that the
    /// next chunk completes: they wait for it.
    fn held_back(&self, data: &[u8]) -> usize {
        let max = self.longest().saturating_sub(1).min(data.len());
        (1..=max)
            .rev()
            .find(|&n| {
                let tail = &data[data.len() - n..];
                self.0.iter().any(|needle| needle.starts_with(tail))
            })
            .unwrap_or(0)
    }

    /// Scrubs header values.
    pub fn scrub_headers(&self, headers: &mut hyper::HeaderMap) {
        for value in headers.values_mut() {
            let mut bytes = value.as_bytes().to_vec();
            if self.scrub(&mut bytes)
                && let Ok(v) = hyper::header::HeaderValue::from_bytes(&bytes)
            {
                *value = v;
            }
        }
    }
}

/// A body with the needles overwritten, across chunk boundaries.
pub fn scrubbed(inner: Body, needles: Needles) -> Body {
    crate::body::rewritten(
        inner,
        Box::new(move |pending: &mut BytesMut, end: bool| {
            needles.scrub(pending);
            let keep = if end { 0 } else { needles.held_back(pending) };
            Ok(pending.split_to(pending.len() - keep))
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_are_overwritten_across_any_split() {
        let needles = Needles::new(["held-secret-123".to_string(), "short".to_string()]);
        let text = b"a held-secret-123 b held-secret-123held-secret-123 short";
        for step in [1, 2, 5, 7, text.len()] {
            let mut out = Vec::new();
            let mut pending = Vec::new();
            for chunk in text.chunks(step) {
                pending.extend_from_slice(chunk);
                needles.scrub(&mut pending);
                let keep = needles.held_back(&pending);
                out.extend(pending.drain(..pending.len() - keep));
            }
            out.extend(pending);
            let shown = String::from_utf8_lossy(&out).to_string();
            assert_eq!(shown.len(), text.len());
            assert!(!shown.contains("held-secret-123"), "step {step}: {shown}");
            // Too short to search for.
            assert!(shown.ends_with(" short"), "{shown}");
        }
    }

    #[test]
    fn json_escaped_echoes_are_found_too() {
        let needles = Needles::new(["p@ss\"w\\rd/é-Held-99".to_string()]);
        let mut echo =
            br#"{"h":"p@ss\"w\\rd\/\u00e9-Held-99","g":"p@ss\"w\\rd/\u00e9-Held-99"}"#.to_vec();
        assert!(needles.scrub(&mut echo));
        let shown = String::from_utf8_lossy(&echo).to_string();
        assert!(!shown.contains("Held-99"), "{shown}");
    }

    #[test]
    fn nothing_waits_unless_it_could_start_a_credential() {
        let needles = Needles::new(["held-secret-123".to_string()]);
        assert_eq!(needles.held_back(b"{\"event\":1}\n"), 0);
        assert_eq!(needles.held_back(b"x held-"), 5);
    }
}
