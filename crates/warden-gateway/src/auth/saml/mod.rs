//! SAML 2.0 single sign-on, Warden as the service provider: starting a login at a
//! configured identity provider (a signed AuthnRequest, HTTP-Redirect binding) and
//! checking its answer (HTTP-POST binding) into a subject and groups.
//!
//! XML signatures, canonicalization, decryption and the SAML conditions are checked by
//! `saml-rs` (pure Rust, on the same aws-lc as the rest of Warden); this module keeps it
//! behind one seam and adds what is Warden's: which logins are outstanding, the replay
//! cache, a structural check that refuses signature-wrapping shapes before the library
//! sees them, and one stable refusal code per cause.

mod config;
mod handover;
mod precheck;
mod stores;

pub use config::{SamlConfig, SamlIdpConfig};
pub use handover::{binding_of, challenge_of};

use saml_rs::{
    AcsEndpoint, AudienceValidationPolicy, AuthnRequestSigningPolicy, BrowserInput, CertificatePem,
    ClockSkew, Credentials, EntityId, FormField, IdpDescriptor, MetadataTrustPolicy,
    PendingAuthnRequest, PrivateKeyPem, RelayStateParam, ReplayKey, ReplayPolicy, Saml, SamlError,
    SamlValidationContext, Sp, SpConfig, SpValidationPolicy, SsoResponse, StartSso,
    XmlEncryptionPolicy, XmlPolicy, XmlSignatureProfile,
};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Largest `SAMLResponse` accepted, base64 as posted.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Most groups, and longest subject or group name, a login may carry.
const MAX_GROUPS: usize = 256;
const MAX_NAME: usize = 256;
/// How long a handle of a finished login is remembered, so that a second post of the
/// same answer reads as a replay and not as unsolicited.
const USED_HANDLE_TTL: Duration = Duration::from_secs(3600);
/// Most answers the replay cache remembers at once.
const MAX_REPLAY_IDS: usize = 200_000;

