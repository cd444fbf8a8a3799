//! Cache mounts (`RUN --mount=type=cache`): directories a build keeps
//! between its runs, outside every layer. The store creates them (seeded
//! from a stage when asked), locks them for `sharing=locked|private`, sizes
//! them for `cache du` and prunes them under the same lease rule as
//! snapshots: a mount used since the oldest live lease began stays.
//!
//! On disk, per mount: `cachemounts/<key>/` (the files), `<key>.id` (the
//! user's id, rewritten at each use: its mtime is the last use) and
//! `<key>.lock` (held by `locked`/`private` users).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::error::{Result, StoreError};
use crate::store::Store;

/// How builds share one cache mount (BuildKit's `sharing=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    /// Every build uses the directory at once.
    Shared,
    /// One build at a time; the others wait.
    Locked,
    /// One build at a time; a build that finds it busy gets a fresh, empty
    /// directory of its own for this step.
    Private,
}

/// What fills a new cache mount (`from=`): called once, on an empty
/// directory beside the mount, before it is put in place.
pub type CacheSeed<'a> =
    &'a mut dyn FnMut(&Path) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A cache mount held for one step: its directory stays locked (for
/// `locked`/`private`) until this is dropped.
#[derive(Debug)]
pub struct CacheMount {
    path: PathBuf,
    _lock: Option<File>,
    _scratch: Option<tempfile::TempDir>,
}

impl CacheMount {
    /// The directory to bind into the container.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One line of `cache du`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMountInfo {
    /// The id the Dockerfile gave (`id=`, else the target).
    pub id: String,
    /// Bytes on disk.
    pub size: u64,
}

/// What pruning did with one cache mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMountPruned {
    pub id: String,
    pub size: u64,
    /// False when a running build holds it (locked, or used under a live
    /// lease): it was kept.
    pub removed: bool,
}

/// The store's cache mounts: `store.cache().mounts()`.
pub struct CacheMounts<'a> {
    pub(crate) store: &'a Store,
}

fn dir_name(key: &str) -> String {
    blake3::hash(key.as_bytes()).to_hex().as_str()[..32].to_string()
}

fn lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| StoreError::io(path, e))
}

impl CacheMounts<'_> {
    fn dir(&self) -> PathBuf {
        self.store.root().join("cachemounts")
    }

    /// Takes the cache mount `key` (which names it: the id, and for a
    /// seeded mount its source too) for one step. `id` is what `cache du`
    /// shows. A new mount is filled by `seed` first, beside it and renamed
    /// in, so a concurrent build sees a whole seed or none.
    pub fn acquire(
        &self,
        key: &str,
        id: &str,
        sharing: CacheSharing,
        seed: Option<CacheSeed<'_>>,
    ) -> Result<CacheMount> {
        let base = self.dir();
        fs::create_dir_all(&base).map_err(|e| StoreError::io(&base, e))?;
        let dir = base.join(dir_name(key));
        match seed {
            Some(fill) if !dir.exists() => {
                let tmp = self.store.tempdir("cache-seed")?;
                fill(tmp.path())
                    .map_err(|e| StoreError::Invalid(format!("seeding cache mount {id}: {e}")))?;
                let filled = tmp.keep();
                if fs::rename(&filled, &dir).is_err() {
                    // Another build seeded it first.
                    let _ = fs::remove_dir_all(&filled);
                }
            }
            _ => fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?,
        }
        // The last use, which prune compares with the live leases: set from
        // the clock leases read, not left to the filesystem's coarser one
        // (which can lag it by a tick and date a use before its lease).
        let id_file = dir.with_extension("id");
        fs::write(&id_file, id)
            .and_then(|()| File::options().write(true).open(&id_file))
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(|e| StoreError::io(&id_file, e))?;
        if sharing == CacheSharing::Shared {
            return Ok(CacheMount {
                path: dir,
                _lock: None,
                _scratch: None,
            });
        }
        let lock_path = dir.with_extension("lock");
        let lf = lock_file(&lock_path)?;
        let op = match sharing {
            CacheSharing::Locked => FlockOperation::LockExclusive,
            _ => FlockOperation::NonBlockingLockExclusive,
        };
        match rustix::fs::flock(&lf, op) {
            Ok(()) => Ok(CacheMount {
                path: dir,
                _lock: Some(lf),
                _scratch: None,
            }),
            Err(e) if sharing == CacheSharing::Private && e == rustix::io::Errno::WOULDBLOCK => {
                let tmp = self.store.tempdir("cache-private")?;
                Ok(CacheMount {
                    path: tmp.path().to_path_buf(),
                    _lock: None,
                    _scratch: Some(tmp),
                })
            }
            Err(e) => Err(StoreError::io(&lock_path, io::Error::from(e))),
        }
    }

    /// Every cache mount with its size, sorted by id.
    pub fn list(&self) -> Result<Vec<CacheMountInfo>> {
        Ok(self
            .entries()?
            .into_iter()
            .map(|(id, _, size)| CacheMountInfo { id, size })
            .collect())
    }

    /// (id, dir, size) of each mount.
    fn entries(&self) -> Result<Vec<(String, PathBuf, u64)>> {
        let base = self.dir();
        let rd = match fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&base, e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if !p.is_dir() {
                continue;
            }
            let id = fs::read_to_string(p.with_extension("id")).unwrap_or_else(|_| "?".into());
            let size = crate::gc::dir_size(&p);
            out.push((id, p, size));
        }
        out.sort();
        Ok(out)
    }

    /// Empties the store of cache mounts, keeping those a running build
    /// holds: locked ones, and those used since the oldest live lease began
    /// (a build takes its lease before its first step).
    pub fn prune(&self) -> Result<Vec<CacheMountPruned>> {
        let protect = self.store.oldest_live_lease()?;
        let mut out = Vec::new();
        for (id, dir, size) in self.entries()? {
            let used_ms = fs::metadata(dir.with_extension("id"))
                .map(|m| m.mtime() * 1000 + m.mtime_nsec() / 1_000_000)
                .unwrap_or(0);
            let lock = dir.with_extension("lock");
            let locked = match File::open(&lock) {
                Ok(f) => rustix::fs::flock(&f, FlockOperation::NonBlockingLockExclusive)
                    .map(|()| Some(f))
                    .unwrap_or(None),
                Err(_) => None,
            };
            let busy = used_ms >= protect || (lock.exists() && locked.is_none());
            if busy {
                out.push(CacheMountPruned {
                    id,
                    size,
                    removed: false,
                });
                continue;
            }
            // Out of the way first: a build arriving now makes a new one.
            let doomed = self.store.tmp_path("gc");
            fs::rename(&dir, &doomed).map_err(|e| StoreError::io(&dir, e))?;
            let _ = fs::remove_file(dir.with_extension("id"));
            crate::store::remove_tree(&doomed).map_err(|e| StoreError::io(&doomed, e))?;
            drop(locked);
            out.push(CacheMountPruned {
                id,
                size,
                removed: true,
            });
        }
        Ok(out)
    }
}
