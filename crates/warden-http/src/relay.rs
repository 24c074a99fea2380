//! Relaying the target's answer: streamed as it arrives (watches and logs are never
//! buffered), masked where the connection says so (whole for JSON documents, event by
//! event for watch streams), cut when the session is ended, and recorded — status,
//! bytes, duration — when it is over.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use uuid::Uuid;
use warden_core::{Masker, TimelineEvent};

use crate::body::{Body, BoxError, boxed, full};
use crate::forward::Read;
use crate::kube::secrets;
use crate::mask::{BodyKind, mask_body};
use crate::proxy::HttpSession;
use crate::reply::{Flavor, Refused, refusal};

/// How an answer is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Masking {
    None,
    /// Kubernetes Secrets' values; `watch`: the answer is a stream of events.
    Secrets {
        watch: bool,
    },
    /// A service account token a TokenRequest answers with: a credential to the
    /// cluster that would let its holder go around Warden.
    TokenRequest,
    /// The connection's masking sets (HTTP services).
    Sets,
}

impl Masking {
    /// Whether Warden reads the answer's body (so it must be uncompressed).
    pub fn reads_body(self) -> bool {
        self != Masking::None
    }
}

/// How the answer to a request is masked.
pub(crate) fn masking_for(session: &HttpSession, flavor: Flavor, read: &Read) -> Masking {
    match (flavor, read) {
        (Flavor::Kubernetes, Read::Kube(r))
            if !session.handle.target.http.kubernetes.reveal_secrets
                && r.resource.eq_ignore_ascii_case("secrets") =>
        {
            Masking::Secrets {
                watch: r.verb == "watch",
            }
        }
        (Flavor::Kubernetes, Read::Kube(r))
            if !session.handle.target.http.kubernetes.reveal_secrets
                && r.resource.eq_ignore_ascii_case("serviceaccounts")
                && r.subresource.eq_ignore_ascii_case("token") =>
        {
            Masking::TokenRequest
        }
        (Flavor::Http, _) if session.handle.masker.is_active() => Masking::Sets,
        _ => Masking::None,
    }
}

/// Keeps only the JSON media types a client accepts, so the API server never answers
/// in protobuf or CBOR, which Warden would have to pass unread.
pub(crate) fn json_only(headers: &mut HeaderMap) {
    let accepted: Vec<String> = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|m| {
            let essence = m.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        })
        .map(String::from)
        .collect();
    let value = if accepted.is_empty() {
        "application/json".to_string()
    } else {
        accepted.join(", ")
    };
    headers.remove(header::ACCEPT);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT, v);
    }
}

/// One admitted request being answered: when it was sent, and its audit event
/// (which the answer's outcome names).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    pub(crate) started: Instant,
    pub(crate) statement: Uuid,
}

