//! Health, readiness and "who am I".

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use warden_core::Identity;

use super::extract::Caller;
use super::{ApiError, AppState, ErrorBody};

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "system", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The gateway can serve: its store answers.
#[utoipa::path(get, path = "/readyz", tag = "system",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.store.ping().await {
        Ok(()) => Ok(Json(Health { status: "ready" })),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the state store is not reachable",
            ))
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    #[serde(flatten)]
    pub identity: Identity,
    pub is_admin: bool,
}

/// The caller's identity as the gateway sees it.
#[utoipa::path(get, path = "/api/me", tag = "system", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn me(caller: Caller) -> Json<Me> {
    Json(Me {
        identity: caller.identity,
        is_admin: caller.is_admin,
    })
}

/// What the `warden` CLI needs to log people in.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AuthConfigView {
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
}

/// Where and as which client `warden login` signs people in (no token needed).
#[utoipa::path(get, path = "/api/auth/config", tag = "system",
    responses((status = 200, body = AuthConfigView), (status = 404, body = ErrorBody)))]
pub async fn auth_config(State(state): State<AppState>) -> Result<Json<AuthConfigView>, ApiError> {
    let cli = state.config.auth.cli.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "login_not_configured",
            "this gateway has no CLI login configured (auth.cli); use WARDEN_TOKEN",
        )
    })?;
    Ok(Json(AuthConfigView {
        issuer: cli.issuer.clone(),
        client_id: cli.client_id.clone(),
        scopes: cli.scopes.clone(),
        resource: cli.resource.clone(),
    }))
}
