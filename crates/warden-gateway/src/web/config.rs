//! The `[web]` section: the console's sessions and its browser login.

use serde::{Deserialize, Serialize};
use warden_core::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Serve the console at `/` (its login routes under `/auth/`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// A console session unused this long ends.
    #[serde(default = "default_idle")]
    pub session_idle_secs: u64,
    /// A console session ends this long after login, whatever its use. A session also
    /// ends when its credential does (an OIDC token that cannot be renewed, a revoked
    /// or expired API key).
    #[serde(default = "default_max_age")]
    pub session_max_secs: u64,
    /// Console sessions held at once; beyond, the least recently used ends.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Browser login through an OpenID provider (authorization code with PKCE).
    /// Without it the console offers only API-key login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<WebOidcConfig>,
}

/// The OpenID provider client the console logs people in with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebOidcConfig {
    /// One of `auth.oidc`'s issuers: the access tokens it issues are checked exactly as
    /// the API checks them.
    pub issuer: String,
    /// A client registered there with the redirect `<console>/auth/callback`.
    pub client_id: String,
    /// For a confidential client (sent as HTTP Basic); none for a public client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<Secret<String>>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// A resource indicator (RFC 8707), when the provider needs one to issue access
    /// tokens for the gateway's audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// The redirect URI registered with the provider. Default: the address the browser
    /// used (`Host`), `https` when the API listener has TLS, path `/auth/callback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_url: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_idle() -> u64 {
    3600
}
fn default_max_age() -> u64 {
    12 * 3600
}
fn default_max_sessions() -> usize {
    10_000
}
fn default_scopes() -> Vec<String> {
    vec!["openid".into(), "offline_access".into()]
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            session_idle_secs: default_idle(),
            session_max_secs: default_max_age(),
            max_sessions: default_max_sessions(),
            oidc: None,
        }
    }
}

impl WebConfig {
    /// Checks what serde cannot; `issuers` are the configured `auth.oidc` issuers.
    pub fn validate(&self, issuers: &[&str]) -> Result<(), String> {
        if self.session_idle_secs == 0 || self.session_max_secs == 0 || self.max_sessions == 0 {
            return Err(
                "web.session_idle_secs, web.session_max_secs and web.max_sessions must be at least 1"
                    .into(),
            );
        }
        if let Some(oidc) = &self.oidc {
            if !issuers.contains(&oidc.issuer.as_str()) {
                return Err(format!(
                    "web.oidc.issuer `{}` must be one of the auth.oidc issuers",
                    oidc.issuer
                ));
            }
            if let Some(url) = &oidc.redirect_url
                && !(url.starts_with("https://") || url.starts_with("http://"))
            {
                return Err("web.oidc.redirect_url must be an http(s) URL".into());
            }
        }
        Ok(())
    }
}
