//! SAML single sign-on routes: the SP metadata, the console's login through an
//! identity provider, the assertion consumer service (ACS) every answer is posted to,
//! and the two calls of `warden login --saml`.
//!
//! A checked login becomes a short-lived Warden API key (subject and groups from the
//! assertion, expiring after `auth.saml.session_ttl_secs`): the console keeps it in its
//! session, the CLI in its token cache. It can be revoked like any key, which ends the
//! sessions opened with it.
//!
//! The ACS is posted to by the identity provider's page, from another site: it cannot
//! carry the console's CSRF token nor a same-site `Origin`, and needs neither. What
//! protects it is the signature and the outstanding login it must answer; the console
//! login then finishes on a GET of this site that must carry the cookie of the browser
//! that started it.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use warden_core::{Event, Identity, Secret, timefmt};

use super::{cookie, see_other};
use crate::api::{ApiError, ApiJson, AppState, ClientAddr};
use crate::auth::api_key;
use crate::auth::saml::{self, Purpose, Refusal, RefusalContext, SamlLogin};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/saml/metadata", get(metadata))
        .route("/auth/saml/login", get(console_start))
        .route("/auth/saml/acs", post(acs))
        .route("/auth/saml/finish", get(console_finish))
        .route("/api/auth/saml", get(idps))
        .route("/api/auth/saml/cli-start", post(cli_start))
        .route("/api/auth/saml/token", post(cli_token))
}

/// The cookie that ties a console login to the browser that started it.
fn login_cookie_name(state: &AppState) -> &'static str {
    if state.web.tls {
        "__Host-warden_saml"
    } else {
        "warden_saml"
    }
}

fn service(state: &AppState) -> Result<&std::sync::Arc<saml::SamlService>, ApiError> {
    state.saml.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "saml_not_configured",
            "this gateway has no SAML login configured (auth.saml)",
        )
    })
}

fn client_ip(addr: Option<&ClientAddr>) -> Option<std::net::IpAddr> {
    addr.map(|a| a.0.ip())
}

/// Records a refused SAML login (repeats counted, as for other failed logins).
fn record_refusal(
    state: &AppState,
    addr: Option<&ClientAddr>,
    via: &str,
    refusal: &Refusal,
    context: &RefusalContext,
) {
    // Debug formatting: a reason may quote the answer, which is the sender's to write.
    tracing::info!(code = refusal.code(), idp = ?context.idp, reason = ?refusal.to_string(), "SAML login refused");
    let client = addr.map(|c| c.0.to_string());
    let event = Event::new(
        "auth.failure",
        json!({"via": via, "method": "saml", "code": refusal.code(),
               "reason": refusal.to_string(), "idp": context.idp,
               "request_id": context.request_id, "client": client}),
    );
    let source = addr.map_or_else(|| "unknown".into(), |c| c.0.ip().to_string());
    state.repeats.record(&source, refusal.code(), event);
}

/// Issues the Warden credential of a checked login and records `auth.login` with it.
async fn issue(
    state: &AppState,
    login: &SamlLogin,
    via: &str,
    addr: Option<&ClientAddr>,
) -> Result<(Secret<String>, Identity), ApiError> {
    let service = service(state)?;
    let ttl = time::Duration::try_from(service.session_ttl())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let expires_at = timefmt::now() + ttl;
    let issued = api_key::issue(None).map_err(|e| ApiError::from_auth(&e))?;
    let origin = format!("saml:{}", login.idp);
    let record = api_key::record(
        &issued,
        &format!("SAML login via {}", login.idp),
        &login.subject,
        login.groups.clone(),
        &origin,
        Some(expires_at),
    );
    let identity = api_key::identity_of(&record);
    let event = Event::new(
        "auth.login",
        json!({"via": via, "method": "saml", "idp": login.idp, "key_id": record.id,
               "request_id": login.request_id, "response_id": login.response_id,
               "assertion_id": login.assertion_id, "expires_at": timefmt::rfc3339(expires_at),
               "client": addr.map(|c| c.0.to_string())}),
    )
    .by(&identity);
    state
        .store
        .insert_api_key(&record, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok((issued.token, identity))
}

/// `GET /auth/saml/metadata`: the SP metadata to register Warden at an identity provider.
async fn metadata(State(state): State<AppState>) -> Result<Response, ApiError> {
    let xml = service(&state)?.metadata_xml().to_string();
    Ok((
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        xml,
    )
        .into_response())
}

/// `GET /api/auth/saml`: the identity providers one can log in through.
async fn idps(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"idps": service(&state)?.idp_names()})))
}

