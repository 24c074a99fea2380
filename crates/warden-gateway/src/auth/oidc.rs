//! OIDC bearer tokens: issuer discovery, a JWKS cache, and strict JWT validation.
//!
//! Rules that keep known JWT attacks out: the issuer is looked up from configuration
//! (never trusted from the token to fetch keys), the algorithm must be on the
//! issuer's allowlist and asymmetric (no `none`, no HMAC keyed with a public key),
//! the key must come from the issuer's JWKS and match the algorithm's family and
//! curve, and `iss`, `aud`, `exp` and `nbf` are checked with a small clock skew.
//! An unknown `kid` triggers at most one JWKS refetch per `jwks_min_refresh_secs`,
//! so random kids cannot make the gateway hammer the provider.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};
use warden_core::{AuthMethod, Identity};

use super::AuthError;
use crate::config::{AuthConfig, OidcIssuerConfig};

/// Asymmetric algorithms only: `none` and HMAC are never accepted.
pub fn is_allowed_algorithm(alg: &str) -> bool {
    matches!(
        alg,
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384" | "EdDSA"
    )
}

#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("cannot build HTTP client for OIDC: {0}")]
    Http(String),
    #[error("auth.oidc: algorithm `{0}` is not supported")]
    Algorithm(String),
}

struct KeyCache {
    keys: Vec<Jwk>,
    fetched_at: Instant,
}

struct Issuer {
    config: OidcIssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Option<KeyCache>>,
    /// Held while fetching, so concurrent misses cause one fetch; also remembers when
    /// the last fetch was tried, for the refetch rate limit.
    fetch: Mutex<Option<Instant>>,
}

pub struct OidcVerifier {
    issuers: Vec<Issuer>,
    http: reqwest::Client,
    skew: u64,
    min_refresh: Duration,
    max_age: Duration,
}

