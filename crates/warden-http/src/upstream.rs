//! The backend leg of a session: the target URL, the held credential as the target
//! wants it (a header, or a TLS client certificate), and a small pool of HTTP/1.1
//! connections opened through the session's dialer. HTTP/1.1 because exec, attach
//! and port-forward upgrade the connection, which HTTP/2 cannot.

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use warden_core::{BackendTarget, Dialer, SecretKind, TlsMode};
use warden_net::BackendTls;

use crate::body::Body;

/// Connections one session keeps to its target at most (busy and idle).
pub const MAX_CONNECTIONS_PER_SESSION: usize = 32;
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 4;

/// Why the target cannot be used; the client sees this (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(pub String);

/// One open connection to the target, counted until dropped.
struct OpenSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How the held credential reaches the target.
enum Credential {
    None,
    Header(HeaderName, HeaderValue),
    /// A TLS client certificate (in the connector).
    ClientCertificate,
}

/// A session's target.
pub struct Upstream {
    dial_addr: String,
    /// The `Host` header.
    authority: String,
    /// The target URL's path, without its trailing `/`.
    base_path: String,
    tls: Option<BackendTls>,
    credential: Credential,
    /// `Impersonate-User` and `Impersonate-Group`, when the connection acts as the
    /// person.
    identity: Vec<(HeaderName, HeaderValue)>,
    /// The credential as the target receives it, to keep it out of answers.
    needles: crate::scrub::Needles,
    dialer: Arc<dyn Dialer>,
    pool: Mutex<Pool>,
    /// Connections open to the target, idle or busy (upgraded ones included).
    open: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Default)]
struct Pool {
    senders: Vec<SendRequest<Body>>,
}

impl Upstream {
    /// Reads the target URL and the credential; `dialer` opens its connections.
    pub fn new(target: &BackendTarget, dialer: Arc<dyn Dialer>) -> Result<Self, UpstreamError> {
        let url = target.addr.as_str();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| UpstreamError("the connection's target is not a URL".into()))?;
        let default_port = match scheme.to_ascii_lowercase().as_str() {
            "https" => 443,
            "http" => 80,
            other => return Err(UpstreamError(format!("unsupported scheme `{other}`"))),
        };
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        // The URL is not repeated: user information in it would be a credential.
        if authority.is_empty() || authority.contains('@') {
            return Err(UpstreamError(
                "the connection's target URL has no usable host (or carries user information)"
                    .into(),
            ));
        }
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']') && p.parse::<u16>().is_ok());
        let dial_addr = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:{default_port}")
        };
        let host = dial_addr
            .rsplit_once(':')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let client_pem = match (target.secret_kind, &target.secret) {
            (Some(SecretKind::PrivateKey), Some(s)) => Some(s.expose().clone()),
            _ => None,
        };
        let tls = if default_port == 443 && target.tls.mode != TlsMode::Disable {
            let server_name = target.tls.server_name.as_deref().unwrap_or(host);
            let identity = client_pem.as_deref().map(client_identity).transpose()?;
            Some(
                BackendTls::for_http(
                    target.tls.mode,
                    target.tls.ca_pem.as_deref(),
                    server_name,
                    identity,
                )
                .map_err(|e| UpstreamError(format!("TLS to the target: {e}")))?,
            )
        } else {
            None
        };
        let credential = credential(target, client_pem.is_some() && tls.is_some())?;
        let needles = crate::scrub::Needles::new(match (&target.secret, &credential) {
            (Some(secret), Credential::Header(_, value)) => vec![
                secret.expose().trim().to_string(),
                String::from_utf8_lossy(value.as_bytes())
                    .split_once(' ')
                    .map_or_else(String::new, |(_, v)| v.to_string()),
            ],
            _ => Vec::new(),
        });
        let identity = match &target.http.impersonate {
            Some(who) => identity_headers(who)?,
            None => Vec::new(),
        };
        Ok(Self {
            dial_addr,
            authority: authority.to_string(),
            base_path: path.trim_end_matches('/').to_string(),
            tls,
            credential,
            identity,
            needles,
            dialer,
            pool: Mutex::new(Pool::default()),
            open: Arc::default(),
        })
    }

    /// The `Host` header requests carry.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The path the target receives for a client's `path` (which starts with `/`).
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// Adds the held credential, and the person it acts as, to a request's headers.
    pub fn authorize(&self, headers: &mut hyper::HeaderMap) {
        if let Credential::Header(name, value) = &self.credential {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.identity {
            headers.append(name.clone(), value.clone());
        }
    }

    /// What answers are searched for: the credential as the target received it.
    pub fn needles(&self) -> &crate::scrub::Needles {
        &self.needles
    }

    /// The header the credential goes in, which a client's own copy must not reach.
    pub fn credential_header(&self) -> Option<&HeaderName> {
        match &self.credential {
            Credential::Header(name, _) => Some(name),
            Credential::None | Credential::ClientCertificate => None,
        }
    }

    /// A connection ready to send a request on: an idle one, or a new one.
    pub async fn sender(&self) -> Result<SendRequest<Body>, UpstreamError> {
        {
            let mut pool = self.lock();
            pool.senders.retain(|s| !s.is_closed());
            if let Some(i) = pool.senders.iter().position(SendRequest::is_ready) {
                return Ok(pool.senders.swap_remove(i));
            }
        }
        // Counted when opened, uncounted when the connection's task ends: busy and
        // upgraded connections count too.
        let open = self.open.clone();
        let counted = open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if counted >= MAX_CONNECTIONS_PER_SESSION {
            open.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(UpstreamError(format!(
                "this session already has {MAX_CONNECTIONS_PER_SESSION} connections open to the target"
            )));
        }
        let slot = OpenSlot(open);
        self.connect(slot).await
    }

    /// Returns a connection whose request is under way; it is reused once its answer
    /// has been read.
    pub fn give_back(&self, sender: SendRequest<Body>) {
        let mut pool = self.lock();
        pool.senders.retain(|s| !s.is_closed());
        let idle = pool.senders.iter().filter(|s| s.is_ready()).count();
        if idle < MAX_IDLE && pool.senders.len() < MAX_CONNECTIONS_PER_SESSION {
            pool.senders.push(sender);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn connect(&self, slot: OpenSlot) -> Result<SendRequest<Body>, UpstreamError> {
        let stream = self
            .dialer
            .dial(&self.dial_addr)
            .await
            .map_err(|e| UpstreamError(e.to_string()))?;
        let builder = hyper::client::conn::http1::Builder::new();
        match &self.tls {
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| {
                        UpstreamError(format!(
                            "TLS to the target failed: {}",
                            warden_net::handshake_failure(&e)
                        ))
                    })?;
                let (sender, conn) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| UpstreamError(format!("the target: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                    drop(slot);
                });
                Ok(sender)
            }
            None => {
                let (sender, conn) = builder
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| UpstreamError(format!("the target: {e}")))?;
                tokio::spawn(async move {
                    let _ = conn.with_upgrades().await;
                    drop(slot);
                });
                Ok(sender)
            }
        }
    }
}