#[derive(Deserialize)]
struct StartQuery {
    idp: Option<String>,
}

/// `GET /auth/saml/login?idp=NAME`: a console login, off to the identity provider.
/// Only from the console's page or typed by hand: another site's page cannot make
/// browsers start logins (each holds a place and costs a signature).
async fn console_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
    query: Result<Query<StartQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let addr = addr.as_deref();
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
    {
        return super::login::to_login_page("csrf_failed");
    }
    let Some(service) = state.saml.clone().filter(|_| state.web.enabled) else {
        return super::login::to_login_page("saml_not_configured");
    };
    let idp = query.ok().and_then(|q| q.0.idp);
    let Some(secret) = super::random_token(32) else {
        return super::login::to_login_page("unavailable");
    };
    let purpose = Purpose::Console {
        binding: saml::binding_of(&secret),
    };
    match service
        .start(idp.as_deref(), purpose, client_ip(addr))
        .await
    {
        Ok((url, _handle)) => {
            let mut resp = see_other(&url);
            let cookie = super::set_cookie(
                login_cookie_name(&state),
                Some(&secret),
                Some(service.login_window().as_secs()),
                state.web.tls,
            );
            resp.headers_mut().insert(header::SET_COOKIE, cookie);
            resp
        }
        Err((refusal, context)) => {
            record_refusal(&state, addr, "console", &refusal, &context);
            super::login::to_login_page(refusal.code())
        }
    }
}

#[derive(Deserialize)]
struct AcsForm {
    #[serde(rename = "SAMLResponse")]
    response: Option<String>,
    #[serde(rename = "RelayState")]
    relay_state: Option<String>,
}

/// `POST /auth/saml/acs`: an identity provider's answer, posted by the browser.
async fn acs(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
    form: Result<axum::Form<AcsForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let addr = addr.as_deref();
    let service = match service(&state) {
        Ok(s) => s.clone(),
        Err(e) => return e.into_response(),
    };
    let (response, relay_state) = match form {
        Ok(axum::Form(AcsForm {
            response: Some(r),
            relay_state,
        })) => (r, relay_state),
        _ => {
            let refusal = Refusal::Malformed("the post carries no SAMLResponse form field".into());
            record_refusal(&state, addr, "acs", &refusal, &RefusalContext::default());
            return error_page(StatusCode::BAD_REQUEST, &refusal);
        }
    };
    let accepted = match service.accept(response, relay_state).await {
        Ok(a) => a,
        Err((refusal, context)) => {
            let via = match context.purpose {
                Some(Purpose::Cli { .. }) => "cli",
                _ => "console",
            };
            record_refusal(&state, addr, via, &refusal, &context);
            return match context.purpose {
                Some(Purpose::Cli {
                    redirect: to,
                    state: s,
                    ..
                }) => see_other(&with_query(
                    &to,
                    &[("error", refusal.code()), ("state", &s)],
                )),
                Some(Purpose::Console { .. }) => super::login::to_login_page(refusal.code()),
                None => error_page(StatusCode::FORBIDDEN, &refusal),
            };
        }
    };
    let login = accepted.login;
    let handed = match accepted.purpose {
        Some(Purpose::Console { binding }) => service
            .hand_over_console(login, binding)
            .map(|h| format!("/auth/saml/finish?h={h}")),
        Some(Purpose::Cli {
            redirect: to,
            state: s,
            challenge,
        }) => service
            .hand_over_cli(login, challenge)
            .map(|code| with_query(&to, &[("code", &code), ("state", &s)])),
        // IdP-initiated (allowed for this IdP): the session starts here.
        None => return idp_initiated_session(&state, addr, &login).await,
    };
    match handed {
        Ok(location) => see_other(&location),
        Err(refusal) => {
            record_refusal(&state, addr, "acs", &refusal, &RefusalContext::default());
            error_page(StatusCode::SERVICE_UNAVAILABLE, &refusal)
        }
    }
}

