//! `/api/policies`: guardrail (and review) and masking sets (admins). Sets from the
//! config file are listed but read-only. `POST /api/policies/evaluate` dry-runs
//! actions and values against sets, so rules can be tried before they are attached.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use warden_core::{
    Action, ColumnRef, ConnectionKind, Decision, Event, Guard, Masked, PolicyRefs, SqlDialect,
    ValueKind,
};
use warden_policy::{GuardrailSet, Guardrails, MaskingEngine, MaskingSet, weaken};
use warden_store::StoreError;
use warden_store::policies::{PolicyExpect, policy_version};

use super::changes::{DryRun, changes};
use super::extract::{ApiJson, ApiQuery, Caller};
use super::{ApiError, AppState, ErrorBody};
use crate::policy::{GUARDRAILS, MASKING, PolicyResolveError, PolicySource};

#[derive(Serialize, utoipa::ToSchema)]
pub struct GuardrailEntry {
    pub source: PolicySource,
    #[serde(flatten)]
    pub set: GuardrailSet,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MaskingEntry {
    pub source: PolicySource,
    #[serde(flatten)]
    pub set: MaskingSet,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PolicyList {
    pub guardrails: Vec<GuardrailEntry>,
    pub masking: Vec<MaskingEntry>,
}

fn resolve_error(e: PolicyResolveError) -> ApiError {
    match e {
        PolicyResolveError::Store(e) => ApiError::store(&e),
        other => ApiError::new(StatusCode::CONFLICT, "policy_invalid", other.to_string()),
    }
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    if kind == GUARDRAILS || kind == MASKING {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "policy kind `{kind}` (use `guardrails` or `masking`)"
        )))
    }
}