/// The person as impersonation headers. A subject or group that cannot travel as a
/// header value exactly as it is (control characters, edge spaces, empty) refuses
/// the session: without its header the request would run as the gateway itself.
pub(crate) fn identity_headers(
    who: &warden_core::Impersonation,
) -> Result<Vec<(HeaderName, HeaderValue)>, UpstreamError> {
    let value = |what: &str, v: &str| {
        let exact = !v.is_empty() && v.trim() == v;
        HeaderValue::from_str(v)
            .ok()
            .filter(|_| exact)
            .ok_or_else(|| {
                UpstreamError(format!(
                    "the {what} `{}` cannot be sent to the cluster to act as you",
                    v.escape_debug()
                ))
            })
    };
    let mut out = vec![(
        HeaderName::from_static("impersonate-user"),
        value("subject", &who.user)?,
    )];
    for g in &who.groups {
        out.push((
            HeaderName::from_static("impersonate-group"),
            value("group", g)?,
        ));
    }
    Ok(out)
}

/// The header form of the held credential.
fn credential(target: &BackendTarget, client_cert: bool) -> Result<Credential, UpstreamError> {
    let Some(secret) = &target.secret else {
        return Ok(Credential::None);
    };
    if client_cert {
        return Ok(Credential::ClientCertificate);
    }
    let header = target.http.http.credential_header.as_deref();
    let name = match header {
        Some(h) => HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| UpstreamError(format!("`{h}` is not a header name")))?,
        None => hyper::header::AUTHORIZATION,
    };
    let value = if name == hyper::header::AUTHORIZATION {
        match (target.secret_kind, target.user.as_str()) {
            (Some(SecretKind::Password), user) if !user.is_empty() => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", secret.expose()))
            ),
            (Some(SecretKind::PrivateKey), _) => {
                return Err(UpstreamError(
                    "a client certificate needs an https target".into(),
                ));
            }
            _ => format!("Bearer {}", secret.expose().trim()),
        }
    } else {
        secret.expose().trim().to_string()
    };
    let mut value = HeaderValue::from_str(&value)
        .map_err(|_| UpstreamError("the held credential cannot be sent in a header".into()))?;
    value.set_sensitive(true);
    Ok(Credential::Header(name, value))
}

/// The certificate chain and key of a PEM bundle (the held `private_key` secret).
fn client_identity(
    pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), UpstreamError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| UpstreamError("the held client certificate cannot be read".into()))?;
    if certs.is_empty() {
        return Err(UpstreamError(
            "the held private key comes with no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| UpstreamError("the held client key cannot be read".into()))?;
    Ok((certs, key))
}

/// Whether a PEM bundle holds a certificate and its key (checked when one is stored).
pub fn check_client_identity(pem: &str) -> Result<(), String> {
    client_identity(pem).map(|_| ()).map_err(|e| e.0)
}
