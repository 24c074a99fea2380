//! SAML 2.0 single sign-on, Warden as the service provider: starting a login at a
//! configured identity provider (a signed AuthnRequest, HTTP-Redirect binding) and
//! checking its answer (HTTP-POST binding) into a subject and groups.
//!
//! XML signatures, canonicalization, decryption and the SAML conditions are checked by
//! `saml-rs` (pure Rust, on the same aws-lc as the rest of Warden); this module keeps it
//! behind one seam and adds what is Warden's: which logins are outstanding, the replay
//! cache, a structural check that refuses signature-wrapping shapes before the library
//! sees them, and one stable refusal code per cause.

mod check;
mod config;
mod handover;
mod precheck;
mod refusal;
mod stores;

pub use config::{SamlConfig, SamlIdpConfig};
pub use handover::{binding_of, challenge_of};
pub use refusal::Refusal;

use saml_rs::{
    AcsEndpoint, AudienceValidationPolicy, AuthnRequestSigningPolicy, CertificatePem, Credentials,
    EntityId, FormField, IdpDescriptor, MetadataTrustPolicy, PendingAuthnRequest, PrivateKeyPem,
    RelayStateParam, Saml, SamlError, Sp, SpConfig, SpValidationPolicy, StartSso,
    XmlEncryptionPolicy, XmlPolicy, XmlSignatureProfile,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest `SAMLResponse` accepted, base64 as posted.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Longest `RelayState` (the binding's limit; Warden's own are 32 characters).
const MAX_RELAY_STATE: usize = 80;
/// Refused answers after which a started login is dropped.
const MAX_REFUSED_ANSWERS: u32 = 3;
/// How long an answer waits for a free check before it is refused as busy.
const CHECK_QUEUE_WAIT: Duration = Duration::from_secs(10);
/// Most groups, and longest subject or group name, a login may carry.
pub(super) const MAX_GROUPS: usize = 256;
pub(super) const MAX_NAME: usize = 256;
/// How long a handle of a finished login is remembered, so that a second post of the
/// same answer reads as a replay and not as unsolicited.
const USED_HANDLE_TTL: Duration = Duration::from_secs(3600);
/// Most answers the replay cache remembers at once.
const MAX_REPLAY_IDS: usize = 200_000;

/// A checked login: who, in which groups, and the ids that make it traceable.
#[derive(Debug, Clone)]
pub struct SamlLogin {
    pub idp: String,
    pub subject: String,
    pub groups: Vec<String>,
    pub request_id: Option<String>,
    pub response_id: String,
    pub assertion_id: String,
}

/// What a started login is for, kept until its answer comes.
#[derive(Debug, Clone)]
pub enum Purpose {
    /// A console login: the browser that started it holds a cookie whose SHA-256 this is.
    Console { binding: [u8; 32] },
    /// `warden login --saml`: where the CLI waits, its state and PKCE challenge.
    Cli {
        redirect: String,
        state: String,
        challenge: String,
    },
}

#[derive(Debug, Clone)]
struct Outstanding {
    idp: usize,
    pending: PendingAuthnRequest,
    purpose: Purpose,
    /// Answers refused so far (shared by the copies looked at).
    refused: Arc<std::sync::atomic::AtomicU32>,
}

/// What an answer posted to the ACS gave.
#[derive(Debug)]
pub struct Accepted {
    pub login: SamlLogin,
    /// `None`: an IdP-initiated login.
    pub purpose: Option<Purpose>,
}

/// Context of a refused answer, for its audit event.
#[derive(Debug, Default, Clone)]
pub struct RefusalContext {
    pub idp: Option<String>,
    pub request_id: Option<String>,
    /// What the refused login was started for, when it was found.
    pub purpose: Option<Purpose>,
}

struct Idp {
    config: SamlIdpConfig,
    metadata: tokio::sync::Mutex<Metadata>,
}

/// An IdP's metadata as last read, and when a fetch last failed.
#[derive(Default)]
struct Metadata {
    read: Option<(Instant, Arc<IdpDescriptor>)>,
    failed_at: Option<Instant>,
}

/// After a failed metadata fetch, logins at that IdP fail at once for this long rather
/// than each wait for another fetch.
const METADATA_RETRY: Duration = Duration::from_secs(30);
/// Largest IdP metadata document read.
const MAX_METADATA_BYTES: usize = 1024 * 1024;

/// The service provider: its identity, the identity providers, the login state.
pub struct SamlService {
    config: SamlConfig,
    /// Accepts plaintext and (with a decryption key) encrypted assertions.
    sp: Saml<Sp>,
    /// Refuses plaintext assertions, for IdPs with `want_encrypted_assertions`.
    sp_encrypted: Option<Saml<Sp>>,
    idps: Vec<Idp>,
    outstanding: stores::Expiring<Outstanding>,
    /// Handles of logins that were finished, to tell a replay from an unsolicited answer.
    used_handles: stores::Expiring<()>,
    replay: stores::ReplayCache,
    /// Checked console logins until their browser collects them.
    finished: stores::Expiring<(SamlLogin, [u8; 32])>,
    /// Checked CLI logins until the CLI redeems their one-time code.
    codes: stores::Expiring<(SamlLogin, String)>,
    /// Answers checked at once.
    checking: Arc<tokio::sync::Semaphore>,
    http: reqwest::Client,
}

/// Why the SAML setup could not start.
#[derive(Debug, thiserror::Error)]
#[error("auth.saml: {0}")]
pub struct SamlSetupError(String);

fn read(path: &std::path::Path, what: &str) -> Result<String, SamlSetupError> {
    std::fs::read_to_string(path)
        .map_err(|e| SamlSetupError(format!("cannot read {what} {}: {e}", path.display())))
}

/// An RSA private key file, checked at start: PKCS#8 PEM (`BEGIN PRIVATE KEY`), which is
/// what the signing and decryption code reads (it would otherwise fail only at the
/// first login).
fn rsa_key(path: &std::path::Path, what: &str) -> Result<String, SamlSetupError> {
    use base64::Engine;
    let pem = read(path, what)?;
    let bad = |why: &str| {
        SamlSetupError(format!(
            "{what} {} {why}: an RSA private key in PKCS#8 PEM is needed \
             (`openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8` converts one)",
            path.display()
        ))
    };
    let body: String = pem
        .lines()
        .skip_while(|l| l.trim() != "-----BEGIN PRIVATE KEY-----")
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err(bad("is not a PKCS#8 PEM key"));
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|_| bad("is not valid PEM"))?;
    aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|_| bad("does not hold a usable RSA key"))?;
    Ok(pem)
}

