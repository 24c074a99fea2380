//! `GET /api/connections/{name}/tunnel`: the HTTP/1.1 upgrade `warden connect`
//! carries each local client's connection through (see `crate::tunnel`).

use axum::extract::{Path, Request, State};
use axum::response::Response;
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
    super::upgrade::require(req.headers(), TUNNEL_PROTOCOL)?;
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
    let tunnels = state.tunnels.clone();
    let kind = conn.kind;
    let login = TunnelLogin {
        connection: conn.name,
        token: Secret::new(token),
    };
    Ok(super::upgrade::switch(
        &mut req,
        TUNNEL_PROTOCOL,
        move |io| async move { tunnels.serve(kind, Box::new(io), peer, login).await },
    ))
}
