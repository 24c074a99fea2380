//! One request through the pipeline: read it the way the target will, admit it
//! (guard → review → audit → recording, in core), send it to the target with the
//! held credential instead of the client's token, and relay the answer — masked
//! where the connection says so, recorded when it ends.

use std::sync::Arc;
use std::time::Instant;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use uuid::Uuid;
use warden_core::{
    Action, Admission, ClientWatch, Command, DenialCause, EndReason, KubeRequest, SessionHooks,
};

use crate::body::{Body, boxed};
use crate::kube::info;
use crate::path::RequestPath;
use crate::proxy::{Client, HttpSession};
use crate::relay::{self, Exchange, Masking};
use crate::reply::{Flavor, Refused, refusal};
use crate::upgrade;

/// Headers that describe one hop, not the request; never relayed as they are.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers a client could use to pass for another address or origin; the gateway
/// says where the request came from itself (`X-Forwarded-For`).
const SPOOFABLE: [&str; 13] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-original-forwarded-for",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "fastly-client-ip",
];

/// What the request is, once read.
pub(crate) enum Read {
    Kube(KubeRequest),
    Http,
}

pub(crate) async fn request<H: SessionHooks>(
    client: &Client<H>,
    session: &Arc<HttpSession>,
    req: Request<Incoming>,
    target: &str,
) -> Response<Body> {
    let flavor = client.proxy.flavor;
    // A target the server could read otherwise than Warden is refused, as a
    // decision (audited), before anything else.
    let path = match RequestPath::parse(target) {
        Ok(p) => p,
        Err(e) => return refuse_unreadable(session, flavor, &e.to_string()).await,
    };
    let method = req.method().as_str().to_string();
    let read = match flavor {
        Flavor::Kubernetes => match info::read(&method, &path) {
            Ok(r) => Read::Kube(r),
            Err(e) => return refuse_unreadable(session, flavor, &e.to_string()).await,
        },
        Flavor::Http => Read::Http,
    };
    // The gateway's credential acts for the client: a client may not choose another
    // identity for it.
    if req
        .headers()
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
    {
        let detail = json!({"request": format!("{method} {}", path.raw_path)});
        return refuse_feature(
            session,
            flavor,
            "impersonation",
            detail,
            Refused::Forbidden,
            "Impersonate-* headers are not relayed: Warden sends the request as the connection says",
        )
        .await;
    }
    let (ask, detail) = match &read {
        Read::Kube(r) => (
            Ask::Kube(r.clone()),
            json!({
                "verb": r.verb, "group": r.group, "resource": r.resource,
                "subresource": r.subresource, "namespace": r.namespace, "name": r.name,
                "path": r.path,
            }),
        ),
        Read::Http => (
            Ask::Http {
                method: method.clone(),
                path: path.raw_path.clone(),
            },
            json!({"method": method, "path": path.raw_path}),
        ),
    };
    // The request's audit event: the answer's outcome names it.
    let statement = Uuid::now_v7();
    if let Some(response) = admitted(session, flavor, ask, "request", detail, statement).await {
        return response;
    }
    // An exec runs a command in the container: it answers to the shell rules too.
    if let Read::Kube(r) = &read
        && r.resource == "pods"
        && r.subresource == "exec"
    {
        let argv = info::exec_command(&path);
        let line = shell_line(&argv);
        let detail = json!({"pod": r.name, "namespace": r.namespace, "argv": argv});
        let exec = Uuid::now_v7();
        if let Some(response) =
            admitted(session, flavor, Ask::Shell(line), "exec", detail, exec).await
        {
            return response;
        }
    }
    let masking = relay::masking_for(session, flavor, &read);
    let req = match masked_patch(session, flavor, req, masking).await {
        Ok(req) => req,
        Err(refused) => return *refused,
    };
    send(client, session, req, &path, read, masking, statement).await
}