async fn idp_initiated_session(
    state: &AppState,
    addr: Option<&ClientAddr>,
    login: &SamlLogin,
) -> Response {
    if !state.web.enabled {
        let refusal = Refusal::Unsolicited;
        record_refusal(state, addr, "console", &refusal, &RefusalContext::default());
        return error_page(StatusCode::FORBIDDEN, &refusal);
    }
    match open_console_session(state, login, addr).await {
        Ok(cookie) => {
            let mut resp = see_other("/");
            resp.headers_mut().append(header::SET_COOKIE, cookie);
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn open_console_session(
    state: &AppState,
    login: &SamlLogin,
    addr: Option<&ClientAddr>,
) -> Result<HeaderValue, ApiError> {
    let (token, identity) = issue(state, login, "console", addr).await?;
    let cookie = state
        .web
        .sessions
        .create(token, None, &identity.subject)
        .ok_or_else(|| ApiError::internal("the system's random source failed"))?;
    Ok(state.web.set_session_cookie(Some(cookie.expose())))
}

#[derive(Deserialize)]
struct FinishQuery {
    h: String,
}

/// `GET /auth/saml/finish?h=…`: the browser that started a console login collects it.
async fn console_finish(
    State(state): State<AppState>,
    headers: HeaderMap,
    addr: Option<axum::Extension<ClientAddr>>,
    query: Result<Query<FinishQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let addr = addr.as_deref();
    let Some(service) = state.saml.clone().filter(|_| state.web.enabled) else {
        return super::login::to_login_page("saml_not_configured");
    };
    let clear = super::set_cookie(login_cookie_name(&state), None, None, state.web.tls);
    let handle = query.map(|q| q.0.h).unwrap_or_default();
    let collected = service.collect_console(&handle, cookie(&headers, login_cookie_name(&state)));
    let mut resp = match collected {
        Ok(login) => match open_console_session(&state, &login, addr).await {
            Ok(cookie) => {
                let mut resp = see_other("/");
                resp.headers_mut().append(header::SET_COOKIE, cookie);
                resp
            }
            Err(e) => e.into_response(),
        },
        Err(refusal) => {
            record_refusal(
                &state,
                addr,
                "console",
                &refusal,
                &RefusalContext::default(),
            );
            super::login::to_login_page(refusal.code())
        }
    };
    resp.headers_mut().append(header::SET_COOKIE, clear);
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CliStart {
    #[serde(default)]
    idp: Option<String>,
    redirect: String,
    state: String,
    code_challenge: String,
}

/// `POST /api/auth/saml/cli-start`: `warden login --saml` starts a login; the answer is
/// the identity provider's URL for the person's browser.
async fn cli_start(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
    ApiJson(req): ApiJson<CliStart>,
) -> Result<Json<Value>, ApiError> {
    let addr = addr.as_deref();
    let service = service(&state)?.clone();
    let bad = |m: &str| ApiError::bad_request("invalid_login_request", m);
    if !is_loopback_redirect(&req.redirect) {
        return Err(bad(
            "redirect must be http://127.0.0.1:PORT/... or http://[::1]:PORT/...",
        ));
    }
    if req.redirect.len() > 256 {
        return Err(bad("redirect must be at most 256 characters"));
    }
    let url_safe = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    };
    if req.state.is_empty() || req.state.len() > 128 || !url_safe(&req.state) {
        return Err(bad("state must be 1 to 128 URL-safe characters"));
    }
    if req.code_challenge.len() != 43 || !url_safe(&req.code_challenge) {
        return Err(bad(
            "code_challenge must be a PKCE S256 challenge (43 characters)",
        ));
    }
    let purpose = Purpose::Cli {
        redirect: req.redirect,
        state: req.state,
        challenge: req.code_challenge,
    };
    match service
        .start(req.idp.as_deref(), purpose, client_ip(addr))
        .await
    {
        Ok((url, _)) => Ok(Json(json!({"url": url}))),
        Err((refusal, context)) => {
            record_refusal(&state, addr, "cli", &refusal, &context);
            let (status, message) = match refusal {
                Refusal::UnknownIdp(_) => (StatusCode::NOT_FOUND, refusal.to_string()),
                Refusal::Busy => (StatusCode::TOO_MANY_REQUESTS, refusal.to_string()),
                // What failed, and where, is for the audit log, not for anyone asking.
                _ => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the identity provider cannot be used now".to_string(),
                ),
            };
            Err(ApiError::new(status, refusal.code(), message))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CliToken {
    code: Secret<String>,
    code_verifier: Secret<String>,
}

/// `POST /api/auth/saml/token`: the CLI redeems its one-time code for the session token.
async fn cli_token(
    State(state): State<AppState>,
    addr: Option<axum::Extension<ClientAddr>>,
    ApiJson(req): ApiJson<CliToken>,
) -> Result<Json<Value>, ApiError> {
    let addr = addr.as_deref();
    let service = service(&state)?.clone();
    let login = match service.redeem(req.code.expose(), req.code_verifier.expose()) {
        Ok(login) => login,
        Err(refusal) => {
            record_refusal(&state, addr, "cli", &refusal, &RefusalContext::default());
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                refusal.code(),
                refusal.to_string(),
            ));
        }
    };
    let (token, identity) = issue(&state, &login, "cli", addr).await?;
    Ok(Json(json!({
        "token": token.expose(),
        "subject": identity.subject,
        "groups": identity.groups,
        "expires_at": identity.expires_at.map(timefmt::rfc3339),
        "idp": login.idp,
    })))
}

/// Only a redirect to this machine: the CLI's loopback listener (RFC 8252).
fn is_loopback_redirect(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    parsed.scheme() == "http"
        && parsed.port().is_some()
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.fragment().is_none()
        && parsed.query().is_none()
        && matches!(parsed.host_str(), Some("127.0.0.1" | "[::1]"))
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    match reqwest::Url::parse(base) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            url.to_string()
        }
        Err(_) => base.to_string(),
    }
}

/// A refusal shown to a browser that has no page of ours to go back to.
fn error_page(status: StatusCode, refusal: &Refusal) -> Response {
    let body = format!(
        "<!doctype html><title>Warden</title><p>The login was refused ({}).</p>",
        refusal.code()
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_redirects_are_accepted() {
        for ok in [
            "http://127.0.0.1:5000/callback",
            "http://[::1]:5000/callback",
        ] {
            assert!(is_loopback_redirect(ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:5000/callback",
            "http://127.0.0.1/callback",
            "http://evil.example:5000/callback",
            "http://127.0.0.1.evil.example:5000/",
            "http://user@127.0.0.1:5000/",
            "http://127.0.0.1:5000/cb?x=1",
            "http://127.0.0.2:5000/cb",
            "javascript:alert(1)",
            // RFC 8252 §8.3: a name may resolve elsewhere.
            "http://localhost:1/cb",
        ] {
            assert!(!is_loopback_redirect(bad), "{bad}");
        }
    }
}
