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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FsckReport {
    pub blobs_checked: u64,
    /// Inconsistencies found (each one line).
    pub problems: Vec<String>,
    /// What `--repair` did about them.
    pub repaired: Vec<String>,
    /// Leftovers of dead processes swept (at open and during fsck); these
    /// are normal after a crash and not problems.
    pub swept: Vec<String>,
    /// Where a corrupt database was moved before it was rebuilt.
    pub recovered_from: Option<PathBuf>,
}

impl FsckReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
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

impl std::fmt::Display for FsckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(b) = &self.recovered_from {
            writeln!(
                f,
                "database was corrupt: moved to {} and rebuilt from the blobs",
                b.display()
            )?;
        }
        writeln!(f, "checked {} blobs", self.blobs_checked)?;
        for s in &self.swept {
            writeln!(f, "swept leftover: {s}")?;
        }
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        for r in &self.repaired {
            writeln!(f, "repaired: {r}")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problems found")
        } else if self.repaired.is_empty() {
            writeln!(
                f,
                "{} problems found (run with --repair to fix)",
                self.problems.len()
            )
        } else {
            writeln!(
                f,
                "{} problems found, {} repaired",
                self.problems.len(),
                self.repaired.len()
            )
        }
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

fn hash_file(p: &Path) -> io::Result<(Digest, u64)> {
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
        let mut doomed_blobs: Vec<String> = Vec::new();
        let mut doomed_snaps: Vec<PathBuf> = Vec::new();
        let mut doomed_snap_ids: Vec<i64> = Vec::new();
        let protect;
        {
            let mut conn = self.conn();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            protect = live_lease_start(&tx, &root.join("tmp"))?;
            // Cache records, least recently used first.
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
            if opts.dangling_images || opts.all {
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
            }
            // Mark.
            let mut reach = reachable(&tx, self)?;
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
        }
        // Files on disk that no row knows (a writer died between its rename
        // and its commit), old enough not to be a live lease's.
        let blob_dir = root.join("blobs/sha256");
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
        // Delete blob files one short transaction each: a writer that
        // re-created the blob meanwhile has re-inserted its row.
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
        for d in doomed_snaps {
            report.reclaimed_bytes += dir_size(&d);
            remove_tree(&d).map_err(|e| StoreError::io(&d, e))?;
        }
        Ok(report)
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

    /// Rehashes every blob and checks every reference; with `repair`, fixes
    /// what it can (drops corrupt blobs and whatever points at missing
    /// content, records unrecorded blobs, removes unrecorded snapshots).
    pub fn fsck(&self, repair: bool) -> Result<FsckReport> {
        let mut rep = FsckReport {
            swept: self.open_report.swept.clone(),
            recovered_from: self.open_report.recovered_from.clone(),
            ..Default::default()
        };
        // The database itself first: a damaged one is moved aside and
        // rebuilt from the blobs (with --repair).
        let damage = match crate::db::integrity(&self.conn()) {
            Ok(d) => d,
            Err(e) if crate::db::is_corruption(&e) => Some(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        if let Some(d) = damage {
            rep.problems
                .push(format!("metadata database is corrupt: {d}"));
            if !repair {
                return Ok(rep);
            }
            let backup = self.recover_db()?;
            rep.repaired.push(format!("moved the corrupt database to {} and rebuilt it from the blobs (tags and build cache are lost)", backup.display()));
            rep.recovered_from = Some(backup);
        }
        rep.swept.extend(self.sweep()?.swept);
        let root = self.shared.root.clone();
        let blob_dir = root.join("blobs/sha256");
        // Blob files.
        let mut on_disk = HashSet::new();
        for e in fs::read_dir(&blob_dir)
            .map_err(|e| StoreError::io(&blob_dir, e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::from_hex(&name) else {
                rep.problems.push(format!("stray file blobs/sha256/{name}"));
                if repair {
                    remove_tree(&e.path()).map_err(|err| StoreError::io(e.path(), err))?;
                    rep.repaired.push(format!("removed blobs/sha256/{name}"));
                }
                continue;
            };
            rep.blobs_checked += 1;
            let (actual, size) =
                hash_file(&e.path()).map_err(|err| StoreError::io(e.path(), err))?;
            if actual != d {
                rep.problems
                    .push(format!("blob {d} is corrupt (content hashes to {actual})"));
                if repair {
                    fs::remove_file(e.path()).map_err(|err| StoreError::io(e.path(), err))?;
                    self.conn()
                        .execute("DELETE FROM blobs WHERE digest = ?1", [d.as_str()])?;
                    rep.repaired.push(format!("removed corrupt blob {d}"));
                }
                continue;
            }
            on_disk.insert(d.to_string());
            let known = self
                .conn()
                .prepare_cached("SELECT size FROM blobs WHERE digest = ?1")?
                .query_row([d.as_str()], |r| r.get::<_, i64>(0))
                .optional()?;
            match known {
                Some(s) if s as u64 == size => {}
                Some(s) => {
                    rep.problems
                        .push(format!("blob {d} recorded with size {s}, is {size}"));
                    if repair {
                        self.conn().execute(
                            "UPDATE blobs SET size = ?2 WHERE digest = ?1",
                            params![d.as_str(), size as i64],
                        )?;
                        rep.repaired.push(format!("recorded size of {d}"));
                    }
                }
                None => {
                    // Not a problem for the user (prune reclaims it), but
                    // the row should exist for a committed blob.
                    if repair {
                        let now = now_ms();
                        self.conn().execute(
                            "INSERT OR IGNORE INTO blobs (digest, size, media_type, created_ms, used_ms) VALUES (?1, ?2, NULL, ?3, ?3)",
                            params![d.as_str(), size as i64, now],
                        )?;
                    }
                }
            }
        }
        let remote = self.fsck_remote(&on_disk, repair, &mut rep)?;
        let conn = self.conn();
        // Not here and not known remotely with a registry to fetch from.
        let missing = |d: &str| !on_disk.contains(d) && !remote.contains(d);
        // Blob rows without files.
        let rows: Vec<String> = conn
            .prepare("SELECT digest FROM blobs")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for d in rows.iter().filter(|d| !on_disk.contains(*d)) {
            rep.problems
                .push(format!("blob {d} is recorded but missing"));
            if repair {
                conn.execute("DELETE FROM blobs WHERE digest = ?1", [d])?;
                rep.repaired.push(format!("forgot missing blob {d}"));
            }
        }
        // Images.
        let images: Vec<(String, String, String)> = conn
            .prepare("SELECT manifest_digest, config_digest, layers FROM images")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (m, c, layers) in images {
            let layers: Vec<LayerInfo> = serde_json::from_str(&layers)?;
            let mut lost: Vec<String> = [m.clone(), c.clone()]
                .into_iter()
                .filter(|d| missing(d))
                .collect();
            lost.extend(
                layers
                    .iter()
                    .map(|l| l.digest.to_string())
                    .filter(|d| missing(d)),
            );
            if !lost.is_empty() {
                rep.problems.push(format!(
                    "image {c} (manifest {m}) lacks blobs: {}",
                    lost.join(", ")
                ));
                if repair {
                    conn.execute("DELETE FROM refs WHERE manifest_digest = ?1", [&m])?;
                    conn.execute("DELETE FROM images WHERE manifest_digest = ?1", [&m])?;
                    rep.repaired
                        .push(format!("removed broken image {c} and its tags"));
                }
            }
        }
        let refs: Vec<(String, String)> = conn
            .prepare("SELECT name, manifest_digest FROM refs WHERE manifest_digest NOT IN (SELECT manifest_digest FROM images) AND manifest_digest NOT IN (SELECT digest FROM indexes)")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (name, m) in refs {
            rep.problems
                .push(format!("tag {name} points at missing image {m}"));
            if repair {
                conn.execute("DELETE FROM refs WHERE name = ?1", [&name])?;
                rep.repaired.push(format!("removed dangling tag {name}"));
            }
        }
        // Indexes: the index blob, attestation manifests, and each image
        // entry's record.
        let entries: Vec<(String, String, Option<String>)> = conn
            .prepare("SELECT e.index_digest, e.manifest_digest, e.subject FROM index_entries e")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let indexes: Vec<String> = conn
            .prepare("SELECT digest FROM indexes")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for idx in &indexes {
            let mut lost: Vec<String> = Vec::new();
            if missing(idx) {
                lost.push(idx.clone());
            }
            for (_, m, subject) in entries.iter().filter(|(i, _, _)| i == idx) {
                let gone = match subject {
                    Some(_) => missing(m),
                    None => !conn
                        .prepare_cached("SELECT 1 FROM images WHERE manifest_digest = ?1")?
                        .exists([m])?,
                };
                if gone {
                    lost.push(m.clone());
                }
            }
            if !lost.is_empty() {
                rep.problems.push(format!(
                    "image index {idx} lacks manifests: {}",
                    lost.join(", ")
                ));
                if repair {
                    conn.execute("DELETE FROM refs WHERE manifest_digest = ?1", [idx])?;
                    conn.execute("DELETE FROM index_entries WHERE index_digest = ?1", [idx])?;
                    conn.execute("DELETE FROM indexes WHERE digest = ?1", [idx])?;
                    rep.repaired
                        .push(format!("removed broken image index {idx} and its tags"));
                }
            }
        }
        // Layers and cache records.
        let layers: Vec<String> = conn
            .prepare("SELECT digest FROM layers")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for d in layers.iter().filter(|d| missing(d)) {
            rep.problems
                .push(format!("layer {d} is recorded but its blob is missing"));
            if repair {
                conn.execute("DELETE FROM layers WHERE digest = ?1", [d])?;
                rep.repaired.push(format!("forgot layer {d}"));
            }
        }
        let cache: Vec<(String, String)> = conn
            .prepare("SELECT key, layer_digest FROM cache WHERE layer_digest IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (key, d) in cache.iter().filter(|(_, d)| missing(d)) {
            rep.problems
                .push(format!("cache record {key} holds missing layer {d}"));
            if repair {
                conn.execute("DELETE FROM cache WHERE key = ?1", [key])?;
                rep.repaired.push(format!("removed cache record {key}"));
            }
        }
        // Snapshots.
        let snaps: Vec<(i64, String)> = conn
            .prepare("SELECT id, diff_id FROM snapshots")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, diff) in snaps {
            if !self.snapshot_dir(id).is_dir() {
                rep.problems.push(format!(
                    "snapshot {id} ({diff}) is recorded but its directory is missing"
                ));
                if repair {
                    conn.execute("DELETE FROM snapshots WHERE id = ?1", [id])?;
                    rep.repaired.push(format!("forgot snapshot {id}"));
                }
            }
        }
        // Anything else in ingest/ or tmp/ belongs to a live process.
        Ok(rep)
    }

    /// Blobs known remotely, not local: those with a registry to fetch
    /// them from (returned: references to them are not missing), and
    /// those without one, which are problems (with `repair`, forgotten:
    /// what names them is then missing, and repaired as such).
    fn fsck_remote(
        &self,
        on_disk: &HashSet<String>,
        repair: bool,
        rep: &mut FsckReport,
    ) -> Result<HashSet<String>> {
        let rows: Vec<(String, i64)> = self
            .conn()
            .prepare("SELECT r.digest, (SELECT count(*) FROM registry_blobs b WHERE b.digest = r.digest) FROM remote_blobs r")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut remote = HashSet::new();
        for (d, sources) in rows {
            if on_disk.contains(&d) {
                continue;
            }
            if sources > 0 {
                remote.insert(d);
                continue;
            }
            rep.problems.push(format!(
                "blob {d} is known only remotely, but no registry is recorded for it"
            ));
            if repair {
                self.conn()
                    .execute("DELETE FROM remote_blobs WHERE digest = ?1", [&d])?;
                rep.repaired
                    .push(format!("forgot remote blob {d} (no registry has it)"));
            }
        }
        Ok(remote)
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
