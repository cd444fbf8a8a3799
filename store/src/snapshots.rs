//! Layers and their unpacked snapshots (the lower dirs of overlayfs): the
//! implementation behind [`Store::snapshots`](crate::Store::snapshots).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use crate::content::Ingest;
use crate::digest::{Digest, HashingReader};
use crate::error::{Result, StoreError};
use crate::layer::{self, LayerOptions, WhiteoutMode};
use crate::store::{fsync_dir, now_ms, remove_tree, LayerInfo, Store, TreeGuard};

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

/// The layers and snapshots view: `store.snapshots()`.
pub struct Snapshots<'a> {
    pub(crate) store: &'a Store,
}

impl Snapshots<'_> {
    pub fn create(&self) -> Result<PendingSnapshot> {
        self.store.new_snapshot()
    }

    pub fn commit(&self, p: PendingSnapshot, opts: &LayerOptions) -> Result<LayerInfo> {
        self.store.commit_snapshot(p, opts)
    }

    pub fn path(&self, diff_id: &Digest) -> Result<Option<PathBuf>> {
        self.store.snapshot_path(diff_id)
    }

    pub fn ensure(&self, layer: &LayerInfo) -> Result<PathBuf> {
        self.store.ensure_snapshot(layer)
    }

    pub fn layer_by_diff_id(&self, diff_id: &Digest) -> Result<Option<LayerInfo>> {
        self.store.layer_by_diff_id(diff_id)
    }
}

/// Writes back everything dirty on the filesystem of `dir` (`syncfs`: one
/// call for a whole tree, where an fsync per file would commit the
/// journal once per file); whether it could.
fn sync_tree(dir: &Path) -> bool {
    let Ok(f) = File::open(dir) else {
        return false;
    };
    // An empty tree (a RUN step that changed nothing) is one directory:
    // its own fsync, not a flush of the whole filesystem (everybody's
    // dirty data included).
    let empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if empty {
        return f.sync_all().is_ok();
    }
    rustix::fs::syncfs(&f).is_ok()
}

impl Store {
    /// Layers and their unpacked snapshots.
    pub fn snapshots(&self) -> Snapshots<'_> {
        Snapshots { store: self }
    }

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
    ///
    /// Durability is what it was with one flush after the other: the blob
    /// is fsynced before its row is written, the tree is on disk before it
    /// is renamed into `snapshots/` and recorded. But the writes overlap
    /// the encoding: the tree's writeback (`syncfs`) runs on a thread of
    /// its own while the layer is encoded, and the blob's writeback is
    /// started every few MiB as it is written, so the fsync at the end
    /// waits for the tail only (bench/README.md, profile 8).
    pub fn commit_snapshot(&self, p: PendingSnapshot, opts: &LayerOptions) -> Result<LayerInfo> {
        let ingest = Ingest::new(self)?;
        let (digests, tree_synced) = std::thread::scope(|s| {
            let tree = s.spawn(|| sync_tree(&p.upper));
            let encoded = (|| {
                let mut w = io::BufWriter::with_capacity(
                    256 * 1024,
                    crate::content::Writeback::new(&ingest.file),
                );
                let d = layer::write_layer(&p.upper, opts, &mut w)?;
                w.flush().map_err(|e| StoreError::io(&ingest.path, e))?;
                Ok::<_, StoreError>(d)
            })();
            let synced = tree.join().unwrap_or(false);
            encoded.map(|d| (d, synced))
        })?;
        let media_type = opts.compression.media_type();
        ingest.commit(self, &digests.digest, digests.size, Some(media_type))?;
        let info = LayerInfo {
            digest: digests.digest.clone(),
            diff_id: digests.diff_id.clone(),
            size: digests.size,
            media_type: media_type.to_string(),
        };
        self.record_layer(&info, Some(digests.uncompressed_size))?;
        self.install_snapshot(&p.upper, &info.diff_id, tree_synced)?;
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
    /// `synced`: the tree was made durable already (since it was last written).
    fn install_snapshot(&self, dir: &Path, diff_id: &Digest, synced: bool) -> Result<PathBuf> {
        // Make the tree durable before anything points at it.
        if !synced {
            sync_tree(dir);
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
        self.install_snapshot(&dir, &layer.diff_id, false)
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
}
