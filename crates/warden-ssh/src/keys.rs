//! SSH keys as Warden handles them: the gateway's own host key (generated once and
//! kept), public key lines that users register or admins pin, and the private keys a
//! connection holds for its target.

use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{HashAlg, PrivateKey, PublicKey};

/// A key that cannot be used, with a message that never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an OpenSSH public key line (`ssh-ed25519 AAAA...`)")]
    PublicKey,
    #[error("not an unencrypted OpenSSH or PEM private key")]
    PrivateKey,
    #[error("the private key is encrypted; store it without a passphrase")]
    Encrypted,
    #[error("host key file {path}: {message}")]
    HostKeyFile { path: String, message: String },
}

/// A public key in canonical form: the line without its comment, and its SHA-256
/// fingerprint as `ssh-keygen -l` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeyLine {
    pub line: String,
    pub fingerprint: String,
}

impl PublicKeyLine {
    /// Parses `<algorithm> <base64> [comment]`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let key = PublicKey::from_openssh(text.trim()).map_err(|_| KeyError::PublicKey)?;
        Self::of(&key)
    }

    pub fn of(key: &PublicKey) -> Result<Self, KeyError> {
        let mut bare = key.clone();
        bare.set_comment("");
        let line = bare
            .to_openssh()
            .map_err(|_| KeyError::PublicKey)?
            .trim()
            .to_string();
        Ok(Self {
            line,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        })
    }
}

/// Parses the private key a connection holds (OpenSSH format, or PEM for RSA).
pub fn parse_private_key(text: &str) -> Result<PrivateKey, KeyError> {
    let key = russh::keys::decode_secret_key(text, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => KeyError::Encrypted,
        _ => KeyError::PrivateKey,
    })?;
    if key.is_encrypted() {
        return Err(KeyError::Encrypted);
    }
    Ok(key)
}

/// Loads the gateway's host key from `path`, or generates an Ed25519 key there
/// (owner-only) on first start, so clients see the same key across restarts.
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let err = |message: String| KeyError::HostKeyFile {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            return PrivateKey::from_openssh(text.as_bytes()).map_err(|e| err(e.to_string()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| err("no randomness".into()))?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment("warden-gateway");
    let text = key
        .to_openssh(russh::keys::ssh_key::LineEnding::LF)
        .map_err(|e| err(e.to_string()))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    use std::io::Write;
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_lines_are_canonical() {
        let a = PublicKeyLine::parse(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop",
        )
        .unwrap();
        assert_eq!(
            a.line,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
        );
        assert!(a.fingerprint.starts_with("SHA256:"), "{}", a.fingerprint);
        assert!(PublicKeyLine::parse("ssh-ed25519 notbase64").is_err());
        assert!(PublicKeyLine::parse("").is_err());
    }

    #[test]
    fn the_host_key_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host_ed25519");
        let first = load_or_create_host_key(&path).unwrap();
        let again = load_or_create_host_key(&path).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(parse_private_key(&text).is_ok());
        assert!(matches!(
            parse_private_key("-----BEGIN NOTHING-----"),
            Err(KeyError::PrivateKey)
        ));
    }
}
