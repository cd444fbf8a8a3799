//! Housekeeping: leases, sweeping of dead processes' leftovers, prune, df,
//! fsck and the rebuild of a corrupt database from the blobs.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::digest::{Digest, Hasher};
use crate::error::{Result, StoreError};
use crate::image::{ImageConfig, Manifest};
use crate::owner::{Liveness, LOCK_SUFFIX};
use crate::store::{now_ms, now_secs, owner_of, remove_tree, LayerInfo, Shared, Store};

/// Held by a running build: while any live lease exists, prune keeps
/// everything created or used after the oldest live lease began. Released
/// on drop; leases of dead processes are ignored (and removed by prune).
pub struct Lease {
    shared: Arc<Shared>,
    id: String,
    created_ms: i64,
}

impl Lease {
    pub fn id(&self) -> &str {
        &self.id
    }
    /// When the lease began (unix milliseconds).
    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("id", &self.id).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let conn = self.shared.db.lock().unwrap_or_else(|p| p.into_inner());
        // Best effort: a lease left behind belongs to this process and is
        // ignored once the process is gone.
        let _ = conn.execute("DELETE FROM leases WHERE id = ?1", [&self.id]);
    }
}

/// What [`Store::prune`] removes besides unreferenced content (which it
/// always removes). The default is `docker system prune`'s: dangling
/// (untagged) images go, build cache stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneOptions {
    /// `system prune -a`: also every build cache record (implies
    /// `cache_all` and `dangling_images`).
    pub all: bool,
    /// Remove every build cache record.
    pub cache_all: bool,
    /// Remove least recently used cache records until the layers they hold
    /// take at most this many bytes.
    pub keep_storage: Option<u64>,
    /// Remove cache records not used for this long.
    pub cache_unused_for: Option<Duration>,
    /// Remove images that have no tag.
    pub dangling_images: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            all: false,
            cache_all: false,
            keep_storage: None,
            cache_unused_for: None,
            dangling_images: true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub cache_records: u64,
    /// Image IDs (config digests) of removed images.
    pub images: Vec<String>,
    pub layers: u64,
    pub blobs: u64,
    pub snapshots: u64,
    /// Bytes of blobs and snapshots removed.
    pub reclaimed_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub images: u64,
    /// Bytes of blobs reachable from images.
    pub images_size: u64,
    pub cache_records: u64,
    /// Bytes of blobs reachable from cache records but from no image.
    pub cache_size: u64,
    pub snapshots: u64,
    pub snapshots_size: u64,
    pub blobs: u64,
    pub blobs_size: u64,
    pub containers_size: u64,
    /// Bytes of blobs reachable from nothing (what prune frees).
    pub reclaimable: u64,
    /// Blobs known remotely, not local (a lazily imported cache, a base
    /// resolved without its layers): fetched when something reads them.
    pub remote_blobs: u64,
    pub remote_size: u64,
}

fn human(n: u64) -> String {
    // Docker's units: decimal, three significant digits.
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n}B")
    } else {
        format!("{:.3}", v)
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + units[i]
    }
}

impl std::fmt::Display for PruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.images.is_empty() {
            writeln!(f, "Deleted Images:")?;
            for i in &self.images {
                writeln!(f, "deleted: {i}")?;
            }
            writeln!(f)?;
        }
        if self.cache_records > 0 {
            writeln!(f, "Deleted build cache records: {}", self.cache_records)?;
        }
        if self.layers + self.blobs + self.snapshots > 0 {
            writeln!(
                f,
                "Deleted {} layers, {} blobs, {} snapshots",
                self.layers, self.blobs, self.snapshots
            )?;
        }
        writeln!(f, "Total reclaimed space: {}", human(self.reclaimed_bytes))
    }
}

