//! Handing a checked login to whoever started it: the console's browser (a one-time
//! handle, and the cookie that proves it is the same browser) or the CLI (a one-time
//! code, redeemed with the PKCE verifier only the CLI holds).

use std::time::Duration;

use super::{Refusal, SamlLogin, SamlService};

/// How long a checked login waits to be collected.
const HANDOVER_WINDOW: Duration = Duration::from_secs(120);

/// SHA-256 of the console login cookie's value, as the started login keeps it.
pub fn binding_of(cookie: &str) -> [u8; 32] {
    crate::web::sha256(cookie.as_bytes())
}

/// The PKCE S256 challenge of `verifier` (RFC 7636).
pub fn challenge_of(verifier: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::web::sha256(verifier.as_bytes()))
}

impl SamlService {
    /// Keeps a checked console login for its browser; the handle to collect it with.
    pub fn hand_over_console(
        &self,
        login: SamlLogin,
        binding: [u8; 32],
    ) -> Result<String, Refusal> {
        let handle = crate::web::random_token(24).ok_or(Refusal::Busy)?;
        self.finished
            .insert(handle.clone(), (login, binding), HANDOVER_WINDOW, None)
            .map_err(|_| Refusal::Busy)?;
        Ok(handle)
    }

    /// The console login under `handle`, if the browser holds the cookie it was started
    /// with. Taken either way: a handle is tried once.
    pub fn collect_console(
        &self,
        handle: &str,
        cookie: Option<&str>,
    ) -> Result<SamlLogin, Refusal> {
        let (login, binding) = self.finished.take(handle).ok_or(Refusal::Replayed)?;
        let matches = cookie
            .is_some_and(|c| crate::auth::api_key::constant_time_eq(&binding_of(c), &binding));
        if !matches {
            return Err(Refusal::BrowserMismatch);
        }
        Ok(login)
    }

    /// Keeps a checked CLI login; the one-time code the CLI redeems it with.
    pub fn hand_over_cli(&self, login: SamlLogin, challenge: String) -> Result<String, Refusal> {
        let code = crate::web::random_token(32).ok_or(Refusal::Busy)?;
        self.codes
            .insert(code.clone(), (login, challenge), HANDOVER_WINDOW, None)
            .map_err(|_| Refusal::Busy)?;
        Ok(code)
    }

    /// The CLI login under `code`, if `verifier` matches its challenge. Taken either way.
    pub fn redeem(&self, code: &str, verifier: &str) -> Result<SamlLogin, Refusal> {
        let (login, challenge) = self.codes.take(code).ok_or(Refusal::Replayed)?;
        if !crate::auth::api_key::constant_time_eq(
            challenge_of(verifier).as_bytes(),
            challenge.as_bytes(),
        ) {
            return Err(Refusal::VerifierMismatch);
        }
        Ok(login)
    }
}