/// Largest JSON patch to a masked Secret Warden reads to check it.
const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// A JSON patch can copy or move a masked Secret's value to where masking does not
/// look (an annotation, an error message) or test it against a guess: on masked
/// Secrets those operations are refused, as a decision.
async fn masked_patch(
    session: &Arc<HttpSession>,
    flavor: Flavor,
    req: Request<Incoming>,
    masking: Masking,
) -> Result<Request<Body>, Box<Response<Body>>> {
    let is_json_patch = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json-patch+json"))
        });
    let (parts, body) = req.into_parts();
    if !matches!(masking, Masking::Secrets { .. }) || !is_json_patch {
        return Ok(Request::from_parts(parts, boxed(body)));
    }
    let why = match crate::body::collect_limited(body, MAX_PATCH_BYTES).await {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Array(ops))
                if !ops.iter().any(|op| {
                    matches!(op["op"].as_str(), Some("copy" | "move" | "test")) || !op.is_object()
                }) =>
            {
                return Ok(Request::from_parts(parts, crate::body::full(bytes)));
            }
            Ok(_) => {
                "a JSON patch that copies, moves or tests values of a masked Secret".to_string()
            }
            Err(e) => format!("a JSON patch of a masked Secret that cannot be read ({e})"),
        },
        Err(e) => format!("a JSON patch of a masked Secret that cannot be read whole ({e})"),
    };
    let detail = json!({"reason": why});
    let message = format!("refused: {why}");
    Err(Box::new(
        refuse_feature(
            session,
            flavor,
            "secret_value_patch",
            detail,
            Refused::Forbidden,
            &message,
        )
        .await,
    ))
}

/// Runs `command` through the admission path; `Some` is the answer when it may not
/// be forwarded.
async fn admitted(
    session: &Arc<HttpSession>,
    flavor: Flavor,
    ask: Ask,
    via: &'static str,
    detail: serde_json::Value,
    statement: Uuid,
) -> Option<Response<Body>> {
    match admit(session, ask, via, detail, Some(statement)).await {
        Admission::Admitted { .. } => None,
        Admission::Denied(d) => {
            let why = match d.cause {
                DenialCause::AuditUnavailable => Refused::Unavailable,
                _ => Refused::Forbidden,
            };
            Some(refusal(
                flavor,
                why,
                &format!("denied by Warden rule `{}`: {}", d.rule, d.reason),
            ))
        }
        Admission::End(reason) => Some(end_response(flavor, &reason)),
    }
}

/// A request that cannot be read the way its target would read it.
async fn refuse_unreadable(
    session: &Arc<HttpSession>,
    flavor: Flavor,
    why: &str,
) -> Response<Body> {
    let detail = json!({"reason": why});
    refuse_feature(
        session,
        flavor,
        "unreadable_request",
        detail,
        Refused::BadRequest,
        why,
    )
    .await
}

/// Refuses something the connection's rules never relay (`ConnectionGuard` denies
/// every feature), as a decision: audited and recorded, then answered with `why`
/// and `message` (or the session's end, if it ended meanwhile).
async fn refuse_feature(
    session: &Arc<HttpSession>,
    flavor: Flavor,
    feature: &'static str,
    detail: serde_json::Value,
    why: Refused,
    message: &str,
) -> Response<Body> {
    match admit(session, Ask::Feature(feature), feature, detail, None).await {
        Admission::End(reason) => end_response(flavor, &reason),
        _ => refusal(flavor, why, message),
    }
}

/// An action to admit, owned: its admission runs on a task of its own, which a
/// client that leaves does not cancel.
enum Ask {
    Kube(KubeRequest),
    Http { method: String, path: String },
    Shell(String),
    Feature(&'static str),
}

impl Ask {
    fn action(&self) -> Action<'_> {
        match self {
            Ask::Kube(r) => Action::Kube(r),
            Ask::Http { method, path } => Action::Http { method, path },
            Ask::Shell(command) => Action::Shell { command },
            Ask::Feature(name) => Action::Feature { name },
        }
    }
}

