//! Upgraded connections: `kubectl exec`, `attach` and `port-forward` switch the HTTP/1.1
//! connection to WebSocket (`v5.channel.k8s.io`, `v4...`) or SPDY/3.1. The request was
//! admitted like any other (and an exec's command checked against the shell rules);
//! once the target agrees, the two connections are joined until either side closes or
//! the session is ended, and the bytes each way are recorded with the outcome.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use warden_core::{TerminalRecorder, TerminalSpec, TimelineEvent};

use crate::body::{Body, empty};
use crate::forward::{Read, shell_line};
use crate::kube::channels::{ChannelData, ChannelReader, RECORDABLE};
use crate::kube::spdy::SpdyReader;
use crate::path::RequestPath;
use crate::proxy::HttpSession;
use crate::relay::Exchange;
use crate::reply::Flavor;

/// The protocol a client asks to upgrade to, if it asks.
pub(crate) fn requested<B>(req: &Request<B>) -> Option<HeaderValue> {
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
    exchange: Exchange,
) -> Response<Body> {
    let target_side = hyper::upgrade::on(&mut response);
    let mut answer = Response::new(empty());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in response.headers() {
        answer.headers_mut().append(name.clone(), value.clone());
    }
    session
        .upstream
        .needles()
        .scrub_headers(answer.headers_mut());
    answer
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let what = match read {
        Read::Kube(r) => format!("{} {}", r.subresource, r.name),
        Read::Http => path.raw_path.clone(),
    };
    let recording = recording_of(&response, read, path);
    // Counted before the 101 goes out: the client connection ends with the upgrade,
    // and the session must outlive it as long as the stream runs.
    session.stream_opened();
    tokio::spawn(async move {
        relay(
            &session,
            client_side,
            target_side,
            recording,
            &what,
            exchange,
        )
        .await;
        session.stream_closed().await;
    });
    answer
}

/// Joins the two sides of an upgrade until either closes or the session is ended.
async fn relay(
    session: &Arc<HttpSession>,
    client_side: OnUpgrade,
    target_side: OnUpgrade,
    recording: Option<(TerminalSpec, Framing)>,
    what: &str,
    exchange: Exchange,
) {
    {
        let (client, target) = match tokio::try_join!(client_side, target_side) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        // An interactive stream is recorded as a terminal; without a recording it
        // does not run.
        let framing = recording.as_ref().map(|(_, f)| *f);
        let recorder = match recording {
            Some((spec, _)) => {
                let spec = TerminalSpec {
                    channel: session.next_channel(),
                    ..spec
                };
                match session.handle.terminal(spec).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "the stream cannot be recorded; closed");
                        session.handle.fail(e);
                        return;
                    }
                }
            }
            None => None,
        };
        let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
        let (target_read, target_write) = tokio::io::split(TokioIo::new(target));
        let up = pump(client_read, target_write, framing, true, recorder.clone());
        let down = pump(target_read, client_write, framing, false, recorder.clone());
        let mut ended = session.handle.ended();
        let (up, down, reason) = tokio::select! {
            copied = async { tokio::try_join!(up, down) } => match copied {
                Ok((up, down)) => (up, down, None),
                Err(e) => (0, 0, Some(e.to_string())),
            },
            reason = ended.wait() => (0, 0, Some(format!("the Warden session ended: {reason}"))),
        };
        if let Some(r) = &recorder {
            let _ = r.finish().await;
        }
        session.handle.count_in(up);
        session.handle.count_out(down);
        tracing::debug!(stream = %what, up, down, reason = ?reason, "upgraded stream closed");
        let _ = session
            .handle
            .record_outcome(
                Some(exchange.statement),
                TimelineEvent::Response {
                    status: 101,
                    bytes: down,
                    duration_us: exchange.elapsed_us(),
                },
            )
            .await;
    }
}

/// How a recorded stream frames its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// WebSocket messages of a channel protocol.
    WebSocket,
    /// SPDY/3.1 data frames.
    Spdy,
}

