//! Why a SAML login was refused: one stable code per cause, for the audit log and the
//! pages that show it, and the mapping from the library's errors.

use saml_rs::SamlError;

/// Why a SAML login was refused. `code()` is the stable name audit events carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no SAML identity provider named `{0}` is configured")]
    UnknownIdp(String),
    #[error("the identity provider's metadata could not be read: {0}")]
    IdpUnavailable(String),
    #[error("too many logins are in progress; try again in a few minutes")]
    Busy,
    #[error("no login of this gateway asked for this answer (IdP-initiated login is off)")]
    Unsolicited,
    #[error("this answer was used before")]
    Replayed,
    #[error("the replay cache is full of unexpired ids; nothing is accepted until some expire")]
    ReplayCacheFull,
    #[error("the answer is not signed")]
    Unsigned,
    #[error("the answer's signature does not verify")]
    BadSignature,
    #[error("the answer is not signed by a certificate configured for this identity provider")]
    CertMismatch,
    #[error("the answer's signature does not cover what it would log in ({0})")]
    Wrapped(String),
    #[error("the answer is not valid at this time ({0})")]
    Expired(String),
    #[error("the assertion is for another audience")]
    Audience,
    #[error("the assertion names another recipient")]
    Recipient,
    #[error("the answer was sent to another destination")]
    Destination,
    #[error("the answer is not for the login this gateway started")]
    InResponseTo,
    #[error("the answer comes from another identity provider")]
    Issuer,
    #[error("the identity provider refused the login: {0}")]
    Status(String),
    #[error("the assertion could not be decrypted: {0}")]
    Decrypt(String),
    #[error("the assertion is not encrypted, and this identity provider must encrypt them")]
    NotEncrypted,
    #[error("the answer uses a signature algorithm that is not accepted")]
    Algorithm,
    #[error("the answer is malformed: {0}")]
    Malformed(String),
    #[error("the assertion names no subject")]
    NoSubject,
    #[error("the login was started in another browser")]
    BrowserMismatch,
    #[error("the code verifier does not match the login's challenge")]
    VerifierMismatch,
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownIdp(_) => "unknown_idp",
            Refusal::IdpUnavailable(_) => "idp_unavailable",
            Refusal::Busy => "too_many_logins",
            Refusal::Unsolicited => "unsolicited",
            Refusal::Replayed => "replayed",
            Refusal::ReplayCacheFull => "replay_cache_full",
            Refusal::Unsigned => "unsigned",
            Refusal::BadSignature => "bad_signature",
            Refusal::CertMismatch => "cert_mismatch",
            Refusal::Wrapped(_) => "wrapped",
            Refusal::Expired(_) => "expired",
            Refusal::Audience => "audience",
            Refusal::Recipient => "recipient",
            Refusal::Destination => "destination",
            Refusal::InResponseTo => "in_response_to",
            Refusal::Issuer => "issuer",
            Refusal::Status(_) => "status",
            Refusal::Decrypt(_) => "decrypt",
            Refusal::NotEncrypted => "not_encrypted",
            Refusal::Algorithm => "algorithm",
            Refusal::Malformed(_) => "malformed",
            Refusal::NoSubject => "no_subject",
            Refusal::BrowserMismatch => "login_state_mismatch",
            Refusal::VerifierMismatch => "verifier_mismatch",
        }
    }

    /// A refusal saml-rs gave, by cause; `encrypted`: the answer's assertion was.
    pub(super) fn from_library(e: &SamlError, encrypted: bool) -> Refusal {
        use saml_rs::error::SubjectConfirmationReason as S;
        match e {
            SamlError::ReplayDetected { .. } => Refusal::Replayed,
            SamlError::SignatureMissing | SamlError::AssertionSignatureRequired => {
                Refusal::Unsigned
            }
            SamlError::SignatureVerification { .. }
            | SamlError::FailedToVerifySignature
            | SamlError::FailedMessageSignatureVerification => Refusal::BadSignature,
            SamlError::NoTrustedCertificate
            | SamlError::CertificateMismatch
            | SamlError::UnmatchCertificate => Refusal::CertMismatch,
            SamlError::PotentialWrappingAttack
            | SamlError::SignedReferenceMismatch
            | SamlError::ReferenceResolution { .. } => Refusal::Wrapped(e.to_string()),
            SamlError::TimeWindowInvalid { field } => Refusal::Expired(field.to_string()),
            SamlError::ExpiredSession => Refusal::Expired("session".into()),
            SamlError::SubjectConfirmationInvalid { reason } => match reason {
                S::RecipientMismatch => Refusal::Recipient,
                S::InResponseToMismatch => Refusal::InResponseTo,
                S::TimeWindowInvalid | S::MissingNotOnOrAfter => {
                    Refusal::Expired("subject confirmation".into())
                }
                _ => Refusal::Malformed(e.to_string()),
            },
            SamlError::AudienceMismatch { .. } | SamlError::UnmatchAudience => Refusal::Audience,
            SamlError::DestinationMismatch { .. } | SamlError::UnmatchDestination => {
                Refusal::Destination
            }
            SamlError::InResponseToMismatch { .. } | SamlError::InvalidInResponseTo => {
                Refusal::InResponseTo
            }
            SamlError::IssuerMismatch { .. } | SamlError::UnmatchIssuer => Refusal::Issuer,
            SamlError::StatusNotSuccess { top, .. } | SamlError::FailedStatus { top, .. } => {
                Refusal::Status(top.rsplit(':').next().unwrap_or(top).to_string())
            }
            SamlError::UndefinedStatus => Refusal::Status("no status".into()),
            SamlError::AlgorithmUnsupported => Refusal::Algorithm,
            // The XML-security engine reports decryption and other failures alike.
            SamlError::MissingKey(m) | SamlError::Crypto(m) if encrypted => {
                Refusal::Decrypt(m.clone())
            }
            other => Refusal::Malformed(other.to_string()),
        }
    }
}