/// Runs the admission path on its own task. A client that leaves drops this future
/// (HTTP has no other sign of it): the task sees it through [`LeavingClient`] while
/// the request waits for review, and the refusal is still audited and the review
/// abandoned, as for every protocol.
async fn admit(
    session: &Arc<HttpSession>,
    ask: Ask,
    via: &'static str,
    detail: serde_json::Value,
    id: Option<Uuid>,
) -> Admission {
    let (alive, gone) = tokio::sync::oneshot::channel::<()>();
    let busy = session.busy();
    let task = tokio::spawn(async move {
        let mut command = Command::new(ask.action(), via).with_detail(detail);
        if let Some(id) = id {
            command = command.with_id(id);
        }
        let admission = busy
            .session()
            .handle
            .admit(command, &mut LeavingClient(Some(gone)))
            .await;
        drop(busy);
        admission
    });
    let admission = task.await.unwrap_or_else(|e| {
        Admission::End(EndReason::Internal(format!("the admission failed: {e}")))
    });
    drop(alive);
    admission
}

/// The client of one request, gone when the request's future is dropped.
struct LeavingClient(Option<tokio::sync::oneshot::Receiver<()>>);

impl ClientWatch for LeavingClient {
    async fn held(&mut self, notice: &str) {
        tracing::info!(notice, "request held for review");
    }

    async fn gone(&mut self) {
        match self.0.take() {
            // Nothing is ever sent: the sender is dropped when the client leaves (or
            // once the admission is over).
            Some(rx) => {
                let _ = rx.await;
            }
            None => std::future::pending().await,
        }
    }
}

/// The answer when the session must end.
pub(crate) fn end_response(flavor: Flavor, reason: &EndReason) -> Response<Body> {
    let why = match reason {
        EndReason::Ended(_) => Refused::Unauthenticated,
        EndReason::Recording(_) | EndReason::Internal(_) => Refused::Unavailable,
        EndReason::ClientProtocol(_) => Refused::BadRequest,
        EndReason::Refused(_) => Refused::Forbidden,
        EndReason::ClientGone
        | EndReason::BackendGone(_)
        | EndReason::BackendProtocol(_)
        | EndReason::Unmaskable(_) => Refused::BadGateway,
    };
    refusal(flavor, why, &format!("the Warden session ended: {reason}"))
}