impl Exchange {
    /// Microseconds since the request was sent.
    pub(crate) fn elapsed_us(&self) -> Option<u64> {
        Some(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }
}

/// Relays the target's answer to the client.
pub(crate) async fn answer(
    session: Arc<HttpSession>,
    flavor: Flavor,
    response: Response<Incoming>,
    masking: Masking,
    exchange: Exchange,
    limit: usize,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    strip_hop_headers(&mut parts.headers);
    session.upstream.needles().scrub_headers(&mut parts.headers);
    if masking == Masking::Sets {
        crate::mask::mask_headers(session.handle.masker.as_ref(), &mut parts.headers);
    }
    let status = parts.status;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() != b"identity");
    let kind = BodyKind::of(content_type.as_deref());
    let needles = session.upstream.needles().clone();
    // The credential cannot be searched for in compressed bytes: such an answer is
    // withheld on a connection whose credential a target could echo.
    if encoded && !needles.is_empty() {
        return unmaskable(&session, flavor, exchange, "the answer is compressed").await;
    }
    let body: Body = match masking {
        Masking::None => boxed(body),
        Masking::Sets if kind == BodyKind::Opaque => boxed(body),
        _ if encoded => {
            return unmaskable(&session, flavor, exchange, "the answer is compressed").await;
        }
        Masking::Secrets { .. } | Masking::TokenRequest if kind != BodyKind::Json => {
            return unmaskable(&session, flavor, exchange, "the answer is not JSON").await;
        }
        // A stream of events, however it was asked for.
        Masking::Secrets { watch } if watch || is_watch_stream(content_type.as_deref()) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            line_masked(body, limit, |line| {
                let mut event: serde_json::Value = serde_json::from_slice(line)
                    .map_err(|e| format!("a watch event that is not JSON: {e}"))?;
                secrets::mask(&mut event, true);
                serde_json::to_vec(&event).map_err(|e| e.to_string())
            })
        }
        Masking::Sets
            if content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("text/event-stream")) =>
        {
            parts.headers.remove(header::CONTENT_LENGTH);
            let masker = session.handle.masker.clone();
            line_masked(body, limit, move |line| {
                Ok(mask_body(masker.as_ref(), BodyKind::Text, line)?
                    .unwrap_or_else(|| line.to_vec()))
            })
        }
        Masking::Secrets { .. } | Masking::TokenRequest | Masking::Sets => {
            // Held whole: counted against the listener's budget as it arrives, so
            // many large answers at once are refused rather than exhaust memory.
            let (whole, _held) = match collect_budgeted(body, limit, budget).await {
                Ok(Some(b)) => b,
                Ok(None) => {
                    return refusal(
                        flavor,
                        Refused::Unavailable,
                        "too many answers are being masked at once; try again",
                    );
                }
                Err(e) => {
                    let why = format!(
                        "the answer cannot be read whole to mask it ({e}; the limit is {limit} bytes)"
                    );
                    return unmaskable(&session, flavor, exchange, &why).await;
                }
            };
            let masked = match masking {
                Masking::Secrets { .. } => mask_secrets_document(&whole),
                Masking::TokenRequest => mask_token_request(&whole),
                _ => mask_body(session.handle.masker.as_ref() as &dyn Masker, kind, &whole),
            };
            let bytes = match masked {
                Ok(Some(m)) => Bytes::from(m),
                Ok(None) => whole,
                Err(e) => return unmaskable(&session, flavor, exchange, &e).await,
            };
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
            full(bytes)
        }
    };
    let body = if needles.is_empty() {
        body
    } else {
        crate::scrub::scrubbed(body, needles)
    };
    let tracked = Tracked::new(body, session, status, exchange);
    Response::from_parts(parts, crate::body::boxed(tracked))
}

/// Reads a whole body, up to `limit` bytes, taking a permit of `budget` per KiB as
/// it arrives; `None` when the budget runs out.
async fn collect_budgeted(
    mut body: Incoming,
    limit: usize,
    budget: &Arc<tokio::sync::Semaphore>,
) -> Result<Option<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>)>, BoxError> {
    use http_body_util::BodyExt;
    let mut whole = BytesMut::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut counted = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        whole.extend_from_slice(&data);
        if whole.len() > limit {
            return Err(format!("longer than {limit} bytes").into());
        }
        let need = u32::try_from(whole.len().div_ceil(1024) - counted).unwrap_or(u32::MAX);
        if need > 0 {
            let Ok(permit) = budget.clone().try_acquire_many_owned(need) else {
                return Ok(None);
            };
            counted += need as usize;
            match held.as_mut() {
                Some(h) => h.merge(permit),
                None => held = Some(permit),
            }
        }
    }
    Ok(Some((whole.freeze(), held)))
}

/// `application/json;stream=watch`: the API server's event stream.
fn is_watch_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        c.split(';')
            .skip(1)
            .any(|p| p.trim().eq_ignore_ascii_case("stream=watch"))
    })
}

/// Masks the token of a TokenRequest answer (`status.token`).
fn mask_token_request(whole: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut value: serde_json::Value = serde_json::from_slice(whole)
        .map_err(|e| format!("the JSON answer cannot be read to mask it: {e}"))?;
    match value.pointer_mut("/status/token") {
        Some(token @ serde_json::Value::String(_)) => {
            *token = serde_json::Value::String(secrets::MASKED.to_string());
            serde_json::to_vec(&value)
                .map(Some)
                .map_err(|e| e.to_string())
        }
        _ => Ok(None),
    }
}

