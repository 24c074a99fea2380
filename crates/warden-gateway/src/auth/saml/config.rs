//! `[auth.saml]`: Warden as a SAML 2.0 service provider, and the identity providers it
//! trusts.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The service provider's side: who Warden is to the identity providers, and how long
/// a SAML login lasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamlConfig {
    /// The SP entity ID the identity providers know Warden by (their client ID).
    pub entity_id: String,
    /// Where identity providers post their answers; default `<api.public_url>/auth/saml/acs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acs_url: Option<String>,
    /// Signs the AuthnRequests (RSA, PKCS#8 PEM); its certificate is in the SP
    /// metadata.
    pub signing_key_file: PathBuf,
    pub signing_cert_file: PathBuf,
    /// Decrypts encrypted assertions; the certificate the identity provider encrypts
    /// to (the signing certificate when unset) is in the SP metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_cert_file: Option<PathBuf>,
    /// Lifetime of the Warden session (console and CLI) a SAML login gives.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// How long a started login may take at the identity provider.
    #[serde(default = "default_login_window")]
    pub login_window_secs: u64,
    /// Logins started and not finished, at most (all clients); more are refused.
    #[serde(default = "default_max_pending")]
    pub max_pending_logins: usize,
    pub idps: Vec<SamlIdpConfig>,
}

/// One trusted identity provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamlIdpConfig {
    /// Short name: shown on the console's login page, given to `warden login --saml`.
    pub name: String,
    /// The IdP's entity ID: must equal the metadata's `entityID` and every answer's
    /// `Issuer`.
    pub entity_id: String,
    /// The IdP metadata (signing certificates, SSO endpoint): a URL, fetched when
    /// needed and again after `metadata_max_age_secs`, or a file read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_file: Option<PathBuf>,
    #[serde(default = "default_metadata_max_age")]
    pub metadata_max_age_secs: u64,
    /// The attribute naming the subject; empty: the assertion's `NameID`.
    #[serde(default)]
    pub subject_attribute: String,
    /// The attribute whose values are the subject's groups.
    #[serde(default = "default_groups_attribute")]
    pub groups_attribute: String,
    /// The only groups this IdP may grant (others in its assertions are dropped);
    /// unset: all. Keeps a partner's or a test IdP from granting `admin_groups`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_groups: Option<Vec<String>>,
    /// Put before every subject from this IdP (e.g. `partner:`), so that its `alice`
    /// is not another IdP's `alice`.
    #[serde(default)]
    pub subject_prefix: String,
    /// Tolerance for `NotBefore` / `NotOnOrAfter` against the gateway's clock.
    #[serde(default = "default_clock_skew")]
    pub clock_skew_secs: u64,
    /// Refuse plaintext assertions: the IdP must encrypt them to Warden's certificate.
    #[serde(default)]
    pub want_encrypted_assertions: bool,
    /// Accept answers no login of Warden's asked for (IdP-initiated SSO). Off: such an
    /// answer is refused as `unsolicited`. On: a console session starts from it, which
    /// a third party can cause in someone's browser (login CSRF).
    #[serde(default)]
    pub allow_idp_initiated: bool,
}

fn default_session_ttl() -> u64 {
    8 * 3600
}
fn default_login_window() -> u64 {
    300
}
fn default_max_pending() -> usize {
    10_000
}
fn default_metadata_max_age() -> u64 {
    3600
}
fn default_groups_attribute() -> String {
    "groups".into()
}
fn default_clock_skew() -> u64 {
    60
}

/// The longest session a SAML login may give: a day.
const MAX_SESSION_TTL: u64 = 24 * 3600;

