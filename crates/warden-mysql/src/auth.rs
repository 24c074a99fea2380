//! Proving the held password to a server: the scrambles of `mysql_native_password`,
//! `caching_sha2_password` (and its RSA-encrypted full authentication) and MariaDB's
//! `client_ed25519`. Each takes the server's nonce, so a recorded exchange cannot be
//! replayed; none of them returns or logs the password.

use aws_lc_rs::digest;
use aws_lc_rs::rsa::{OAEP_SHA1_MGF1SHA1, OaepPublicEncryptingKey, PublicEncryptingKey};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject;

/// The authentication plugins the proxy can answer for a backend.
pub const NATIVE: &str = "mysql_native_password";
pub const CACHING_SHA2: &str = "caching_sha2_password";
pub const ED25519: &str = "client_ed25519";
pub const CLEAR: &str = "mysql_clear_password";

fn sha1(parts: &[&[u8]]) -> Vec<u8> {
    let mut c = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().to_vec()
}

fn sha256(parts: &[&[u8]]) -> Vec<u8> {
    let mut c = digest::Context::new(&digest::SHA256);
    for p in parts {
        c.update(p);
    }
    c.finish().as_ref().to_vec()
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// The nonce as the scrambles use it: at most 20 bytes, without a trailing NUL.
fn nonce20(nonce: &[u8]) -> &[u8] {
    let n = nonce.strip_suffix(&[0]).unwrap_or(nonce);
    &n[..n.len().min(20)]
}

/// `SHA1(password) XOR SHA1(nonce ‖ SHA1(SHA1(password)))`; empty for no password.
pub fn native_password(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = sha1(&[password]);
    let stage2 = sha1(&[&stage1]);
    xor(&stage1, &sha1(&[nonce20(nonce), &stage2]))
}

/// `SHA256(password) XOR SHA256(SHA256(SHA256(password)) ‖ nonce)`; empty for no
/// password.
pub fn caching_sha2(password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = sha256(&[password]);
    let stage2 = sha256(&[&stage1]);
    xor(&stage1, &sha256(&[&stage2, nonce20(nonce)]))
}

/// Why an authentication step could not be computed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("the server's RSA public key is unusable")]
    BadPublicKey,
    #[error("the password is too long for the server's RSA key")]
    TooLong,
    #[error("the server sent an unusable ed25519 nonce")]
    BadNonce,
}

/// `caching_sha2_password` full authentication without TLS: the password (with a NUL)
/// XOR the nonce, encrypted with RSA-OAEP under the server's public key (PEM).
pub fn rsa_encrypted_password(
    password: &[u8],
    nonce: &[u8],
    public_key_pem: &[u8],
) -> Result<Vec<u8>, AuthError> {
    let der = SubjectPublicKeyInfoDer::from_pem_slice(public_key_pem)
        .map_err(|_| AuthError::BadPublicKey)?;
    let key = PublicEncryptingKey::from_der(der.as_ref()).map_err(|_| AuthError::BadPublicKey)?;
    let key = OaepPublicEncryptingKey::new(key).map_err(|_| AuthError::BadPublicKey)?;
    let nonce = nonce20(nonce);
    if nonce.is_empty() {
        return Err(AuthError::BadPublicKey);
    }
    let mut plain: Vec<u8> = password.to_vec();
    plain.push(0);
    for (i, b) in plain.iter_mut().enumerate() {
        *b ^= nonce[i % nonce.len()];
    }
    if plain.len() > key.max_plaintext_size(&OAEP_SHA1_MGF1SHA1) {
        return Err(AuthError::TooLong);
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let n = key
        .encrypt(&OAEP_SHA1_MGF1SHA1, &plain, &mut out, None)
        .map_err(|_| AuthError::BadPublicKey)?
        .len();
    out.truncate(n);
    Ok(out)
}

/// MariaDB `client_ed25519`: an Ed25519 signature of the 32-byte nonce with the key
/// whose expanded form is `SHA512(password)` (MariaDB hashes the password itself
/// rather than a 32-byte seed).
pub fn ed25519_signature(password: &[u8], nonce: &[u8]) -> Result<Vec<u8>, AuthError> {
    use ed25519_dalek::hazmat::{ExpandedSecretKey, raw_sign};
    use sha2::Digest;
    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce);
    if nonce.len() != 32 {
        return Err(AuthError::BadNonce);
    }
    let expanded: [u8; 64] = sha2::Sha512::digest(password).into();
    let secret = ExpandedSecretKey::from_bytes(&expanded);
    let public = ed25519_dalek::VerifyingKey::from(&secret);
    Ok(raw_sign::<sha2::Sha512>(&secret, nonce, &public)
        .to_bytes()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server checks for `mysql_native_password`, given what it stores
    /// (`SHA1(SHA1(password))`).
    fn server_accepts_native(stored: &[u8], nonce: &[u8], response: &[u8]) -> bool {
        let stage1 = xor(response, &sha1(&[nonce, stored]));
        sha1(&[&stage1]) == stored
    }

    #[test]
    fn native_scramble_is_what_the_server_checks() {
        let nonce: Vec<u8> = (b'a'..=b't').collect();
        let stored = sha1(&[&sha1(&[b"s3cret"])]);
        let r = native_password(b"s3cret", &nonce);
        assert_eq!(r.len(), 20);
        assert!(server_accepts_native(&stored, &nonce, &r));
        assert!(!server_accepts_native(
            &stored,
            &nonce,
            &native_password(b"other", &nonce)
        ));
        // A trailing NUL on the nonce (as greetings send it) is not part of it.
        let mut with_nul = nonce.clone();
        with_nul.push(0);
        assert_eq!(native_password(b"s3cret", &with_nul), r);
        assert!(native_password(b"", &nonce).is_empty());
    }

    #[test]
    fn caching_sha2_scramble_is_what_the_server_checks() {
        let nonce: Vec<u8> = (1..=20).collect();
        let stage2 = sha256(&[&sha256(&[b"pw"])]);
        let r = caching_sha2(b"pw", &nonce);
        let stage1 = xor(&r, &sha256(&[&stage2, &nonce]));
        assert_eq!(sha256(&[&stage1]), stage2);
    }

    #[test]
    fn ed25519_signature_verifies_under_the_password_key() {
        use ed25519_dalek::hazmat::ExpandedSecretKey;
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        use sha2::Digest;
        let nonce = [7u8; 32];
        let sig = ed25519_signature(b"ed-pw", &nonce).unwrap();
        let expanded: [u8; 64] = sha2::Sha512::digest(b"ed-pw").into();
        let public = VerifyingKey::from(&ExpandedSecretKey::from_bytes(&expanded));
        let sig = Signature::from_slice(&sig).unwrap();
        assert!(public.verify(&nonce, &sig).is_ok());
        assert!(public.verify(&[8u8; 32], &sig).is_err());
        assert!(ed25519_signature(b"x", &[1; 20]).is_err());
    }

    #[test]
    fn a_bad_public_key_is_an_error_not_a_panic() {
        assert!(rsa_encrypted_password(b"pw", &[1; 20], b"not a key").is_err());
    }
}
