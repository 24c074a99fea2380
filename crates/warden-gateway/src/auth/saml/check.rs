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
        let mut replay = ReplayLedger {
            cache: &self.replay,
            idp: &idp.entity_id,
            now,
            ids: Vec::new(),
            too_long: false,
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
            Err(_) if replay.too_long => {
                return Err(Refusal::Expired(
                    "it would stay valid for more than a day".into(),
                ));
            }
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
        // A decrypted assertion was out of the structural check's sight until now.
        if encrypted {
            super::precheck::check(&session.raw_flow().saml_content)?;
        }
        // Only an answer that passed everything spends its ids: a refused one cannot
        // fill the cache (a Response ID is the sender's to choose when only the
        // assertion is signed).
        self.replay
            .record_all(&replay.ids, now)
            .map_err(|full| match full {
                stores::Full::Total => Refusal::ReplayCacheFull,
                stores::Full::Client => Refusal::Replayed,
            })?;
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

/// Longest an answer's ids are kept: an assertion valid for longer is refused.
const MAX_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// The replay cache as saml-rs asks for it, per IdP entity (however many entries
/// configure it): an id seen before is refused at once; new ids are noted and recorded
/// only once the whole answer has passed. saml-rs gives each id's expiry with the
/// skew already added.
struct ReplayLedger<'a> {
    cache: &'a stores::ReplayCache,
    idp: &'a str,
    now: SystemTime,
    ids: Vec<(String, SystemTime)>,
    /// An id would outlive [`MAX_VALIDITY`].
    too_long: bool,
}

impl saml_rs::ReplayCache for ReplayLedger<'_> {
    fn check_and_store(&mut self, key: ReplayKey, expires_at: SystemTime) -> Result<(), SamlError> {
        let name = format!("{}\u{0}{key:?}", self.idp);
        if expires_at > self.now + MAX_VALIDITY {
            self.too_long = true;
            return Err(SamlError::ReplayDetected { key: name });
        }
        if self.cache.seen(&name, self.now) || self.ids.iter().any(|(k, _)| *k == name) {
            return Err(SamlError::ReplayDetected { key: name });
        }
        self.ids.push((name, expires_at));
        Ok(())
    }
}
