//! `/api/webhooks` (admins): subscriptions to audit events, delivered as signed
//! JSON POSTs (see `crate::events`), with each target's delivery state and dead
//! letters; `/api/event-sinks` shows the configured SIEM sinks' state.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use warden_core::{Event, Secret, timefmt};
use warden_store::outbox::{Cursor, DeadLetter, Webhook, webhook_target};

use super::changes::{DryRun, FieldChange, changes};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{ApiError, AppState, ErrorBody};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookCreate {
    /// `https://...` (or `http://` for receivers on the same host or network).
    pub url: String,
    /// Event kinds: exact (`review.request`), a family (`access.*`), a kind in every
    /// family (`*.query`) or `*`. Empty: all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events with these decisions: `allow`, `deny`, `review`. Empty: any.
    #[serde(default)]
    pub decisions: Vec<String>,
    /// The HMAC key receivers verify with; generated (and shown once) if absent.
    pub secret: Option<String>,
    pub description: Option<String>,
}

/// A change to a webhook: only the fields given change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookUpdate {
    #[serde(default, deserialize_with = "super::connections::present")]
    #[schema(value_type = Option<String>)]
    pub url: Option<Option<String>>,
    /// `[]`: every kind.
    #[serde(default, deserialize_with = "super::connections::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub kinds: Option<Option<Vec<String>>>,
    /// `[]`: any decision.
    #[serde(default, deserialize_with = "super::connections::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub decisions: Option<Option<Vec<String>>>,
    /// A new signing key (write-only); receivers must switch to it.
    #[serde(default, deserialize_with = "super::connections::present")]
    #[schema(value_type = Option<String>, write_only)]
    pub secret: Option<Option<String>>,
    /// A new description, or `null` to remove it.
    #[serde(default, deserialize_with = "super::connections::present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
}

/// A changed webhook and what changed (the secret only as `(new)`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookChanged {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub changes: Vec<FieldChange>,
    /// `true`: checked only (`?dry_run=true`); nothing was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// Delivery state: the last event handled and any current failure.
    pub delivery: Option<Cursor>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: Webhook,
    /// Present only when the gateway generated it: store it now, it is not shown again.
    pub secret: Option<String>,
    /// `true`: checked only (`?dry_run=true`); nothing was stored.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SinkView {
    pub name: String,
    pub kind: String,
    pub format: String,
    pub delivery: Option<Cursor>,
    pub dead_letters: Vec<DeadLetter>,
}

fn validate(req: &WebhookCreate) -> Result<(), ApiError> {
    let bad = |m: &str| Err(ApiError::bad_request("invalid_webhook", m));
    let url = req.url.trim();
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
        return bad("url must be an http(s) URL of at most 2048 characters");
    }
    if reqwest::Url::parse(url).is_err() {
        return bad("url is not a valid URL");
    }
    if req.kinds.len() > 64 || req.kinds.iter().any(|k| k.is_empty() || k.len() > 128) {
        return bad("kinds: at most 64 patterns of 1 to 128 characters");
    }
    if req
        .decisions
        .iter()
        .any(|d| !matches!(d.as_str(), "allow" | "deny" | "review"))
    {
        return bad("decisions may be `allow`, `deny` or `review`");
    }
    if let Some(s) = &req.secret
        && (s.len() < 16 || s.len() > 512)
    {
        return bad("secret must be 16 to 512 characters");
    }
    if req.description.as_ref().is_some_and(|d| d.len() > 500) {
        return bad("description must be at most 500 characters");
    }
    Ok(())
}

/// A stored webhook, or 404.
async fn stored(state: &AppState, id: Uuid) -> Result<Webhook, ApiError> {
    state
        .store
        .webhook(id)
        .await
        .map_err(|e| ApiError::store(&e))?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id}")))
}

/// Tells URLs apart without showing them: the first 16 hex digits of their SHA-256.
fn url_digest(url: &str) -> String {
    let mut hex = warden_store::sha256_hex(url.as_bytes());
    hex.truncate(16);
    hex
}

fn generate_secret() -> Result<String, ApiError> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| ApiError::internal("no randomness"))?;
    Ok(format!("whsec_{}", warden_store::hex(&raw)))
}