impl std::fmt::Display for DiskUsage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rows = [
            (
                "Images",
                self.images.to_string(),
                human(self.images_size),
                human(self.reclaimable),
            ),
            (
                "Build Cache",
                self.cache_records.to_string(),
                human(self.cache_size),
                human(self.cache_size),
            ),
            (
                "Snapshots",
                self.snapshots.to_string(),
                human(self.snapshots_size),
                "-".to_string(),
            ),
            (
                "Containers",
                "-".to_string(),
                human(self.containers_size),
                "-".to_string(),
            ),
        ];
        writeln!(f, "TYPE          TOTAL   SIZE      RECLAIMABLE")?;
        for (kind, total, size, reclaimable) in rows {
            writeln!(f, "{kind:<14}{total:<8}{size:<10}{reclaimable}")?;
        }
        if self.remote_blobs > 0 {
            let (n, size) = (self.remote_blobs.to_string(), human(self.remote_size));
            writeln!(
                f,
                "{:<14}{n:<8}{size:<10}- (in a registry, not stored here: fetched when needed)",
                "Remote layers"
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct SweepReport {
    pub swept: Vec<String>,
    pub recovered_from: Option<PathBuf>,
}

impl SweepReport {
    pub fn merge(&mut self, other: SweepReport) {
        self.swept.extend(other.swept);
        if other.recovered_from.is_some() {
            self.recovered_from = other.recovered_from;
        }
    }
}

/// Moves a corrupt `kiln.db` (and its WAL/SHM) aside; returns the backup.
pub(crate) fn backup_corrupt_db(root: &Path) -> Result<PathBuf> {
    let stamp = now_ms();
    let backup = root.join(format!("kiln.db.corrupt-{stamp}"));
    for suffix in ["", "-wal", "-shm"] {
        let from = root.join(format!("kiln.db{suffix}"));
        let to = root.join(format!("kiln.db.corrupt-{stamp}{suffix}"));
        match fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&from, e)),
        }
    }
    Ok(backup)
}

/// Bytes on disk under `p` (not following symlinks; a hard-linked file
/// counted once).
pub(crate) fn dir_size(p: &Path) -> u64 {
    let mut seen = HashSet::new();
    walkdir::WalkDir::new(p)
        .min_depth(1)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_dir() || m.nlink() == 1 || seen.insert((m.dev(), m.ino())))
        .map(|m| m.blocks() * 512)
        .sum()
}

pub(crate) fn hash_file(p: &Path) -> io::Result<(Digest, u64)> {
    let mut f = fs::File::open(p)?;
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let n = h.len();
    Ok((h.finish(), n))
}

struct Reach {
    blobs: HashSet<String>,
    diffs: HashSet<String>,
    image_blobs: HashSet<String>,
}

fn reachable(tx: &rusqlite::Connection, store: &Store) -> Result<Reach> {
    let mut r = Reach {
        blobs: HashSet::new(),
        diffs: HashSet::new(),
        image_blobs: HashSet::new(),
    };
    let mut stmt =
        tx.prepare_cached("SELECT manifest_digest, config_digest, layers FROM images")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (m, c, layers) = row?;
        let layers: Vec<LayerInfo> = serde_json::from_str(&layers)?;
        r.image_blobs.insert(m.clone());
        r.image_blobs.insert(c.clone());
        r.blobs.insert(m);
        r.blobs.insert(c);
        for l in layers {
            r.image_blobs.insert(l.digest.to_string());
            r.blobs.insert(l.digest.to_string());
            r.diffs.insert(l.diff_id.to_string());
        }
    }
    // Indexes: the index blob, and attestation manifests with their config
    // and statements (image entries are rows of `images`, reached above).
    let mut stmt = tx.prepare_cached("SELECT digest FROM indexes")?;
    let indexes: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for d in indexes {
        r.blobs.insert(d.clone());
        r.image_blobs.insert(d);
    }
    let mut stmt =
        tx.prepare_cached("SELECT manifest_digest FROM index_entries WHERE subject IS NOT NULL")?;
    let attestations: Vec<String> = stmt
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    for m in attestations {
        let m: Digest = m.parse()?;
        // A missing or unreadable manifest keeps only itself (fsck says so).
        let bytes = fs::read(store.blob_path(&m)).unwrap_or_default();
        for b in crate::indexes::attestation_blobs(&bytes, &m) {
            r.blobs.insert(b.clone());
            r.image_blobs.insert(b);
        }
    }
    let mut stmt = tx.prepare_cached("SELECT layer FROM cache WHERE layer IS NOT NULL")?;
    let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
    for row in rows {
        let l: LayerInfo = serde_json::from_str(&row?)?;
        r.blobs.insert(l.digest.to_string());
        r.diffs.insert(l.diff_id.to_string());
    }
    Ok(r)
}