impl SamlService {
    /// Reads the keys and the metadata files; metadata URLs are fetched when first
    /// needed.
    pub fn new(config: &SamlConfig, public_url: Option<&str>) -> Result<Self, SamlSetupError> {
        let setup = |e: SamlError| SamlSetupError(e.to_string());
        let acs_url = config.acs_url(public_url);
        let signing_cert = read(&config.signing_cert_file, "signing_cert_file")?;
        let credentials = Credentials {
            signing_key: Some(PrivateKeyPem::new(rsa_key(
                &config.signing_key_file,
                "signing_key_file",
            )?)),
            signing_certificate: Some(CertificatePem::new(signing_cert.clone())),
            encryption_certificate: match (
                &config.decryption_key_file,
                &config.encryption_cert_file,
            ) {
                (None, _) => None,
                (Some(_), Some(cert)) => {
                    Some(CertificatePem::new(read(cert, "encryption_cert_file")?))
                }
                (Some(_), None) => Some(CertificatePem::new(signing_cert)),
            },
            decryption_key: config
                .decryption_key_file
                .as_deref()
                .map(|p| rsa_key(p, "decryption_key_file").map(PrivateKeyPem::new))
                .transpose()?,
            ..Credentials::default()
        };
        let build = |encrypted: bool| -> Result<Saml<Sp>, SamlSetupError> {
            let policy = SpValidationPolicy {
                authn_requests: AuthnRequestSigningPolicy::Sign,
                xml_signatures: XmlSignatureProfile::StrictRsaSha2,
                audience: AudienceValidationPolicy::Validate,
                ..SpValidationPolicy::recommended()
            };
            let mut builder =
                SpConfig::builder(EntityId::try_new(config.entity_id.clone()).map_err(setup)?)
                    .acs_endpoint(AcsEndpoint::post(acs_url.clone()).map_err(setup)?)
                    .credentials(credentials.clone())
                    .validation(policy);
            if encrypted {
                builder = builder.xml(XmlPolicy {
                    encryption: XmlEncryptionPolicy::encrypt_assertions(),
                    ..XmlPolicy::default()
                });
            }
            Saml::sp(builder.build().map_err(setup)?).map_err(setup)
        };
        let sp = build(false)?;
        let sp_encrypted = config
            .idps
            .iter()
            .any(|i| i.want_encrypted_assertions)
            .then(|| build(true))
            .transpose()?;
        let mut idps = Vec::new();
        for idp in &config.idps {
            let metadata = match &idp.metadata_file {
                Some(path) => {
                    let xml = read(path, "metadata_file")?;
                    let descriptor = descriptor(idp, &xml)
                        .map_err(|e| SamlSetupError(format!("idp `{}`: {e}", idp.name)))?;
                    Metadata {
                        read: Some((Instant::now(), Arc::new(descriptor))),
                        failed_at: None,
                    }
                }
                None => Metadata::default(),
            };
            idps.push(Idp {
                config: idp.clone(),
                metadata: tokio::sync::Mutex::new(metadata),
            });
        }
        Ok(Self {
            sp,
            sp_encrypted,
            idps,
            outstanding: stores::Expiring::new(config.max_pending_logins),
            used_handles: stores::Expiring::new(MAX_REPLAY_IDS),
            replay: stores::ReplayCache::new(MAX_REPLAY_IDS),
            finished: stores::Expiring::new(config.max_pending_logins),
            codes: stores::Expiring::new(config.max_pending_logins),
            checking: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 8)),
            )),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| SamlSetupError(e.to_string()))?,
            config: config.clone(),
        })
    }

    /// The SP metadata to give identity providers.
    pub fn metadata_xml(&self) -> &str {
        self.sp.metadata_xml()
    }

    pub fn idp_names(&self) -> Vec<String> {
        self.idps.iter().map(|i| i.config.name.clone()).collect()
    }

    pub fn login_window(&self) -> Duration {
        Duration::from_secs(self.config.login_window_secs)
    }

    pub fn session_ttl(&self) -> Duration {
        Duration::from_secs(self.config.session_ttl_secs)
    }

    fn idp_index(&self, name: Option<&str>) -> Result<usize, Refusal> {
        match name.filter(|n| !n.is_empty()) {
            Some(n) => self
                .idps
                .iter()
                .position(|i| i.config.name == n)
                .ok_or_else(|| Refusal::UnknownIdp(crate::web::printable(n))),
            None if self.idps.len() == 1 => Ok(0),
            None => Err(Refusal::UnknownIdp(
                "(none named; this gateway has several)".into(),
            )),
        }
    }

    /// The IdP's metadata, fetched again when older than its maximum age (a fetch that
    /// fails keeps the last good copy until twice that age).
    async fn descriptor(&self, idp: usize) -> Result<Arc<IdpDescriptor>, Refusal> {
        let entry = &self.idps[idp];
        let max_age = Duration::from_secs(entry.config.metadata_max_age_secs);
        let mut cached = entry.metadata.lock().await;
        let last_good = |m: &Metadata, within: Duration| {
            m.read
                .as_ref()
                .filter(|(at, _)| at.elapsed() < within)
                .map(|(_, d)| d.clone())
        };
        let Some(url) = entry.config.metadata_url.as_deref() else {
            return last_good(&cached, Duration::MAX)
                .ok_or_else(|| Refusal::IdpUnavailable("no metadata".into()));
        };
        if let Some(d) = last_good(&cached, max_age) {
            return Ok(d);
        }
        if cached
            .failed_at
            .is_some_and(|at| at.elapsed() < METADATA_RETRY)
        {
            return last_good(&cached, max_age * 2).ok_or_else(|| {
                Refusal::IdpUnavailable("the last metadata fetch failed moments ago".into())
            });
        }
        match self.fetch_metadata(&entry.config, url).await {
            Ok(d) => {
                let d = Arc::new(d);
                *cached = Metadata {
                    read: Some((Instant::now(), d.clone())),
                    failed_at: None,
                };
                Ok(d)
            }
            Err(e) => {
                cached.failed_at = Some(Instant::now());
                match last_good(&cached, max_age * 2) {
                    Some(d) => {
                        tracing::warn!(idp = %entry.config.name, error = ?e, "SAML metadata refresh failed; the last copy is used");
                        Ok(d)
                    }
                    None => Err(Refusal::IdpUnavailable(e)),
                }
            }
        }
    }

    async fn fetch_metadata(
        &self,
        idp: &SamlIdpConfig,
        url: &str,
    ) -> Result<IdpDescriptor, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("cannot fetch {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url} answered {}", resp.status()));
        }
        let too_large = || format!("{url}: metadata larger than 1 MiB");
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_METADATA_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut resp = resp;
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))?
        {
            if body.len() + chunk.len() > MAX_METADATA_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        let xml = String::from_utf8(body).map_err(|_| format!("{url}: not UTF-8"))?;
        descriptor(idp, &xml)
    }

    /// Starts a login at `idp` (the only one when `None`): the URL to send the browser
    /// to, and the login's handle (its RelayState).
    pub async fn start(
        &self,
        idp: Option<&str>,
        purpose: Purpose,
        client: Option<IpAddr>,
    ) -> Result<(String, String), (Refusal, RefusalContext)> {
        let index = self
            .idp_index(idp)
            .map_err(|r| (r, RefusalContext::default()))?;
        let context = RefusalContext {
            idp: Some(self.idps[index].config.name.clone()),
            ..RefusalContext::default()
        };
        // Refused before any work: starting a login costs a signature.
        if !self.outstanding.has_room(client) {
            return Err((Refusal::Busy, context));
        }
        let descriptor = self
            .descriptor(index)
            .await
            .map_err(|r| (r, context.clone()))?;
        let handle =
            crate::web::random_token(24).ok_or_else(|| (Refusal::Busy, context.clone()))?;
        let relay = RelayStateParam::try_from_option(Some(handle.clone()))
            .map_err(|e| (Refusal::Malformed(e.to_string()), context.clone()))?;
        let started = self
            .sp
            .start_sso(&descriptor, StartSso::redirect().relay_state(relay))
            .map_err(|e| (Refusal::IdpUnavailable(e.to_string()), context.clone()))?;
        let url = started
            .outbound
            .redirect_url()
            .map_err(|e| (Refusal::IdpUnavailable(e.to_string()), context.clone()))?
            .to_string();
        let outstanding = Outstanding {
            idp: index,
            pending: started.pending,
            purpose,
            refused: Arc::default(),
        };
        let window = Duration::from_secs(self.config.login_window_secs);
        self.outstanding
            .insert(handle.clone(), outstanding, window, client)
            .map_err(|_| (Refusal::Busy, context))?;
        Ok((url, handle))
    }

    /// Checks an answer posted to the ACS. The login it answers is used up when the
    /// answer passes, or after [`MAX_REFUSED_ANSWERS`] refused ones.
    pub async fn accept(
        self: &Arc<Self>,
        response_b64: String,
        relay_state: Option<String>,
    ) -> Result<Accepted, (Refusal, RefusalContext)> {
        let mut context = RefusalContext::default();
        let fail = |r: Refusal, c: &RefusalContext| (r, c.clone());
        if response_b64.len() > MAX_RESPONSE_BYTES {
            return Err(fail(
                Refusal::Malformed("larger than 256 KiB".into()),
                &context,
            ));
        }
        let xml = decode_response(&response_b64).map_err(|r| fail(r, &context))?;
        let shape = precheck::check(&xml).map_err(|r| fail(r, &context))?;
        let relay = relay_state.filter(|r| !r.is_empty());
        if relay.as_ref().is_some_and(|r| r.len() > MAX_RELAY_STATE) {
            return Err(fail(
                Refusal::Malformed("RelayState longer than 80 bytes".into()),
                &context,
            ));
        }
        // The login is looked at, and used up only by an answer that passes: a forged
        // answer does not cost its person the login.
        let outstanding = relay.as_deref().and_then(|h| self.outstanding.get(h));
        let (index, outstanding) = match outstanding {
            Some(o) => (o.idp, Some(o)),
            None => {
                if relay
                    .as_deref()
                    .is_some_and(|h| self.used_handles.contains(h))
                {
                    return Err(fail(Refusal::Replayed, &context));
                }
                // No login asked for this: only an IdP that allows that may have sent it.
                let index = self
                    .idps
                    .iter()
                    .position(|i| shape.issuer.as_deref() == Some(i.config.entity_id.as_str()));
                context.idp = index.map(|i| self.idps[i].config.name.clone());
                match index {
                    Some(i) if self.idps[i].config.allow_idp_initiated => (i, None),
                    _ => return Err(fail(Refusal::Unsolicited, &context)),
                }
            }
        };
        let idp = &self.idps[index];
        context.idp = Some(idp.config.name.clone());
        context.request_id = outstanding
            .as_ref()
            .map(|o| o.pending.request_id().as_str().to_string());
        context.purpose = outstanding.as_ref().map(|o| o.purpose.clone());
        if idp.config.want_encrypted_assertions && !shape.encrypted {
            return Err(fail(Refusal::NotEncrypted, &context));
        }
        let descriptor = self
            .descriptor(index)
            .await
            .map_err(|r| fail(r, &context))?;
        let this = self.clone();
        let pending = outstanding.as_ref().map(|o| o.pending.clone());
        let fields = {
            let mut f = vec![FormField::new("SAMLResponse", response_b64)];
            if let Some(r) = &relay {
                f.push(FormField::new("RelayState", r.clone()));
            }
            f
        };
        // Checking costs milliseconds of CPU: at most a few at once, the others wait a
        // little. The permit goes with the check, so a client that hangs up does not
        // free it while the check still runs.
        let permit = tokio::time::timeout(CHECK_QUEUE_WAIT, self.checking.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or_else(|| fail(Refusal::Busy, &context))?;
        let encrypted = shape.encrypted;
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.validate(index, &descriptor, pending.as_ref(), fields, encrypted)
        })
        .await
        .map_err(|_| {
            fail(
                Refusal::Malformed("the check did not finish".into()),
                &context,
            )
        })?;
        let login = checked.map_err(|r| {
            // A login takes a few refused answers (its person's own mistakes), not a
            // stream of them: after that it is gone.
            if let (Some(h), Some(o)) = (&relay, &outstanding)
                && o.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
                    >= MAX_REFUSED_ANSWERS
            {
                self.outstanding.take(h);
            }
            fail(r, &context)
        })?;
        if let Some(h) = &relay
            && outstanding.is_some()
        {
            // Two posts of one answer at once: the replay cache refuses the second, and
            // only one can take the login.
            if self.outstanding.take(h).is_none() {
                return Err(fail(Refusal::Replayed, &context));
            }
            let _ = self
                .used_handles
                .insert(h.clone(), (), USED_HANDLE_TTL, None);
        }
        Ok(Accepted {
            login,
            purpose: outstanding.map(|o| o.purpose),
        })
    }
}

