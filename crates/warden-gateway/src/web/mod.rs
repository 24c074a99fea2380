//! The web console: its pages (embedded, served at `/`), its login routes under
//! `/auth/`, and the cookie sessions through which its pages call the same `/api` as
//! every other client, with the same authorization and nothing more.

mod assets;
mod config;
mod login;
mod provider;
mod saml;
mod sessions;

pub use config::{WebConfig, WebOidcConfig};
pub(crate) use provider::printable;
pub use sessions::SessionError;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, header};
use std::sync::Arc;
use std::time::Duration;

/// After the provider could not be reached for a renewal, how long requests answer 503
/// at once rather than try again.
const RENEWAL_RETRY: Duration = Duration::from_secs(5);
use warden_core::Identity;

use crate::api::AppState;
use crate::auth::{AuthError, Authenticator};

/// The header through which console pages send their session's CSRF token.
pub const CSRF_HEADER: &str = "x-warden-csrf";

/// A client listener, for the commands the console shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Endpoint {
    pub kind: &'static str,
    pub port: u16,
    pub tls: bool,
}

/// The console's state: sessions, pending browser logins, its provider client.
pub struct WebConsole {
    sessions: Arc<sessions::SessionStore>,
    oidc: Option<Arc<provider::OidcLogin>>,
    /// The API listener has TLS: cookies are `Secure` and `__Host-` named.
    tls: bool,
    enabled: bool,
    endpoints: Vec<Endpoint>,
}

/// Why a request made with the console's cookie is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WebAuthError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Credential(#[from] AuthError),
}

impl WebAuthError {
    pub fn code(&self) -> &'static str {
        match self {
            WebAuthError::Session(e) => e.code(),
            WebAuthError::Credential(e) => e.code(),
        }
    }

    /// The API's answer: a refused credential as for a bearer token; a missing CSRF
    /// token 403; an ended session 401.
    pub fn to_api_error(&self) -> crate::api::ApiError {
        use axum::http::StatusCode;
        match self {
            WebAuthError::Credential(e) => crate::api::ApiError::from_auth(e),
            WebAuthError::Session(e) => {
                let status = match e {
                    SessionError::Csrf => StatusCode::FORBIDDEN,
                    SessionError::Ended => StatusCode::UNAUTHORIZED,
                };
                crate::api::ApiError::new(status, e.code(), e.to_string())
            }
        }
    }
}