/// The terminal an answer opens, when it is an exec or attach over a WebSocket
/// channel protocol or SPDY (the channel number is set when it starts).
fn recording_of(
    response: &Response<Incoming>,
    read: &Read,
    path: &RequestPath,
) -> Option<(TerminalSpec, Framing)> {
    let Read::Kube(r) = read else {
        return None;
    };
    if r.resource != "pods" || !matches!(r.subresource.as_str(), "exec" | "attach") {
        return None;
    }
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let framing = if header(header::UPGRADE).is_some_and(|u| u.eq_ignore_ascii_case("SPDY/3.1")) {
        Framing::Spdy
    } else if header(header::SEC_WEBSOCKET_PROTOCOL).is_some_and(|p| RECORDABLE.contains(&p)) {
        Framing::WebSocket
    } else {
        return None;
    };
    let tty = path
        .query_first("tty")
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE" | "t" | "T"));
    let command = match r.subresource.as_str() {
        "exec" => shell_line(&crate::kube::info::exec_command(path)),
        _ => format!("attach {}", r.name),
    };
    let spec = TerminalSpec {
        channel: 0,
        width: 80,
        height: 24,
        term: tty.then(|| "xterm".to_string()),
        command: Some(format!("{command} (pod {} -n {})", r.name, r.namespace)),
    };
    Some((spec, framing))
}

/// Reads what one direction of a recorded stream carries.
enum Reader {
    WebSocket(ChannelReader),
    Spdy(SpdyReader),
}

/// Copies one direction of an upgraded stream; with a `framing`, what it carries is
/// read and recorded (`from_client`: as input). A recording that fails ends it.
async fn pump<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut from: R,
    mut to: W,
    framing: Option<Framing>,
    from_client: bool,
    recorder: Option<std::sync::Arc<dyn TerminalRecorder>>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut reader = framing.map(|f| match f {
        Framing::WebSocket => Reader::WebSocket(ChannelReader::default()),
        Framing::Spdy => Reader::Spdy(SpdyReader::default()),
    });
    let mut events = Vec::new();
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(total);
        }
        // Recorded before it is passed on: what the recording cannot take does not
        // reach the other side.
        if let (Some(reader), Some(rec)) = (reader.as_mut(), recorder.as_ref()) {
            events.clear();
            match reader {
                Reader::WebSocket(r) => r.feed(&buf[..n], &mut events),
                Reader::Spdy(r) => r.feed(&buf[..n], from_client, &mut events),
            }
            for event in events.drain(..) {
                let written = match event {
                    ChannelData::Stdin(b) => rec.input(&b).await,
                    ChannelData::Output(b) => rec.output(&b).await,
                    ChannelData::Resize { width, height } => rec.resize(width, height).await,
                };
                written.map_err(std::io::Error::other)?;
            }
        }
        warden_net::write_flushed(&mut to, &buf[..n]).await?;
        total += n as u64;
    }
}

/// An exec or attach over WebSocket may only speak a channel protocol Warden can
/// record: other offers (the base64 variants) are dropped; with none left, it is
/// refused.
pub(crate) fn keep_recordable_protocols(headers: &mut hyper::HeaderMap) -> Result<(), String> {
    let offers: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| RECORDABLE.contains(&p.as_str()))
        .collect();
    if offers.is_empty() {
        return Err(format!(
            "exec and attach over WebSocket must offer one of {} (the streams Warden records)",
            RECORDABLE.join(", ")
        ));
    }
    let value = HeaderValue::from_str(&offers.join(", ")).map_err(|e| e.to_string())?;
    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    Ok(())
}

/// Which requests may switch protocols. An upgraded connection is relayed unread, so
/// only streams that carry no API objects are: exec, attach and port-forward, and the
/// pod and service proxies (an application's own WebSocket). Anything else — a watch
/// over WebSocket would carry Secrets unmasked — is refused, and so is any upgrade of
/// an answer that must be masked.
pub(crate) fn allowed(
    read: &Read,
    masking: crate::relay::Masking,
    upgrade: &HeaderValue,
) -> Result<(), String> {
    if masking.reads_body() {
        return Err("this answer is masked, so its connection cannot switch protocols".into());
    }
    match read {
        // WebSocket only: another protocol (`h2c`) would carry later requests past
        // the admission path.
        Read::Http if upgrade.as_bytes().eq_ignore_ascii_case(b"websocket") => Ok(()),
        Read::Http => Err(format!(
            "only WebSocket upgrades are relayed, not `{}`",
            String::from_utf8_lossy(upgrade.as_bytes())
        )),
        Read::Kube(r) => {
            let stream = r.resource == "pods"
                && matches!(r.subresource.as_str(), "exec" | "attach" | "portforward");
            let proxy = matches!(r.resource.as_str(), "pods" | "services")
                && (r.subresource == "proxy" || r.verb == "proxy");
            if stream || proxy {
                Ok(())
            } else {
                Err(format!(
                    "`{}` cannot switch protocols through Warden: only exec, attach, port-forward and the pod and service proxies do",
                    r.text()
                ))
            }
        }
    }
}
