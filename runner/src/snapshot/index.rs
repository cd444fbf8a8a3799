//! What a copied root held before the container ran: per path, the inode
//! and its change time (which no process can set back), and the metadata
//! a diff compares when the change time moved but the file may not have.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Stat};

use super::fsops::{self, file_type};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub ino: u64,
    pub ctime: (i64, i64),
    pub mtime: (i64, i64),
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: i64,
    pub rdev: u64,
    pub nlink: u64,
    pub is_dir: bool,
    /// A directory's inode generation, where the filesystem has one.
    pub generation: Option<u32>,
    /// A mount point the runner made (not in the image): never diffed as
    /// added, never whited out.
    pub stub: bool,
}

// stat's field types differ between architectures: the casts are not
// all no-ops everywhere.
#[allow(clippy::unnecessary_cast)]
impl Seen {
    pub fn of(st: &Stat, stub: bool) -> Seen {
        Seen {
            ino: st.st_ino,
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as i64),
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as i64),
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size,
            rdev: st.st_rdev,
            nlink: st.st_nlink as u64,
            is_dir: file_type(st) == FileType::Directory,
            generation: None,
            stub,
        }
    }

    /// Same inode, untouched since the index was taken.
    pub fn untouched(&self, st: &Stat) -> bool {
        self.ino == st.st_ino && self.ctime == (st.st_ctime as i64, st.st_ctime_nsec as i64)
    }

    /// Same inode and the metadata a layer records (the change time may
    /// have moved: a link removed, a chmod to the same mode). A new link
    /// is a change: overlayfs copies a file up to link it.
    pub fn same_metadata(&self, st: &Stat) -> bool {
        let now = Seen::of(st, self.stub);
        self.ino == now.ino
            && self.mtime == now.mtime
            && self.mode == now.mode
            && self.uid == now.uid
            && self.gid == now.gid
            && self.size == now.size
            && self.rdev == now.rdev
            && now.nlink <= self.nlink
    }
}

#[derive(Debug, Default)]
pub(crate) struct Index {
    pub seen: HashMap<PathBuf, Seen>,
    /// Each directory's entries, by the directory's path ("" the root).
    pub children: HashMap<PathBuf, Vec<OsString>>,
    /// Every directory of the tree, held open while the container runs: a
    /// directory it removes cannot be freed, so the inode number of one it
    /// makes again is never the old one's (ext4 and overlayfs hand freed
    /// numbers out again at once). Where the file limit does not allow
    /// that many, the inode generation tells them apart where the
    /// filesystem has one.
    pins: Vec<OwnedFd>,
    pin_limit: usize,
}

impl Index {
    /// Walks the tree at `root`; `stubs` are the paths the runner made.
    pub fn walk(root: &Path, stubs: &HashSet<PathBuf>) -> io::Result<Index> {
        let mut index = Index {
            pin_limit: raise_file_limit().saturating_sub(256),
            ..Index::default()
        };
        let fd = fsops::open_dir(rustix::fs::CWD, root.as_os_str())?;
        index.walk_dir(fd, PathBuf::new(), stubs)?;
        Ok(index)
    }

    fn walk_dir(&mut self, dir: OwnedFd, rel: PathBuf, stubs: &HashSet<PathBuf>) -> io::Result<()> {
        let names = fsops::entries(dir.as_fd())?;
        for name in &names {
            let child = rel.join(name);
            let st = fsops::stat_at(dir.as_fd(), name)?;
            let mut seen = Seen::of(&st, stubs.contains(&child));
            if seen.is_dir {
                let sub = fsops::open_dir(dir.as_fd(), name)?;
                seen.generation = fsops::generation(sub.as_fd());
                self.seen.insert(child.clone(), seen);
                if self.pins.len() < self.pin_limit {
                    self.pins.push(sub.try_clone()?);
                }
                self.walk_dir(sub, child, stubs)?;
            } else {
                self.seen.insert(child, seen);
            }
        }
        self.children.insert(rel, names);
        Ok(())
    }
}

/// The soft limit on open files, raised to the hard one (once per
/// process; the pins of a large image's directories need thousands). The
/// helpers the runner starts get the old soft limit back
/// ([`original_file_limit`]): containers see the limits they would have.
fn raise_file_limit() -> usize {
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        let r = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let _ = ORIGINAL.set(r);
        let mut want = r;
        want.current = r.maximum;
        let cur = match rustix::process::setrlimit(rustix::process::Resource::Nofile, want) {
            Ok(()) => r.maximum,
            Err(_) => r.current,
        };
        cur.map_or(usize::MAX, |c| c as usize)
    })
}

static ORIGINAL: std::sync::OnceLock<rustix::process::Rlimit> = std::sync::OnceLock::new();

/// The open-file limit as it was before [`raise_file_limit`], if it was
/// raised.
pub(crate) fn original_file_limit() -> Option<&'static rustix::process::Rlimit> {
    ORIGINAL.get()
}
