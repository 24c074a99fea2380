//! Request targets (path and query) read once, strictly. Rules are decided on the
//! decoded path; the target receives the path as sent. So that both mean the same,
//! a path that a server could resolve differently from a plain split on `/` — empty,
//! `.` or `..` segments, an encoded `/` or `\`, control characters — is refused
//! rather than normalized, and so is a query a server could split differently.

/// Why a request target is refused; the client is told this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PathError(pub String);

/// Longest request target accepted, in bytes.
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// A request target, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    /// The path as the client sent it (no query).
    pub raw_path: String,
    /// The query as sent, without `?` (empty when there is none).
    pub raw_query: String,
    /// The path's segments, percent-decoded.
    pub segments: Vec<String>,
    /// The query's pairs, decoded as form values (`+` is a space), in order.
    pub query: Vec<(String, String)>,
}

impl RequestPath {
    pub fn parse(target: &str) -> Result<Self, PathError> {
        if target.len() > MAX_TARGET_BYTES {
            return Err(PathError(format!(
                "the request target is longer than {MAX_TARGET_BYTES} bytes"
            )));
        }
        let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
        if !raw_path.starts_with('/') {
            return Err(PathError("the path must start with `/`".into()));
        }
        let mut segments = Vec::new();
        let body = raw_path.strip_prefix('/').unwrap_or(raw_path);
        // One trailing `/` is a directory, not an empty segment.
        let body = body.strip_suffix('/').unwrap_or(body);
        if !body.is_empty() {
            for raw in body.split('/') {
                let seg = decode(raw, false)?;
                if seg.is_empty() || seg == "." || seg == ".." {
                    return Err(PathError(format!(
                        "the path `{raw_path}` has an empty, `.` or `..` segment"
                    )));
                }
                // `;` starts path parameters that Java servers drop (`/admin;x/`).
                if seg.contains(['/', '\\', ';']) || seg.chars().any(char::is_control) {
                    return Err(PathError(format!(
                        "the path `{raw_path}` has an encoded `/`, a `\\`, a `;` or a control character"
                    )));
                }
                segments.push(seg);
            }
        }
        let mut query = Vec::new();
        if raw_query.contains(';') {
            return Err(PathError(
                "`;` in the query is read differently by servers".into(),
            ));
        }
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            query.push((decode(k, true)?, decode(v, true)?));
        }
        Ok(Self {
            raw_path: raw_path.to_string(),
            raw_query: raw_query.to_string(),
            segments,
            query,
        })
    }

    /// The target without its first segment (the connection name a client put in
    /// front of the path), or `None` when there is no first segment.
    pub fn strip_first(&self) -> Option<(String, RequestPath)> {
        let first = self.segments.first()?.clone();
        let raw_first_len = self.raw_path[1..]
            .find('/')
            .map_or(self.raw_path.len(), |i| i + 1);
        let mut raw_path = self.raw_path[raw_first_len..].to_string();
        if raw_path.is_empty() {
            raw_path.push('/');
        }
        Some((
            first,
            RequestPath {
                raw_path,
                raw_query: self.raw_query.clone(),
                segments: self.segments[1..].to_vec(),
                query: self.query.clone(),
            },
        ))
    }

    /// The first value of a query parameter, as servers read it.
    pub fn query_first(&self, key: &str) -> Option<String> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Every value of a query parameter, in order.
    pub fn query_all(&self, key: &str) -> Vec<String> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Path and query, as sent.
    pub fn target(&self) -> String {
        if self.raw_query.is_empty() {
            self.raw_path.clone()
        } else {
            format!("{}?{}", self.raw_path, self.raw_query)
        }
    }
}

/// Percent-decodes one path segment or query component (`plus_is_space` for the
/// query). A bad escape or a result that is not UTF-8 is refused.
fn decode(raw: &str, plus_is_space: bool) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| PathError(format!("bad percent-escape in `{raw}`")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathError(format!("`{raw}` is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_a_server_could_resolve_otherwise_are_refused() {
        for bad in [
            "/api//v1",
            "/api/./v1",
            "/api/../v1",
            "/api/%2e%2e/v1",
            "/api/%2E/v1",
            "/api/v1%2Fnamespaces",
            "/api/v1%5cx",
            "/api/v1\\x",
            "/api/%00",
            "/api/%zz",
            "/api/%ff",
            "api/v1",
            "/api/v1?a=1;b=2",
            "/admin;x/users",
            "/admin%3bx/users",
            "/api/v1?a=%zz",
        ] {
            assert!(RequestPath::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decodes_segments_and_queries() {
        let p = RequestPath::parse("/c1/api/v1/namespaces/%70rod/?labelSelector=a%3Db+c&x")
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p.segments, ["c1", "api", "v1", "namespaces", "prod"]);
        assert_eq!(p.query_first("labelSelector").as_deref(), Some("a=b c"));
        assert_eq!(p.query_first("x").as_deref(), Some(""));
        let Some((first, rest)) = p.strip_first() else {
            unreachable!()
        };
        assert_eq!(first, "c1");
        assert_eq!(rest.raw_path, "/api/v1/namespaces/%70rod/");
        assert_eq!(
            rest.target(),
            "/api/v1/namespaces/%70rod/?labelSelector=a%3Db+c&x"
        );
        let root = RequestPath::parse("/c1").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(root.strip_first().map(|r| r.1.raw_path), Some("/".into()));
    }
}
