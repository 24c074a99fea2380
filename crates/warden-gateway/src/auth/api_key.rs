//! Warden API keys: issuing, parsing and verifying `wdn_<id>_<secret>` tokens.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;
use warden_core::{AuthMethod, Identity, Secret, timefmt};
use warden_store::Store;
use warden_store::api_keys::ApiKeyRecord;

use super::AuthError;

pub const PREFIX: &str = "wdn_";
/// The id of the bootstrap admin key.
pub const ADMIN_KEY_ID: &str = "admin";

/// Whether `key_id` is the bootstrap admin key or one `warden admin recover` issued
/// (`admin<hex>`; other keys' ids are plain hex, so never start with `admin`):
/// admins whatever `admin_groups` says.
pub fn is_bootstrap_admin(key_id: &str) -> bool {
    key_id.starts_with(ADMIN_KEY_ID)
}

/// A new admin key for `warden admin recover`, with an id of its own.
pub fn issue_recovered_admin() -> Result<IssuedKey, AuthError> {
    issue(Some(&format!("{ADMIN_KEY_ID}{}", random_hex(6)?)))
}

/// A freshly issued key: the token is shown once and never stored.
pub struct IssuedKey {
    pub id: String,
    pub token: Secret<String>,
    pub secret_hash: String,
}

pub(crate) fn random_hex(bytes: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| AuthError::StoreUnavailable)?;
    Ok(warden_store::hex(&buf))
}

pub fn hash_token(token: &str) -> String {
    warden_store::sha256_hex(token.as_bytes())
}

/// A new key with a random id, or with `id` when given (the bootstrap admin key).
pub fn issue(id: Option<&str>) -> Result<IssuedKey, AuthError> {
    let id = match id {
        Some(id) => id.to_string(),
        None => random_hex(8)?,
    };
    let token = format!("{PREFIX}{id}_{}", random_hex(32)?);
    Ok(IssuedKey {
        secret_hash: hash_token(&token),
        id,
        token: Secret::new(token),
    })
}

/// Splits `wdn_<id>_<secret>` into id and secret.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let id_ok = !id.is_empty() && id.len() <= 32 && id.chars().all(|c| c.is_ascii_alphanumeric());
    (id_ok && !secret.is_empty()).then_some((id, secret))
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn verify(store: &Store, token: &str) -> Result<Identity, AuthError> {
    let (id, _) = parse(token).ok_or(AuthError::InvalidApiKey)?;
    check(store, id, token).await
}

/// The configured admin token may be any string; it is checked against the admin key.
pub async fn verify_admin_token(store: &Store, token: &str) -> Result<Identity, AuthError> {
    check(store, ADMIN_KEY_ID, token).await
}

async fn check(store: &Store, id: &str, token: &str) -> Result<Identity, AuthError> {
    let record = store
        .api_key(id)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "api key lookup failed");
            AuthError::StoreUnavailable
        })?
        .ok_or(AuthError::InvalidApiKey)?;
    if !constant_time_eq(hash_token(token).as_bytes(), record.secret_hash.as_bytes()) {
        return Err(AuthError::InvalidApiKey);
    }
    // Only a holder of the key learns it was revoked or expired.
    if record.revoked_at.is_some() {
        return Err(AuthError::ApiKeyRevoked);
    }
    if record.expires_at.is_some_and(|t| t <= timefmt::now()) {
        return Err(AuthError::ApiKeyExpired);
    }
    Ok(identity_of(&record))
}

pub fn identity_of(record: &ApiKeyRecord) -> Identity {
    Identity {
        subject: record.subject.clone(),
        groups: record.groups.clone(),
        method: AuthMethod::ApiKey {
            key_id: record.id.clone(),
        },
        expires_at: record.expires_at,
    }
}

/// The stored form of a key the gateway issues.
pub fn record(
    issued: &IssuedKey,
    name: &str,
    subject: &str,
    groups: Vec<String>,
    created_by: &str,
    expires_at: Option<OffsetDateTime>,
) -> ApiKeyRecord {
    ApiKeyRecord {
        id: issued.id.clone(),
        name: name.to_string(),
        subject: subject.to_string(),
        groups,
        secret_hash: issued.secret_hash.clone(),
        created_by: created_by.to_string(),
        created_at: timefmt::now(),
        expires_at,
        revoked_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_hash() {
        let k = issue(None).unwrap_or_else(|_| unreachable!());
        let (id, secret) = parse(k.token.expose()).unwrap_or_default();
        assert_eq!(id, k.id);
        assert_eq!(secret.len(), 64);
        assert_eq!(hash_token(k.token.expose()), k.secret_hash);
        assert!(!k.secret_hash.contains(secret));
    }

    #[test]
    fn rejects_malformed_keys() {
        for bad in [
            "wdn_",
            "wdn__abc",
            "wdn_abc",
            "wdn_a-b_c",
            "xyz_abc_def",
            "wdn_abc_",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
