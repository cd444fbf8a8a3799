//! The crate's error type, gathering the module errors.

use crate::digest::{Digest, DigestError};
use crate::layer::LayerError;
use crate::reference::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("metadata database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("layer error: {0}")]
    Layer(#[from] LayerError),
    /// A layer the applier would refuse, named by its digest.
    #[error("layer {digest} cannot be unpacked")]
    LayerRefused {
        digest: Digest,
        #[source]
        source: LayerError,
    },
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("diffID mismatch for layer {digest}: expected {expected}, got {actual}")]
    DiffIdMismatch {
        digest: Digest,
        expected: Digest,
        actual: Digest,
    },
    #[error("blob {0} not found")]
    BlobNotFound(Digest),
    #[error("No such image: {0}")]
    ImageNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("ambiguous image ID prefix {0:?}: matches several images")]
    Ambiguous(String),
    #[error("invalid archive: {0}")]
    InvalidArchive(String),
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether the metadata database is damaged (`kiln system fsck
    /// --repair` moves it aside and rebuilds it from the blobs).
    pub fn is_corruption(&self) -> bool {
        matches!(self, StoreError::Db(e) if crate::db::is_corruption(e))
    }

    pub(crate) fn io(
        path: impl AsRef<std::path::Path>,
        source: impl Into<std::io::Error>,
    ) -> StoreError {
        StoreError::Io {
            path: path.as_ref().display().to_string(),
            source: source.into(),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
