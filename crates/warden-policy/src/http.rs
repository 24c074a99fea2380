//! HTTP request paths, normalized the way the target will read them, and
//! `METHOD /path/pattern` matching (`*` one segment, `**` any number).

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("request path could not be normalized: {0}")]
pub struct HttpPathError(pub String);

/// Decodes percent-escapes once, drops the query, collapses `//`, and resolves `.`
/// and `..`, so `/api/v1/namespaces/../namespaces/x` and `%2e%2e` tricks match the
/// rule for the path they reach.
pub fn normalize_path(path: &str) -> Result<Vec<String>, HttpPathError> {
    let path = path.split(['?', '#']).next().unwrap_or("");
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| HttpPathError("bad percent-escape".into()))?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(decoded).map_err(|_| HttpPathError("not UTF-8".into()))?;
    if text.contains('\0') {
        return Err(HttpPathError("NUL byte".into()));
    }
    let mut segments: Vec<String> = Vec::new();
    for seg in text.split(['/', '\\']) {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_string()),
        }
    }
    Ok(segments)
}

/// A compiled `METHOD /path` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPattern {
    methods: Option<Vec<String>>,
    segments: Vec<String>,
}

impl HttpPattern {
    /// `DELETE /api/v1/namespaces/*`, `GET,LIST /apis/**`, `* /admin/**`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (method, path) = text
            .trim()
            .split_once(' ')
            .ok_or_else(|| format!("`{text}` must be `METHOD /path`"))?;
        if !path.trim().starts_with('/') {
            return Err(format!("`{text}`: the path must start with `/`"));
        }
        let methods = (method != "*").then(|| {
            method
                .split(',')
                .map(|m| m.trim().to_ascii_uppercase())
                .collect()
        });
        let segments = path
            .trim()
            .split('/')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        Ok(Self { methods, segments })
    }

    pub fn matches(&self, method: &str, path: &[String]) -> bool {
        if let Some(ms) = &self.methods
            && !ms.iter().any(|m| m.eq_ignore_ascii_case(method))
        {
            return false;
        }
        segments_match(&self.segments, path)
    }
}

fn segments_match(pattern: &[String], path: &[String]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((p, rest)) if p == "**" => {
            (0..=path.len()).any(|skip| segments_match(rest, &path[skip..]))
        }
        Some((p, rest)) => match path.split_first() {
            Some((s, path_rest)) => crate::glob::matches(p, s) && segments_match(rest, path_rest),
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_tricks() {
        let n = |p: &str| normalize_path(p).unwrap_or_default().join("/");
        assert_eq!(
            n("/api/v1/namespaces/../namespaces/prod"),
            "api/v1/namespaces/prod"
        );
        assert_eq!(
            n("//api//v1/./namespaces/%70rod?x=1"),
            "api/v1/namespaces/prod"
        );
        assert_eq!(n("/api/v1/namespaces%2Fprod"), "api/v1/namespaces/prod");
        assert!(normalize_path("/bad%zz").is_err());
    }

    #[test]
    fn patterns() {
        let p = HttpPattern::parse("DELETE /api/v1/namespaces/*")
            .unwrap_or_else(|e| unreachable!("{e}"));
        let path = normalize_path("/api/v1/namespaces/prod").unwrap_or_default();
        assert!(p.matches("delete", &path));
        assert!(!p.matches("GET", &path));
        let sub = normalize_path("/api/v1/namespaces/prod/pods").unwrap_or_default();
        assert!(!p.matches("DELETE", &sub));
        let any = HttpPattern::parse("* /api/**").unwrap_or_else(|e| unreachable!("{e}"));
        assert!(any.matches("PATCH", &sub));
    }
}