/// Parses an IdP's metadata for its configured entity ID; refuses metadata that names
/// no signing certificate (nothing could be checked against it).
fn descriptor(idp: &SamlIdpConfig, xml: &str) -> Result<IdpDescriptor, String> {
    if !has_signing_certificate(xml) {
        return Err("the metadata names no signing certificate".into());
    }
    let entity = EntityId::try_new(idp.entity_id.clone()).map_err(|e| e.to_string())?;
    IdpDescriptor::from_metadata_xml_for(entity, xml, MetadataTrustPolicy::UnsignedForCompatibility)
        .map_err(|e| {
            format!(
                "the metadata is not usable for entity `{}`: {e}",
                idp.entity_id
            )
        })
}

/// Whether an IdP descriptor has a `KeyDescriptor` for signing (or for any use) with
/// an X.509 certificate.
fn has_signing_certificate(xml: &str) -> bool {
    use quick_xml::events::Event;
    let mut reader = quick_xml::reader::Reader::from_str(xml);
    let mut in_signing_key = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == "KeyDescriptor" => {
                in_signing_key = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.local_name().as_ref() == "use")
                    .is_none_or(|a| a.value.as_ref() == "signing");
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == "KeyDescriptor" => {
                in_signing_key = false;
            }
            Ok(Event::Start(e))
                if in_signing_key && e.local_name().as_ref() == "X509Certificate" =>
            {
                return true;
            }
            Ok(Event::Eof) | Err(_) => return false,
            _ => {}
        }
    }
}

fn decode_response(b64: &str) -> Result<String, Refusal> {
    use base64::Engine;
    let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|_| Refusal::Malformed("SAMLResponse is not base64".into()))?;
    String::from_utf8(bytes).map_err(|_| Refusal::Malformed("SAMLResponse is not UTF-8".into()))
}
