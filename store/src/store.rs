//! The [`Store`]: blobs, layers, snapshots, images, refs, build cache and the
//! context stat cache under one root, shared safely by several processes.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use crate::db;
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::image::ImageConfig;
use crate::layer::Limits;
use crate::owner::{self, Owner};

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
    /// For an image index: the platforms of its images (`linux/amd64`,
    /// `linux/arm64/v8`); empty for a single image.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<String>,
}

/// Output formats of [`Store::save`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// What `docker save` writes and `docker load` reads.
    Docker,
    /// An OCI image layout in a tar.
    Oci,
}

pub(crate) struct Shared {
    pub(crate) root: PathBuf,
    pub(crate) db: Mutex<Connection>,
    pub(crate) owner: Owner,
    /// Bounds on what unpacking one layer may do (decompression bombs).
    pub(crate) limits: std::sync::RwLock<Limits>,
    pub(crate) stats: Arc<crate::cache::Counters>,
    /// Fetches a blob known remotely, not local (see `remote.rs`).
    pub(crate) fetcher: std::sync::RwLock<Option<crate::remote::RemoteFetcher>>,
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

/// Marks `dir` as the top of separate directory trees for ext2/3/4's
/// Orlov allocator (`chattr +T`, `FS_TOPDIR_FL`): each snapshot or
/// container tree made in it then starts in a block group of its own
/// instead of the group of the store's root. That matters on ext4 without
/// a journal, where a new inode skips, one by one, every inode of its group
/// freed in the last 30 seconds (the kernel's `recently_deleted`): after a
/// prune or a deleted root freed thousands of inodes there, each file of
/// the next snapshot paid for all of them (half of a cold 2,000-file COPY,
/// bench/README.md profile 8). Best effort: other filesystems refuse or
/// ignore the flag, and nothing depends on it.
fn spread_subtrees(dir: &Path) {
    use rustix::fs::{IFlags, Mode, OFlags};
    let Ok(fd) = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if let Ok(flags) = rustix::fs::ioctl_getflags(&fd) {
        if !flags.contains(IFlags::TOPDIR) {
            let _ = rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR);
        }
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
        spread_subtrees(&tmp);
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
            fetcher: Default::default(),
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
    /// (`~/.local/share/kiln`), also for rootless kiln, which is root only
    /// of a user namespace of its own.
    pub fn default_root() -> PathBuf {
        if let Some(r) = std::env::var_os("KILN_ROOT").filter(|v| !v.is_empty()) {
            return PathBuf::from(r);
        }
        if crate::userns::UserNs::is_real_root() {
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

pub(crate) fn owner_of(name: &str) -> Option<&str> {
    owner::owner_of(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_dir_spreads_its_trees_where_the_filesystem_can() {
        let dir = tempfile::tempdir().unwrap();
        // Whether this filesystem takes the flag at all (ext2/3/4 do).
        let probe = dir.path().join("probe");
        fs::create_dir(&probe).unwrap();
        spread_subtrees(&probe);
        let flags = |p: &Path| {
            let f = File::open(p).unwrap();
            rustix::fs::ioctl_getflags(&f).map(|fl| fl.contains(rustix::fs::IFlags::TOPDIR))
        };
        let supported = flags(&probe).unwrap_or(false);
        let store = Store::open(&dir.path().join("root")).unwrap();
        assert_eq!(flags(&store.scratch_dir()).unwrap_or(false), supported);
        // Opening again keeps it (and does not fail on a marked dir).
        drop(store);
        let store = Store::open(&dir.path().join("root")).unwrap();
        assert_eq!(flags(&store.scratch_dir()).unwrap_or(false), supported);
    }
}