/// Why a SAML login was refused. `code()` is the stable name audit events carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no SAML identity provider named `{0}` is configured")]
    UnknownIdp(String),
    #[error("the identity provider's metadata could not be read: {0}")]
    IdpUnavailable(String),
    #[error("too many logins are in progress; try again in a few minutes")]
    Busy,
    #[error("no login of this gateway asked for this answer (IdP-initiated login is off)")]
    Unsolicited,
    #[error("this answer was used before")]
    Replayed,
    #[error("the answer is not signed")]
    Unsigned,
    #[error("the answer's signature does not verify")]
    BadSignature,
    #[error("the answer is not signed by a certificate configured for this identity provider")]
    CertMismatch,
    #[error("the answer's signature does not cover what it would log in ({0})")]
    Wrapped(String),
    #[error("the answer is not valid at this time ({0})")]
    Expired(String),
    #[error("the assertion is for another audience")]
    Audience,
    #[error("the assertion names another recipient")]
    Recipient,
    #[error("the answer was sent to another destination")]
    Destination,
    #[error("the answer is not for the login this gateway started")]
    InResponseTo,
    #[error("the answer comes from another identity provider")]
    Issuer,
    #[error("the identity provider refused the login: {0}")]
    Status(String),
    #[error("the assertion could not be decrypted: {0}")]
    Decrypt(String),
    #[error("the assertion is not encrypted, and this identity provider must encrypt them")]
    NotEncrypted,
    #[error("the answer uses a signature algorithm that is not accepted")]
    Algorithm,
    #[error("the answer is malformed: {0}")]
    Malformed(String),
    #[error("the assertion names no subject")]
    NoSubject,
    #[error("the login was started in another browser")]
    BrowserMismatch,
    #[error("the code verifier does not match the login's challenge")]
    VerifierMismatch,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownIdp(_) => "unknown_idp",
            Refusal::IdpUnavailable(_) => "idp_unavailable",
            Refusal::Busy => "too_many_logins",
            Refusal::Unsolicited => "unsolicited",
            Refusal::Replayed => "replayed",
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::CertMismatch => "cert_mismatch",
            Refusal::Wrapped(_) => "wrapped",
            Refusal::Expired(_) => "expired",
            Refusal::Audience => "audience",
            Refusal::Recipient => "recipient",
            Refusal::Destination => "destination",
            Refusal::InResponseTo => "in_response_to",
            Refusal::Issuer => "issuer",
            Refusal::Status(_) => "status",
            Refusal::Decrypt(_) => "decrypt",
            Refusal::NotEncrypted => "not_encrypted",
            Refusal::Algorithm => "algorithm",
            Refusal::Malformed(_) => "malformed",
            Refusal::NoSubject => "no_subject",
            Refusal::BrowserMismatch => "login_state_mismatch",
            Refusal::VerifierMismatch => "verifier_mismatch",
        }
    }

    /// A refusal saml-rs gave, by cause.
    fn from_library(e: &SamlError) -> Refusal {
        use saml_rs::error::SubjectConfirmationReason as S;
        match e {
            SamlError::ReplayDetected { .. } => Refusal::Replayed,
            SamlError::SignatureMissing | SamlError::AssertionSignatureRequired => {
                Refusal::Unsigned
            }
            SamlError::SignatureVerification { .. }
            | SamlError::FailedToVerifySignature
            | SamlError::FailedMessageSignatureVerification => Refusal::BadSignature,
            SamlError::NoTrustedCertificate
            | SamlError::CertificateMismatch
            | SamlError::UnmatchCertificate => Refusal::CertMismatch,
            SamlError::PotentialWrappingAttack
            | SamlError::SignedReferenceMismatch
            | SamlError::ReferenceResolution { .. } => Refusal::Wrapped(e.to_string()),
            SamlError::TimeWindowInvalid { field } => Refusal::Expired(field.to_string()),
            SamlError::ExpiredSession => Refusal::Expired("session".into()),
            SamlError::SubjectConfirmationInvalid { reason } => match reason {
                S::RecipientMismatch => Refusal::Recipient,
                S::InResponseToMismatch => Refusal::InResponseTo,
                S::TimeWindowInvalid | S::MissingNotOnOrAfter => {
                    Refusal::Expired("subject confirmation".into())
                }
                _ => Refusal::Malformed(e.to_string()),
            },
            SamlError::AudienceMismatch { .. } | SamlError::UnmatchAudience => Refusal::Audience,
            SamlError::DestinationMismatch { .. } | SamlError::UnmatchDestination => {
                Refusal::Destination
            }
            SamlError::InResponseToMismatch { .. } | SamlError::InvalidInResponseTo => {
                Refusal::InResponseTo
            }
            SamlError::IssuerMismatch { .. } | SamlError::UnmatchIssuer => Refusal::Issuer,
            SamlError::StatusNotSuccess { top, .. } | SamlError::FailedStatus { top, .. } => {
                Refusal::Status(top.rsplit(':').next().unwrap_or(top).to_string())
            }
            SamlError::UndefinedStatus => Refusal::Status("no status".into()),
            SamlError::AlgorithmUnsupported => Refusal::Algorithm,
            SamlError::MissingKey(m) | SamlError::Crypto(m) => Refusal::Decrypt(m.clone()),
            other => {
                let text = other.to_string();
                if text.contains("ENCRYPTED_ASSERTION") {
                    Refusal::NotEncrypted
                } else {
                    Refusal::Malformed(text)
                }
            }
        }
    }
}

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
    metadata: tokio::sync::Mutex<Option<(Instant, Arc<IdpDescriptor>)>>,
}

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

impl SamlService {
    /// Reads the keys and the metadata files; metadata URLs are fetched when first
    /// needed.
    pub fn new(config: &SamlConfig, public_url: Option<&str>) -> Result<Self, SamlSetupError> {
        let setup = |e: SamlError| SamlSetupError(e.to_string());
        let acs_url = config.acs_url(public_url);
        let signing_cert = read(&config.signing_cert_file, "signing_cert_file")?;
        let credentials = Credentials {
            signing_key: Some(PrivateKeyPem::new(read(
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
                .map(|p| read(p, "decryption_key_file").map(PrivateKeyPem::new))
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
                    Some((Instant::now(), Arc::new(descriptor)))
                }
                None => None,
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
        let Some(url) = entry.config.metadata_url.as_deref() else {
            return cached
                .as_ref()
                .map(|(_, d)| d.clone())
                .ok_or_else(|| Refusal::IdpUnavailable("no metadata".into()));
        };
        if let Some((at, d)) = cached.as_ref()
            && at.elapsed() < max_age
        {
            return Ok(d.clone());
        }
        match self.fetch_metadata(&entry.config, url).await {
            Ok(d) => {
                let d = Arc::new(d);
                *cached = Some((Instant::now(), d.clone()));
                Ok(d)
            }
            Err(e) => match cached.as_ref() {
                Some((at, d)) if at.elapsed() < max_age * 2 => {
                    tracing::warn!(idp = %entry.config.name, error = %e, "SAML metadata refresh failed; the last copy is used");
                    Ok(d.clone())
                }
                _ => Err(Refusal::IdpUnavailable(e)),
            },
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
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("cannot read {url}: {e}"))?;
        if body.len() > 1024 * 1024 {
            return Err(format!("{url}: metadata larger than 1 MiB"));
        }
        let xml = String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: not UTF-8"))?;
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
        };
        let window = Duration::from_secs(self.config.login_window_secs);
        self.outstanding
            .insert(handle.clone(), outstanding, window, client)
            .map_err(|_| (Refusal::Busy, context))?;
        Ok((url, handle))
    }

    /// Checks an answer posted to the ACS. The login it answers is used up either way.
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
        let outstanding = relay.as_deref().and_then(|h| self.outstanding.take(h));
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
        if let Some(h) = &relay
            && outstanding.is_some()
        {
            let _ = self
                .used_handles
                .insert(h.clone(), (), USED_HANDLE_TTL, None);
        }
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
            if let Some(r) = relay {
                f.push(FormField::new("RelayState", r));
            }
            f
        };
        let checked = tokio::task::spawn_blocking(move || {
            this.validate(index, &descriptor, pending.as_ref(), fields)
        })
        .await
        .map_err(|_| {
            fail(
                Refusal::Malformed("the check did not finish".into()),
                &context,
            )
        })?;
        let login = checked.map_err(|r| fail(r, &context))?;
        Ok(Accepted {
            login,
            purpose: outstanding.map(|o| o.purpose),
        })
    }