#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = Vec<WebhookView>), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<WebhookView>>, ApiError> {
    caller.require_admin(&state, "webhook.list").await?;
    let hooks = state
        .store
        .list_webhooks()
        .await
        .map_err(|e| ApiError::store(&e))?;
    let mut out = Vec::with_capacity(hooks.len());
    for w in hooks {
        let delivery = state
            .store
            .cursor(&webhook_target(w.id))
            .await
            .map_err(|e| ApiError::store(&e))?;
        out.push(WebhookView {
            webhook: w,
            delivery,
        });
    }
    Ok(Json(out))
}

/// Subscribe a URL to events, from now on.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(DryRun),
    request_body = WebhookCreate,
    responses((status = 201, body = WebhookCreated), (status = 400, body = ErrorBody),
              (status = 403, body = ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(dry): ApiQuery<DryRun>,
    ApiJson(req): ApiJson<WebhookCreate>,
) -> Result<(StatusCode, Json<WebhookCreated>), ApiError> {
    caller.require_admin(&state, "webhook.create").await?;
    validate(&req)?;
    let webhook = Webhook {
        // A dry run assigns no id.
        id: if dry.dry_run {
            Uuid::nil()
        } else {
            Uuid::now_v7()
        },
        url: req.url.trim().to_string(),
        kinds: req.kinds,
        decisions: req.decisions,
        description: req.description,
        created_by: caller.identity.subject.clone(),
        created_at: timefmt::now(),
    };
    if dry.dry_run {
        return Ok((
            StatusCode::OK,
            Json(WebhookCreated {
                webhook,
                secret: None,
                dry_run: true,
            }),
        ));
    }
    let (secret, shown) = match req.secret {
        Some(s) => (s, None),
        None => {
            let s = generate_secret()?;
            (s.clone(), Some(s))
        }
    };
    let event = Event::new(
        "webhook.create",
        json!({"webhook": webhook.id, "url": warden_store::url_origin(&webhook.url),
               "url_sha256": url_digest(&webhook.url),
               "kinds": webhook.kinds, "decisions": webhook.decisions}),
    )
    .by(&caller.identity);
    state
        .store
        .insert_webhook(&webhook, &Secret::new(secret), &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    state.webhooks_changed.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(WebhookCreated {
            webhook,
            secret: shown,
            dry_run: false,
        }),
    ))
}

#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = WebhookView), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<WebhookView>, ApiError> {
    caller.require_admin(&state, "webhook.get").await?;
    let webhook = stored(&state, id).await?;
    let delivery = state
        .store
        .cursor(&webhook_target(id))
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(WebhookView { webhook, delivery }))
}

/// Change a webhook's URL, filters, description or secret; its delivery position is
/// kept.
#[utoipa::path(patch, path = "/api/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path), DryRun),
    request_body = WebhookUpdate,
    responses((status = 200, body = WebhookChanged), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
    ApiQuery(dry): ApiQuery<DryRun>,
    ApiJson(req): ApiJson<WebhookUpdate>,
) -> Result<Json<WebhookChanged>, ApiError> {
    caller.require_admin(&state, "webhook.update").await?;
    let before = stored(&state, id).await?;
    // Only the description can be removed: a null elsewhere is a mistake, not "keep".
    let required = |field: &str| {
        ApiError::bad_request(
            "invalid_webhook",
            format!("{field} cannot be null (kinds and decisions: [] means all)"),
        )
    };
    let (url, kinds, decisions, secret) = match (req.url, req.kinds, req.decisions, req.secret) {
        (Some(None), ..) => return Err(required("url")),
        (_, Some(None), ..) => return Err(required("kinds")),
        (_, _, Some(None), _) => return Err(required("decisions")),
        (.., Some(None)) => return Err(required("secret")),
        (u, k, d, s) => (u.flatten(), k.flatten(), d.flatten(), s.flatten()),
    };
    let mut after = before.clone();
    if let Some(url) = url {
        after.url = url.trim().to_string();
    }
    if let Some(kinds) = kinds {
        after.kinds = kinds;
    }
    if let Some(decisions) = decisions {
        after.decisions = decisions;
    }
    if let Some(description) = req.description {
        after.description = description;
    }
    validate(&WebhookCreate {
        url: after.url.clone(),
        kinds: after.kinds.clone(),
        decisions: after.decisions.clone(),
        secret: secret.clone(),
        description: after.description.clone(),
    })?;
    let view = |w: &Webhook| {
        json!({"url": warden_store::url_origin(&w.url), "kinds": w.kinds,
               "decisions": w.decisions, "description": w.description})
    };
    let mut changes = changes(&view(&before), &view(&after));
    if after.url != before.url && !changes.iter().any(|c| c.field == "url") {
        // Only what the shown form hides changed (path, query, credentials).
        changes.push(FieldChange {
            field: "url".into(),
            before: json!(warden_store::url_origin(&before.url)),
            after: json!(format!(
                "{} (changed)",
                warden_store::url_origin(&after.url)
            )),
        });
    }
    if secret.is_some() {
        changes.push(FieldChange {
            field: "secret".into(),
            before: json!("(held)"),
            after: json!("(new)"),
        });
    }
    if dry.dry_run || changes.is_empty() {
        return Ok(Json(WebhookChanged {
            webhook: after,
            changes,
            dry_run: dry.dry_run,
        }));
    }
    let fields: Vec<&str> = changes.iter().map(|c| c.field.as_str()).collect();
    let event = Event::new(
        "webhook.update",
        json!({"webhook": id, "url": warden_store::url_origin(&after.url), "url_sha256": url_digest(&after.url),
               "kinds": after.kinds, "decisions": after.decisions, "changed": fields}),
    )
    .by(&caller.identity);
    let new_receiver = secret.is_some() || after.url != before.url;
    let secret = secret.map(Secret::new);
    if !state
        .store
        .update_webhook(&after, secret.as_ref(), new_receiver, &event)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    state.webhooks_changed.notify_one();
    Ok(Json(WebhookChanged {
        webhook: after,
        changes,
        dry_run: false,
    }))
}

