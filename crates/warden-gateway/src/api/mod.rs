//! The REST API: routes, shared state, and the OpenAPI document generated from the
//! handlers' annotations.

mod access_requests;
mod agents;
mod audit;
mod changes;
mod connections;
mod error;
mod extract;
mod keys;
mod policies;
mod reviews;
mod sessions;
mod ssh_keys;
mod system;
mod tunnel;
mod upgrade;
mod webhooks;

pub use error::{ApiError, ErrorBody};
pub use extract::ClientAddr;
pub(crate) use extract::{ApiJson, is_admin};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::sync::Arc;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use warden_core::Event;
use warden_store::{AuditJournal, Store};

use crate::access::AccessControl;
use crate::auth::Authenticator;
use crate::config::Config;
use crate::policy::PolicyRegistry;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState(Arc<StateInner>);

pub struct StateInner {
    pub store: Arc<Store>,
    pub journal: Arc<AuditJournal>,
    pub auth: Arc<Authenticator>,
    pub policies: Arc<PolicyRegistry>,
    pub access: Arc<AccessControl>,
    /// Ends open sessions whose credential is revoked.
    pub watch: Arc<crate::session_watch::SessionWatch>,
    /// Where failed authentications are recorded, repeats counted.
    pub repeats: Arc<crate::repeats::RepeatLog>,
    /// Poked after webhooks change, so delivery picks them up at once.
    pub webhooks_changed: Arc<tokio::sync::Notify>,
    /// Where `warden connect` tunnels lead.
    pub tunnels: Arc<crate::tunnel::TunnelTargets>,
    /// Connected network agents.
    pub agents: Arc<warden_agent::AgentHub>,
    /// The web console's sessions and login.
    pub web: Arc<crate::web::WebConsole>,
    /// SAML single sign-on, when `auth.saml` is configured.
    pub saml: Option<Arc<crate::auth::saml::SamlService>>,
    pub config: Arc<Config>,
}

impl std::ops::Deref for AppState {
    type Target = StateInner;
    fn deref(&self) -> &StateInner {
        &self.0
    }
}

/// Records a `policy.weakened` event. The change itself is already recorded (with
/// what it weakened) in its own event; a failure here is logged, not answered.
pub(crate) async fn record_weakening(state: &AppState, event: &warden_core::Event) {
    if let Err(e) = state.store.append_audit(event).await {
        tracing::error!(error = %e, "could not record a policy.weakened event");
    }
}

impl AppState {
    pub fn new(inner: StateInner) -> Self {
        Self(Arc::new(inner))
    }

    /// Appends to the audit log; a failure fails the request (fail closed).
    pub async fn audit(&self, event: &Event) -> Result<(), ApiError> {
        self.store
            .append_audit(event)
            .await
            .map(|_| ())
            .map_err(|e| ApiError::store(&e))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warden API",
        description = "Manage connections, API keys, sessions and the audit log of a Warden gateway. \
                       Every /api call needs `Authorization: Bearer <token>`: an OIDC JWT or a Warden API key."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "system", description = "Health and identity"),
        (name = "connections", description = "Registered targets and their held credentials"),
        (name = "api-keys", description = "Short-lived credentials for CI jobs and agents"),
        (name = "audit", description = "The tamper-evident audit log"),
        (name = "sessions", description = "Client sessions through the proxies"),
        (name = "policies", description = "Guardrail, review and masking sets"),
        (name = "ssh-keys", description = "SSH public keys users register for key logins"),
        (name = "access-requests", description = "Just-in-time access: time-boxed grants approved by reviewers"),
        (name = "reviews", description = "Commands held until reviewers approve them"),
        (name = "webhooks", description = "Signed event deliveries, with retries and dead letters"),
        (name = "agents", description = "Network agents that carry connections into private networks"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// Builds the router and the OpenAPI document from the same route list.
pub fn router(state: AppState) -> Router {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(system::healthz))
        .routes(routes!(system::readyz))
        .routes(routes!(system::me))
        .routes(routes!(system::auth_config))
        .routes(routes!(connections::list, connections::create))
        .routes(routes!(
            connections::get,
            connections::update,
            connections::delete
        ))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::revoke))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(policies::list))
        .routes(routes!(policies::evaluate))
        .routes(routes!(policies::get, policies::put, policies::delete))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::get))
        .routes(routes!(sessions::recording))
        .routes(routes!(sessions::terminal))
        .routes(routes!(ssh_keys::list, ssh_keys::create))
        .routes(routes!(ssh_keys::delete))
        .routes(routes!(access_requests::list, access_requests::create))
        .routes(routes!(access_requests::get))
        .routes(routes!(access_requests::approve))
        .routes(routes!(access_requests::reject))
        .routes(routes!(access_requests::revoke))
        .routes(routes!(reviews::list, reviews::create))
        .routes(routes!(reviews::get))
        .routes(routes!(reviews::approve))
        .routes(routes!(reviews::reject))
        .routes(routes!(webhooks::list, webhooks::create))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::dead_letters))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::sinks))
        .routes(routes!(tunnel::open))
        .routes(routes!(agents::list, agents::create))
        .routes(routes!(agents::get, agents::update, agents::delete))
        .routes(routes!(agents::revoke))
        .routes(routes!(agents::rotate))
        .routes(routes!(agents::tunnel))
        .split_for_parts();
    let spec = openapi.to_json().unwrap_or_else(|_| "{}".to_string());
    let max_body = state.config.api.max_body_bytes;
    router
        .merge(crate::web::router(&state))
        .merge(crate::web::saml_router())
        .route(
            "/api/openapi.json",
            axum::routing::get(move || {
                let spec = spec.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        spec,
                    )
                }
            }),
        )
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
            .into_response()
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(
            changes::refuse_unhonoured_dry_run,
        ))
        .with_state(state)
}
