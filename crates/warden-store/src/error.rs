use thiserror::Error;

/// Errors from the state store. Messages never contain secret values.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("the master key does not match the one this store was created with")]
    WrongMasterKey,
    #[error("sealed secret could not be opened: {0}")]
    Unseal(&'static str),
    #[error("invalid master key: {0}")]
    InvalidMasterKey(String),
    #[error("the audit event could not be written: {0}")]
    AppendFailed(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("unsupported store url `{0}`: use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(e.to_string())
    }
}
