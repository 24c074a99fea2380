//! The SSH client side: Warden logs in to the target with the credential the
//! connection holds, after checking the target's host key against the pinned one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use warden_core::{SecretKind, SessionHandle};

use crate::keys::{PublicKeyLine, parse_private_key};

/// A logged-in connection to the target.
pub type BackendHandle = client::Handle<HostKeyCheck>;

/// Why Warden could not reach the target; the client sees this text.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("cannot reach the target {addr}: {message}")]
    Unreachable { addr: String, message: String },
    #[error(
        "the target's host key ({presented}) does not match the key pinned for this connection; \
         an administrator must check the target and update ssh.host_key"
    )]
    HostKeyMismatch { presented: String },
    #[error(
        "no host key is pinned for this connection; an administrator must set ssh.host_key \
         or ssh.trust_on_first_use"
    )]
    NoPinnedKey,
    #[error("the target's host key cannot be pinned: {0}")]
    PinFailed(String),
    #[error("the connection's credential cannot be used: {0}")]
    BadCredential(String),
    #[error("the target refused the connection's credential for user `{0}`")]
    Refused(String),
    #[error("the target did not complete the login within {0} s")]
    TimedOut(u64),
    #[error("SSH error with the target: {0}")]
    Protocol(String),
}

/// Checks the target's host key during the key exchange. With no key pinned and
/// trust-on-first-use set, it accepts and remembers the key so the caller can pin it
/// once the login succeeds.
pub struct HostKeyCheck {
    pinned: Option<PublicKey>,
    trust_on_first_use: bool,
    outcome: Arc<Mutex<HostKeyOutcome>>,
}

#[derive(Default)]
struct HostKeyOutcome {
    presented: Option<PublicKey>,
    refused: Option<BackendError>,
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Host certificates are not trusted by their CA here: only pinned keys.
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = presented else {
            return Ok(false);
        };
        let mut outcome = self
            .outcome
            .lock()
            .map_err(|_| russh::Error::Inconsistent)?;
        outcome.presented = Some(key.clone());
        match &self.pinned {
            Some(pinned) if pinned.key_data() == key.key_data() => Ok(true),
            Some(_) => {
                let presented = key.fingerprint(russh::keys::HashAlg::Sha256).to_string();
                outcome.refused = Some(BackendError::HostKeyMismatch { presented });
                Ok(false)
            }
            None if self.trust_on_first_use => Ok(true),
            None => {
                outcome.refused = Some(BackendError::NoPinnedKey);
                Ok(false)
            }
        }
    }
}

/// Connects and logs in to the session's target within `timeout`.
pub async fn connect(
    session: &SessionHandle,
    timeout: Duration,
) -> Result<BackendHandle, BackendError> {
    match tokio::time::timeout(timeout, connect_inner(session)).await {
        Ok(r) => r,
        Err(_) => Err(BackendError::TimedOut(timeout.as_secs())),
    }
}

async fn connect_inner(session: &SessionHandle) -> Result<BackendHandle, BackendError> {
    let grant = &session.target;
    let pinned = match &grant.ssh.host_key {
        Some(line) => Some(PublicKey::from_openssh(line).map_err(|_| {
            BackendError::PinFailed("the pinned host key is not an OpenSSH public key".into())
        })?),
        None => None,
    };
    let outcome = Arc::new(Mutex::new(HostKeyOutcome::default()));
    let check = HostKeyCheck {
        pinned: pinned.clone(),
        trust_on_first_use: grant.ssh.trust_on_first_use,
        outcome: outcome.clone(),
    };
    let tcp = session
        .dial()
        .await
        .map_err(|e| BackendError::Unreachable {
            addr: grant.addr.clone(),
            message: e.to_string(),
        })?;
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        ..Default::default()
    });
    let mut handle = match client::connect_stream(config, tcp, check).await {
        Ok(h) => h,
        Err(e) => {
            let refused = outcome.lock().ok().and_then(|mut o| o.refused.take());
            return Err(refused.unwrap_or_else(|| BackendError::Protocol(e.to_string())));
        }
    };
    if pinned.is_none() {
        let presented = outcome.lock().ok().and_then(|o| o.presented.clone());
        let presented = presented.ok_or_else(|| BackendError::PinFailed("no key seen".into()))?;
        let line =
            PublicKeyLine::of(&presented).map_err(|e| BackendError::PinFailed(e.to_string()))?;
        session
            .pin_host_key(&line.line)
            .await
            .map_err(BackendError::PinFailed)?;
    }
    let user = grant.user.clone();
    let secret = grant
        .secret
        .as_ref()
        .ok_or_else(|| BackendError::BadCredential("the connection holds no credential".into()))?;
    let result = match grant.secret_kind {
        Some(SecretKind::PrivateKey) => {
            let key = parse_private_key(secret.expose())
                .map_err(|e| BackendError::BadCredential(e.to_string()))?;
            let hash = handle
                .best_supported_rsa_hash()
                .await
                .map_err(|e| BackendError::Protocol(e.to_string()))?
                .flatten();
            handle
                .authenticate_publickey(&user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                .await
        }
        Some(SecretKind::Password) => {
            handle
                .authenticate_password(&user, secret.expose().as_str())
                .await
        }
        _ => {
            return Err(BackendError::BadCredential(
                "SSH needs a password or a private key".into(),
            ));
        }
    }
    .map_err(|e| BackendError::Protocol(e.to_string()))?;
    if !result.success() {
        return Err(BackendError::Refused(user));
    }
    Ok(handle)
}
