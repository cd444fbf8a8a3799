//! kiln-store: everything kiln keeps on disk (see `../shared/DESIGN.md`,
//! "State on disk").
//!
//! - [`Store`]: a root directory shared by several kiln processes: sha256
//!   blobs (atomic ingest, verified), SQLite metadata (WAL), unpacked layer
//!   snapshots for overlayfs, images and tags, the build cache, the context
//!   stat cache, leases, prune, df and fsck.
//!
//! Only this crate knows the root's layout: callers never join a path into
//! it. They hold one of the store's views, each a module doing one job:
//!
//! | view | module | what |
//! |------|--------|------|
//! | [`Store::content`] | `content` | blobs by digest; export into OCI layouts |
//! | [`Store::snapshots`] | `snapshots` | layers and their unpacked snapshots |
//! | [`Store::images`] | `images` | image records and tags |
//! | [`Store::cache`] | `cache`, `cachemount`, `records` | cache records, `RUN --mount=type=cache` dirs, build records |
//! | [`Store::volumes`] | `volumes` | named and anonymous volumes of containers |
//!
//! plus [`Store::tempdir`] and [`Store::scratch_dir`] for scratch space on
//! the store's filesystem, and `gc` (leases, prune, df, fsck) over all of
//! them. `Store`'s flat methods (`write_blob`, `resolve_image`,
//! `cache_get`...) are what the views forward to, kept for the many callers
//! that use them.
//! - [`layer`]: the deterministic layer writer and the safe layer applier,
//!   usable without a store.
//! - [`reference`]: Docker image reference parsing.
//! - [`image`]: OCI config / manifest types and canonical JSON.

mod archive;
mod cache;
mod cachemount;
mod content;
mod db;
pub mod digest;
mod error;
mod fsck;
mod gc;
pub mod image;
mod images;
pub mod indexes;
pub mod layer;
mod owner;
mod records;
pub mod reference;
pub mod registry;
mod remote;
mod scans;
mod snapshots;
mod statcache;
mod store;
pub mod userns;
mod volumes;

pub use cache::{BuildCache, CacheCounter, CacheNear, CacheRecord, CacheStats, NearestQuery};
pub use cachemount::{
    CacheMount, CacheMountInfo, CacheMountPruned, CacheMounts, CacheSeed, CacheSharing,
};
pub use content::{oci_layout_blob, oci_layout_blobs, Content};
pub use db::SCHEMA_VERSION;
pub use digest::{sha256_digest, Digest, DigestError};
pub use error::StoreError;
pub use fsck::FsckReport;
pub use gc::{DiskUsage, Lease, PruneOptions, PruneReport};
pub use image::{ContainerConfig, HealthConfig, History, ImageConfig, RootFs};
pub use images::Images;
pub use indexes::{EntryKind, IndexEntry, IndexRecord, Statement};
pub use layer::{Compression, LayerDigests, LayerError, LayerOptions, Limits, WhiteoutMode};
pub use records::BuildRecords;
pub use reference::{Reference, ReferenceError};
pub use registry::{Client as RegistryClient, Platform, RegistryConfig, RegistryError};
pub use remote::{RemoteBlob, RemoteFetcher};
pub use snapshots::{PendingSnapshot, Snapshots};
pub use statcache::{StatEntry, StatRow};
pub use store::{ArchiveFormat, ImageRecord, ImageSummary, LayerInfo, Store};
pub use userns::UserNs;
pub use volumes::{check_volume_name, VolumeInfo, Volumes};