impl OidcVerifier {
    pub fn new(config: &AuthConfig) -> Result<Self, OidcSetupError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| OidcSetupError::Http(e.to_string()))?;
        let issuers = config
            .oidc
            .iter()
            .map(|c| {
                let algorithms = c
                    .algorithms
                    .iter()
                    .map(|a| {
                        Algorithm::from_str(a).map_err(|_| OidcSetupError::Algorithm(a.clone()))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Issuer {
                    config: c.clone(),
                    algorithms,
                    keys: RwLock::new(None),
                    fetch: Mutex::new(None),
                })
            })
            .collect::<Result<Vec<_>, OidcSetupError>>()?;
        Ok(Self {
            issuers,
            http,
            skew: config.clock_skew_secs,
            min_refresh: Duration::from_secs(config.jwks_min_refresh_secs),
            max_age: Duration::from_secs(config.jwks_max_age_secs),
        })
    }

    /// The clock skew tolerated on `exp` and `nbf`.
    pub fn skew(&self) -> time::Duration {
        time::Duration::seconds(i64::try_from(self.skew).unwrap_or(i64::MAX))
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_part(token, 0)?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Malformed("header has no `alg`".into()))?;
        let claims = decode_part(token, 1)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .ok_or(AuthError::MissingClaim("iss".into()))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(AuthError::UnknownIssuer)?;
        if !is_allowed_algorithm(alg) {
            return Err(AuthError::UnsupportedAlgorithm(alg.to_string()));
        }
        let algorithm = Algorithm::from_str(alg)
            .map_err(|_| AuthError::UnsupportedAlgorithm(alg.to_string()))?;
        if !issuer.algorithms.contains(&algorithm) {
            return Err(AuthError::UnsupportedAlgorithm(alg.to_string()));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let jwk = self.find_key(issuer, kid, algorithm).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|_| AuthError::UnknownKeyId(kid.unwrap_or("").to_string()))?;

        let mut validation = Validation::new(algorithm);
        validation.leeway = self.skew;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&issuer.config.issuer]);
        validation.set_audience(&issuer.config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| map_jwt_error(e.kind()))?;
        identity_from_claims(&issuer.config, &data.claims)
    }

    /// Finds the verification key for `kid`, fetching the JWKS when the cache is
    /// empty, stale, or (rate limited) does not know the kid.
    async fn find_key(
        &self,
        issuer: &Issuer,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Jwk, AuthError> {
        let fresh = {
            let cache = issuer.keys.read().await;
            match cache.as_ref() {
                Some(c) if c.fetched_at.elapsed() < self.max_age => {
                    if let Some(k) = select_key(&c.keys, kid, alg)? {
                        return Ok(k);
                    }
                    false
                }
                _ => true,
            }
        };
        // Stale or missing cache: must fetch. Unknown kid: fetch unless we did recently.
        let mut last = issuer.fetch.lock().await;
        let may_fetch = fresh || last.is_none_or(|t| t.elapsed() >= self.min_refresh);
        if may_fetch {
            *last = Some(Instant::now());
            match self.fetch_keys(&issuer.config).await {
                Ok(keys) => {
                    *issuer.keys.write().await = Some(KeyCache {
                        keys,
                        fetched_at: Instant::now(),
                    });
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.config.issuer, error = %e, "JWKS fetch failed");
                    // A stale cache is still better than none while the provider is down.
                    if issuer.keys.read().await.is_none() {
                        return Err(AuthError::IssuerUnavailable);
                    }
                }
            }
        }
        drop(last);
        let cache = issuer.keys.read().await;
        let keys = cache.as_ref().map(|c| c.keys.as_slice()).unwrap_or(&[]);
        select_key(keys, kid, alg)?
            .ok_or_else(|| AuthError::UnknownKeyId(kid.unwrap_or("").to_string()))
    }

    async fn fetch_keys(&self, config: &OidcIssuerConfig) -> Result<Vec<Jwk>, String> {
        let jwks_uri = match &config.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    config.issuer.trim_end_matches('/')
                );
                let doc: Value = self.get_json(&url).await?;
                // OIDC Discovery §4.3: the document must name the issuer we asked.
                if doc.get("issuer").and_then(Value::as_str) != Some(config.issuer.as_str()) {
                    return Err("discovery document names a different issuer".into());
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("discovery document has no jwks_uri")?
                    .to_string()
            }
        };
        let set: Value = self.get_json(&jwks_uri).await?;
        let keys = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no keys array")?;
        // Keys we cannot use (encryption keys, unknown types) are skipped, not fatal.
        Ok(keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.common.public_key_use, Some(PublicKeyUse::Encryption)))
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .collect())
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("GET {url}: {e}"))
    }
}

/// Picks the key named by `kid` (or the only suitable key when the token names
/// none) and checks it fits the algorithm. `Ok(None)` means "not in this set".
fn select_key(keys: &[Jwk], kid: Option<&str>, alg: Algorithm) -> Result<Option<Jwk>, AuthError> {
    let candidates: Vec<&Jwk> = match kid {
        Some(kid) => keys
            .iter()
            .filter(|k| k.common.key_id.as_deref() == Some(kid))
            .collect(),
        None => keys.iter().filter(|k| key_fits(k, alg)).collect(),
    };
    match candidates.as_slice() {
        [] => Ok(None),
        [key] => {
            if key_fits(key, alg) {
                Ok(Some((*key).clone()))
            } else {
                Err(AuthError::UnsupportedAlgorithm(format!(
                    "{alg:?} with this key"
                )))
            }
        }
        _ => Err(AuthError::Malformed(
            "token names no `kid` and the issuer publishes several keys".into(),
        )),
    }
}

/// A key fits an algorithm when its type (and curve) match and its own `alg`, if
/// published, is the same.
fn key_fits(key: &Jwk, alg: Algorithm) -> bool {
    if let Some(key_alg) = key.common.key_algorithm
        && format!("{key_alg:?}") != format!("{alg:?}")
    {
        return false;
    }
    match (&key.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    }
}

