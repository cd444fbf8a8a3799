//! The layer codec: a directory tree (or an overlay upper dir) to a
//! deterministic, compressed tar stream, and a tar stream back into a tree.
//!
//! Usable without a [`crate::Store`]. The writer never holds a whole layer in
//! memory; the applier resolves every path inside the target root through
//! directory handles (`openat2(RESOLVE_IN_ROOT)`), never through host paths.

mod apply;
mod entries;
mod offload;
mod scan;
mod summary;
mod tarfmt;
mod validate;
mod write;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub use apply::apply_layer;
pub(crate) use apply::clean_path as clean_path_pub;
pub(crate) use apply::remove_all_at;
pub use scan::FileView;
pub(crate) use scan::LayerScan;
pub use summary::{summarize_layer, EntrySummary};
pub use validate::validate_layer;
pub use write::write_layer;

/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer (what the store writes).
pub const MEDIA_TYPE_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Docker's media type for gzip layers (schema 2 manifests).
pub const MEDIA_TYPE_DOCKER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Compression applied to the tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Zstd => MEDIA_TYPE_TAR_ZSTD,
            Compression::Gzip => MEDIA_TYPE_TAR_GZIP,
            Compression::None => MEDIA_TYPE_TAR,
        }
    }

    /// Detects the compression of a stream from its first bytes.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// How a layer is encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    pub compression: Compression,
    /// Clamp every mtime that is later than this (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<i64>,
    pub zstd_level: i32,
    /// zstd worker threads. zstd's multithreaded mode gives the same bytes
    /// for any worker count >= 1, so this never changes a digest; 0 is
    /// treated as 1 for that reason (single-threaded mode differs).
    pub zstd_workers: u32,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Zstd,
            source_date_epoch: None,
            zstd_level: 3,
            zstd_workers: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
                .min(8),
        }
    }
}

/// What [`write_layer`] produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerDigests {
    /// sha256 of the compressed stream (the blob digest).
    pub digest: Digest,
    /// sha256 of the uncompressed tar (the diffID).
    pub diff_id: Digest,
    /// Size of the compressed stream.
    pub size: u64,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// How whiteout entries of a layer are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// OCI whiteouts become overlayfs whiteouts (char device 0/0 and the
    /// `trusted.overlay.opaque=y` xattr): the result is an overlay lower dir.
    Overlay,
    /// Whited-out paths are deleted from the existing tree (flattening).
    Apply,
}

/// Bounds on what a layer may make the applier do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum number of uncompressed bytes read (decompression bomb limit).
    pub max_uncompressed_bytes: u64,
    /// Maximum number of tar entries.
    pub max_entries: u64,
    /// Maximum size of one PAX / GNU long-name extension record.
    pub max_header_bytes: u64,
}

impl Limits {
    /// The default bounds for a store with `free` bytes available: one
    /// layer may expand to at most 90% of the free space (at least 1 GiB,
    /// at most 256 GiB), so a bomb fails with a clear error instead of
    /// filling the disk under everything else; at most 10 million entries
    /// (the largest real images hold a few hundred thousand files).
    /// No bound on the compression ratio: legitimate layers of sparse or
    /// zero-filled files compress a thousandfold, and the expanded-size
    /// bound is what protects the disk.
    pub fn for_free_space(free: Option<u64>) -> Limits {
        let cap = Limits::default().max_uncompressed_bytes;
        let bytes = free.map_or(cap, |f| (f / 10 * 9).clamp(1 << 30, cap));
        Limits {
            max_uncompressed_bytes: bytes,
            max_entries: 10_000_000,
            ..Limits::default()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uncompressed_bytes: 256 << 30,
            max_entries: 50_000_000,
            max_header_bytes: 1 << 20,
        }
    }
}

/// Errors of the layer codec.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    // Each message ends with its cause's, so no cause is also the
    // `source()` (a `{:#}` chain would repeat it): `cause` fields, and
    // `From<io::Error>` by hand.
    #[error("I/O error on {path}: {cause}")]
    Io { path: String, cause: std::io::Error },
    #[error("I/O error: {0}")]
    Stream(std::io::Error),
    #[error("malformed tar stream: {0}")]
    Malformed(String),
    #[error("unsafe path {path:?} in layer: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("invalid whiteout {0:?}")]
    InvalidWhiteout(String),
    #[error("invalid hard link {path:?} -> {target:?}: {reason}")]
    InvalidLink {
        path: String,
        target: String,
        reason: String,
    },
    #[error("invalid device number {major}:{minor} for {path:?}")]
    InvalidDevice {
        path: String,
        major: u64,
        minor: u64,
    },
    #[error("unsupported tar entry type {kind:?} for {path:?}")]
    Unsupported { path: String, kind: char },
    #[error("layer exceeds the limit of {limit} {what}")]
    LimitExceeded { what: &'static str, limit: u64 },
    #[error("{path:?} carries {xattr}: the upper dir was mounted with overlay redirect_dir or metacopy, so it does not hold the full content; mount with redirect_dir=off,metacopy=off")]
    OverlayFeature { path: String, xattr: String },
    #[error("file {0:?} changed size while it was being archived")]
    FileChanged(String),
    #[error(
        "{path:?} is owned by {kind} {id}, which this rootless kiln's user namespace does not \
         map (it maps {mapped} IDs: container ID 0 is you, 1..{last} your subordinate range in \
         /etc/sub{kind}); give the user a larger range (usermod --add-sub{kind}s)",
        last = mapped.saturating_sub(1)
    )]
    UnmappedOwner {
        path: String,
        kind: &'static str,
        id: u32,
        mapped: u64,
    },
    #[error("{op} on {path:?} needs privileges this process lacks: {cause}")]
    NotPermitted {
        op: &'static str,
        path: String,
        cause: std::io::Error,
    },
}

impl LayerError {
    pub(crate) fn io(path: impl Into<String>, source: impl Into<std::io::Error>) -> LayerError {
        LayerError::Io {
            path: path.into(),
            cause: source.into(),
        }
    }
}

impl From<std::io::Error> for LayerError {
    fn from(e: std::io::Error) -> Self {
        LayerError::Stream(e)
    }
}