/// Unsubscribe; its dead letters stay listed.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "webhook.delete").await?;
    let event = Event::new("webhook.delete", json!({"webhook": id})).by(&caller.identity);
    if !state
        .store
        .delete_webhook(id, &event)
        .await
        .map_err(|e| ApiError::store(&e))?
    {
        return Err(ApiError::not_found(format!("webhook {id}")));
    }
    state.webhooks_changed.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// Events this webhook gave up on after `events.max_attempts`, newest first.
#[utoipa::path(get, path = "/api/webhooks/{id}/dead-letters", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<DeadLetter>)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<DeadLetter>>, ApiError> {
    caller.require_admin(&state, "webhook.dead_letters").await?;
    let letters = state
        .store
        .dead_letters(&webhook_target(id), 1000)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(Json(letters))
}

/// The configured SIEM sinks: delivery state and dead letters.
#[utoipa::path(get, path = "/api/event-sinks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = Vec<SinkView>)))]
pub async fn sinks(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SinkView>>, ApiError> {
    caller.require_admin(&state, "event_sinks.list").await?;
    let mut out = Vec::new();
    for s in &state.config.events.sinks {
        let target = format!("siem:{}", s.name);
        let store_err = |e: warden_store::StoreError| ApiError::store(&e);
        out.push(SinkView {
            name: s.name.clone(),
            kind: format!("{:?}", s.kind).to_lowercase(),
            format: format!("{:?}", s.format).to_lowercase(),
            delivery: state.store.cursor(&target).await.map_err(store_err)?,
            dead_letters: state
                .store
                .dead_letters(&target, 100)
                .await
                .map_err(store_err)?,
        });
    }
    Ok(Json(out))
}

/// Deliver a dead letter again, now; on success it leaves the list.
#[utoipa::path(post, path = "/api/webhooks/{id}/dead-letters/{letter}/redeliver", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = Uuid, Path), ("letter" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 502, body = ErrorBody)))]
pub async fn redeliver(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, letter)): Path<(Uuid, Uuid)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "webhook.redeliver").await?;
    let target = webhook_target(id);
    let found = state
        .store
        .dead_letters(&target, 1000)
        .await
        .map_err(|e| ApiError::store(&e))?
        .into_iter()
        .find(|l| l.id == letter)
        .ok_or_else(|| ApiError::not_found(format!("dead letter {letter} of webhook {id}")))?;
    if let Err(e) =
        crate::events::deliver_now(&state.store, &state.config.events, id, found.seq).await
    {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "delivery_failed",
            format!("the receiver did not take it: {e}"),
        ));
    }
    let event = Event::new(
        "webhook.redeliver",
        json!({"webhook": id, "letter": letter, "event_id": found.event_id, "seq": found.seq}),
    )
    .by(&caller.identity);
    state
        .store
        .delete_dead_letter(&target, letter, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    Ok(StatusCode::NO_CONTENT)
}