    fn validate(
        &self,
        index: usize,
        descriptor: &IdpDescriptor,
        pending: Option<&PendingAuthnRequest>,
        fields: Vec<FormField>,
    ) -> Result<SamlLogin, Refusal> {
        let idp = &self.idps[index].config;
        let sp = match (&self.sp_encrypted, idp.want_encrypted_assertions) {
            (Some(sp), true) => sp,
            _ => &self.sp,
        };
        let now = SystemTime::now();
        let skew_ms = i64::try_from(idp.clock_skew_secs.saturating_mul(1000)).unwrap_or(0);
        let mut replay = SharedReplay {
            cache: &self.replay,
            idp: &idp.name,
            now,
            skew: Duration::from_secs(idp.clock_skew_secs),
        };
        let context = SamlValidationContext::new(now, ReplayPolicy::RequireCache(&mut replay))
            // saml-rs takes the NotBefore drift as a negative number.
            .with_clock_skew(ClockSkew::from_millis(-skew_ms, skew_ms));
        let input = BrowserInput::<SsoResponse>::post(fields);
        let session = match pending {
            Some(p) => sp.finish_sso(descriptor, p, input, context),
            None => sp.accept_unsolicited_sso(descriptor, input, context),
        }
        .map_err(|e| {
            tracing::info!(idp = %idp.name, error = %e, "SAML answer refused");
            Refusal::from_library(&e)
        })?;
        let subject = if idp.subject_attribute.is_empty() {
            session.name_id().value().to_string()
        } else {
            session
                .attributes()
                .get(&idp.subject_attribute)
                .and_then(|a| a.values().first())
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let subject = subject.trim().to_string();
        if subject.is_empty() {
            return Err(Refusal::NoSubject);
        }
        let groups: Vec<String> = session
            .attributes()
            .get(&idp.groups_attribute)
            .map(|a| {
                a.values()
                    .iter()
                    .map(|v| v.as_str().trim().to_string())
                    .filter(|g| !g.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if subject.len() > MAX_NAME
            || groups.len() > MAX_GROUPS
            || groups.iter().any(|g| g.len() > MAX_NAME)
            || subject
                .chars()
                .chain(groups.iter().flat_map(|g| g.chars()))
                .any(char::is_control)
        {
            return Err(Refusal::Malformed(format!(
                "the subject or groups exceed {MAX_NAME} characters, {MAX_GROUPS} groups, or hold control characters"
            )));
        }
        Ok(SamlLogin {
            idp: idp.name.clone(),
            subject,
            groups,
            request_id: session.in_response_to().map(|i| i.as_str().to_string()),
            response_id: session.response_id().as_str().to_string(),
            assertion_id: session.assertion_id().as_str().to_string(),
        })
    }
}

/// The replay cache as saml-rs asks for it: ids per IdP, kept until their expiry plus
/// the IdP's skew.
struct SharedReplay<'a> {
    cache: &'a stores::ReplayCache,
    idp: &'a str,
    now: SystemTime,
    skew: Duration,
}

impl saml_rs::ReplayCache for SharedReplay<'_> {
    fn check_and_store(&mut self, key: ReplayKey, expires_at: SystemTime) -> Result<(), SamlError> {
        let name = format!("{}\u{0}{key:?}", self.idp);
        match self
            .cache
            .first_use(name.clone(), expires_at + self.skew, self.now)
        {
            Ok(()) => Ok(()),
            // A full cache refuses as a replay would: nothing unchecked gets through.
            Err(_) => Err(SamlError::ReplayDetected { key: name }),
        }
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
