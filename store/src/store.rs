//! The [`Store`]: blobs, layers, snapshots, images, refs, build cache and the
//! context stat cache under one root, shared safely by several processes.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::db;
use crate::digest::{sha256_digest, Digest, HashingReader, HashingWriter};
use crate::error::{Result, StoreError};
use crate::image::{self, canonical_json, ImageConfig, Manifest};
use crate::layer::{self, LayerOptions, Limits, WhiteoutMode};
use crate::owner::{self, Owner};
use crate::reference;

/// A layer blob and what it unpacks to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerInfo {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
    /// Size of the blob.
    pub size: u64,
    pub media_type: String,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub manifest_digest: Digest,
    /// The image ID.
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<LayerInfo>,
}

/// One line of `kiln images`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageSummary {
    /// Familiar references (`flask_app:0.1`), sorted; empty for dangling.
    pub references: Vec<String>,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub created: Option<String>,
    /// Sum of the layers' uncompressed sizes where known, else blob sizes.
    pub size: u64,
}

/// Output formats of [`Store::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// What `docker save` writes and `docker load` reads.
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

/// A fresh snapshot being written: `upper()` receives the files (directly, or
/// as an overlay upper dir with `work()` as its workdir). Dropped without
/// [`Store::commit_snapshot`], it is removed.
#[derive(Debug)]
pub struct PendingSnapshot {
    dir: PathBuf,
    upper: PathBuf,
    work: PathBuf,
}

impl PendingSnapshot {
    pub fn upper(&self) -> &Path {
        &self.upper
    }
    /// The overlay workdir: empty, on the same filesystem as `upper()`.
    pub fn work(&self) -> &Path {
        &self.work
    }
}

impl Drop for PendingSnapshot {
    fn drop(&mut self) {
        let _ = remove_tree(&self.dir);
    }
}

pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) db: Mutex<Connection>,
    pub(crate) owner: Owner,
    /// Bounds on what unpacking one layer may do (decompression bombs).
    pub(crate) limits: std::sync::RwLock<Limits>,
    pub(crate) stats: Arc<crate::cache::Counters>,
}

/// The store. `Send + Sync`; share it through an `Arc`.
pub struct Store {
    pub(crate) shared: Arc<Shared>,
    pub(crate) open_report: crate::gc::SweepReport,
}

/// Free bytes for an unprivileged writer on the filesystem of `root`
/// (None when it cannot be read).
fn free_bytes(root: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(root).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) fn now_secs() -> i64 {
    now_ms() / 1000
}

/// Removes a tree without following symlinks, tolerating its absence.
pub(crate) fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => {
            let parent = p.parent().unwrap_or(Path::new("/"));
            let name = p
                .file_name()
                .ok_or_else(|| io::Error::other("no file name"))?;
            let dfd = rustix::fs::open(
                parent,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY,
                rustix::fs::Mode::empty(),
            )?;
            let c = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
                .map_err(io::Error::other)?;
            crate::layer::remove_all_at(std::os::fd::AsFd::as_fd(&dfd), &c)
        }
        Ok(_) => fs::remove_file(p),
    }
}

pub(crate) fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::io(p, e))
}