/// When the oldest live lease began (`i64::MAX` without one); leases of
/// dead processes are deleted on the way.
fn live_lease_start(tx: &rusqlite::Connection, tmp: &Path) -> Result<i64> {
    let leases: Vec<(String, String, i64)> = tx
        .prepare_cached("SELECT id, owner, created_ms FROM leases")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut live = Liveness::default();
    let mut oldest = i64::MAX;
    for (id, owner, created) in leases {
        if live.alive(tmp, &owner) {
            oldest = oldest.min(created);
        } else {
            tx.prepare_cached("DELETE FROM leases WHERE id = ?1")?
                .execute([id])?;
        }
    }
    Ok(oldest)
}

impl Store {
    /// When the oldest live lease began (unix ms; `i64::MAX` when no build
    /// holds one): what was used since then is a running build's.
    pub(crate) fn oldest_live_lease(&self) -> Result<i64> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let oldest = live_lease_start(&tx, &self.shared.root.join("tmp"))?;
        tx.commit()?;
        Ok(oldest)
    }

    /// Takes a lease for a build (see [`Lease`]).
    pub fn lease(&self) -> Result<Lease> {
        let id = self.shared.owner.temp_name("lease");
        let created_ms = now_ms();
        let conn = self.conn();
        conn.prepare_cached("INSERT INTO leases (id, owner, created_ms) VALUES (?1, ?2, ?3)")?
            .execute(params![id, self.shared.owner.id, created_ms])?;
        Ok(Lease {
            shared: self.shared.clone(),
            id,
            created_ms,
        })
    }

    /// Removes leftovers of dead processes from `ingest/` and `tmp/`, and
    /// snapshot dirs that were never recorded.
    pub(crate) fn sweep(&self) -> Result<SweepReport> {
        let root = &self.shared.root;
        let tmp = root.join("tmp");
        let mut report = SweepReport::default();
        let mut live = Liveness::default();
        for sub in ["ingest", "tmp"] {
            let dir = root.join(sub);
            let rd = fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(LOCK_SUFFIX) {
                    continue;
                }
                if let Some(id) = owner_of(&name) {
                    if !live.alive(&tmp, id) {
                        remove_tree(&e.path()).map_err(|err| StoreError::io(e.path(), err))?;
                        report.swept.push(format!("{sub}/{name}"));
                    }
                }
            }
        }
        // Lock files of dead owners (their entries are gone now).
        let rd = fs::read_dir(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(LOCK_SUFFIX).and_then(owner_of_lock) {
                live.alive(&tmp, id);
            }
        }
        live.remove_dead_locks();
        // Snapshot dirs without a row: a process died between rename and
        // commit, or prune died before removing a deleted snapshot. Checked
        // under the write lock, which every snapshot install holds across
        // its rename and commit.
        let mut doomed = Vec::new();
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let snaps = root.join("snapshots");
            let rd = fs::read_dir(&snaps).map_err(|e| StoreError::io(&snaps, e))?;
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let known = match name.parse::<i64>() {
                    Ok(id) => tx
                        .prepare_cached("SELECT 1 FROM snapshots WHERE id = ?1")?
                        .query_row([id], |_| Ok(()))
                        .optional()?
                        .is_some(),
                    Err(_) => false,
                };
                if !known {
                    let to = self.tmp_path("gc");
                    fs::rename(e.path(), &to).map_err(|err| StoreError::io(e.path(), err))?;
                    doomed.push(to);
                    report.swept.push(format!("snapshots/{name}"));
                }
            }
            tx.commit()?;
        }
        for d in doomed {
            remove_tree(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        Ok(report)
    }

    /// Removes unreferenced blobs, layers and snapshots, plus the cache
    /// records and dangling images `opts` asks for. Never touches anything
    /// created or used after the start of the oldest live lease.
    pub fn prune(&self, opts: &PruneOptions) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let root = self.shared.root.clone();
        let mut doomed_snaps: Vec<PathBuf> = Vec::new();
        // The rows go in one transaction; the files after its commit (the
        // connection is released first: the file phases take it again).
        let (protect, mut doomed_blobs) = {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let protect = live_lease_start(&tx, &root.join("tmp"))?;
            prune_cache_records(&tx, opts, protect, &mut report)?;
            if opts.dangling_images || opts.all {
                prune_dangling_images(&tx, protect, &mut report)?;
            }
            let (doomed_blobs, doomed_snap_ids) =
                prune_unreachable_rows(&tx, self, protect, &mut report)?;
            // Where registries hold a blob is a hint for pushes (mounts)
            // and where a remote blob is fetched from: it goes with the blob.
            tx.execute(
                "DELETE FROM registry_blobs WHERE digest NOT IN (SELECT digest FROM blobs) AND digest NOT IN (SELECT digest FROM remote_blobs)",
                [],
            )?;
            tx.commit()?;
            for id in doomed_snap_ids {
                let from = self.snapshot_dir(id);
                let to = self.tmp_path("gc");
                match fs::rename(&from, &to) {
                    Ok(()) => doomed_snaps.push(to),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StoreError::io(&from, e)),
                }
            }
            (protect, doomed_blobs)
        };
        self.unrecorded_blob_files(protect, &mut doomed_blobs)?;
        self.remove_blob_files(doomed_blobs, &mut report)?;
        for d in doomed_snaps {
            report.reclaimed_bytes += dir_size(&d);
            remove_tree(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        Ok(report)
    }

    /// Blob files on disk that no row knows (a writer died between its
    /// rename and its commit), old enough not to be a live lease's.
    fn unrecorded_blob_files(&self, protect: i64, doomed_blobs: &mut Vec<String>) -> Result<()> {
        let blob_dir = self.shared.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir)
            .map_err(|e| StoreError::io(&blob_dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(&name) else {
                continue;
            };
            let mtime_ms = e.metadata().map(|m| m.mtime() * 1000).unwrap_or(i64::MAX);
            if mtime_ms < protect && !doomed_blobs.contains(&d.to_string()) {
                let known = self
                    .conn()
                    .prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?
                    .query_row([d.as_str()], |_| Ok(()))
                    .optional()?
                    .is_some();
                if !known {
                    doomed_blobs.push(d.to_string());
                }
            }
        }
        Ok(())
    }

    /// Deletes blob files one short transaction each: a writer that
    /// re-created the blob meanwhile has re-inserted its row.
    fn remove_blob_files(&self, doomed_blobs: Vec<String>, report: &mut PruneReport) -> Result<()> {
        for digest in doomed_blobs {
            let d: Digest = digest.parse()?;
            let p = self.blob_path(&d);
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let back = tx
                .prepare_cached("SELECT 1 FROM blobs WHERE digest = ?1")?
                .query_row([d.as_str()], |_| Ok(()))
                .optional()?
                .is_some();
            if !back {
                if let Ok(m) = fs::symlink_metadata(&p) {
                    match fs::remove_file(&p) {
                        Ok(()) => {
                            report.blobs += 1;
                            report.reclaimed_bytes += m.len();
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(StoreError::io(&p, e)),
                    }
                }
            }
            tx.commit()?;
        }
        Ok(())
    }

    /// Space used, by category.
    pub fn df(&self) -> Result<DiskUsage> {
        let mut du = DiskUsage::default();
        let root = self.shared.root.clone();
        let (reach, blobs, snaps) = {
            let conn = self.conn();
            du.images =
                conn.query_row("SELECT count(*) FROM images", [], |r| r.get::<_, i64>(0))? as u64;
            du.cache_records =
                conn.query_row("SELECT count(*) FROM cache", [], |r| r.get::<_, i64>(0))? as u64;
            let reach = reachable(&conn, self)?;
            let blobs: Vec<(String, i64)> = conn
                .prepare("SELECT digest, size FROM blobs")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let snaps: Vec<i64> = conn
                .prepare("SELECT id FROM snapshots")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            (reach, blobs, snaps)
        };
        for (d, size) in blobs {
            let size = size as u64;
            du.blobs += 1;
            du.blobs_size += size;
            if reach.image_blobs.contains(&d) {
                du.images_size += size;
            } else if reach.blobs.contains(&d) {
                du.cache_size += size;
            } else {
                du.reclaimable += size;
            }
        }
        du.snapshots = snaps.len() as u64;
        for id in snaps {
            du.snapshots_size += dir_size(&self.snapshot_dir(id));
        }
        du.containers_size = dir_size(&root.join("containers"));
        (du.remote_blobs, du.remote_size) = self.remote_usage()?;
        Ok(du)
    }

    /// Replaces a corrupt database under a live store: closes it, moves it
    /// aside, opens a fresh one and rebuilds it from the blobs.
    pub(crate) fn recover_db(&self) -> Result<PathBuf> {
        let root = self.shared.root.clone();
        let backup = {
            let mut conn = self.conn();
            let placeholder = rusqlite::Connection::open_in_memory()?;
            let old = std::mem::replace(&mut *conn, placeholder);
            // Closing can only fail by handing the connection back; it is
            // dropped (closed) either way.
            let _ = old.close();
            let backup = backup_corrupt_db(&root)?;
            *conn = crate::db::open(&root.join("kiln.db"))?;
            backup
        };
        self.rebuild_from_blobs()?;
        Ok(backup)
    }

    /// After a corrupt database was moved aside: re-record every blob, and
    /// every image whose manifest and config are still present. Tags, cache
    /// records and the stat cache cannot be recovered; snapshots are
    /// unpacked again on demand (the unrecorded dirs are swept).
    pub(crate) fn rebuild_from_blobs(&self) -> Result<()> {
        let blob_dir = self.shared.root.join("blobs/sha256");
        let mut manifests = Vec::new();
        let now = now_ms();
        for e in fs::read_dir(&blob_dir)
            .map_err(|e| StoreError::io(&blob_dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(&name) else {
                continue;
            };
            let Ok((actual, size)) = hash_file(&e.path()) else {
                continue;
            };
            if actual != d {
                continue;
            }
            self.conn().execute(
                "INSERT OR IGNORE INTO blobs (digest, size, media_type, created_ms, used_ms) VALUES (?1, ?2, NULL, ?3, ?3)",
                params![d.as_str(), size as i64, now],
            )?;
            if size < 4 << 20 {
                if let Ok(bytes) = fs::read(e.path()) {
                    if let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) {
                        if m.schema_version == 2 {
                            manifests.push((d, m));
                        }
                    }
                }
            }
        }
        for (d, m) in manifests {
            let Ok(cfg_bytes) = self.read_blob(&m.config.digest) else {
                continue;
            };
            let Ok(cfg) = serde_json::from_slice::<ImageConfig>(&cfg_bytes) else {
                continue;
            };
            let Some(layers) = m.layer_infos(&cfg) else {
                continue;
            };
            if layers.iter().any(|l| !self.has_blob(&l.digest)) {
                continue;
            }
            for l in &layers {
                self.record_layer(l, None)?;
            }
            let size: u64 = layers.iter().map(|l| l.size).sum();
            self.conn().execute(
                "INSERT OR IGNORE INTO images (manifest_digest, config_digest, created, size, layers, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![d.as_str(), m.config.digest.as_str(), cfg.created, size as i64, serde_json::to_string(&layers)?, now],
            )?;
        }
        Ok(())
    }
}

/// Drops the cache records `opts` asks for, least recently used first;
/// never one used after `protect` (a live build's lease).
fn prune_cache_records(
    tx: &rusqlite::Transaction,
    opts: &PruneOptions,
    protect: i64,
    report: &mut PruneReport,
) -> Result<()> {
    let recs: Vec<(String, i64, i64, i64)> = tx
        .prepare_cached("SELECT c.key, c.last_used, c.used_ms, coalesce(l.size, 0) FROM cache c LEFT JOIN layers l ON l.digest = c.layer_digest ORDER BY c.last_used, c.key")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut total: u64 = recs.iter().map(|r| r.3 as u64).sum();
    let now = now_secs();
    for (key, last_used, used_ms, size) in recs {
        if used_ms >= protect {
            continue;
        }
        let doomed = opts.cache_all
            || opts.all
            || opts
                .cache_unused_for
                .map(|d| last_used < now - d.as_secs() as i64)
                .unwrap_or(false)
            || opts.keep_storage.map(|k| total > k).unwrap_or(false);
        if doomed {
            tx.prepare_cached("DELETE FROM cache WHERE key = ?1")?
                .execute([key])?;
            total = total.saturating_sub(size as u64);
            report.cache_records += 1;
        }
    }
    Ok(())
}

/// Untagged indexes, then images no tag or index holds.
fn prune_dangling_images(
    tx: &rusqlite::Transaction,
    protect: i64,
    report: &mut PruneReport,
) -> Result<()> {
    // An untagged index goes first; its images are then dangling
    // unless another index or a tag holds them.
    let indexes: Vec<String> = tx
        .prepare_cached("SELECT digest FROM indexes WHERE created_ms < ?1 AND digest NOT IN (SELECT manifest_digest FROM refs)")?
        .query_map([protect], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for d in indexes {
        tx.prepare_cached("DELETE FROM index_entries WHERE index_digest = ?1")?
            .execute([&d])?;
        tx.prepare_cached("DELETE FROM indexes WHERE digest = ?1")?
            .execute([&d])?;
        report.images.push(d);
    }
    let dangling: Vec<(String, String)> = tx
        .prepare_cached("SELECT manifest_digest, config_digest FROM images WHERE created_ms < ?1 AND manifest_digest NOT IN (SELECT manifest_digest FROM refs) AND manifest_digest NOT IN (SELECT manifest_digest FROM index_entries)")?
        .query_map([protect], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (m, c) in dangling {
        tx.prepare_cached("DELETE FROM images WHERE manifest_digest = ?1")?
            .execute([m])?;
        report.images.push(c);
    }
    Ok(())
}

/// Mark, then sweep the rows of layers, snapshots and blobs nothing
/// reaches; returns the blobs and snapshot ids whose files must go after
/// the commit.
fn prune_unreachable_rows(
    tx: &rusqlite::Transaction,
    store: &Store,
    protect: i64,
    report: &mut PruneReport,
) -> Result<(Vec<String>, Vec<i64>)> {
    let mut doomed_blobs = Vec::new();
    let mut doomed_snap_ids = Vec::new();
    // Mark.
    let mut reach = reachable(tx, store)?;
    // Sweep layer rows, then keep what the remaining ones hold.
    let layers: Vec<(String, String, i64)> = tx
        .prepare_cached("SELECT digest, diff_id, created_ms FROM layers")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (digest, diff_id, created) in layers {
        if !reach.blobs.contains(&digest) && created < protect {
            tx.prepare_cached("DELETE FROM layer_scans WHERE digest = ?1")?
                .execute([&digest])?;
            tx.prepare_cached("DELETE FROM layers WHERE digest = ?1")?
                .execute([digest])?;
            report.layers += 1;
        } else {
            reach.blobs.insert(digest);
            reach.diffs.insert(diff_id);
        }
    }
    let snaps: Vec<(i64, String, i64)> = tx
        .prepare_cached("SELECT id, diff_id, used_ms FROM snapshots")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (id, diff_id, used) in snaps {
        if !reach.diffs.contains(&diff_id) && used < protect {
            tx.prepare_cached("DELETE FROM snapshots WHERE id = ?1")?
                .execute([id])?;
            // The directory goes only after the commit: killed
            // before it, the row is back and so is the directory;
            // killed after, the sweep removes an unrecorded
            // directory. (Ids are AUTOINCREMENT: never reused.)
            doomed_snap_ids.push(id);
            report.snapshots += 1;
        }
    }
    let blobs: Vec<(String, i64)> = tx
        .prepare_cached("SELECT digest, used_ms FROM blobs")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (digest, used) in blobs {
        if !reach.blobs.contains(&digest) && used < protect {
            tx.prepare_cached("DELETE FROM blobs WHERE digest = ?1")?
                .execute([&digest])?;
            doomed_blobs.push(digest);
        }
    }
    // Blobs known remotely that nothing names any more.
    let remote: Vec<(String, i64)> = tx
        .prepare_cached("SELECT digest, created_ms FROM remote_blobs")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (digest, created) in remote {
        if !reach.blobs.contains(&digest) && created < protect {
            tx.prepare_cached("DELETE FROM remote_blobs WHERE digest = ?1")?
                .execute([&digest])?;
        }
    }
    Ok((doomed_blobs, doomed_snap_ids))
}

fn owner_of_lock(id: &str) -> Option<&str> {
    (id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_like_docker() {
        assert_eq!(human(512), "512B");
        assert_eq!(human(52_300_000), "52.3MB");
        assert_eq!(human(1_000), "1kB");
        assert_eq!(human(1_234_567_890), "1.235GB");
    }
}
