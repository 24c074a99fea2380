//! Logging in to the console: through the OpenID provider (authorization code with
//! PKCE and `state`, the code exchanged by the gateway, never seen by page scripts),
//! or with an API key; logging out; and the page's view of its session.
//!
//! Either way the credential stays in the gateway ([`super::sessions`]); the browser
//! gets an `HttpOnly` cookie naming the session and, through `GET /auth/session`, the
//! session's CSRF token.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use warden_core::{Event, EventIdentity, Identity, Secret};

use super::provider::{LOGIN_WINDOW, printable};
use super::{CSRF_HEADER, cookie};
use crate::api::{ApiError, AppState, ClientAddr};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/login", get(start))
        .route("/auth/callback", get(callback))
        .route("/auth/key", post(key_login))
        .route("/auth/logout", post(logout))
        .route("/auth/session", get(session))
}

/// `scheme://host` the browser used, from `Host` (HTTP/1) or the authority (HTTP/2);
/// `None` when it is not a plain host name or address.
fn origin(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let plain = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    let scheme = if state.web.tls { "https" } else { "http" };
    plain.then(|| format!("{scheme}://{host}"))
}

/// A state-changing request from a page: refused when the browser says another site
/// made it (`Origin` or `Sec-Fetch-Site`).
fn same_origin(state: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return false;
    }
    let Some(o) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return headers.get(header::ORIGIN).is_none();
    };
    let public = public_url(state);
    Some(o) == origin(state, headers, uri).as_deref() || Some(o) == public
}

/// `api.public_url` without a trailing slash.
fn public_url(state: &AppState) -> Option<&str> {
    let url = state.config.api.public_url.as_deref()?;
    Some(url.trim_end_matches('/'))
}

fn client(addr: Option<&ClientAddr>) -> Option<String> {
    addr.map(|c| c.0.to_string())
}

/// Back to the console's login page with a reason it shows.
pub(super) fn to_login_page(code: &str) -> Response {
    super::see_other(&format!(
        "/#/login?error={}",
        printable(code).replace(' ', "_")
    ))
}

/// The login cookie's name: `__Host-` under TLS, so no other host or path can set it.
fn login_cookie_name(state: &AppState) -> &'static str {
    if state.web.tls {
        "__Host-warden_login"
    } else {
        "warden_login"
    }
}

/// `Set-Cookie` for the sealed login state (`None`: clears it).
fn login_cookie(state: &AppState, value: Option<&str>) -> HeaderValue {
    super::set_cookie(
        login_cookie_name(state),
        value,
        Some(LOGIN_WINDOW.as_secs()),
        state.web.tls,
    )
}

/// Records a failed console login (repeats counted, as for the API).
fn record_failure(
    state: &AppState,
    client: Option<String>,
    method: &str,
    code: &str,
    reason: &str,
) {
    let event = Event::new(
        "auth.failure",
        json!({"via": "console", "method": method, "code": code, "reason": reason,
               "client": client}),
    );
    let source = client
        .as_deref()
        .and_then(|c| c.parse::<std::net::SocketAddr>().ok())
        .map_or_else(|| "unknown".into(), |c| c.ip().to_string());
    state.repeats.record(&source, code, event);
}

/// Starts a session for a checked identity: records `auth.login`, sets the cookie.
async fn open_session(
    state: &AppState,
    identity: &Identity,
    method: &str,
    client: Option<String>,
    token: Secret<String>,
    refresh: Option<Secret<String>>,
) -> Result<HeaderValue, ApiError> {
    let event = Event::new(
        "auth.login",
        json!({"via": "console", "method": method, "client": client}),
    )
    .by(identity);
    state.audit(&event).await?;
    let cookie = state
        .web
        .sessions
        .create(token, refresh, &identity.subject)
        .ok_or_else(|| ApiError::internal("the system's random source failed"))?;
    Ok(state.web.set_session_cookie(Some(cookie.expose())))
}

