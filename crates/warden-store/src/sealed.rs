//! Encryption at rest for backend secrets: AES-256-GCM under the gateway's master key.
//!
//! A sealed value is `v1.` followed by base64 of `nonce || ciphertext || tag`. The
//! associated data binds each ciphertext to the row it belongs to (for example the
//! connection name), so a sealed secret copied onto another connection fails to open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use warden_core::Secret;

use crate::{Result, StoreError};

const PREFIX: &str = "v1.";

/// The 256-bit key that seals backend secrets. Formatted only as `<redacted>`.
#[derive(Clone)]
pub struct MasterKey(Secret<[u8; 32]>);

impl MasterKey {
    pub fn generate() -> Result<Self> {
        let mut key = [0u8; 32];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| StoreError::InvalidMasterKey("no system randomness".into()))?;
        Ok(Self(Secret::new(key)))
    }

    /// Parses the base64 text form (44 characters, 32 bytes).
    pub fn from_base64(text: &str) -> Result<Self> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| StoreError::InvalidMasterKey("not valid base64".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| StoreError::InvalidMasterKey("must decode to exactly 32 bytes".into()))?;
        Ok(Self(Secret::new(key)))
    }

    pub fn to_base64(&self) -> Secret<String> {
        Secret::new(B64.encode(self.0.expose()))
    }

    /// A key for another purpose (e.g. keyed-hash masking), derived with
    /// HMAC-SHA-256 so the master key itself is never used twice.
    pub fn derive(&self, purpose: &str) -> Secret<Vec<u8>> {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, self.0.expose());
        Secret::new(
            aws_lc_rs::hmac::sign(&key, purpose.as_bytes())
                .as_ref()
                .to_vec(),
        )
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Seals and opens secrets with the master key.
pub struct SecretSealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl SecretSealer {
    pub fn new(master: &MasterKey) -> Result<Self> {
        let unbound = UnboundKey::new(&AES_256_GCM, master.0.expose())
            .map_err(|_| StoreError::InvalidMasterKey("rejected by AES-256-GCM".into()))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        })
    }

    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Unseal("no system randomness"))?;
        let mut buf = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Unseal("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{PREFIX}{}", B64.encode(out)))
    }

    pub fn open(&self, sealed: &str, context: &str) -> Result<Secret<Vec<u8>>> {
        let body = sealed
            .strip_prefix(PREFIX)
            .ok_or(StoreError::Unseal("unknown format"))?;
        let raw = B64
            .decode(body)
            .map_err(|_| StoreError::Unseal("not base64"))?;
        if raw.len() < NONCE_LEN {
            return Err(StoreError::Unseal("too short"));
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| StoreError::Unseal("bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buf,
            )
            .map_err(|_| StoreError::Unseal("authentication failed"))?;
        Ok(Secret::new(plain.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> SecretSealer {
        let key = MasterKey::generate()
            .ok()
            .and_then(|k| SecretSealer::new(&k).ok());
        key.unwrap_or_else(|| unreachable!("key generation failed"))
    }

    #[test]
    fn round_trip_and_context_binding() {
        let s = sealer();
        let sealed = s.seal(b"s3cret-pw", "conn:prod").unwrap_or_default();
        assert!(!sealed.contains("s3cret"));
        let opened = s.open(&sealed, "conn:prod").map(|p| p.expose().clone());
        assert_eq!(opened.ok().as_deref(), Some(&b"s3cret-pw"[..]));
        assert!(s.open(&sealed, "conn:other").is_err());
        // Same plaintext seals differently each time (random nonce).
        assert_ne!(
            sealed,
            s.seal(b"s3cret-pw", "conn:prod").unwrap_or_default()
        );
    }

    #[test]
    fn wrong_key_and_tampering_fail() {
        let a = sealer();
        let b = sealer();
        let sealed = a.seal(b"pw", "x").unwrap_or_default();
        assert!(b.open(&sealed, "x").is_err());
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(a.open(&String::from_utf8_lossy(&tampered), "x").is_err());
        assert!(a.open("garbage", "x").is_err());
    }

    #[test]
    fn master_key_text_form() {
        let k = MasterKey::generate().unwrap_or_else(|_| unreachable!());
        let text = k.to_base64();
        assert!(MasterKey::from_base64(text.expose()).is_ok());
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert_eq!(format!("{k:?}"), "MasterKey(<redacted>)");
    }
}
