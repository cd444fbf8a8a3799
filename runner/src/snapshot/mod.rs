//! How a container's root is made from its lower dirs: an overlay mount
//! (the default and the fast way), or, where the kernel refuses overlayfs
//! (a store on overlayfs itself, as in a container's own root; some
//! filesystems and kernels in a user namespace), a copy. BuildKit calls
//! these the `overlayfs` and `native` snapshotters; buildah/podman's
//! `vfs` driver is the copy too.
//!
//! A copied root is made by the caller before the helper starts: the
//! merged view of the lowers is copied into `work/root` ([`merge`]), the
//! mount points the image lacks are made in it and remembered, and the
//! tree is indexed ([`index`]). The container gets it bind-mounted as its
//! root. After the container exits, the changes are written into the upper
//! dir in overlay's format ([`diff`]) and the copy is removed: for the
//! layer writer the upper dir is the same as an overlay's.

mod diff;
mod fsops;

pub(crate) use fsops::{copy_file, open_dir};
pub(crate) use index::original_file_limit;
mod index;
mod merge;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

/// Which way containers get their root (`KILN_SNAPSHOTTER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Snapshotter {
    /// overlayfs; copies once the kernel refused it (said once, with why).
    #[default]
    Auto,
    /// overlayfs only: a refusal is an error.
    Overlayfs,
    /// Copies only (slower: every container copies its image).
    Native,
}

impl Snapshotter {
    /// From `KILN_SNAPSHOTTER` (unset or empty: [`Snapshotter::Auto`]).
    pub fn from_env() -> Result<Snapshotter, String> {
        match std::env::var("KILN_SNAPSHOTTER")
            .unwrap_or_default()
            .as_str()
        {
            "" | "auto" => Ok(Snapshotter::Auto),
            "overlayfs" | "overlay" => Ok(Snapshotter::Overlayfs),
            "native" | "copy" => Ok(Snapshotter::Native),
            other => Err(format!(
                "KILN_SNAPSHOTTER={other:?}: expected auto, overlayfs or native"
            )),
        }
    }

    /// Whether the next container gets a copied root.
    pub(crate) fn copies(self) -> bool {
        match self {
            Snapshotter::Auto => FALLBACK.get().is_some(),
            Snapshotter::Overlayfs => false,
            Snapshotter::Native => true,
        }
    }
}

/// Why this process stopped mounting overlays, once it did.
static FALLBACK: OnceLock<String> = OnceLock::new();
static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn record_fallback(reason: &str) {
    let _ = FALLBACK.set(reason.to_string());
}

/// The first time it is asked after overlayfs was refused: the warning to
/// show (what was refused, and that copies are used from now on).
pub fn take_fallback_warning() -> Option<String> {
    let reason = FALLBACK.get()?;
    if WARNED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return None;
    }
    Some(format!(
        "overlayfs was refused ({reason}); containers get copied snapshots instead \
         (KILN_SNAPSHOTTER=native, slower: each RUN step copies its image); \
         put the store on a filesystem that can hold an overlay upper dir (a volume, \
         ext4, xfs) to get overlayfs back"
    ))
}

/// The error for a refused overlay when only overlayfs may be used.
pub(crate) fn overlay_only_error(reason: &str) -> String {
    format!(
        "{reason} (KILN_SNAPSHOTTER=overlayfs: unset it, or set it to native, to run with \
         copied snapshots)"
    )
}

/// A container's copied root, ready to be bind-mounted.
pub(crate) struct Copied {
    pub root: PathBuf,
    index: index::Index,
    origins: merge::Origins,
}

/// The copy lives beside the upper dir, in the work dir overlay would
/// have used (same filesystem: the diff moves files, it does not copy).
pub(crate) fn copied_root(work: &Path) -> PathBuf {
    work.join("root")
}

/// Copies `lowers` into a fresh [`copied_root`] of `work` and makes the
/// mount `targets` (relative, with whether each is a file) it lacks.
pub(crate) fn prepare(
    lowers: &[PathBuf],
    work: &Path,
    targets: &[(PathBuf, bool)],
) -> Result<Copied, String> {
    prepare_at(lowers, copied_root(work), targets)
}

/// A detached container's copied root: made once, then kept across its
/// restarts (as an overlay upper dir is) until the container is removed.
/// Made under another name and renamed, so a copy cut short is never used.
pub(crate) fn prepare_kept(
    lowers: &[PathBuf],
    work: &Path,
    targets: &[(PathBuf, bool)],
) -> Result<PathBuf, String> {
    let root = copied_root(work);
    if root.is_dir() {
        return Ok(root);
    }
    let partial = work.join("root.partial");
    let made = prepare_at(lowers, partial.clone(), targets)?;
    fs::rename(&made.root, &root)
        .map_err(|e| format!("copied snapshot {}: {e}", root.display()))?;
    Ok(root)
}

