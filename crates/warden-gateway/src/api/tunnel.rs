//! `GET /api/connections/{name}/tunnel`: the HTTP/1.1 upgrade `warden connect`
//! carries each local client's connection through (see `crate::tunnel`).

use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use warden_core::{Secret, TunnelLogin};

use super::extract::{Caller, bearer_of};
use super::{ApiError, AppState, ErrorBody};
use crate::tunnel::TUNNEL_PROTOCOL;

/// Open a tunnel into a connection's proxy: send `Connection: Upgrade` and
/// `Upgrade: warden-tunnel`; after `101`, the connection carries the protocol
/// (PostgreSQL) as a direct client would speak it, without a password.
#[utoipa::path(get, path = "/api/connections/{name}/tunnel", tag = "connections", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 101, description = "the tunnel is open"), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody)))]
pub async fn open(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants_tunnel = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(TUNNEL_PROTOCOL));
    if !wants_tunnel {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("send `Connection: Upgrade` and `Upgrade: {TUNNEL_PROTOCOL}` over HTTP/1.1"),
        ));
    }
    let conn = state
        .store
        .get_connection(&name)
        .await
        .map_err(|e| ApiError::store(&e))?
        .filter(|c| caller.identity.in_any_group(&c.allowed_groups))
        .ok_or_else(|| ApiError::not_found(format!("connection `{name}` that you may use")))?;
    if !state.tunnels.serves(conn.kind) {
        return Err(ApiError::bad_request(
            "tunnel_unsupported",
            format!("this gateway does not tunnel {} connections", conn.kind),
        ));
    }
    let token = bearer_of(req.headers())
        .map_err(|()| ApiError::bad_request("bad_authorization", "malformed Authorization"))?
        .to_string();
    let peer = caller
        .client
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    // The API connection's place in the listener's limits stays taken while the
    // tunnel carries its session.
    let permit = req
        .extensions()
        .get::<crate::server::ConnectionPermit>()
        .cloned();
    let upgrade = hyper::upgrade::on(&mut req);
    let tunnels = state.tunnels.clone();
    let kind = conn.kind;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let login = TunnelLogin {
                    connection: conn.name,
                    token: Secret::new(token),
                };
                tunnels
                    .serve(kind, Box::new(TokioIo::new(upgraded)), peer, login)
                    .await;
            }
            Err(e) => tracing::warn!(error = %e, "tunnel upgrade failed"),
        }
        drop(permit);
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(TUNNEL_PROTOCOL));
    Ok(resp)
}
