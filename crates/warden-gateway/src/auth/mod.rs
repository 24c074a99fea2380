//! Authentication: turns a bearer token into an [`Identity`], or says exactly why not.
//!
//! A token is one of three things, told apart by shape: a Warden API key
//! (`wdn_<id>_<secret>`), a JWT from a configured OIDC issuer (three dot-separated
//! parts), or the configured bootstrap admin token. Every failure carries a stable
//! code that the API returns and the audit log records; the token itself is never
//! logged or returned.

pub mod api_key;
pub mod oidc;
pub mod saml;

use std::sync::Arc;
use warden_core::Identity;
use warden_store::Store;

use crate::config::Config;

/// Why a token was refused. `code()` is the stable machine-readable name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token was presented")]
    MissingToken,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's audience is not accepted")]
    InvalidAudience,
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    #[error("the signing algorithm `{0}` is not accepted")]
    UnsupportedAlgorithm(String),
    #[error("the signing key `{0}` is not published by the issuer")]
    UnknownKeyId(String),
    #[error("the token's signature is invalid")]
    InvalidSignature,
    #[error("the token lacks required claim `{0}`")]
    MissingClaim(String),
    #[error("the API key is not valid")]
    InvalidApiKey,
    #[error("the API key has been revoked")]
    ApiKeyRevoked,
    #[error("the API key has expired")]
    ApiKeyExpired,
    #[error("the identity provider could not be reached to check the token")]
    IssuerUnavailable,
    #[error("the credential store is unavailable")]
    StoreUnavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::InvalidAudience => "invalid_audience",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnsupportedAlgorithm(_) => "unsupported_algorithm",
            AuthError::UnknownKeyId(_) => "unknown_kid",
            AuthError::InvalidSignature => "invalid_signature",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::InvalidApiKey => "invalid_api_key",
            AuthError::ApiKeyRevoked => "api_key_revoked",
            AuthError::ApiKeyExpired => "api_key_expired",
            AuthError::IssuerUnavailable => "issuer_unavailable",
            AuthError::StoreUnavailable => "store_unavailable",
        }
    }

    /// Failures of our own dependencies, as opposed to a bad credential.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::IssuerUnavailable | AuthError::StoreUnavailable
        )
    }
}

/// What kind of credential a token looked like, for the audit record of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenShape {
    None,
    ApiKey,
    Jwt,
    Opaque,
}

impl TokenShape {
    pub fn of(token: &str) -> TokenShape {
        if token.is_empty() {
            TokenShape::None
        } else if token.starts_with(api_key::PREFIX) {
            TokenShape::ApiKey
        } else if token.split('.').count() == 3 {
            TokenShape::Jwt
        } else {
            TokenShape::Opaque
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TokenShape::None => "none",
            TokenShape::ApiKey => "api_key",
            TokenShape::Jwt => "jwt",
            TokenShape::Opaque => "opaque",
        }
    }
}

/// Checks tokens against the store (API keys) and the configured OIDC issuers.
pub struct Authenticator {
    store: Arc<Store>,
    oidc: oidc::OidcVerifier,
}

impl Authenticator {
    pub fn new(config: &Config, store: Arc<Store>) -> Result<Self, oidc::OidcSetupError> {
        Ok(Self {
            store,
            oidc: oidc::OidcVerifier::new(&config.auth)?,
        })
    }

    pub async fn authenticate(&self, token: &str) -> Result<Identity, AuthError> {
        match TokenShape::of(token) {
            TokenShape::None => Err(AuthError::MissingToken),
            TokenShape::ApiKey => api_key::verify(&self.store, token).await,
            TokenShape::Jwt => self.oidc.verify(token).await,
            TokenShape::Opaque => api_key::verify_admin_token(&self.store, token).await,
        }
    }

    /// Until when `identity`'s credential is accepted: a JWT's `exp` plus the clock
    /// skew tolerated at login, an API key's or SSH key registration's expiry.
    pub fn accepted_until(&self, identity: &Identity) -> Option<time::OffsetDateTime> {
        let skew = match identity.method {
            warden_core::AuthMethod::Oidc { .. } => self.oidc.skew(),
            _ => time::Duration::ZERO,
        };
        identity.expires_at.map(|at| at + skew)
    }

    /// The id of the API key a token names, for audit records (never the secret).
    pub fn key_id_of(token: &str) -> Option<String> {
        api_key::parse(token).map(|(id, _)| id.to_string())
    }

    /// The issuer a JWT claims, unverified, for audit records.
    pub fn claimed_issuer(token: &str) -> Option<String> {
        oidc::unverified_issuer(token)
    }
}
