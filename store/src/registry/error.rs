//! The registry client's error type. Every message is one line and names the
//! reference, repository or registry it is about; none ever contains a
//! credential.

use crate::digest::Digest;
use crate::error::StoreError;
use crate::reference::ReferenceError;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 401: no or wrong credentials.
    #[error("{action} access denied for {name}: 401 Unauthorized ({hint})")]
    Unauthorized {
        /// `pull` or `push`.
        action: &'static str,
        name: String,
        hint: &'static str,
    },
    /// 403: credentials accepted but not allowed.
    #[error("{action} access denied for {name}: 403 Forbidden (insufficient scope)")]
    Forbidden { action: &'static str, name: String },
    #[error("manifest unknown: {reference} (404)")]
    ManifestUnknown { reference: String },
    #[error("blob unknown: {digest} in {repo} (404)")]
    BlobUnknown { repo: String, digest: Digest },
    #[error("{what}: digest mismatch (got {actual})")]
    DigestMismatch { what: String, actual: Digest },
    #[error("{what}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what}: too large ({size} bytes, limit {limit})")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A document kiln refuses to interpret (schema 1, index+manifest, ...).
    #[error("{reference}: {message}")]
    Unsupported { reference: String, message: String },
    #[error("{reference}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        reference: String,
        platform: String,
        available: String,
    },
    /// An unexpected HTTP status (after retries).
    #[error("{method} {url}: {status} {message}")]
    Status {
        method: String,
        url: String,
        status: u16,
        message: String,
    },
    /// 405 to a DELETE: the registry does not allow deletes.
    #[error("the registry {registry} does not allow deletes ({message}): a CNCF distribution registry allows them with `storage: delete: enabled: true` in its config.yml; otherwise its own garbage collector is what frees space")]
    DeleteDisabled { registry: String, message: String },
    /// Could not talk to the registry at all (after retries).
    #[error("cannot reach the registry {registry}: {message}")]
    Transport { registry: String, message: String },
    /// The TLS handshake failed (unknown CA, bad certificate, ...).
    #[error("{registry}: TLS error: {message}")]
    Tls { registry: String, message: String },
    #[error("{registry}: refusing plain http (not loopback and not an insecure registry)")]
    InsecureRefused { registry: String },
    #[error("{registry}: invalid response: {message}")]
    Protocol { registry: String, message: String },
    #[error("credentials for {registry}: {message}")]
    Credentials { registry: String, message: String },
    #[error("invalid platform {0:?}: expected os/arch[/variant], e.g. linux/arm64/v8")]
    InvalidPlatform(String),
    #[error("registry configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `cause`, not `source`: the message already ends with it (see
    /// [`StoreError::Io`](crate::StoreError)).
    #[error("I/O error on {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
}

impl RegistryError {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> RegistryError {
        RegistryError::Io {
            path: path.to_string(),
            cause: source,
        }
    }

    pub(crate) fn protocol(registry: &str, message: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: registry.to_string(),
            message: message.into(),
        }
    }
}
