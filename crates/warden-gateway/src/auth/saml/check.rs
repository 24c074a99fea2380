//! Checking an answer with saml-rs, and reading the subject and groups from it.

use saml_rs::{
    BrowserInput, ClockSkew, FormField, IdpDescriptor, PendingAuthnRequest, ReplayKey,
    ReplayPolicy, SamlError, SamlValidationContext, SsoResponse,
};
use std::time::{Duration, SystemTime};

use super::{MAX_GROUPS, MAX_NAME, Refusal, SamlLogin, SamlService, stores};

impl SamlService {
    pub(super) fn validate(
        &self,
        index: usize,
        descriptor: &IdpDescriptor,
        pending: Option<&PendingAuthnRequest>,
        fields: Vec<FormField>,
        encrypted: bool,
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
            idp: &idp.entity_id,
            now,
            skew: Duration::from_secs(idp.clock_skew_secs),
            full: false,
        };
        let context = SamlValidationContext::new(now, ReplayPolicy::RequireCache(&mut replay))
            // saml-rs takes the NotBefore drift as a negative number.
            .with_clock_skew(ClockSkew::from_millis(-skew_ms, skew_ms));
        let input = BrowserInput::<SsoResponse>::post(fields);
        let session = match pending {
            Some(p) => sp.finish_sso(descriptor, p, input, context),
            None => sp.accept_unsolicited_sso(descriptor, input, context),
        };
        let session = match session {
            Ok(s) => s,
            Err(_) if replay.full => return Err(Refusal::ReplayCacheFull),
            Err(e) => {
                // Debug: the error may quote the answer, which is the sender's to write.
                tracing::info!(idp = %idp.name, error = ?e.to_string(), "SAML answer refused");
                return Err(Refusal::from_library(&e, encrypted));
            }
        };
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
        if subject.is_empty() {
            return Err(Refusal::NoSubject);
        }
        let subject = format!("{}{subject}", idp.subject_prefix);
        let groups: Vec<String> = session
            .attributes()
            .get(&idp.groups_attribute)
            .map(|a| {
                a.values()
                    .iter()
                    .map(|v| v.as_str().to_string())
                    .filter(|g| !g.is_empty())
                    .filter(|g| idp.accept_groups.as_ref().is_none_or(|a| a.contains(g)))
                    .collect()
            })
            .unwrap_or_default();
        // Names are taken as signed: one with surrounding spaces is not quietly made
        // into another.
        let odd =
            |n: &String| n.len() > MAX_NAME || n.trim() != n || n.chars().any(char::is_control);
        if groups.len() > MAX_GROUPS || odd(&subject) || groups.iter().any(odd) {
            return Err(Refusal::Malformed(format!(
                "the subject or a group exceeds {MAX_NAME} characters, has surrounding spaces or control characters, or there are more than {MAX_GROUPS} groups"
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

/// The replay cache as saml-rs asks for it: ids per IdP entity (however many entries
/// configure it), kept until their expiry plus the IdP's skew.
struct SharedReplay<'a> {
    cache: &'a stores::ReplayCache,
    idp: &'a str,
    now: SystemTime,
    skew: Duration,
    /// The cache refused for want of room, not because the id was seen.
    full: bool,
}

impl saml_rs::ReplayCache for SharedReplay<'_> {
    fn check_and_store(&mut self, key: ReplayKey, expires_at: SystemTime) -> Result<(), SamlError> {
        let name = format!("{}\u{0}{key:?}", self.idp);
        match self
            .cache
            .first_use(name.clone(), expires_at + self.skew, self.now)
        {
            Ok(()) => Ok(()),
            Err(full) => {
                // A full cache refuses as a replay would: nothing unchecked gets through.
                self.full = full == stores::Full::Total;
                Err(SamlError::ReplayDetected { key: name })
            }
        }
    }
}
