//! Upgraded connections: `kubectl exec`, `attach` and `port-forward` switch the HTTP/1.1
//! connection to WebSocket (`v5.channel.k8s.io`, `v4...`) or SPDY/3.1. The request was
//! admitted like any other (and an exec's command checked against the shell rules);
//! once the target agrees, the two connections are joined until either side closes or
//! the session is ended, and the bytes each way are recorded with the outcome.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use warden_core::TimelineEvent;

use crate::body::{Body, empty};
use crate::forward::Read;
use crate::path::RequestPath;
use crate::proxy::HttpSession;
use crate::reply::Flavor;

/// The protocol a client asks to upgrade to, if it asks.
pub(crate) fn requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

/// Answers the client's upgrade with the target's, and joins the two connections.
pub(crate) async fn bridge(
    session: Arc<HttpSession>,
    _flavor: Flavor,
    mut response: Response<Incoming>,
    client_side: OnUpgrade,
    read: &Read,
    path: &RequestPath,
    started: Instant,
) -> Response<Body> {
    let target_side = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        answer.headers_mut().append(name.clone(), value.clone());
    }
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let what = match read {
        Read::Kube(r) => format!("{} {}", r.subresource, r.name),
        Read::Http => path.raw_path.clone(),
    };
    tokio::spawn(async move {
        let (client, target) = match tokio::try_join!(client_side, target_side) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut target = TokioIo::new(target);
        let mut ended = session.handle.ended();
        let (up, down, reason) = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut client, &mut target) => match copied {
                Ok((up, down)) => (up, down, None),
                Err(e) => (0, 0, Some(e.to_string())),
            },
            reason = ended.wait() => (0, 0, Some(format!("the Warden session ended: {reason}"))),
        };
        session.handle.count_in(up);
        session.handle.count_out(down);
        tracing::debug!(stream = %what, up, down, reason = ?reason, "upgraded stream closed");
        let _ = session
            .handle
            .record(TimelineEvent::Response {
                status: 101,
                bytes: down,
                duration_us: Some(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX)),
            })
            .await;
    });
    answer
}