fn map_jwt_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::InvalidAudience,
        ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
        ErrorKind::InvalidSignature => AuthError::InvalidSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::UnsupportedAlgorithm => {
            AuthError::UnsupportedAlgorithm("for this key".into())
        }
        ErrorKind::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
        ErrorKind::InvalidClaimFormat(c) => {
            AuthError::Malformed(format!("claim `{c}` has the wrong type"))
        }
        // A signature that is not even decodable is as bad as a wrong one.
        ErrorKind::Base64(_) | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => {
            AuthError::InvalidSignature
        }
        _ => AuthError::Malformed("not a valid JWT".into()),
    }
}

/// Decodes part `index` (0 header, 1 claims) of a JWT without verifying it.
fn decode_part(token: &str, index: usize) -> Result<Map<String, Value>, AuthError> {
    let part = token
        .split('.')
        .nth(index)
        .ok_or_else(|| AuthError::Malformed("not a JWT".into()))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| AuthError::Malformed("JWT part is not base64url".into()))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(AuthError::Malformed("JWT part is not a JSON object".into())),
    }
}

/// The `iss` a JWT claims, unverified: for audit records only.
pub fn unverified_issuer(token: &str) -> Option<String> {
    let claims = decode_part(token, 1).ok()?;
    let iss = claims.get("iss")?.as_str()?;
    Some(iss.chars().take(200).collect())
}

fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for p in parts {
        current = current.get(p)?;
    }
    Some(current)
}

fn identity_from_claims(
    config: &OidcIssuerConfig,
    claims: &Map<String, Value>,
) -> Result<Identity, AuthError> {
    let subject = claim_at(claims, &config.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::MissingClaim(config.subject_claim.clone()))?;
    let groups = match claim_at(claims, &config.groups_claim) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect(),
        Some(_) => {
            return Err(AuthError::Malformed(format!(
                "claim `{}` is not a list of groups",
                config.groups_claim
            )));
        }
    };
    let expires_at = claims
        .get("exp")
        .and_then(Value::as_i64)
        .and_then(|e| time::OffsetDateTime::from_unix_timestamp(e).ok());
    Ok(Identity {
        subject: subject.to_string(),
        groups,
        method: AuthMethod::Oidc {
            issuer: config.issuer.clone(),
        },
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> OidcIssuerConfig {
        OidcIssuerConfig {
            issuer: "https://idp".into(),
            audiences: vec!["w".into()],
            groups_claim: "realm_access.roles".into(),
            subject_claim: "sub".into(),
            algorithms: vec!["RS256".into()],
            jwks_uri: None,
        }
    }

    #[test]
    fn groups_from_nested_claim_and_string_forms() {
        let claims = json!({"sub": "alice", "realm_access": {"roles": ["a", "b"]}});
        let Value::Object(map) = claims else {
            unreachable!()
        };
        let id = identity_from_claims(&cfg(), &map).map(|i| i.groups);
        assert_eq!(id, Ok(vec!["a".to_string(), "b".to_string()]));

        let mut c = cfg();
        c.groups_claim = "groups".into();
        let Value::Object(map) = json!({"sub": "bob", "groups": "x y,z"}) else {
            unreachable!()
        };
        assert_eq!(
            identity_from_claims(&c, &map).map(|i| i.groups.len()),
            Ok(3)
        );
        let Value::Object(map) = json!({"groups": []}) else {
            unreachable!()
        };
        assert_eq!(
            identity_from_claims(&c, &map),
            Err(AuthError::MissingClaim("sub".into()))
        );
    }

    #[test]
    fn only_asymmetric_algorithms() {
        for bad in ["none", "None", "HS256", "HS512", ""] {
            assert!(!is_allowed_algorithm(bad), "{bad}");
        }
        assert!(is_allowed_algorithm("ES256"));
    }

    #[test]
    fn malformed_parts() {
        assert!(matches!(
            decode_part("a.b.c", 0),
            Err(AuthError::Malformed(_))
        ));
        let header = URL_SAFE_NO_PAD.encode(b"[1]");
        assert!(matches!(
            decode_part(&format!("{header}.x.y"), 0),
            Err(AuthError::Malformed(_))
        ));
    }
}