/// `n` random bytes, base64url without padding; `None` if the system's random source
/// fails (nothing that needs one goes on without it).
pub(crate) fn random_token(n: usize) -> Option<String> {
    use base64::Engine;
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of `bytes`, as a map key.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// `Set-Cookie` for one of the console's cookies: `HttpOnly`, `SameSite=Lax`, `Path=/`,
/// `Secure` under TLS; `None` clears it, `max_age` bounds it (else it lasts the
/// browser session).
pub(crate) fn set_cookie(
    name: &str,
    value: Option<&str>,
    max_age: Option<u64>,
    tls: bool,
) -> HeaderValue {
    let secure = if tls { "; Secure" } else { "" };
    let (value, max_age) = match value {
        Some(v) => (
            v,
            max_age
                .map(|s| format!("; Max-Age={s}"))
                .unwrap_or_default(),
        ),
        None => ("", "; Max-Age=0".to_string()),
    };
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{max_age}{secure}");
    // Cookie values are base64url: always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `303 See Other` to `location`, not to be cached (login steps go through these).
pub(crate) fn see_other(location: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut resp = axum::http::StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The value of one cookie in a request's `Cookie` headers.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

impl WebConsole {
    pub fn new(config: &WebConfig, tls: bool, endpoints: Vec<Endpoint>) -> Result<Self, String> {
        Ok(Self {
            sessions: Arc::new(sessions::SessionStore::new(
                Duration::from_secs(config.session_idle_secs),
                Duration::from_secs(config.session_max_secs),
                config.max_sessions,
            )),
            oidc: config
                .oidc
                .as_ref()
                .map(|c| provider::OidcLogin::new(c).map(Arc::new))
                .transpose()?,
            tls,
            enabled: config.enabled,
            endpoints,
        })
    }

    fn session_cookie(&self) -> &'static str {
        if self.tls {
            "__Host-warden_session"
        } else {
            "warden_session"
        }
    }

    /// `Set-Cookie` for a session cookie (`None`: clears it).
    fn set_session_cookie(&self, value: Option<&str>) -> HeaderValue {
        set_cookie(self.session_cookie(), value, None, self.tls)
    }

    /// The identity of a request made with the console's cookie and no bearer token;
    /// `None` when it carries no such cookie. The session's credential is checked as
    /// a bearer token would be; an OIDC token that has expired is renewed once with
    /// its refresh token. A session whose credential is refused ends.
    pub async fn authenticate(
        &self,
        auth: &Authenticator,
        headers: &HeaderMap,
    ) -> Option<Result<Identity, WebAuthError>> {
        let cookie = cookie(headers, self.session_cookie())?;
        Some(self.check(auth, headers, cookie).await)
    }

    async fn check(
        &self,
        auth: &Authenticator,
        headers: &HeaderMap,
        cookie: &str,
    ) -> Result<Identity, WebAuthError> {
        // A page of another site can make the browser send the cookie, but cannot set
        // this header: every request made with the cookie must carry it.
        let csrf = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if headers
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() == b"cross-site")
        {
            return Err(SessionError::Csrf.into());
        }
        let current = self.sessions.use_session(cookie, Some(csrf))?;
        match auth.authenticate(current.token.expose()).await {
            Ok(identity) => Ok(identity),
            Err(AuthError::Expired) => self.renew(auth, cookie, current).await,
            Err(e) => {
                if !e.is_unavailable() {
                    self.sessions.remove(cookie);
                }
                Err(e.into())
            }
        }
    }

    /// Renews an expired OIDC token with its refresh token. One request renews; the
    /// others that found the same token expired wait and use what it got. A provider
    /// that cannot be reached keeps the session (503, and requests in the next
    /// seconds do not try again); a refusal ends it.
    async fn renew(
        &self,
        auth: &Authenticator,
        cookie: &str,
        stale: sessions::Current,
    ) -> Result<Identity, WebAuthError> {
        let _renewing = stale.renewal.lock().await;
        let now = self.sessions.use_session(cookie, None)?;
        if now.token.expose() != stale.token.expose() {
            return auth
                .authenticate(now.token.expose())
                .await
                .map_err(Into::into);
        }
        if now
            .renewal_failed
            .is_some_and(|at| at.elapsed() < RENEWAL_RETRY)
        {
            return Err(AuthError::IssuerUnavailable.into());
        }
        let (Some(oidc), Some(refresh)) = (self.oidc.clone(), now.refresh) else {
            self.sessions.remove(cookie);
            return Err(AuthError::Expired.into());
        };
        // The exchange and the storing of its answer run to the end even if this
        // request is cancelled: a provider that rotates refresh tokens has already
        // spent the old one.
        let sessions = self.sessions.clone();
        let owned = cookie.to_string();
        let renewed = tokio::spawn(async move {
            let result = oidc.refresh(&refresh).await;
            match &result {
                Ok(tokens) => {
                    sessions.renewed(&owned, tokens.access.clone(), tokens.refresh.clone())
                }
                Err(provider::LoginError::Unreachable(_)) => sessions.renewal_failed(&owned),
                Err(_) => {
                    sessions.remove(&owned);
                }
            }
            result.map(|tokens| tokens.access)
        })
        .await
        .map_err(|_| AuthError::IssuerUnavailable)?;
        let access = match renewed {
            Ok(access) => access,
            Err(provider::LoginError::Unreachable(e)) => {
                tracing::warn!(error = %e, "a console session's token could not be renewed now");
                return Err(AuthError::IssuerUnavailable.into());
            }
            Err(e) => {
                tracing::info!(error = %e, "a console session's token was not renewed: it ends");
                return Err(AuthError::Expired.into());
            }
        };
        match auth.authenticate(access.expose()).await {
            Ok(identity) => Ok(identity),
            Err(e) => {
                if !e.is_unavailable() {
                    self.sessions.remove(cookie);
                }
                Err(e.into())
            }
        }
    }

    pub fn sessions_open(&self) -> usize {
        self.sessions.count()
    }
}

/// The SAML routes: the SP metadata, the ACS and the CLI's login calls are there
/// whether or not the console is.
pub fn saml_router() -> Router<AppState> {
    saml::router()
}

/// The console's routes: its pages and its login routes. Empty when `web.enabled` is
/// off.
pub fn router(state: &AppState) -> Router<AppState> {
    if !state.web.enabled {
        return Router::new();
    }
    assets::router().merge(login::router())
}