/// All sets, with their source.
#[utoipa::path(get, path = "/api/policies", tag = "policies", security(("bearer" = [])),
    responses((status = 200, body = PolicyList), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<PolicyList>, ApiError> {
    caller.require_admin(&state, "policy.list").await?;
    let sets = state.policies.all().await.map_err(resolve_error)?;
    Ok(Json(PolicyList {
        guardrails: sets
            .guardrails
            .into_iter()
            .map(|(source, set)| GuardrailEntry { source, set })
            .collect(),
        masking: sets
            .masking
            .into_iter()
            .map(|(source, set)| MaskingEntry { source, set })
            .collect(),
    }))
}

/// One set; an API set comes with its version as `ETag`, for `If-Match` on `PUT`.
#[utoipa::path(get, path = "/api/policies/{kind}/{name}", tag = "policies", security(("bearer" = [])),
    params(("kind" = String, Path, description = "`guardrails` or `masking`"), ("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require_admin(&state, "policy.get").await?;
    check_kind(&kind)?;
    // An API set: the answer and its version from the same read of the store, so a
    // write in between cannot pair one version's body with another's ETag.
    let stored = state
        .store
        .policy_set_body(&kind, &name)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if let Some(body) = stored {
        let parsed = if kind == GUARDRAILS {
            serde_json::from_str::<GuardrailSet>(&body).and_then(|set| {
                serde_json::to_value(GuardrailEntry {
                    source: PolicySource::Api,
                    set,
                })
            })
        } else {
            serde_json::from_str::<MaskingSet>(&body).and_then(|set| {
                serde_json::to_value(MaskingEntry {
                    source: PolicySource::Api,
                    set,
                })
            })
        };
        let v = parsed.map_err(|e| ApiError::internal(format!("stored set unreadable: {e}")))?;
        let mut answer = Json(v).into_response();
        if let Ok(tag) = format!("\"{}\"", policy_version(&body)).parse() {
            answer.headers_mut().insert(header::ETAG, tag);
        }
        return Ok(answer);
    }
    let sets = state.policies.all().await.map_err(resolve_error)?;
    let found = if kind == GUARDRAILS {
        sets.guardrails
            .into_iter()
            .find(|(_, s)| s.name == name)
            .map(|(source, set)| serde_json::to_value(GuardrailEntry { source, set }))
    } else {
        sets.masking
            .into_iter()
            .find(|(_, s)| s.name == name)
            .map(|(source, set)| serde_json::to_value(MaskingEntry { source, set }))
    };
    // A configuration-file set (read-only: no version).
    match found {
        Some(Ok(v)) => Ok(Json(v).into_response()),
        _ => Err(ApiError::not_found(format!("{kind} policy `{name}`"))),
    }
}

/// 412: the set is not what the request expected to find.
fn precondition_failed(kind: &str, name: &str, expect: &PolicyExpect) -> ApiError {
    let (code, message) = match expect {
        PolicyExpect::Absent => (
            "policy_exists",
            format!("{kind} policy `{name}` exists (If-None-Match: *): change it instead"),
        ),
        PolicyExpect::Version(_) => (
            "policy_changed",
            format!(
                "{kind} policy `{name}` is not the version given in If-Match (changed or removed since it was read): read it again and reapply the change"
            ),
        ),
        PolicyExpect::Any => (
            "policy_changed",
            format!(
                "{kind} policy `{name}` was changed by another writer at the same moment: try again"
            ),
        ),
    };
    ApiError::new(StatusCode::PRECONDITION_FAILED, code, message)
}

/// What `If-Match` (a version from `ETag`) or `If-None-Match: *` ask a `PUT` to find.
fn expectation(headers: &HeaderMap) -> Result<PolicyExpect, ApiError> {
    let text = |name| {
        headers
            .get(name)
            .map(|v| v.to_str().map(|s| s.trim().to_string()))
            .transpose()
            .map_err(|_| {
                ApiError::bad_request("invalid_header", "If-Match and If-None-Match must be text")
            })
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_header",
            "give If-Match or If-None-Match, not both",
        )),
        (None, Some(any)) if any == "*" => Ok(PolicyExpect::Absent),
        (None, Some(_)) => Err(ApiError::bad_request(
            "invalid_header",
            "If-None-Match takes only `*` (create, never replace)",
        )),
        (Some(tag), None) => Ok(PolicyExpect::Version(tag.trim_matches('"').to_string())),
        (None, None) => Ok(PolicyExpect::Any),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_policy", message)
}

/// Create or replace a set (admins). The body is the set; its `name` must match the
/// path. A replacement that matches or masks less than the set it replaces (a rule
/// removed or narrowed, an action or fallback relaxed, a detector or column dropped)
/// answers with `weakened` naming each and records a `policy.weakened` event.
#[utoipa::path(put, path = "/api/policies/{kind}/{name}", tag = "policies", security(("bearer" = [])),
    params(("kind" = String, Path, description = "`guardrails` or `masking`"), ("name" = String, Path), DryRun),
    request_body(content = Object, description = "A GuardrailSet or MaskingSet"),
    responses((status = 200, body = Object), (status = 201, body = Object), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
    ApiQuery(dry): ApiQuery<DryRun>,
    headers: HeaderMap,
    ApiJson(mut body): ApiJson<Value>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_admin(&state, "policy.put").await?;
    check_kind(&kind)?;
    let expect = expectation(&headers)?;
    if let Value::Object(map) = &mut body {
        match map.get("name") {
            None => {
                map.insert("name".into(), Value::String(name.clone()));
            }
            Some(Value::String(n)) if *n == name => {}
            Some(_) => return Err(invalid("`name` in the body must match the path")),
        }
    }
    if state.policies.is_config_defined(&kind, &name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_read_only",
            format!("{kind} policy `{name}` is defined in the config file"),
        ));
    }
    // Parse and compile before storing: only sets that work are kept. What the new
    // version no longer matches or masks, against the one it replaces, is reported.
    let sets = state.policies.all().await.map_err(resolve_error)?;
    let (canonical, old, weakened) = if kind == GUARDRAILS {
        let set: GuardrailSet = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
        Guardrails::compile(std::slice::from_ref(&set), &[]).map_err(|e| invalid(e.to_string()))?;
        let old = sets.guardrails.into_iter().find(|(_, s)| s.name == name);
        let weakened = old
            .as_ref()
            .map(|(_, o)| weaken::guardrail_weakening(o, &set))
            .unwrap_or_default();
        let old = old.map(|(_, o)| serde_json::to_value(o));
        (serde_json::to_value(&set), old, weakened)
    } else {
        let set: MaskingSet = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
        set.validate().map_err(|e| invalid(e.to_string()))?;
        let old = sets.masking.into_iter().find(|(_, s)| s.name == name);
        let weakened = old
            .as_ref()
            .map(|(_, o)| weaken::masking_weakening(o, &set))
            .unwrap_or_default();
        let old = old.map(|(_, o)| serde_json::to_value(o));
        (serde_json::to_value(&set), old, weakened)
    };
    let canonical = canonical.map_err(|e| invalid(e.to_string()))?;
    let old = old.and_then(Result::ok);
    let changes = changes(old.as_ref().unwrap_or(&Value::Null), &canonical);
    let mut answer = canonical.clone();
    answer["changes"] = json!(changes);
    if !weakened.is_empty() {
        answer["weakened"] = json!(weakened);
    }
    if dry.dry_run {
        let body = state
            .store
            .policy_set_body(&kind, &name)
            .await
            .map_err(|e| ApiError::store(&e))?;
        let holds = match (&expect, &body) {
            (PolicyExpect::Absent, Some(_)) | (PolicyExpect::Version(_), None) => false,
            (PolicyExpect::Version(v), Some(b)) => policy_version(b) == *v,
            _ => true,
        };
        if !holds {
            return Err(precondition_failed(&kind, &name, &expect));
        }
        answer["dry_run"] = json!(true);
        return Ok((StatusCode::OK, Json(answer)));
    }
    // The same set again: nothing to store, nothing to record (unless it was to be
    // created only, which the store refuses).
    if old.as_ref() == Some(&canonical) && expect != PolicyExpect::Absent {
        return Ok((StatusCode::OK, Json(answer)));
    }
    let text = canonical.to_string();
    let mut payload = json!({"kind": kind, "name": name, "set": canonical});
    if !weakened.is_empty() {
        payload["weakened"] = json!(weakened);
    }
    let event = Event::new("policy.put", payload).by(&caller.identity);
    let created = state
        .store
        .put_policy_set(&kind, &name, &text, &event, &expect)
        .await
        .map_err(|e| match e {
            StoreError::Conflict(_) => precondition_failed(&kind, &name, &expect),
            other => ApiError::store(&other),
        })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    if !weakened.is_empty() {
        let event = Event::new(
            "policy.weakened",
            json!({"object": kind, "name": name, "weakened": weakened,
                   "before": old, "after": canonical}),
        )
        .by(&caller.identity);
        super::record_weakening(&state, &event).await;
    }
    Ok((status, Json(answer)))
}