/// `GET /auth/login`: off to the provider.
async fn start(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let Some(oidc) = &state.web.oidc else {
        return to_login_page("oidc_not_configured");
    };
    // The registered redirect; else the public address; else the one the browser used
    // (the provider accepts only registered redirects, so a forged Host leads nowhere).
    let public = public_url(&state);
    let redirect_uri = match (&oidc.config.redirect_url, public) {
        (Some(url), _) => url.clone(),
        (None, Some(public)) => format!("{public}/auth/callback"),
        (None, None) => match origin(&state, &headers, &uri) {
            Some(o) => format!("{o}/auth/callback"),
            None => return to_login_page("bad_host"),
        },
    };
    match oidc.start(redirect_uri).await {
        Ok((location, sealed)) => {
            let mut resp = super::see_other(&location);
            resp.headers_mut()
                .insert(header::SET_COOKIE, login_cookie(&state, Some(&sealed)));
            resp
        }
        Err(e) => {
            tracing::warn!(error = %e, "console login could not start");
            to_login_page(e.code())
        }
    }
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /auth/callback`: the provider sends the browser back with a code.
async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let client = client(addr.as_deref());
    let clear = login_cookie(&state, None);
    let result = callback_session(&state, &headers, client.clone(), query.ok().map(|q| q.0)).await;
    let mut resp = match result {
        Ok(cookie) => {
            let mut resp = super::see_other("/");
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp
        }
        Err((code, reason)) => {
            record_failure(&state, client, "oidc", &code, &reason);
            to_login_page(&code)
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, clear);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

async fn callback_session(
    state: &AppState,
    headers: &HeaderMap,
    client: Option<String>,
    query: Option<CallbackQuery>,
) -> Result<HeaderValue, (String, String)> {
    let fail = |code: &str, reason: String| (code.to_string(), reason);
    let oidc = state.web.oidc.as_ref().ok_or_else(|| {
        fail(
            "oidc_not_configured",
            "no console login is configured".into(),
        )
    })?;
    let q =
        query.ok_or_else(|| fail("login_refused", "the callback lacks its parameters".into()))?;
    if let Some(error) = q.error {
        let error = printable(&error);
        return Err(fail(
            "login_refused",
            format!("the provider answered {error}"),
        ));
    }
    let (Some(code), Some(login_state)) = (q.code, q.state) else {
        return Err(fail(
            "login_refused",
            "the callback lacks code or state".into(),
        ));
    };
    // The browser that started the login must be the one that finishes it: its login
    // cookie carries the sealed state this answer must match.
    let sealed = cookie(headers, login_cookie_name(state)).ok_or_else(|| {
        fail(
            "login_state_mismatch",
            "the login was not started in this browser".into(),
        )
    })?;
    let tokens = oidc
        .finish(sealed, &login_state, &code)
        .await
        .map_err(|e| fail(e.code(), e.to_string()))?;
    let identity = state
        .auth
        .authenticate(tokens.access.expose())
        .await
        .map_err(|e| fail(e.code(), e.to_string()))?;
    open_session(
        state,
        &identity,
        "oidc",
        client,
        tokens.access,
        tokens.refresh,
    )
    .await
    .map_err(|e| fail(e.code, e.message))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyLogin {
    key: Secret<String>,
}

/// `POST /auth/key`: log in with an API key (setups without OIDC, break-glass).
async fn key_login(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    addr: Option<axum::Extension<ClientAddr>>,
    body: crate::api::ApiJson<KeyLogin>,
) -> Result<Response, ApiError> {
    let client = client(addr.as_deref());
    if !same_origin(&state, &headers, &uri) {
        record_failure(
            &state,
            client,
            "api_key",
            "csrf_failed",
            "another site sent the login",
        );
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf_failed",
            "the login did not come from this console",
        ));
    }
    let key = body.0.key;
    let identity = match state.auth.authenticate(key.expose()).await {
        Ok(identity) => identity,
        Err(e) => {
            record_failure(&state, client, "api_key", e.code(), &e.to_string());
            return Err(ApiError::from_auth(&e));
        }
    };
    let cookie = open_session(&state, &identity, "api_key", client, key, None).await?;
    let mut resp = Json(json!({"subject": identity.subject})).into_response();
    resp.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(resp)
}

/// `POST /auth/logout`: ends the console session (the cookie and its CSRF token).
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
) -> Result<Response, ApiError> {
    let cookie_value = cookie(&headers, state.web.session_cookie())
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "session_ended", "not logged in"))?;
    let csrf = headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let current = state
        .web
        .sessions
        .use_session(cookie_value, Some(csrf))
        .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))?;
    state.web.sessions.remove(cookie_value);
    let mut event = Event::new(
        "auth.logout",
        json!({"via": "console", "client": client(addr.as_deref())}),
    );
    event.identity = Some(EventIdentity {
        subject: current.subject,
        groups: Vec::new(),
    });
    state.audit(&event).await?;
    let mut resp = Json(json!({"logged_out": true})).into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, state.web.set_session_cookie(None));
    Ok(resp)
}

/// `GET /auth/session`: who the page is logged in as, its CSRF token, how to log in
/// otherwise, and the listeners the connection commands name.
async fn session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let saml = state
        .saml
        .as_ref()
        .map(|s| s.idp_names())
        .unwrap_or_default();
    let login = json!({"oidc": state.web.oidc.is_some(), "api_key": true, "saml": saml});
    let endpoints = &state.web.endpoints;
    let anonymous = |reason: &str| {
        let mut resp =
            Json(json!({"logged_in": false, "reason": reason, "login": login})).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    };
    let Some(cookie_value) = cookie(&headers, state.web.session_cookie()) else {
        return anonymous("no_session");
    };
    let Some(csrf) = state.web.sessions.csrf_of(cookie_value) else {
        return anonymous("session_ended");
    };
    // The page learns its CSRF token here, so this answer is checked as any other.
    let mut checked = headers.clone();
    if let Ok(v) = HeaderValue::from_str(&csrf) {
        checked.insert(CSRF_HEADER, v);
    }
    let identity = match state.web.authenticate(&state.auth, &checked).await {
        Some(Ok(identity)) => identity,
        // The provider or the store is down: the session is not over, say so.
        Some(Err(crate::web::WebAuthError::Credential(e))) if e.is_unavailable() => {
            return ApiError::from_auth(&e).into_response();
        }
        Some(Err(e)) => return anonymous(e.code()),
        None => return anonymous("no_session"),
    };
    let is_admin = crate::api::is_admin(&state, &identity);
    let mut resp = Json(json!({
        "logged_in": true,
        "csrf": csrf,
        "identity": identity,
        "is_admin": is_admin,
        "login": login,
        "endpoints": endpoints,
    }))
    .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
