//! The console's files, embedded in the binary at build time (no Node.js at build),
//! and the headers every console page is served with: a Content-Security-Policy that
//! allows no inline script and no framing.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::api::{ApiError, AppState};

/// Scripts, styles and data only from this origin; no inline script, no framing, no
/// plugins, no `<base>` games, forms only back to the gateway.
/// `'wasm-unsafe-eval'` lets asciinema-player compile its terminal emulator
/// (WebAssembly); it allows no JavaScript `eval`.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
     manifest-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        (
            $name,
            $type,
            include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $name)).as_slice(),
        )
    };
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file the console serves under `/ui/`, with its content type.
const ASSETS: &[(&str, &str, &[u8])] = &[
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("pages/connections.js", JS),
    asset!("pages/sessions.js", JS),
    asset!("pages/replay.js", JS),
    asset!("pages/reviews.js", JS),
    asset!("pages/access.js", JS),
    asset!("pages/audit.js", JS),
    asset!("pages/admin.js", JS),
    asset!("pages/connection_form.js", JS),
    asset!("pages/policies.js", JS),
    asset!("pages/webhooks.js", JS),
    asset!("vendor/asciinema-player.min.js", JS),
    asset!("vendor/asciinema-player.css", CSS),
    asset!(
        "vendor/LICENSE-asciinema-player.txt",
        "text/plain; charset=utf-8"
    ),
    asset!("favicon.svg", "image/svg+xml"),
];

const INDEX: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/index.html"));

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/ui/{*file}", get(file))
}

/// Adds the console's security headers to a response.
fn secured(mut resp: Response, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

async fn index() -> Response {
    secured(
        (StatusCode::OK, INDEX).into_response(),
        "text/html; charset=utf-8",
    )
}

async fn file(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            secured((StatusCode::OK, *body).into_response(), content_type)
        }
        None => ApiError::not_found("console file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_script_is_embedded_and_no_page_has_inline_script() {
        let index = std::str::from_utf8(INDEX).unwrap();
        // Every script the page loads is one of ours; none is inline.
        for piece in index.split("<script").skip(1) {
            let tag = &piece[..piece.find('>').unwrap()];
            let src = tag.split("src=\"").nth(1).expect("a script has a src");
            let src = &src[..src.find('"').unwrap()];
            let name = src.strip_prefix("/ui/").expect("scripts come from /ui/");
            assert!(
                ASSETS.iter().any(|(n, _, _)| *n == name),
                "{name} not embedded"
            );
            assert!(piece[piece.find('>').unwrap() + 1..].starts_with("</script>"));
        }
        let lower = index.to_ascii_lowercase();
        for (at, _) in lower.match_indices(" on") {
            let rest = &lower[at + 3..];
            let word: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            assert!(
                !rest[word.len()..].trim_start().starts_with('='),
                "an inline event handler: on{word}="
            );
        }
        // Every module a script imports is embedded too.
        for (name, _, body) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            let text = std::str::from_utf8(body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(from) = line.split(" from '").nth(1) else {
                    continue;
                };
                let target = &from[..from.find('\'').unwrap()];
                let base = std::path::Path::new(name).parent().unwrap();
                let joined = base.join(target);
                let mut parts: Vec<&str> = Vec::new();
                for c in joined.components() {
                    match c.as_os_str().to_str().unwrap() {
                        "." => {}
                        ".." => {
                            parts.pop();
                        }
                        p => parts.push(p),
                    }
                }
                let resolved = parts.join("/");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == resolved),
                    "{name} imports {resolved}, which is not embedded"
                );
            }
        }
    }
}