/// Delete a set (admins); refused while a connection uses it.
#[utoipa::path(delete, path = "/api/policies/{kind}/{name}", tag = "policies", security(("bearer" = [])),
    params(("kind" = String, Path, description = "`guardrails` or `masking`"), ("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path((kind, name)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin(&state, "policy.delete").await?;
    check_kind(&kind)?;
    if state.policies.is_config_defined(&kind, &name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_read_only",
            format!("{kind} policy `{name}` is defined in the config file"),
        ));
    }
    let users: Vec<String> = state
        .store
        .list_connections()
        .await
        .map_err(|e| ApiError::store(&e))?
        .into_iter()
        .filter(|c| {
            let p = &c.policies;
            if kind == GUARDRAILS {
                p.guardrails.contains(&name) || p.reviews.contains(&name)
            } else {
                p.masking.contains(&name)
            }
        })
        .map(|c| c.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "policy_in_use",
            format!(
                "{kind} policy `{name}` is attached to: {}",
                users.join(", ")
            ),
        ));
    }
    let event =
        Event::new("policy.delete", json!({"kind": kind, "name": name})).by(&caller.identity);
    let existed = state
        .store
        .delete_policy_set(&kind, &name, &event)
        .await
        .map_err(|e| ApiError::store(&e))?;
    if !existed {
        return Err(ApiError::not_found(format!("{kind} policy `{name}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpRequestSpec {
    pub method: String,
    pub path: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValueSpec {
    /// `column`, `table.column` or `schema.table.column`, as a proxy would know it.
    pub column: Option<String>,
    /// The column's type class (default `text`); dates, booleans and UUIDs are not searched.
    pub kind: Option<ValueKind>,
    pub value: String,
}

/// What to evaluate, against a connection's sets or against named sets.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EvaluateRequest {
    /// Use this connection's attached sets.
    pub connection: Option<String>,
    /// Or these sets.
    #[serde(default)]
    pub policies: PolicyRefs,
    pub sql: Option<String>,
    /// Default: from the connection kind, else `postgres`.
    pub dialect: Option<SqlDialect>,
    pub shell: Option<String>,
    pub http: Option<HttpRequestSpec>,
    /// Result values to mask.
    #[serde(default)]
    pub values: Vec<ValueSpec>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MaskedValue {
    /// The value as a client would see it; `null` for SQL NULL.
    pub value: Option<String>,
    /// What was found: detector names, custom detector names, or `column`.
    pub found: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EvaluateResponse {
    /// The decision for the action, when one was given.
    pub decision: Option<Decision>,
    pub masked: Vec<MaskedValue>,
}

fn column_ref(text: &str, kind: ValueKind) -> ColumnRef<'_> {
    let parts: Vec<&str> = text.split('.').collect();
    let (schema, table, column) = match parts.as_slice() {
        [s, t, c] => (Some(*s), Some(*t), *c),
        [t, c] => (None, Some(*t), *c),
        _ => (None, None, text),
    };
    ColumnRef {
        schema,
        table,
        column,
        kind,
    }
}

/// Dry-run an action and values against policy sets (admins). Nothing is executed.
#[utoipa::path(post, path = "/api/policies/evaluate", tag = "policies", security(("bearer" = [])),
    request_body = EvaluateRequest,
    responses((status = 200, body = EvaluateResponse), (status = 400, body = ErrorBody)))]
pub async fn evaluate(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<EvaluateRequest>,
) -> Result<Json<EvaluateResponse>, ApiError> {
    caller.require_admin(&state, "policy.evaluate").await?;
    let actions = [req.sql.is_some(), req.shell.is_some(), req.http.is_some()]
        .iter()
        .filter(|a| **a)
        .count();
    if actions > 1 {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give at most one of `sql`, `shell`, `http`",
        ));
    }
    let (refs, kind) = match &req.connection {
        Some(name) => {
            let conn = state
                .store
                .get_connection(name)
                .await
                .map_err(|e| ApiError::store(&e))?
                .ok_or_else(|| ApiError::not_found(format!("connection `{name}`")))?;
            (conn.policies, Some(conn.kind))
        }
        None => (req.policies, None),
    };
    let (guard, masker): (Guardrails, MaskingEngine) =
        state.policies.resolve(&refs).await.map_err(|e| match e {
            PolicyResolveError::Unknown { .. } => {
                ApiError::bad_request("unknown_policy", e.to_string())
            }
            other => resolve_error(other),
        })?;
    let dialect = req.dialect.unwrap_or(match kind {
        Some(ConnectionKind::Mysql) => SqlDialect::Mysql,
        _ => SqlDialect::Postgres,
    });
    let decision = if let Some(sql) = &req.sql {
        Some(guard.decide(&Action::Sql { dialect, text: sql }))
    } else if let Some(cmd) = &req.shell {
        Some(guard.decide(&Action::Shell { command: cmd }))
    } else {
        req.http.as_ref().map(|h| {
            guard.decide(&Action::Http {
                method: &h.method,
                path: &h.path,
            })
        })
    };
    let masked = req
        .values
        .iter()
        .map(|v| {
            let kind = v.kind.unwrap_or_default();
            let plan = match v.column.as_deref() {
                Some(c) => warden_core::Masker::plan(&masker, &column_ref(c, kind)),
                None => warden_core::Masker::plan(&masker, &column_ref("?", kind)),
            };
            let (m, found) = masker.mask_explained(plan, v.value.as_bytes());
            MaskedValue {
                value: match m {
                    Masked::Unchanged => Some(v.value.clone()),
                    Masked::Replaced(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    Masked::Null => None,
                },
                found,
            }
        })
        .collect();
    Ok(Json(EvaluateResponse { decision, masked }))
}
