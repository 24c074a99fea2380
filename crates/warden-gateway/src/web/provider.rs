//! The console's client of its OpenID provider: discovery, the authorization request
//! (PKCE S256 and `state`), the code exchange and token renewal.
//!
//! A login under way keeps nothing on the gateway: its `state`, PKCE verifier,
//! redirect and deadline are sealed (AES-256-GCM, under a key made at start) into
//! the login cookie the browser brings back. So no number of started logins can push
//! out another person's, and a cookie the gateway did not seal opens nothing.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use warden_core::Secret;

use super::{WebOidcConfig, random_token};

/// How long a browser has to come back from the provider.
pub const LOGIN_WINDOW: Duration = Duration::from_secs(600);
const SEAL_CONTEXT: &[u8] = b"warden-console-login-v1";

/// Tokens from the provider's token endpoint.
pub struct Tokens {
    pub access: Secret<String>,
    pub refresh: Option<Secret<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("the identity provider could not be reached: {0}")]
    Unreachable(String),
    #[error("the identity provider answered: {0}")]
    Refused(String),
    #[error("the login expired or was not started in this browser")]
    UnknownState,
    #[error("the system's random source failed")]
    NoRandomness,
}

impl LoginError {
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::Unreachable(_) => "issuer_unavailable",
            LoginError::Refused(_) => "login_refused",
            LoginError::UnknownState => "login_state_mismatch",
            LoginError::NoRandomness => "internal",
        }
    }
}

struct Endpoints {
    authorization: String,
    token: String,
}

/// What the login cookie carries, sealed.
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    verifier: String,
    redirect_uri: String,
    /// Unix seconds after which the login is refused.
    until: i64,
}

pub struct OidcLogin {
    pub config: WebOidcConfig,
    http: reqwest::Client,
    endpoints: tokio::sync::Mutex<Option<Arc<Endpoints>>>,
    seal: LessSafeKey,
    /// Logins already brought back (a digest of their `state`, and until when it
    /// matters): a login cookie is good for one callback.
    used: std::sync::Mutex<std::collections::HashMap<[u8; 32], i64>>,
}

/// Used logins remembered at once; beyond, the one that matters least long goes.
const MAX_USED: usize = 10_000;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// At most 100 plain characters of text that came from elsewhere.
pub fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_-. ".contains(*c))
        .take(100)
        .collect()
}