fn prepare_at(
    lowers: &[PathBuf],
    root: PathBuf,
    targets: &[(PathBuf, bool)],
) -> Result<Copied, String> {
    let ctx =
        |what: &str, e: std::io::Error| format!("copied snapshot {}: {what}: {e}", root.display());
    if root.exists() {
        fs::remove_dir_all(&root).map_err(|e| ctx("removing a stale copy", e))?;
    }
    fs::create_dir_all(&root).map_err(|e| ctx("creating", e))?;
    let origins = merge::merge_into(lowers, &root).map_err(|e| ctx("copying the image", e))?;
    let stubs = make_stubs(&root, targets)?;
    let index = index::Index::walk(&root, &stubs).map_err(|e| ctx("indexing", e))?;
    Ok(Copied {
        root,
        index,
        origins,
    })
}

impl Copied {
    /// Writes what the container changed into `upper` (empty) and removes
    /// the copy (in the background: see [`discard`]).
    pub fn diff_into(self, upper: &Path, trash: &Path) -> Result<(), String> {
        let r = diff::diff_into(&self.root, &self.index, &self.origins, upper).map_err(|e| {
            format!(
                "diffing the copied snapshot {} into {}: {e}",
                self.root.display(),
                upper.display()
            )
        });
        self.remove(trash);
        r
    }

    pub fn remove(self, trash: &Path) {
        discard(&self.root, trash);
    }
}

/// Removals of copies still under way, joined by [`wait_for_cleanup`].
static CLEANUP: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>> =
    std::sync::Mutex::new(Vec::new());

/// Moves a spent copy into `trash` (the runner's scratch root, under a
/// name the scratch sweeper removes once this process is gone) and deletes
/// it on a thread of its own: removing an image's worth of files takes as
/// long as copying it, and nothing waits for it but the end of the process.
fn discard(root: &Path, trash: &Path) {
    let name = format!(
        "kiln-run-{}-trash-{}",
        std::process::id(),
        crate::helper::random_hex(8).unwrap_or_default()
    );
    let dest = trash.join(name);
    if fs::rename(root, &dest).is_err() {
        let _ = fs::remove_dir_all(root);
        return;
    }
    let job = dest.clone();
    match std::thread::Builder::new()
        .name("kiln-trash".into())
        .spawn(move || {
            let _ = fs::remove_dir_all(&job);
        }) {
        Ok(h) => CLEANUP.lock().unwrap_or_else(|e| e.into_inner()).push(h),
        Err(_) => {
            let _ = fs::remove_dir_all(&dest);
        }
    }
}

/// Waits until every spent copy is removed (call before the process
/// exits, or leftovers wait for the next run's sweep).
pub fn wait_for_cleanup() {
    let handles = std::mem::take(&mut *CLEANUP.lock().unwrap_or_else(|e| e.into_inner()));
    for h in handles {
        let _ = h.join();
    }
}

/// The mount points the image lacks, made in the copy (empty files and
/// directories, root's, 0644/0755), with the times of the directories they
/// were made in put back. Returns every path made.
fn make_stubs(root: &Path, targets: &[(PathBuf, bool)]) -> Result<HashSet<PathBuf>, String> {
    let mut made = HashSet::new();
    for (resolved, is_file) in crate::mounts::missing_targets(root, targets)? {
        let comps: Vec<_> = resolved.components().collect();
        let mut cur = PathBuf::new();
        for (k, c) in comps.iter().enumerate() {
            let parent = root.join(&cur);
            cur.push(c);
            let p = root.join(&cur);
            let last = k + 1 == comps.len();
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() || last => continue,
                Ok(_) => {
                    return Err(format!(
                        "cannot create mount point /{}: a file in the image is in its way",
                        resolved.display()
                    ))
                }
                Err(_) => {}
            }
            let times = fs::symlink_metadata(&parent).ok();
            let r = if last && is_file {
                fs::File::create_new(&p).map(drop)
            } else {
                fs::create_dir(&p)
            };
            r.map_err(|e| format!("mount point {}: {e}", p.display()))?;
            if let Some(m) = times {
                let _ = restore_times(&parent, &m);
            }
            made.insert(cur.clone());
        }
    }
    Ok(made)
}

fn restore_times(dir: &Path, m: &fs::Metadata) -> std::io::Result<()> {
    Ok(rustix::fs::utimensat(
        rustix::fs::CWD,
        dir,
        &crate::copyup::times(m),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?)
}