impl Store {
    /// Opens (creating if needed, mode 0700) the store at `root`, migrates
    /// the database, recovers a corrupt one, and sweeps what dead processes
    /// left in `ingest/`, `tmp/` and `snapshots/`.
    pub fn open(root: &Path) -> Result<Store> {
        if !root.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(|e| StoreError::io(root, e))?;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))
                .map_err(|e| StoreError::io(root, e))?;
        }
        for sub in ["blobs/sha256", "ingest", "snapshots", "containers", "tmp"] {
            let p = root.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(|e| StoreError::io(&p, e))?;
        }
        let tmp = root.join("tmp");
        let owner = Owner::acquire(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        let db_path = root.join("kiln.db");
        // An empty or truncated file opens as an empty or smaller database:
        // it is moved aside and rebuilt like a corrupt one. (An empty file
        // in a root without blobs is a root being created right now.)
        let damaged = db::damaged(&db_path).filter(|_| {
            fs::read_dir(root.join("blobs/sha256"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false)
        });
        let early = match damaged {
            Some(_) => Some(crate::gc::backup_corrupt_db(root)?),
            None => None,
        };
        let (conn, recovered) = match db::open(&db_path) {
            Ok(c) if early.is_some() => (c, early),
            Ok(c) => (c, None),
            Err(e) if db::is_corruption(&e) => {
                let backup = crate::gc::backup_corrupt_db(root)?;
                (db::open(&db_path)?, Some(backup))
            }
            Err(e) => return Err(e.into()),
        };
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            db: Mutex::new(conn),
            owner,
            limits: std::sync::RwLock::new(Limits::for_free_space(free_bytes(root))),
            stats: Default::default(),
        });
        let mut store = Store {
            shared,
            open_report: Default::default(),
        };
        if let Some(backup) = recovered {
            store.open_report.recovered_from = Some(backup);
            store.rebuild_from_blobs()?;
        }
        // The sweep reads the snapshots table: the first place a damaged
        // page shows when the header was fine.
        let swept = match store.sweep() {
            Err(StoreError::Db(e)) if db::is_corruption(&e) => {
                let backup = store.recover_db()?;
                store.open_report.recovered_from = Some(backup);
                store.sweep()?
            }
            r => r?,
        };
        store.open_report.merge(swept);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// Blobs by digest.
    pub fn content(&self) -> crate::content::Content<'_> {
        crate::content::Content { store: self }
    }

    /// The build cache: records, cache mounts, build records.
    pub fn cache(&self) -> crate::cache::BuildCache<'_> {
        crate::cache::BuildCache { store: self }
    }

    /// The store's scratch directory, on the store's filesystem (so what is
    /// made there renames into the store): for a runner's own temporary
    /// trees. What this process leaves there is swept once it is gone only
    /// when named by [`Store::tempdir`].
    pub fn scratch_dir(&self) -> PathBuf {
        self.shared.root.join("tmp")
    }

    /// A fresh temporary directory in [`Store::scratch_dir`], removed on
    /// drop; named after this process, so that the next open of the store
    /// sweeps it if the process dies first. `kind` says what it is for
    /// (`add`, `secret`...).
    pub fn tempdir(&self, kind: &str) -> Result<tempfile::TempDir> {
        let dir = self.scratch_dir();
        tempfile::Builder::new()
            .prefix(&format!("{}.", self.shared.owner.temp_name(kind)))
            .tempdir_in(&dir)
            .map_err(|e| StoreError::io(&dir, e))
    }

    /// Where the runner keeps its containers' state.
    pub fn containers_dir(&self) -> PathBuf {
        self.shared.root.join("containers")
    }

    /// The bounds every layer is unpacked (and `load` validates) within.
    /// By default [`Limits::for_free_space`] of the store's filesystem.
    pub fn layer_limits(&self) -> Limits {
        self.shared.limits.read().expect("limits lock").clone()
    }

    /// Replaces the layer bounds (`--max-layer-size`, `--max-layer-entries`).
    pub fn set_layer_limits(&self, limits: Limits) {
        *self.shared.limits.write().expect("limits lock") = limits;
    }

    /// Where the database was moved when this open found it damaged (empty,
    /// truncated or corrupt) and rebuilt it from the blobs.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.open_report.recovered_from.as_deref()
    }

    /// `KILN_ROOT`, else `/var/lib/kiln` as root, else `$XDG_DATA_HOME/kiln`
    /// (`~/.local/share/kiln`).
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
            return PathBuf::from(r);
        }
        if rustix::process::geteuid().is_root() {
            return PathBuf::from("/var/lib/kiln");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("kiln");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        home.join(".local/share/kiln")
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable (each
        // transaction rolls back on drop), so poisoning is not fatal.
        self.shared.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.shared.root.join("blobs/sha256").join(d.hex())
    }

    pub(crate) fn snapshot_dir(&self, id: i64) -> PathBuf {
        self.shared.root.join("snapshots").join(id.to_string())
    }

    pub(crate) fn tmp_path(&self, kind: &str) -> PathBuf {
        self.shared
            .root
            .join("tmp")
            .join(self.shared.owner.temp_name(kind))
    }

    // ----- blobs -----

    /// Streams `r` into the store, hashing as it goes; checks the size and
    /// digest when given, fsyncs, and renames into `blobs/` atomically. A
    /// blob that already exists counts as success.
    pub fn write_blob(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
    ) -> Result<(Digest, u64)> {
        self.write_blob_typed(r, expected, expected_size, None)
    }

    pub(crate) fn write_blob_typed(
        &self,
        r: &mut dyn Read,
        expected: Option<&Digest>,
        expected_size: Option<u64>,
        media_type: Option<&str>,
    ) -> Result<(Digest, u64)> {
        let ingest = Ingest::new(self)?;
        let (n, hasher) = {
            let mut w = HashingWriter::new(io::BufWriter::with_capacity(256 * 1024, &ingest.file));
            let limit = expected_size.map(|s| s + 1).unwrap_or(u64::MAX);
            let n = io::copy(&mut r.take(limit), &mut w)
                .map_err(|e| StoreError::io(&ingest.path, e))?;
            let HashingWriter { mut inner, hasher } = w;
            inner.flush().map_err(|e| StoreError::io(&ingest.path, e))?;
            (n, hasher)
        };
        let digest = hasher.finish();
        if let Some(s) = expected_size {
            if n != s {
                return Err(StoreError::SizeMismatch {
                    digest: expected.map(|d| d.to_string()).unwrap_or_default(),
                    expected: s,
                    actual: n,
                });
            }
        }
        if let Some(e) = expected {
            if *e != digest {
                return Err(StoreError::DigestMismatch {
                    expected: e.clone(),
                    actual: digest,
                });
            }
        }
        ingest.commit(self, &digest, n, media_type)?;
        Ok((digest, n))
    }

    pub fn write_blob_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        // Small blobs (configs, manifests) are often written again by a
        // cached rebuild: an existing blob with that digest is the same
        // bytes, so the write (and its fsyncs) is skipped.
        self.write_small_blob(bytes, None)
    }

    /// Writes a small in-memory blob; one that is already stored (same
    /// digest, same size) is only marked as used, without rewriting and
    /// fsyncing the same bytes again.
    fn write_small_blob(&self, bytes: &[u8], media_type: Option<&str>) -> Result<Digest> {
        let d = sha256_digest(bytes);
        let present = fs::symlink_metadata(self.blob_path(&d))
            .map(|m| m.is_file() && m.len() == bytes.len() as u64)
            .unwrap_or(false);
        if present {
            let n = self
                .conn()
                .prepare_cached("UPDATE blobs SET used_ms = ?2 WHERE digest = ?1")?
                .execute(params![d.as_str(), now_ms()])?;
            if n == 1 {
                return Ok(d);
            }
        }
        self.write_blob_typed(
            &mut &bytes[..],
            Some(&d),
            Some(bytes.len() as u64),
            media_type,
        )
        .map(|(d, _)| d)
    }

    pub(crate) fn write_blob_bytes_typed(&self, bytes: &[u8], media_type: &str) -> Result<Digest> {
        self.write_small_blob(bytes, Some(media_type))
    }

    /// Reads a small blob (config, manifest) and verifies its digest.
    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let p = self.blob_path(d);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::BlobNotFound(d.clone()))
            }
            Err(e) => return Err(StoreError::io(&p, e)),
        };
        let actual = sha256_digest(&bytes);
        if actual != *d {
            return Err(StoreError::DigestMismatch {
                expected: d.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming (not verified; hash while reading, or use
    /// [`Store::fsck`]).
    pub fn open_blob(&self, d: &Digest) -> Result<File> {
        let p = self.blob_path(d);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::BlobNotFound(d.clone())
            } else {
                StoreError::io(&p, e)
            }
        })
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    // ----- layers & snapshots -----

    /// A fresh, empty `upper`/`work` pair in `tmp/` (same filesystem as
    /// `snapshots/`, so committing is a rename).
    pub fn new_snapshot(&self) -> Result<PendingSnapshot> {
        let dir = self.tmp_path("snap");
        let upper = dir.join("upper");
        let work = dir.join("work");
        for p in [&dir, &upper, &work] {
            fs::DirBuilder::new()
                .mode(0o755)
                .create(p)
                .map_err(|e| StoreError::io(p, e))?;
        }
        Ok(PendingSnapshot { dir, upper, work })
    }

    /// Encodes `p.upper()` as a layer (overlay whiteouts become OCI
    /// whiteouts), stores the blob, records the layer, and keeps the upper
    /// dir as the layer's snapshot (unless one with that diffID exists).
    pub fn commit_snapshot(&self, p: PendingSnapshot, opts: &LayerOptions) -> Result<LayerInfo> {
        let ingest = Ingest::new(self)?;
        let digests = {
            let mut w = io::BufWriter::with_capacity(256 * 1024, &ingest.file);
            let d = layer::write_layer(&p.upper, opts, &mut w)?;
            w.flush().map_err(|e| StoreError::io(&ingest.path, e))?;
            d
        };
        let media_type = opts.compression.media_type();
        ingest.commit(self, &digests.digest, digests.size, Some(media_type))?;
        let info = LayerInfo {
            digest: digests.digest.clone(),
            diff_id: digests.diff_id.clone(),
            size: digests.size,
            media_type: media_type.to_string(),
        };
        self.record_layer(&info, Some(digests.uncompressed_size))?;
        self.install_snapshot(&p.upper, &info.diff_id)?;
        Ok(info)
    }

    pub(crate) fn record_layer(&self, info: &LayerInfo, uncompressed: Option<u64>) -> Result<()> {
        let conn = self.conn();
        conn.prepare_cached(
            "INSERT INTO layers (digest, diff_id, size, uncompressed_size, media_type, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(digest) DO UPDATE SET uncompressed_size = coalesce(layers.uncompressed_size, excluded.uncompressed_size), created_ms = excluded.created_ms",
        )?
        .execute(params![info.digest.as_str(), info.diff_id.as_str(), info.size as i64, uncompressed.map(|u| u as i64), info.media_type, now_ms()])?;
        Ok(())
    }

    /// Renames the complete tree `dir` into `snapshots/<id>` for `diff_id`,
    /// unless a snapshot for it exists already (then `dir` is left for the
    /// caller to discard). The rename and the row commit together under the
    /// database write lock, so a sweeper never sees one without the other.
    fn install_snapshot(&self, dir: &Path, diff_id: &Digest) -> Result<PathBuf> {
        // Make the tree durable before anything points at it.
        if let Ok(f) = File::open(dir) {
            let _ = rustix::fs::syncfs(&f);
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let existing: Option<i64> = tx
            .prepare_cached("SELECT id FROM snapshots WHERE diff_id = ?1")?
            .query_row([diff_id.as_str()], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            tx.prepare_cached("UPDATE snapshots SET used_ms = ?2 WHERE id = ?1")?
                .execute(params![id, now_ms()])?;
            tx.commit()?;
            return Ok(self.snapshot_dir(id));
        }
        let now = now_ms();
        tx.prepare_cached(
            "INSERT INTO snapshots (diff_id, created_ms, used_ms) VALUES (?1, ?2, ?2)",
        )?
        .execute(params![diff_id.as_str(), now])?;
        let id = tx.last_insert_rowid();
        let dest = self.snapshot_dir(id);
        // A leftover of a process killed between its rename and its commit
        // (ids of rolled-back rows can be handed out again): never recorded.
        if dest.exists() {
            remove_tree(&dest).map_err(|e| StoreError::io(&dest, e))?;
        }
        fs::rename(dir, &dest).map_err(|e| StoreError::io(&dest, e))?;
        fsync_dir(&self.shared.root.join("snapshots"))?;
        tx.commit()?;
        Ok(dest)
    }

    /// The snapshot dir of a layer, if it has been unpacked.
    pub fn snapshot_path(&self, diff_id: &Digest) -> Result<Option<PathBuf>> {
        let conn = self.conn();
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM snapshots WHERE diff_id = ?1")?
            .query_row([diff_id.as_str()], |r| r.get(0))
            .optional()?;
        Ok(id.map(|id| self.snapshot_dir(id)))
    }

    /// The snapshot dir of `layer`, unpacking the blob (overlay whiteouts)
    /// first if needed. The blob digest and the diffID are both verified.
    pub fn ensure_snapshot(&self, layer: &LayerInfo) -> Result<PathBuf> {
        {
            let conn = self.conn();
            // Marking the snapshot used keeps prune off it while a lease
            // that began before now is alive.
            let found: Option<i64> = conn
                .prepare_cached(
                    "UPDATE snapshots SET used_ms = ?2 WHERE diff_id = ?1 RETURNING id",
                )?
                .query_row(params![layer.diff_id.as_str(), now_ms()], |r| r.get(0))
                .optional()?;
            if let Some(id) = found {
                return Ok(self.snapshot_dir(id));
            }
        }
        let dir = self.tmp_path("unpack");
        let _guard = TreeGuard(dir.clone());
        fs::DirBuilder::new()
            .mode(0o755)
            .create(&dir)
            .map_err(|e| StoreError::io(&dir, e))?;
        let f = self.open_blob(&layer.digest)?;
        let mut hr = HashingReader::new(io::BufReader::with_capacity(256 * 1024, f));
        let diff_id =
            layer::apply_layer(&mut hr, &dir, WhiteoutMode::Overlay, &self.layer_limits())
                .map_err(|e| StoreError::LayerRefused {
                    digest: layer.digest.clone(),
                    source: e,
                })?;
        io::copy(&mut hr, &mut io::sink())
            .map_err(|e| StoreError::io(self.blob_path(&layer.digest), e))?;
        let digest = hr.hasher.finish();
        if digest != layer.digest {
            return Err(StoreError::DigestMismatch {
                expected: layer.digest.clone(),
                actual: digest,
            });
        }
        if diff_id != layer.diff_id {
            return Err(StoreError::DiffIdMismatch {
                digest: layer.digest.clone(),
                expected: layer.diff_id.clone(),
                actual: diff_id,
            });
        }
        self.install_snapshot(&dir, &layer.diff_id)
    }

    pub fn layer_by_diff_id(&self, diff_id: &Digest) -> Result<Option<LayerInfo>> {
        let conn = self.conn();
        // Prefer the store's own zstd encoding when several blobs exist.
        let row = conn
            .prepare_cached("SELECT digest, size, media_type FROM layers WHERE diff_id = ?1 ORDER BY (media_type = ?2) DESC, created_ms LIMIT 1")?
            .query_row(params![diff_id.as_str(), layer::MEDIA_TYPE_TAR_ZSTD], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, String>(2)?)))
            .optional()?;
        match row {
            None => Ok(None),
            Some((d, size, media_type)) => Ok(Some(LayerInfo {
                digest: d.parse()?,
                diff_id: diff_id.clone(),
                size: size as u64,
                media_type,
            })),
        }
    }

    // ----- images & refs -----

    /// Writes the config (with `rootfs.diff_ids` set from `layers`) and an
    /// OCI manifest canonically, and records the image (untagged).
    pub fn write_image(&self, config: &ImageConfig, layers: &[LayerInfo]) -> Result<ImageRecord> {
        let mut config = config.clone();
        config.rootfs.kind = "layers".into();
        config.rootfs.diff_ids = layers.iter().map(|l| l.diff_id.clone()).collect();
        let config_bytes = canonical_json(&config)?;
        self.write_image_raw(&config_bytes, config, layers)
    }

    /// Records an image whose config bytes are given as is (loaded images
    /// keep their exact config, hence their image ID).
    pub(crate) fn write_image_raw(
        &self,
        config_bytes: &[u8],
        config: ImageConfig,
        layers: &[LayerInfo],
    ) -> Result<ImageRecord> {
        for l in layers {
            if !self.has_blob(&l.digest) {
                return Err(StoreError::BlobNotFound(l.digest.clone()));
            }
        }
        let config_digest = self.write_blob_bytes_typed(config_bytes, image::MEDIA_TYPE_CONFIG)?;
        let manifest = Manifest::oci(&config_digest, config_bytes.len() as u64, layers);
        let manifest_bytes = canonical_json(&manifest)?;
        let manifest_digest =
            self.write_blob_bytes_typed(&manifest_bytes, image::MEDIA_TYPE_MANIFEST)?;
        self.record_image(&manifest_digest, &config_digest, config, layers)
    }

    /// Records an image whose manifest and config blobs are in the store.
    pub(crate) fn record_image(
        &self,
        manifest_digest: &Digest,
        config_digest: &Digest,
        config: ImageConfig,
        layers: &[LayerInfo],
    ) -> Result<ImageRecord> {
        for l in layers {
            self.record_layer(l, None)?;
        }
        let conn = self.conn();
        let mut size = 0u64;
        for l in layers {
            let u: Option<i64> = conn
                .prepare_cached("SELECT uncompressed_size FROM layers WHERE digest = ?1")?
                .query_row([l.digest.as_str()], |r| r.get(0))
                .optional()?
                .flatten();
            size += u.map(|u| u as u64).unwrap_or(l.size);
        }
        conn.prepare_cached(
            "INSERT INTO images (manifest_digest, config_digest, created, size, layers, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(manifest_digest) DO UPDATE SET created_ms = excluded.created_ms",
        )?
        .execute(params![manifest_digest.as_str(), config_digest.as_str(), config.created, size as i64, serde_json::to_string(layers)?, now_ms()])?;
        Ok(ImageRecord {
            manifest_digest: manifest_digest.clone(),
            config_digest: config_digest.clone(),
            config,
            layers: layers.to_vec(),
        })
    }

    /// Points `reference` (`name[:tag]`) at the image with this manifest.
    pub fn tag(&self, reference: &str, manifest: &Digest) -> Result<()> {
        let r = reference::parse(reference)?;
        if r.digest().is_some() {
            return Err(StoreError::Invalid(format!(
                "refusing to create a tag with a digest reference: {reference}"
            )));
        }
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: Option<String> = tx
            .prepare_cached("SELECT manifest_digest FROM images WHERE manifest_digest = ?1")?
            .query_row([manifest.as_str()], |r| r.get(0))
            .optional()?;
        if exists.is_none() {
            return Err(StoreError::ImageNotFound(manifest.to_string()));
        }
        tx.prepare_cached("INSERT INTO refs (name, manifest_digest, updated_ms) VALUES (?1, ?2, ?3) ON CONFLICT(name) DO UPDATE SET manifest_digest = excluded.manifest_digest, updated_ms = excluded.updated_ms")?
            .execute(params![r.familiar(), manifest.as_str(), now_ms()])?;
        tx.commit()?;
        Ok(())
    }

    /// Removes a tag; `false` if there was none.
    pub fn untag(&self, reference: &str) -> Result<bool> {
        let r = reference::parse(reference)?;
        let conn = self.conn();
        let n = conn
            .prepare_cached("DELETE FROM refs WHERE name = ?1")?
            .execute([r.familiar()])?;
        Ok(n > 0)
    }

    /// Resolves `name:tag`, `name` (= `:latest`), `name@digest`, a full or
    /// short image ID (config digest, with or without `sha256:`), or a
    /// manifest digest.
    pub fn resolve_image(&self, reference_or_id: &str) -> Result<Option<ImageRecord>> {
        match self.resolve_manifest(reference_or_id)? {
            Some(m) => self.image_by_manifest(&m),
            None => Ok(None),
        }
    }

    pub(crate) fn resolve_manifest(&self, s: &str) -> Result<Option<Digest>> {
        let conn = self.conn();
        if let Ok(d) = s.parse::<Digest>() {
            let m: Option<String> = conn
                .prepare_cached("SELECT manifest_digest FROM images WHERE manifest_digest = ?1 OR config_digest = ?1 ORDER BY (manifest_digest = ?1) DESC, created_ms DESC LIMIT 1")?
                .query_row([d.as_str()], |r| r.get(0))
                .optional()?;
            return m.map(|m| m.parse().map_err(StoreError::from)).transpose();
        }
        let parsed = reference::parse(s);
        if let Ok(r) = &parsed {
            if let Some(d) = r.digest() {
                let m: Option<String> = conn
                    .prepare_cached(
                        "SELECT manifest_digest FROM images WHERE manifest_digest = ?1",
                    )?
                    .query_row([d.as_str()], |r| r.get(0))
                    .optional()?;
                return m.map(|m| m.parse().map_err(StoreError::from)).transpose();
            }
            let m: Option<String> = conn
                .prepare_cached("SELECT manifest_digest FROM refs WHERE name = ?1")?
                .query_row([r.familiar()], |r| r.get(0))
                .optional()?;
            if let Some(m) = m {
                return Ok(Some(m.parse()?));
            }
        }
        // A (short) image ID: a hex prefix of the config digest.
        // Like docker, an ID prefix needs no minimum length with "sha256:",
        // but a bare one must not be a single letter that matches by accident.
        let (hex, min) = match s.strip_prefix("sha256:") {
            Some(h) => (h, 1),
            None => (s, 4),
        };
        if hex.len() >= min
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT config_digest, manifest_digest FROM images WHERE substr(config_digest, 8, ?2) = ?1 ORDER BY created_ms DESC")?;
            let rows: Vec<(String, String)> = stmt
                .query_map(params![hex, hex.len() as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?
                .collect::<Result<_, _>>()?;
            let configs: std::collections::BTreeSet<&String> =
                rows.iter().map(|(c, _)| c).collect();
            if configs.len() > 1 {
                return Err(StoreError::Ambiguous(s.to_string()));
            }
            if let Some((_, m)) = rows.first() {
                return Ok(Some(m.parse()?));
            }
            return Ok(None);
        }
        // Neither a reference nor an ID: say what is wrong with the name
        // rather than that no image has it.
        match parsed {
            Err(e) => Err(StoreError::Invalid(format!(
                "{s:?} is not a valid repository/tag: {e}"
            ))),
            Ok(_) => Ok(None),
        }
    }

    pub(crate) fn image_by_manifest(&self, m: &Digest) -> Result<Option<ImageRecord>> {
        let row: Option<(String, String)> = {
            let conn = self.conn();
            let row = conn
                .prepare_cached(
                    "SELECT config_digest, layers FROM images WHERE manifest_digest = ?1",
                )?
                .query_row([m.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            row
        };
        let Some((config_digest, layers)) = row else {
            return Ok(None);
        };
        let config_digest: Digest = config_digest.parse()?;
        let config: ImageConfig = serde_json::from_slice(&self.read_blob(&config_digest)?)?;
        let layers: Vec<LayerInfo> = serde_json::from_str(&layers)?;
        Ok(Some(ImageRecord {
            manifest_digest: m.clone(),
            config_digest,
            config,
            layers,
        }))
    }

    /// All images with their references, newest first.
    pub fn list_images(&self) -> Result<Vec<ImageSummary>> {
        let conn = self.conn();
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        {
            let mut stmt =
                conn.prepare_cached("SELECT name, manifest_digest FROM refs ORDER BY name")?;
            let rows =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            for row in rows {
                let (name, m) = row?;
                refs.entry(m).or_default().push(name);
            }
        }
        let mut stmt = conn.prepare_cached("SELECT manifest_digest, config_digest, created, size FROM images ORDER BY created_ms DESC, manifest_digest")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (m, c, created, size) = row?;
            out.push(ImageSummary {
                references: refs.remove(&m).unwrap_or_default(),
                manifest_digest: m.parse()?,
                config_digest: c.parse()?,
                created,
                size: size as u64,
            });
        }
        Ok(out)
    }

    /// `docker rmi`: untags, and deletes the image when no tag is left.
    /// Returns the lines docker prints (`Untagged: ...`, `Deleted: ...`).
    /// Blobs and snapshots are reclaimed by [`Store::prune`].
    pub fn remove_image(&self, reference_or_id: &str, force: bool) -> Result<Vec<String>> {
        let manifest = self
            .resolve_manifest(reference_or_id)?
            .ok_or_else(|| StoreError::ImageNotFound(reference_or_id.to_string()))?;
        let by_tag = reference::parse(reference_or_id)
            .ok()
            .filter(|r| r.digest().is_none())
            .map(|r| r.familiar());
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let names: Vec<String> = tx
            .prepare_cached("SELECT name FROM refs WHERE manifest_digest = ?1 ORDER BY name")?
            .query_map([manifest.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let config: String = tx
            .prepare_cached("SELECT config_digest FROM images WHERE manifest_digest = ?1")?
            .query_row([manifest.as_str()], |r| r.get(0))?;
        let mut lines = Vec::new();
        if let Some(tag) = by_tag.filter(|t| names.contains(t)) {
            tx.prepare_cached("DELETE FROM refs WHERE name = ?1")?
                .execute([&tag])?;
            lines.push(format!("Untagged: {tag}"));
            if names.len() > 1 {
                tx.commit()?;
                return Ok(lines);
            }
        } else {
            if names.len() > 1 && !force {
                let id: Digest = config.parse()?;
                let short = id.short();
                return Err(StoreError::Conflict(format!(
                    "conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
                )));
            }
            for n in &names {
                tx.prepare_cached("DELETE FROM refs WHERE name = ?1")?
                    .execute([n])?;
                lines.push(format!("Untagged: {n}"));
            }
        }
        tx.prepare_cached("DELETE FROM images WHERE manifest_digest = ?1")?
            .execute([manifest.as_str()])?;
        lines.push(format!("Deleted: {config}"));
        tx.commit()?;
        Ok(lines)
    }

    /// Imports a rootfs tarball (plain/gzip/zstd) as a one-layer image and
    /// tags it. Without `config`, a linux image for the host architecture.
    pub fn import_rootfs_tar(
        &self,
        r: &mut dyn Read,
        reference: &str,
        config: Option<ImageConfig>,
    ) -> Result<ImageRecord> {
        let parsed = reference::parse(reference)?;
        let _lease = self.lease()?;
        let pending = self.new_snapshot()?;
        layer::apply_layer(
            r,
            pending.upper(),
            WhiteoutMode::Overlay,
            &self.layer_limits(),
        )?;
        let info = self.commit_snapshot(pending, &LayerOptions::default())?;
        let mut config = config.unwrap_or_else(|| ImageConfig {
            architecture: image::host_architecture().into(),
            os: "linux".into(),
            ..Default::default()
        });
        if config.history.is_empty() {
            config.history.push(image::History {
                created: config.created.clone(),
                created_by: Some("kiln import".into()),
                comment: Some("imported from a rootfs tarball".into()),
                ..Default::default()
            });
        }
        let rec = self.write_image(&config, std::slice::from_ref(&info))?;
        if parsed.digest().is_none() {
            self.tag(reference, &rec.manifest_digest)?;
        }
        Ok(rec)
    }

    /// Folds the WAL into the database file and empties it. kiln does not
    /// checkpoint when a command ends (that costs fsyncs every short
    /// command would pay); a command that has just written a lot (a build
    /// that ran steps) calls this, so that the next command, often a fully
    /// cached rebuild, starts with an empty WAL instead of paying for the
    /// checkpoint itself.
    pub fn checkpoint(&self) -> Result<()> {
        self.conn()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

/// Removes a temporary tree when dropped.
pub(crate) struct TreeGuard(pub PathBuf);
impl Drop for TreeGuard {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// A partial blob in `ingest/`, owned by this process; removed on drop
/// unless committed.
pub(crate) struct Ingest {
    pub path: PathBuf,
    pub file: File,
    done: bool,
}

impl Ingest {
    pub fn new(store: &Store) -> Result<Ingest> {
        let path = store
            .shared
            .root
            .join("ingest")
            .join(store.shared.owner.temp_name("blob"));
        let file = fs::OpenOptions::new()
            .write(true)
            .read(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(Ingest {
            path,
            file,
            done: false,
        })
    }

    /// fsyncs, makes read-only, and atomically renames into
    /// `blobs/sha256/<hex>` while holding the database write lock (so prune
    /// cannot interleave), records the blob, fsyncs the directory.
    pub fn commit(
        mut self,
        store: &Store,
        digest: &Digest,
        size: u64,
        media_type: Option<&str>,
    ) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| StoreError::io(&self.path, e))?;
        self.file
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(|e| StoreError::io(&self.path, e))?;
        let dest = store.blob_path(digest);
        let mut conn = store.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let present = fs::symlink_metadata(&dest)
            .map(|m| m.is_file() && m.len() == size)
            .unwrap_or(false);
        if present {
            // Identical content (same digest) is already there.
            let _ = fs::remove_file(&self.path);
        } else {
            fs::rename(&self.path, &dest).map_err(|e| StoreError::io(&dest, e))?;
            fsync_dir(&store.shared.root.join("blobs/sha256"))?;
        }
        self.done = true;
        let now = now_ms();
        tx.prepare_cached(
            "INSERT INTO blobs (digest, size, media_type, created_ms, used_ms) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT(digest) DO UPDATE SET used_ms = excluded.used_ms, media_type = coalesce(excluded.media_type, blobs.media_type)",
        )?
        .execute(params![digest.as_str(), size as i64, media_type, now])?;
        tx.commit()?;
        Ok(())
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn owner_of(name: &str) -> Option<&str> {
    owner::owner_of(name)
}