impl SamlConfig {
    /// Checks what can be checked without reading files or the network.
    pub fn validate(&self, public_url: Option<&str>) -> Result<(), String> {
        if self.entity_id.trim().is_empty() {
            return Err("auth.saml.entity_id must not be empty".into());
        }
        if self.acs_url.is_none() && public_url.is_none() {
            return Err("auth.saml needs acs_url, or api.public_url to derive it from".into());
        }
        if let Some(acs) = &self.acs_url {
            crate::config::check_issuer_url(acs).map_err(|m| format!("auth.saml.acs_url: {m}"))?;
        }
        if !(60..=MAX_SESSION_TTL).contains(&self.session_ttl_secs) {
            return Err(format!(
                "auth.saml.session_ttl_secs must be between 60 and {MAX_SESSION_TTL}"
            ));
        }
        if !(30..=3600).contains(&self.login_window_secs) {
            return Err("auth.saml.login_window_secs must be between 30 and 3600".into());
        }
        if self.max_pending_logins == 0 {
            return Err("auth.saml.max_pending_logins must be at least 1".into());
        }
        if self.idps.is_empty() {
            return Err("auth.saml.idps must name at least one identity provider".into());
        }
        if self.idps.iter().any(|i| i.want_encrypted_assertions)
            && self.decryption_key_file.is_none()
        {
            return Err(
                "auth.saml: an IdP wants encrypted assertions but decryption_key_file is not set"
                    .into(),
            );
        }
        let mut names = std::collections::HashSet::new();
        for (i, idp) in self.idps.iter().enumerate() {
            let at = format!("auth.saml.idps[{i}]");
            let n = &idp.name;
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || !names.insert(n.clone())
            {
                return Err(format!(
                    "{at}.name `{n}` must be 1 to 64 letters, digits, `-`, `_` or `.`, and unique"
                ));
            }
            if idp.entity_id.trim().is_empty() {
                return Err(format!("{at}.entity_id must not be empty"));
            }
            match (&idp.metadata_url, &idp.metadata_file) {
                (Some(url), None) => crate::config::check_issuer_url(url)
                    .map_err(|m| format!("{at}.metadata_url: {m}"))?,
                (None, Some(_)) => {}
                _ => {
                    return Err(format!(
                        "{at}: set exactly one of metadata_url and metadata_file"
                    ));
                }
            }
            if idp.metadata_max_age_secs < 60 {
                return Err(format!("{at}.metadata_max_age_secs must be at least 60"));
            }
            if idp.subject_prefix.len() > 64 || idp.subject_prefix.chars().any(char::is_control) {
                return Err(format!(
                    "{at}.subject_prefix must be at most 64 characters, none a control character"
                ));
            }
            if idp.groups_attribute.is_empty() {
                return Err(format!("{at}.groups_attribute must not be empty"));
            }
            if idp.clock_skew_secs > 600 {
                return Err(format!("{at}.clock_skew_secs must be at most 600"));
            }
            // An unsolicited answer is matched to an IdP by its Issuer alone: entries for
            // the same identity provider must agree on whether to take one.
            if self.idps[..i].iter().any(|o| {
                o.entity_id == idp.entity_id && o.allow_idp_initiated != idp.allow_idp_initiated
            }) {
                return Err(format!(
                    "{at}: another entry for entity `{}` sets allow_idp_initiated otherwise",
                    idp.entity_id
                ));
            }
        }
        Ok(())
    }

    /// Where identity providers post their answers.
    pub fn acs_url(&self, public_url: Option<&str>) -> String {
        match (&self.acs_url, public_url) {
            (Some(acs), _) => acs.clone(),
            (None, Some(public)) => format!("{}/auth/saml/acs", public.trim_end_matches('/')),
            (None, None) => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SamlConfig {
        toml::from_str(
            r#"
entity_id = "urn:warden"
acs_url = "https://warden.example/auth/saml/acs"
signing_key_file = "k"
signing_cert_file = "c"
[[idps]]
name = "okta"
entity_id = "http://www.okta.com/x"
metadata_url = "https://example.okta.com/metadata"
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn defaults_are_safe_and_a_plain_setup_is_valid() {
        let c = config();
        assert!(c.validate(None).is_ok());
        let idp = &c.idps[0];
        assert!(!idp.allow_idp_initiated && !idp.want_encrypted_assertions);
        assert_eq!(idp.groups_attribute, "groups");
        assert_eq!(c.acs_url(None), "https://warden.example/auth/saml/acs");
        let mut derived = config();
        derived.acs_url = None;
        assert_eq!(
            derived.acs_url(Some("https://w.example/")),
            "https://w.example/auth/saml/acs"
        );
        assert!(derived.validate(None).is_err(), "no ACS URL to give");
    }

    #[test]
    fn unsafe_or_ambiguous_settings_are_refused() {
        type Change = Box<dyn Fn(&mut SamlConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "plain http",
                Box::new(|c| c.idps[0].metadata_url = Some("http://idp.example/md".into())),
            ),
            (
                "both sources",
                Box::new(|c| c.idps[0].metadata_file = Some("md.xml".into())),
            ),
            ("no source", Box::new(|c| c.idps[0].metadata_url = None)),
            (
                "same name twice",
                Box::new(|c| c.idps.push(c.idps[0].clone())),
            ),
            ("odd name", Box::new(|c| c.idps[0].name = "a b".into())),
            (
                "long session",
                Box::new(|c| c.session_ttl_secs = 7 * 24 * 3600),
            ),
            ("huge skew", Box::new(|c| c.idps[0].clock_skew_secs = 3600)),
            (
                "no key to decrypt",
                Box::new(|c| c.idps[0].want_encrypted_assertions = true),
            ),
            ("no idps", Box::new(|c| c.idps.clear())),
            ("no entity", Box::new(|c| c.entity_id = " ".into())),
            (
                "same IdP, unsolicited answers taken and not",
                Box::new(|c| {
                    let mut other = c.idps[0].clone();
                    other.name = "okta-2".into();
                    other.allow_idp_initiated = true;
                    c.idps.push(other);
                }),
            ),
        ];
        for (what, change) in cases {
            let mut c = config();
            change(&mut c);
            assert!(c.validate(None).is_err(), "{what}");
        }
    }
}
