//! The crate's error type, gathering the module errors.

use crate::digest::{Digest, DigestError};
use crate::layer::LayerError;
use crate::reference::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The message already ends with the cause's, so the cause is not
    // also the error's `source()`: a chain printed with `{:#}` would say
    // it twice. (thiserror takes a field named `source`, or `#[from]`, as
    // the source: hence `cause` and the hand-written `From`s.)
    #[error("I/O error on {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("metadata database error: {0}")]
    Db(rusqlite::Error),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("layer error: {0}")]
    Layer(LayerError),
    /// A layer the applier would refuse, named by its digest.
    #[error("layer {digest} cannot be unpacked")]
    LayerRefused {
        digest: Digest,
        #[source]
        source: LayerError,
    },
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    /// A volume name Docker would refuse, with Docker's text.
    #[error("{0}")]
    VolumeName(String),
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
    /// A blob known remotely, not local, that this command cannot fetch.
    #[error("blob {digest} is not in this store; {where_}")]
    RemoteOnly { digest: Digest, where_: String },
    /// Fetching a blob known remotely failed (the registry went away, ...).
    #[error("cannot fetch blob {digest} from {registry}: {message}")]
    RemoteFetch {
        digest: Digest,
        registry: String,
        message: String,
    },
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
            cause: source.into(),
        }
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Db(e)
    }
}

impl From<LayerError> for StoreError {
    fn from(e: LayerError) -> Self {
        StoreError::Layer(e)
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Json(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryError;

    /// The error and its sources, joined as anyhow's `{:#}` prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cause = c.source();
        }
        s
    }

    #[test]
    fn chains_say_each_cause_once() {
        let enoent = || std::io::Error::from_raw_os_error(2);
        let os = enoent().to_string();
        let json = serde_json::from_str::<u8>("x").unwrap_err().to_string();
        let cases: Vec<(Box<dyn std::error::Error>, String)> = vec![
            (
                Box::new(StoreError::io("/x", enoent())),
                format!("I/O error on /x: {os}"),
            ),
            (
                Box::new(StoreError::from(LayerError::Malformed("bad header".into()))),
                "layer error: malformed tar stream: bad header".into(),
            ),
            (
                Box::new(StoreError::from(
                    serde_json::from_str::<u8>("x").unwrap_err(),
                )),
                format!("invalid JSON: {json}"),
            ),
            (
                Box::new(StoreError::from(rusqlite::Error::InvalidQuery)),
                format!("metadata database error: {}", rusqlite::Error::InvalidQuery),
            ),
            (
                Box::new(StoreError::from(LayerError::from(enoent()))),
                format!("layer error: I/O error: {os}"),
            ),
            (
                Box::new(LayerError::io("etc/x", enoent())),
                format!("I/O error on etc/x: {os}"),
            ),
            (
                Box::new(LayerError::NotPermitted {
                    op: "mknod",
                    path: "dev/x".into(),
                    cause: std::io::Error::from_raw_os_error(1),
                }),
                format!(
                    "mknod on \"dev/x\" needs privileges this process lacks: {}",
                    std::io::Error::from_raw_os_error(1)
                ),
            ),
            (
                Box::new(RegistryError::io("/cfg", enoent())),
                format!("I/O error on /cfg: {os}"),
            ),
            (
                Box::new(StoreError::from(
                    crate::reference::parse("a@sha256:1").unwrap_err(),
                )),
                "invalid reference format: invalid digest \"sha256:1\": expected \"sha256:\" \
                 followed by 64 lowercase hex digits"
                    .into(),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(chain(e.as_ref()), want);
        }
    }
}
