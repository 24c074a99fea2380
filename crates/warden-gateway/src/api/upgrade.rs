//! The API's connection take-overs (`warden connect` tunnels, agent tunnels): the
//! upgrade a request must ask for, and the `101` after which the connection is
//! handed to the protocol that runs on it.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;

use super::ApiError;

/// Refuses (`426`) a request that does not ask to switch to `protocol`.
pub fn require(headers: &HeaderMap, protocol: &str) -> Result<(), ApiError> {
    let asked = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(protocol));
    if asked {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UPGRADE_REQUIRED,
        "upgrade_required",
        format!("send `Connection: Upgrade` and `Upgrade: {protocol}` over HTTP/1.1"),
    ))
}

/// Answers `101` and runs `serve` on the connection once it is switched. The API
/// connection's place in the listener's limits stays taken until `serve` ends.
pub fn switch<F, Fut>(req: &mut Request, protocol: &'static str, serve: F) -> Response
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let permit = req
        .extensions()
        .get::<crate::server::ConnectionPermit>()
        .cloned();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve(TokioIo::new(upgraded)).await,
            Err(e) => tracing::warn!(error = %e, protocol, "upgrade failed"),
        }
        drop(permit);
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(protocol));
    resp
}