fn mask_secrets_document(whole: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut value: serde_json::Value = serde_json::from_slice(whole)
        .map_err(|e| format!("the JSON answer cannot be read to mask it: {e}"))?;
    if secrets::mask(&mut value, true) {
        serde_json::to_vec(&value)
            .map(Some)
            .map_err(|e| e.to_string())
    } else {
        Ok(None)
    }
}

/// An answer that cannot be masked is not relayed: the client gets a 502 naming why,
/// and the recording says so.
async fn unmaskable(
    session: &HttpSession,
    flavor: Flavor,
    exchange: Exchange,
    why: &str,
) -> Response<Body> {
    let message = format!("Warden cannot mask this answer, so it is withheld: {why}");
    let _ = session
        .handle
        .record_outcome(
            Some(exchange.statement),
            TimelineEvent::Error {
                code: "unmaskable".into(),
                message: message.clone(),
                duration_us: exchange.elapsed_us(),
            },
        )
        .await;
    refusal(flavor, Refused::BadGateway, &message)
}

pub(crate) fn strip_hop_headers(headers: &mut HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "trailer",
    ] {
        headers.remove(name);
    }
}

/// A stream masked line by line (watch events, server-sent events), each line as it
/// completes; a line longer than `limit` ends the stream.
fn line_masked(
    body: Incoming,
    limit: usize,
    mask: impl Fn(&[u8]) -> Result<Vec<u8>, String> + Send + 'static,
) -> Body {
    let mask_line = move |line: &[u8], out: &mut BytesMut| -> Result<(), BoxError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            out.extend_from_slice(line);
        } else {
            out.extend_from_slice(&mask(line)?);
        }
        Ok(())
    };
    crate::body::rewritten(
        boxed(body),
        Box::new(move |pending: &mut BytesMut, end: bool| {
            let mut out = BytesMut::new();
            while let Some(at) = pending.iter().position(|b| *b == b'\n') {
                let line = pending.split_to(at + 1);
                mask_line(&line[..at], &mut out)?;
                out.extend_from_slice(b"\n");
            }
            if end && !pending.is_empty() {
                let rest = pending.split();
                mask_line(&rest, &mut out)?;
            }
            if pending.len() > limit {
                return Err(format!("a line of the answer is longer than {limit} bytes").into());
            }
            Ok(out)
        }),
    )
}

/// Counts what reaches the client, stops when the session is ended, and records the
/// answer's outcome when it is over (or the client left).
pub(crate) struct Tracked {
    inner: Body,
    session: Arc<HttpSession>,
    status: StatusCode,
    exchange: Exchange,
    bytes: u64,
    ended: Pin<Box<dyn Future<Output = String> + Send>>,
    done: bool,
}

impl Tracked {
    pub fn new(
        inner: Body,
        session: Arc<HttpSession>,
        status: StatusCode,
        exchange: Exchange,
    ) -> Self {
        let mut end = session.handle.ended();
        Self {
            inner,
            session,
            status,
            exchange,
            bytes: 0,
            ended: Box::pin(async move { end.wait().await }),
            done: false,
        }
    }

    fn finish(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.session.record_later(
            self.exchange.statement,
            TimelineEvent::Response {
                status: self.status.as_u16(),
                bytes: self.bytes,
                duration_us: self.exchange.elapsed_us(),
            },
        );
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(reason) = this.ended.as_mut().poll(cx) {
            this.finish();
            return Poll::Ready(Some(Err(
                format!("the Warden session ended: {reason}").into()
            )));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    this.session.handle.count_out(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_json_is_asked_for() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/vnd.kubernetes.protobuf, application/json;as=Table;v=v1;g=meta.k8s.io, application/cbor",
            ),
        );
        json_only(&mut h);
        assert_eq!(
            h.get(header::ACCEPT).map(|v| v.as_bytes()),
            Some(&b"application/json;as=Table;v=v1;g=meta.k8s.io"[..])
        );
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        json_only(&mut h);
        assert_eq!(
            h.get(header::ACCEPT).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
    }
}