impl OidcLogin {
    pub fn new(config: &WebOidcConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("web.oidc: {e}"))?;
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).map_err(|_| "the system random source failed")?;
        let seal = UnboundKey::new(&AES_256_GCM, &key)
            .map(LessSafeKey::new)
            .map_err(|_| "web.oidc: cannot make the login sealing key")?;
        Ok(Self {
            config: config.clone(),
            http,
            endpoints: tokio::sync::Mutex::new(None),
            seal,
            used: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The provider's endpoints, by discovery; fetched again after a failure.
    async fn endpoints(&self) -> Result<Arc<Endpoints>, LoginError> {
        let mut cached = self.endpoints.lock().await;
        if let Some(e) = cached.as_ref() {
            return Ok(e.clone());
        }
        let issuer = self.config.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let unreachable = |e: reqwest::Error| LoginError::Unreachable(e.without_url().to_string());
        let doc: serde_json::Value = self
            .http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)?;
        if doc["issuer"].as_str() != Some(self.config.issuer.as_str()) {
            return Err(LoginError::Unreachable(
                "the discovery document names another issuer".into(),
            ));
        }
        let field = |name: &str| {
            doc[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| LoginError::Unreachable(format!("discovery lacks `{name}`")))
        };
        let endpoints = Arc::new(Endpoints {
            authorization: field("authorization_endpoint")?,
            token: field("token_endpoint")?,
        });
        *cached = Some(endpoints.clone());
        Ok(endpoints)
    }

    fn seal(&self, pending: &Pending) -> Result<String, LoginError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| LoginError::UnknownState)?;
        let mut data = serde_json::to_vec(pending).map_err(|_| LoginError::UnknownState)?;
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(SEAL_CONTEXT),
                &mut data,
            )
            .map_err(|_| LoginError::UnknownState)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(b64(&out))
    }

    fn open(&self, cookie: &str) -> Result<Pending, LoginError> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(cookie)
            .map_err(|_| LoginError::UnknownState)?;
        if raw.len() <= NONCE_LEN {
            return Err(LoginError::UnknownState);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| LoginError::UnknownState)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .seal
            .open_in_place(nonce, Aad::from(SEAL_CONTEXT), &mut sealed)
            .map_err(|_| LoginError::UnknownState)?;
        let pending: Pending =
            serde_json::from_slice(plain).map_err(|_| LoginError::UnknownState)?;
        if pending.until < now_unix() {
            return Err(LoginError::UnknownState);
        }
        Ok(pending)
    }

    /// Where to send the browser, and the sealed login cookie to give it.
    pub async fn start(&self, redirect_uri: String) -> Result<(String, String), LoginError> {
        let endpoints = self.endpoints().await?;
        let pending = Pending {
            state: random_token(24).ok_or(LoginError::NoRandomness)?,
            verifier: random_token(32).ok_or(LoginError::NoRandomness)?,
            redirect_uri,
            until: now_unix() + LOGIN_WINDOW.as_secs() as i64,
        };
        let challenge = b64(&super::sha256(pending.verifier.as_bytes()));
        let mut url = reqwest::Url::parse(&endpoints.authorization)
            .map_err(|e| LoginError::Unreachable(format!("authorization endpoint: {e}")))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.config.client_id)
                .append_pair("redirect_uri", &pending.redirect_uri)
                .append_pair("scope", &self.config.scopes.join(" "))
                .append_pair("state", &pending.state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if self.config.scopes.iter().any(|s| s == "offline_access") {
                q.append_pair("prompt", "consent");
            }
            if let Some(resource) = &self.config.resource {
                q.append_pair("resource", resource);
            }
        }
        Ok((url.to_string(), self.seal(&pending)?))
    }

    /// Exchanges the code of the login the cookie carries, when `state` is its own.
    pub async fn finish(
        &self,
        cookie: &str,
        state: &str,
        code: &str,
    ) -> Result<Tokens, LoginError> {
        let pending = self.open(cookie)?;
        let same = aws_lc_rs::constant_time::verify_slices_are_equal(
            pending.state.as_bytes(),
            state.as_bytes(),
        );
        if same.is_err() || !self.first_use(&pending) {
            return Err(LoginError::UnknownState);
        }
        let mut form = vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code.to_string()),
            ("redirect_uri", pending.redirect_uri),
            ("code_verifier", pending.verifier),
        ];
        if let Some(resource) = &self.config.resource {
            form.push(("resource", resource.clone()));
        }
        self.token_request(form).await
    }

    /// True the first time a login comes back; false for a replay.
    fn first_use(&self, pending: &Pending) -> bool {
        let key = super::sha256(pending.state.as_bytes());
        let now = now_unix();
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        used.retain(|_, until| *until >= now);
        if used.contains_key(&key) {
            return false;
        }
        while used.len() >= MAX_USED {
            let Some(first) = used.iter().min_by_key(|(_, u)| **u).map(|(k, _)| *k) else {
                break;
            };
            used.remove(&first);
        }
        used.insert(key, pending.until);
        true
    }

    /// New tokens for a refresh token.
    pub async fn refresh(&self, refresh: &Secret<String>) -> Result<Tokens, LoginError> {
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", refresh.expose().clone()),
        ];
        if let Some(resource) = &self.config.resource {
            form.push(("resource", resource.clone()));
        }
        self.token_request(form).await
    }

    async fn token_request(
        &self,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<Tokens, LoginError> {
        let endpoints = self.endpoints().await?;
        let mut req = self.http.post(&endpoints.token);
        match &self.config.client_secret {
            Some(secret) => req = req.basic_auth(&self.config.client_id, Some(secret.expose())),
            None => form.push(("client_id", self.config.client_id.clone())),
        }
        let unreachable = |e: reqwest::Error| LoginError::Unreachable(e.without_url().to_string());
        let resp = req.form(&form).send().await.map_err(unreachable)?;
        let status = resp.status();
        // An outage (5xx, 429) is not a refusal, whatever the body says; any other
        // 4xx is, whatever its body is.
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(LoginError::Unreachable(format!(
                "the token endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            // The provider's error code only: its description could echo what we sent.
            let error = body["error"].as_str().unwrap_or("unknown_error");
            if error == "temporarily_unavailable" || error == "server_error" {
                return Err(LoginError::Unreachable(printable(error)));
            }
            return Err(LoginError::Refused(printable(error)));
        }
        let body: serde_json::Value = resp.json().await.map_err(unreachable)?;
        let access = body["access_token"]
            .as_str()
            .ok_or_else(|| LoginError::Refused("no access token in the answer".into()))?;
        Ok(Tokens {
            access: Secret::new(access.to_string()),
            refresh: body["refresh_token"]
                .as_str()
                .map(|r| Secret::new(r.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login() -> OidcLogin {
        OidcLogin::new(&WebOidcConfig {
            issuer: "http://127.0.0.1:1".into(),
            client_id: "c".into(),
            client_secret: None,
            scopes: vec!["openid".into()],
            resource: None,
            redirect_url: None,
        })
        .unwrap()
    }

    fn pending(until: i64) -> Pending {
        Pending {
            state: "s".into(),
            verifier: "v".into(),
            redirect_uri: "http://x/auth/callback".into(),
            until,
        }
    }

    #[test]
    fn a_sealed_login_opens_only_where_it_was_sealed_and_only_in_time() {
        let (a, b) = (login(), login());
        let sealed = a.seal(&pending(now_unix() + 60)).unwrap();
        assert_eq!(a.open(&sealed).unwrap().verifier, "v");
        assert!(b.open(&sealed).is_err(), "another gateway's key");
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&sealed)
            .unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(a.open(&b64(&bytes)).is_err(), "a changed cookie");
        assert!(a.open("").is_err() && a.open("!!").is_err());
        let late = a.seal(&pending(now_unix() - 1)).unwrap();
        assert!(a.open(&late).is_err(), "an expired login");
    }

    #[test]
    fn a_login_comes_back_once() {
        let a = login();
        let p = pending(now_unix() + 60);
        assert!(a.first_use(&p));
        assert!(!a.first_use(&p), "a replayed login cookie");
        assert!(a.first_use(&Pending {
            state: "other".into(),
            ..pending(now_unix() + 60)
        }));
    }
}