/// Builds the target's request, sends it, and relays the answer.
async fn send<H: SessionHooks>(
    client: &Client<H>,
    session: &Arc<HttpSession>,
    mut req: Request<Body>,
    path: &RequestPath,
    read: Read,
    masking: Masking,
    statement: Uuid,
) -> Response<Body> {
    let flavor = client.proxy.flavor;
    let upstream = &session.upstream;
    let exchange = Exchange {
        started: Instant::now(),
        statement,
    };
    let upgrade_to = upgrade::requested(&req);
    let client_upgrade = upgrade_to.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let uri =
        match format!("{}{}", upstream.path(&path.raw_path), query(path)).parse::<hyper::Uri>() {
            Ok(u) => u,
            Err(e) => {
                return refusal(
                    flavor,
                    Refused::BadRequest,
                    &format!("bad request target: {e}"),
                );
            }
        };
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(uri)
        .body(body)
        .unwrap_or_else(|_| Request::new(crate::body::empty()));
    *out.headers_mut() = forwarded_headers(&parts.headers, upstream.credential_header());
    let headers = out.headers_mut();
    if let Ok(host) = HeaderValue::from_str(upstream.authority()) {
        headers.insert(header::HOST, host);
    }
    if let Ok(peer) = HeaderValue::from_str(&client.peer.ip().to_string()) {
        headers.insert(HeaderName::from_static("x-forwarded-for"), peer);
    }
    upstream.authorize(headers);
    if let Some(protocol) = &upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    if let Some(protocol) = &upgrade_to
        && let Err(why) = upgrade::allowed(&read, masking, protocol)
    {
        return refusal(flavor, Refused::BadRequest, &why);
    }
    let websocket = upgrade_to
        .as_ref()
        .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket
        && let Read::Kube(r) = &read
        && r.resource == "pods"
        && matches!(r.subresource.as_str(), "exec" | "attach")
        && let Err(why) = upgrade::keep_recordable_protocols(headers)
    {
        return refusal(flavor, Refused::BadRequest, &why);
    }
    // An answer searched for the held credential must come uncompressed too.
    if !upstream.needles().is_empty() {
        headers.remove(header::ACCEPT_ENCODING);
    }
    if masking.reads_body() {
        // Masking reads the answer: it must come uncompressed, in a format Warden
        // reads (Kubernetes: JSON, never protobuf or CBOR).
        headers.remove(header::ACCEPT_ENCODING);
        // A byte range could cut a value so no piece shows what detectors look for.
        headers.remove(header::RANGE);
        headers.remove(header::IF_RANGE);
        if flavor == Flavor::Kubernetes {
            relay::json_only(headers);
        }
    }
    let mut sender = match upstream.sender().await {
        Ok(s) => s,
        Err(e) => return target_failed(session, flavor, exchange, e.to_string()).await,
    };
    let sent = sender.send_request(out).await;
    if upgrade_to.is_none() {
        upstream.give_back(sender);
    }
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let message = format!("the target did not answer: {e}");
            return target_failed(session, flavor, exchange, message).await;
        }
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_side) = client_upgrade
    {
        return upgrade::bridge(
            session.clone(),
            flavor,
            response,
            client_side,
            &read,
            path,
            exchange,
        )
        .await;
    }
    relay::answer(
        session.clone(),
        flavor,
        response,
        masking,
        exchange,
        client.proxy.limits.max_masked_bytes,
        &client.proxy.masking_budget,
    )
    .await
}

/// The target could not be reached or did not answer: the client gets a 502 naming
/// why, and the recording says so.
async fn target_failed(
    session: &HttpSession,
    flavor: Flavor,
    exchange: Exchange,
    message: String,
) -> Response<Body> {
    let _ = session
        .handle
        .record_outcome(
            Some(exchange.statement),
            warden_core::TimelineEvent::Error {
                code: "target".into(),
                message: message.clone(),
                duration_us: exchange.elapsed_us(),
            },
        )
        .await;
    refusal(flavor, Refused::BadGateway, &message)
}

fn query(path: &RequestPath) -> String {
    if path.raw_query.is_empty() {
        String::new()
    } else {
        format!("?{}", path.raw_query)
    }
}

/// The client's headers minus what describes the hop, the client's own credential
/// for Warden, and whatever would carry a credential the gateway sends itself.
fn forwarded_headers(from: &HeaderMap, credential: Option<&HeaderName>) -> HeaderMap {
    // Headers the client's `Connection` header names are hop-by-hop too.
    let named: Vec<String> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(from.len() + 4);
    for (name, value) in from {
        let n = name.as_str();
        // Servers that read `_` as `-` (CGI) see `x_forwarded_for` as the real one.
        let dashed = n.replace('_', "-");
        if HOP_BY_HOP.contains(&n)
            || SPOOFABLE.contains(&dashed.as_str())
            || named.iter().any(|c| c == n)
            || name == header::HOST
            || name == header::AUTHORIZATION
            || credential.is_some_and(|c| c == name)
        {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    out
}

/// An argv as one shell line, quoted so the shell rules read the same words.
pub(crate) fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_is_quoted_for_the_shell_rules() {
        let argv: Vec<String> = ["sh", "-c", "rm -rf /", "it's"].map(String::from).to_vec();
        assert_eq!(shell_line(&argv), "sh -c 'rm -rf /' 'it'\\''s'");
    }

    #[test]
    fn client_credentials_and_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer wt"));
        h.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("x-api-key", HeaderValue::from_static("client"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let key = HeaderName::from_static("x-api-key");
        let out = forwarded_headers(&h, Some(&key));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out.contains_key(header::ACCEPT));
    }
}
