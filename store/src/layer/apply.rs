//! tar (plain, gzip incl. multi-member, zstd) -> directory tree.
//!
//! Every path is resolved inside the target through directory handles:
//! parents are opened with `openat2(root, path, RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` (so `..`, absolute symlinks and symlink chains all
//! stay inside the root), and the final component is always created, linked,
//! removed or changed relative to that parent handle without following it.
//! The tar framing is read by `entries.rs` (not by the `tar` crate's
//! unpacker, which resolves against the host) so that every size is bounded.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::entries::{drive, map_stream, Hdr, Sink};
use super::{LayerError, Limits, WhiteoutMode};
use crate::digest::Digest;

const PATH_MAX: usize = 4096;
const NAME_MAX: usize = 255;
const XATTR_SIZE_MAX: usize = 65536;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Applies the layer read from `r` onto the directory `target` and returns
/// the diffID (sha256 of the uncompressed tar, including anything after the
/// end-of-archive marker). The caller compares it with what the manifest or
/// config claims.
pub fn apply_layer(
    r: &mut dyn Read,
    target: &Path,
    mode: WhiteoutMode,
    limits: &Limits,
) -> Result<Digest, LayerError> {
    let root = rustix::fs::open(
        target,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| LayerError::io(target.display().to_string(), e))?;
    let mut ap = Applier {
        root,
        mode,
        created: HashSet::new(),
        dirs: Vec::new(),
        cache: None,
        owners: Owners::of_process(),
        entry_mtime: 0,
    };
    drive(r, limits, &mut ap)
}

/// What giving a file its owner can do in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owners {
    /// Real root: any owner; a failure is an error.
    Any,
    /// Root of a user namespace (rootless kiln) mapping `mapped` IDs: an
    /// owner outside the map is an error naming it.
    Mapped(u64),
    /// A single-ID user namespace (no subordinate range): every file stays
    /// root's, as the warning at start said.
    Single,
    /// An ordinary process (the store's own unprivileged tests): files stay
    /// the caller's.
    Own,
}

impl Owners {
    fn of_process() -> Owners {
        match crate::userns::UserNs::current() {
            _ if !rustix::process::geteuid().is_root() => Owners::Own,
            crate::userns::UserNs::Initial => Owners::Any,
            crate::userns::UserNs::Nested { mapped: 1 } => Owners::Single,
            crate::userns::UserNs::Nested { mapped } => Owners::Mapped(mapped),
        }
    }

    /// Whether a failed chown to `uid:gid` is fine here; otherwise the error.
    fn chown_failed(self, e: Errno, path: &[u8], uid: u32, gid: u32) -> Result<(), LayerError> {
        match (self, e) {
            (Owners::Own, Errno::PERM) | (Owners::Single, Errno::INVAL) => Ok(()),
            (Owners::Mapped(mapped), Errno::INVAL) => {
                let (kind, id) = if u64::from(uid) >= mapped {
                    ("uid", uid)
                } else {
                    ("gid", gid)
                };
                Err(LayerError::UnmappedOwner {
                    path: String::from_utf8_lossy(path).into_owned(),
                    kind,
                    id,
                    mapped,
                })
            }
            _ => Err(LayerError::io(String::from_utf8_lossy(path), e)),
        }
    }

    /// Whether a failed setxattr of `name` is fine here: an ordinary
    /// process cannot set trusted.* or security.*, nor can root of a user
    /// namespace set trusted.* (the kernel wants the machine's
    /// CAP_SYS_ADMIN); such xattrs are left out of the snapshot.
    fn xattr_failed(self, e: Errno, name: &[u8]) -> bool {
        match self {
            Owners::Any => false,
            Owners::Own => matches!(e, Errno::PERM | Errno::NOTSUP),
            Owners::Mapped(_) | Owners::Single => {
                e == Errno::PERM && name.starts_with(b"trusted.")
                    || e == Errno::NOTSUP
                    || (self == Owners::Single && e == Errno::INVAL)
            }
        }
    }
}

struct DeferredDir {
    comps: Vec<Vec<u8>>,
    mode: u32,
    mtime: i64,
}

struct Applier {
    root: OwnedFd,
    mode: WhiteoutMode,
    /// Paths created by this layer (used by opaque whiteouts in Apply mode).
    created: HashSet<Vec<u8>>,
    /// Directory modes and times, applied last (children change dir mtimes,
    /// and a read-only dir must still receive its children).
    dirs: Vec<DeferredDir>,
    /// Last resolved parent directory (valid only while no entry removes or
    /// creates directories or symlinks).
    cache: Option<(Vec<u8>, OwnedFd)>,
    owners: Owners,
    /// mtime of the entry being applied.
    entry_mtime: i64,
}

impl Sink for Applier {
    fn entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError> {
        self.apply_entry(h, data)
    }
    fn finish(&mut self) -> Result<(), LayerError> {
        self.finish_dirs()
    }
}

impl Applier {
    fn apply_entry(&mut self, h: &Hdr, data: &mut dyn Read) -> Result<(), LayerError> {
        self.entry_mtime = h.mtime;
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        let comps = clean_path(&h.path)?;
        if comps.is_empty() {
            // The root itself ("./"): only its metadata.
            if h.kind == b'5' {
                let fd = dup(&self.root)?;
                self.set_owner(fd.as_fd(), &h.path, h.uid, h.gid)?;
                self.set_xattrs(fd.as_fd(), &h.path, &h.xattrs)?;
                self.dirs.push(DeferredDir {
                    comps,
                    mode: h.mode,
                    mtime: h.mtime,
                });
                return Ok(());
            }
            return Err(LayerError::UnsafePath {
                path: shown(),
                reason: "non-directory entry for the root",
            });
        }
        let (base, parent) = comps.split_last().expect("non-empty");
        let base = base.clone();
        let parent = parent.to_vec();

        if base.starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(h, &parent, &base);
        }
        let is_file = matches!(h.kind, b'0' | 0 | b'7');
        let is_link = h.kind == b'1';
        if !(is_file || is_link) {
            self.cache = None;
        }
        let pfd = self.parent(&parent, true, &h.path)?;
        let cbase = cstring(&base, &h.path)?;
        let full = comps.join(&b'/');
        let dir = pfd.as_fd();
        match h.kind {
            b'0' | 0 | b'7' => self.write_file(dir, &cbase, h, data)?,
            b'5' => self.write_dir(dir, &cbase, h, &comps)?,
            b'2' => self.write_symlink(dir, &cbase, h)?,
            b'1' => self.write_hardlink(dir, &cbase, h, &comps)?,
            b'3' | b'4' | b'6' => self.write_node(dir, &cbase, h)?,
            other => {
                return Err(LayerError::Unsupported {
                    path: shown(),
                    kind: other as char,
                })
            }
        }
        if self.mode == WhiteoutMode::Apply {
            self.created.insert(full);
        }
        if !(is_file || is_link) {
            self.cache = None;
        } else if self
            .cache
            .as_ref()
            .map(|(p, _)| p != &parent.join(&b'/'))
            .unwrap_or(true)
        {
            self.cache = Some((parent.join(&b'/'), pfd));
        }
        Ok(())
    }

    /// A regular file, created afresh (never through what was there).
    fn write_file(
        &mut self,
        pfd: BorrowedFd<'_>,
        cbase: &CStr,
        h: &Hdr,
        data: &mut dyn Read,
    ) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        self.remove_existing(pfd, cbase)?;
        let fd = rustix::fs::openat(
            pfd,
            cbase,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| LayerError::io(shown(), e))?;
        let mut f = File::from(fd);
        let n = io::copy(data, &mut f).map_err(map_stream)?;
        if n != h.size {
            return Err(LayerError::Malformed(format!(
                "truncated data for {:?}",
                shown()
            )));
        }
        self.set_owner(f.as_fd(), &h.path, h.uid, h.gid)?;
        rustix::fs::fchmod(f.as_fd(), Mode::from_raw_mode(h.mode))
            .map_err(|e| LayerError::io(shown(), e))?;
        self.set_xattrs(f.as_fd(), &h.path, &h.xattrs)?;
        rustix::fs::futimens(f.as_fd(), &times(h.mtime)).map_err(|e| LayerError::io(shown(), e))?;
        Ok(())
    }

    /// A directory: kept if there, its mode and mtime set at the end.
    fn write_dir(
        &mut self,
        pfd: BorrowedFd<'_>,
        cbase: &CStr,
        h: &Hdr,
        comps: &[Vec<u8>],
    ) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        let existing = stat_nofollow(pfd, cbase)?;
        if existing != Some(FileType::Directory) {
            if existing.is_some() {
                self.remove_existing(pfd, cbase)?;
            }
            rustix::fs::mkdirat(pfd, cbase, Mode::from_raw_mode(0o700))
                .map_err(|e| LayerError::io(shown(), e))?;
        }
        let dfd = rustix::fs::openat(
            pfd,
            cbase,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::io(shown(), e))?;
        self.set_owner(dfd.as_fd(), &h.path, h.uid, h.gid)?;
        self.set_xattrs(dfd.as_fd(), &h.path, &h.xattrs)?;
        self.dirs.push(DeferredDir {
            comps: comps.to_vec(),
            mode: h.mode,
            mtime: h.mtime,
        });
        Ok(())
    }

    /// A symlink, stored as it is (never followed).
    fn write_symlink(
        &mut self,
        pfd: BorrowedFd<'_>,
        cbase: &CStr,
        h: &Hdr,
    ) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        check_symlink(h)?;
        self.remove_existing(pfd, cbase)?;
        rustix::fs::symlinkat(h.link.as_slice(), pfd, cbase)
            .map_err(|e| LayerError::io(shown(), e))?;
        self.chown_at(pfd, cbase, &h.path, h.uid, h.gid)?;
        rustix::fs::utimensat(pfd, cbase, &times(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| LayerError::io(shown(), e))?;
        Ok(())
    }

    /// A hard link to an entry already in the layer or below it.
    fn write_hardlink(
        &mut self,
        pfd: BorrowedFd<'_>,
        cbase: &CStr,
        h: &Hdr,
        comps: &[Vec<u8>],
    ) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        let target = String::from_utf8_lossy(&h.link).into_owned();
        let bad = |reason: &str| LayerError::InvalidLink {
            path: shown(),
            target: target.clone(),
            reason: reason.to_string(),
        };
        let tcomps = clean_path(&h.link).map_err(|_| bad("target outside the root"))?;
        let Some((tbase, tparent)) = tcomps.split_last() else {
            return Err(bad("target is the root"));
        };
        if tcomps.as_slice() == comps {
            return Err(bad("links to itself"));
        }
        let tpfd = self
            .parent(tparent, false, &h.link)
            .map_err(|_| bad("target not found"))?;
        let ctbase = cstring(tbase, &h.link)?;
        match stat_nofollow(tpfd.as_fd(), &ctbase)? {
            None => return Err(bad("target not found")),
            Some(FileType::Directory) => return Err(bad("target is a directory")),
            Some(_) => {}
        }
        self.remove_existing(pfd, cbase)?;
        // No AT_SYMLINK_FOLLOW: a symlink target is linked as the
        // symlink itself, never what it points to.
        rustix::fs::linkat(tpfd, ctbase.as_c_str(), pfd, cbase, AtFlags::empty())
            .map_err(|e| LayerError::io(shown(), e))?;
        Ok(())
    }

    /// A device node or a fifo.
    fn write_node(&mut self, pfd: BorrowedFd<'_>, cbase: &CStr, h: &Hdr) -> Result<(), LayerError> {
        let shown = || String::from_utf8_lossy(&h.path).into_owned();
        let (major, minor) = check_device(h)?;
        let ft = match h.kind {
            b'3' => FileType::CharacterDevice,
            b'4' => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        self.remove_existing(pfd, cbase)?;
        let dev = if h.kind == b'6' {
            0
        } else {
            rustix::fs::makedev(major as u32, minor as u32)
        };
        rustix::fs::mknodat(pfd, cbase, ft, Mode::from_raw_mode(0o600), dev).map_err(|e| {
            if e == Errno::PERM {
                LayerError::NotPermitted {
                    op: "mknod",
                    path: shown(),
                    cause: e.into(),
                }
            } else {
                LayerError::io(shown(), e)
            }
        })?;
        self.chown_at(pfd, cbase, &h.path, h.uid, h.gid)?;
        // The entry was just created by us as a node, not a symlink,
        // so following is not a concern here.
        rustix::fs::chmodat(pfd, cbase, Mode::from_raw_mode(h.mode), AtFlags::empty())
            .map_err(|e| LayerError::io(shown(), e))?;
        rustix::fs::utimensat(pfd, cbase, &times(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| LayerError::io(shown(), e))?;
        Ok(())
    }

    fn whiteout(&mut self, h: &Hdr, parent: &[Vec<u8>], base: &[u8]) -> Result<(), LayerError> {
        let shown = String::from_utf8_lossy(&h.path).into_owned();
        self.cache = None;
        if base == OPAQUE {
            match self.mode {
                WhiteoutMode::Overlay => {
                    let pfd = self.parent(parent, true, &h.path)?;
                    let opaque = format!("{}opaque", crate::userns::UserNs::overlay_xattr_prefix());
                    rustix::fs::fsetxattr(pfd.as_fd(), &opaque, b"y", XattrFlags::empty())
                        .map_err(|e| {
                            if e == Errno::PERM {
                                LayerError::NotPermitted {
                                    op: "setting overlay's opaque xattr",
                                    path: shown.clone(),
                                    cause: e.into(),
                                }
                            } else {
                                LayerError::io(&shown, e)
                            }
                        })?;
                }
                WhiteoutMode::Apply => {
                    let Ok(pfd) = self.parent(parent, false, &h.path) else {
                        return Ok(());
                    };
                    let prefix = parent.join(&b'/');
                    let names = list_dir(pfd.as_fd()).map_err(|e| LayerError::io(&shown, e))?;
                    for name in names {
                        let mut full = prefix.clone();
                        if !full.is_empty() {
                            full.push(b'/');
                        }
                        full.extend_from_slice(name.to_bytes());
                        if !self.created.contains(&full) {
                            remove_all_at(pfd.as_fd(), &name)
                                .map_err(|e| LayerError::io(&shown, e))?;
                        }
                    }
                }
            }
            return Ok(());
        }
        if base.starts_with(b".wh..wh.") {
            // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): ignored, as docker does.
            return Ok(());
        }
        let name = whiteout_name(base, &h.path)?;
        let cname = cstring(name, &h.path)?;
        match self.mode {
            WhiteoutMode::Overlay => {
                let pfd = self.parent(parent, true, &h.path)?;
                self.remove_existing(pfd.as_fd(), &cname)?;
                rustix::fs::mknodat(
                    pfd.as_fd(),
                    cname.as_c_str(),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| {
                    if e == Errno::PERM {
                        LayerError::NotPermitted {
                            op: "creating an overlay whiteout (mknod 0/0)",
                            path: shown.clone(),
                            cause: e.into(),
                        }
                    } else {
                        LayerError::io(&shown, e)
                    }
                })?;
                self.chown_at(pfd.as_fd(), &cname, &h.path, h.uid, h.gid)?;
            }
            WhiteoutMode::Apply => {
                let Ok(pfd) = self.parent(parent, false, &h.path) else {
                    return Ok(());
                };
                remove_all_at(pfd.as_fd(), &cname).map_err(|e| LayerError::io(&shown, e))?;
            }
        }
        Ok(())
    }

    /// Opens the directory `comps` (relative to the root, resolved inside
    /// it), creating missing components (mode 0755) when `create`.
    fn parent(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
        shown: &[u8],
    ) -> Result<OwnedFd, LayerError> {
        let joined = comps.join(&b'/');
        if let Some((p, fd)) = &self.cache {
            if *p == joined {
                return dup(fd);
            }
        }
        let shown = || String::from_utf8_lossy(shown).into_owned();
        match open_in_root(self.root.as_fd(), &joined) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOTDIR) => {
                return Err(LayerError::UnsafePath {
                    path: shown(),
                    reason: "a parent is not a directory",
                })
            }
            Err(e) => return Err(LayerError::io(shown(), e)),
        }
        let mut cur = dup(&self.root)?;
        for i in 0..comps.len() {
            let prefix = comps[..=i].join(&b'/');
            match open_in_root(self.root.as_fd(), &prefix) {
                Ok(fd) => cur = fd,
                Err(Errno::NOENT) => {
                    let c = cstring(&comps[i], shown().as_bytes())?;
                    match rustix::fs::mkdirat(cur.as_fd(), c.as_c_str(), Mode::from_raw_mode(0o755))
                    {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(LayerError::io(shown(), e)),
                    }
                    self.cache = None;
                    cur = open_in_root(self.root.as_fd(), &prefix).map_err(|e| match e {
                        // mkdir saw an entry but it does not resolve: a
                        // dangling symlink.
                        Errno::NOENT => LayerError::UnsafePath {
                            path: shown(),
                            reason: "a parent is a dangling symlink",
                        },
                        e => LayerError::io(shown(), e),
                    })?;
                    // Implicit parents get the mode docker gives them and the
                    // mtime of the entry that needed them: deterministic, so
                    // the same tar always unpacks (and re-encodes) the same.
                    self.dirs.push(DeferredDir {
                        comps: comps[..=i].to_vec(),
                        mode: 0o755,
                        mtime: self.entry_mtime,
                    });
                    if self.mode == WhiteoutMode::Apply {
                        self.created.insert(prefix);
                    }
                }
                Err(Errno::NOTDIR) => {
                    return Err(LayerError::UnsafePath {
                        path: shown(),
                        reason: "a parent is not a directory",
                    })
                }
                Err(e) => return Err(LayerError::io(shown(), e)),
            }
        }
        Ok(cur)
    }

    /// Removes `name` in `dir` (and everything below it) if present.
    fn remove_existing(&mut self, dir: BorrowedFd<'_>, name: &CStr) -> Result<(), LayerError> {
        let shown = || name.to_string_lossy().into_owned();
        match stat_nofollow(dir, name)? {
            None => Ok(()),
            Some(FileType::Directory) => {
                // Any entry replacing a directory (other than a directory,
                // which is kept) removes it, like docker does.
                self.cache = None;
                remove_all_at(dir, name).map_err(|e| LayerError::io(shown(), e))
            }
            Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| LayerError::io(shown(), e)),
        }
    }

    fn set_owner(
        &self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        uid: u64,
        gid: u64,
    ) -> Result<(), LayerError> {
        let (u, g) = ids(path, uid, gid)?;
        match rustix::fs::fchown(fd, Some(u), Some(g)) {
            Ok(()) => Ok(()),
            Err(e) => self.owners.chown_failed(e, path, u.as_raw(), g.as_raw()),
        }
    }

    fn chown_at(
        &self,
        dir: BorrowedFd<'_>,
        name: &CStr,
        path: &[u8],
        uid: u64,
        gid: u64,
    ) -> Result<(), LayerError> {
        let (u, g) = ids(path, uid, gid)?;
        match rustix::fs::chownat(dir, name, Some(u), Some(g), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => Ok(()),
            Err(e) => self.owners.chown_failed(e, path, u.as_raw(), g.as_raw()),
        }
    }

    fn set_xattrs(
        &self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<(), LayerError> {
        for (name, value) in applied_xattrs(path, xattrs)? {
            match rustix::fs::fsetxattr(fd, name.as_slice(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(e) if self.owners.xattr_failed(e, name) => {}
                Err(e) => {
                    return Err(LayerError::io(
                        format!(
                            "{} (xattr {})",
                            String::from_utf8_lossy(path),
                            String::from_utf8_lossy(name)
                        ),
                        e,
                    ))
                }
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), LayerError> {
        self.cache = None;
        let dirs = std::mem::take(&mut self.dirs);
        // The last entry for a directory wins (an explicit entry after the
        // implicit creation, or a directory listed twice).
        let mut done: HashSet<&[Vec<u8>]> = HashSet::new();
        for d in dirs.iter().rev() {
            if !done.insert(d.comps.as_slice()) {
                continue;
            }
            let shown = || String::from_utf8_lossy(&d.comps.join(&b'/')).into_owned();
            let fd = if let Some((base, parent)) = d.comps.split_last() {
                let Ok(pfd) = open_in_root(self.root.as_fd(), &parent.join(&b'/')) else {
                    continue;
                };
                let c = cstring(base, base)?;
                // A later entry may have replaced the directory: skip then.
                match rustix::fs::openat(
                    pfd.as_fd(),
                    c.as_c_str(),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(fd) => fd,
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(LayerError::io(shown(), e)),
                }
            } else {
                dup(&self.root)?
            };
            rustix::fs::fchmod(fd.as_fd(), Mode::from_raw_mode(d.mode))
                .map_err(|e| LayerError::io(shown(), e))?;
            rustix::fs::futimens(fd.as_fd(), &times(d.mtime))
                .map_err(|e| LayerError::io(shown(), e))?;
        }
        Ok(())
    }
}

/// A symlink's target must be something the kernel accepts.
pub(super) fn check_symlink(h: &Hdr) -> Result<(), LayerError> {
    if h.link.is_empty() || h.link.contains(&0) || h.link.len() >= PATH_MAX {
        return Err(LayerError::UnsafePath {
            path: String::from_utf8_lossy(&h.path).into_owned(),
            reason: "invalid symlink target",
        });
    }
    Ok(())
}

/// The device numbers of a char/block device or fifo entry, if valid.
pub(super) fn check_device(h: &Hdr) -> Result<(u64, u64), LayerError> {
    let (major, minor) = h.dev;
    let bad = || LayerError::InvalidDevice {
        path: String::from_utf8_lossy(&h.path).into_owned(),
        major,
        minor,
    };
    // The kernel's dev_t holds a 12-bit major and a 20-bit minor; larger
    // numbers would silently alias another device.
    if h.kind != b'6' && (major > 0xfff || minor > 0xfffff) {
        return Err(bad());
    }
    // 0/0 is overlayfs' whiteout; layers express whiteouts as `.wh.`
    // entries, a raw one would hide lower files.
    if h.kind == b'3' && major == 0 && minor == 0 {
        return Err(bad());
    }
    Ok((major, minor))
}

/// The name a `.wh.<name>` entry whites out.
pub(super) fn whiteout_name<'a>(base: &'a [u8], path: &[u8]) -> Result<&'a [u8], LayerError> {
    let name = &base[WHITEOUT_PREFIX.len()..];
    if name.is_empty() || name == b"." || name == b".." {
        return Err(LayerError::InvalidWhiteout(
            String::from_utf8_lossy(path).into_owned(),
        ));
    }
    Ok(name)
}

/// An extended attribute of an entry: name, value.
pub(super) type Xattr = (Vec<u8>, Vec<u8>);

/// The xattrs of an entry that are applied; an invalid one refuses the
/// layer. Overlay's own xattrs from a layer could redirect or hide lower
/// content once the snapshot is an overlay lower dir: never applied, neither
/// `trusted.overlay.*` nor the `user.overlay.*` of an overlay mounted in a
/// user namespace (rootless kiln).
pub(super) fn applied_xattrs<'a>(
    path: &[u8],
    xattrs: &'a [Xattr],
) -> Result<Vec<&'a Xattr>, LayerError> {
    let mut out = Vec::new();
    for x in xattrs {
        let (name, value) = x;
        if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
            continue;
        }
        let namespaced = [&b"user."[..], b"trusted.", b"security.", b"system."]
            .iter()
            .any(|p| name.len() > p.len() && name.starts_with(p));
        if !namespaced || name.contains(&0) || name.len() > NAME_MAX || value.len() > XATTR_SIZE_MAX
        {
            return Err(LayerError::Malformed(format!(
                "invalid xattr {:?} on {:?}",
                String::from_utf8_lossy(name),
                String::from_utf8_lossy(path)
            )));
        }
        out.push(x);
    }
    Ok(out)
}

pub(super) fn ids(
    path: &[u8],
    uid: u64,
    gid: u64,
) -> Result<(rustix::fs::Uid, rustix::fs::Gid), LayerError> {
    // -1 means "unchanged" to chown, so it is not a valid id either.
    if uid >= u64::from(u32::MAX) || gid >= u64::from(u32::MAX) {
        return Err(LayerError::Malformed(format!(
            "uid/gid out of range on {:?}",
            String::from_utf8_lossy(path)
        )));
    }
    Ok((
        rustix::fs::Uid::from_raw(uid as u32),
        rustix::fs::Gid::from_raw(gid as u32),
    ))
}

fn times(mtime: i64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, LayerError> {
    fd.try_clone().map_err(LayerError::Stream)
}

fn cstring(b: &[u8], shown: &[u8]) -> Result<CString, LayerError> {
    CString::new(b).map_err(|_| LayerError::UnsafePath {
        path: String::from_utf8_lossy(shown).into_owned(),
        reason: "NUL byte in name",
    })
}

/// Lexically cleans a tar path into components, rejecting anything that
/// would leave the root, NUL bytes, and over-long names.
pub(crate) fn clean_path(p: &[u8]) -> Result<Vec<Vec<u8>>, LayerError> {
    let shown = || String::from_utf8_lossy(p).into_owned();
    if p.contains(&0) {
        return Err(LayerError::UnsafePath {
            path: shown(),
            reason: "NUL byte in name",
        });
    }
    if p.len() >= PATH_MAX {
        return Err(LayerError::UnsafePath {
            path: shown(),
            reason: "path longer than PATH_MAX",
        });
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(LayerError::UnsafePath {
                        path: shown(),
                        reason: "'..' leads outside the root",
                    });
                }
            }
            c if c.len() > NAME_MAX => {
                return Err(LayerError::UnsafePath {
                    path: shown(),
                    reason: "component longer than NAME_MAX",
                })
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn open_in_root(root: BorrowedFd<'_>, rel: &[u8]) -> Result<OwnedFd, Errno> {
    let path: &[u8] = if rel.is_empty() { b"." } else { rel };
    loop {
        match rustix::fs::openat2(
            root,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            // openat2 asks callers to retry on EAGAIN (a concurrent rename
            // somewhere in the filesystem).
            Err(Errno::AGAIN) => continue,
            r => return r,
        }
    }
}

fn stat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> Result<Option<FileType>, LayerError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(LayerError::io(name.to_string_lossy(), e)),
    }
}

fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let fd = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut out = Vec::new();
    for e in rustix::fs::Dir::new(fd)? {
        let e = e?;
        let n = e.file_name();
        if n != c"." && n != c".." {
            out.push(n.to_owned());
        }
    }
    Ok(out)
}

/// Removes `name` in `dir` and everything below it, never following
/// symlinks and without recursion (depth is bounded only by the tree).
pub(crate) fn remove_all_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) | Err(Errno::PERM) => {}
        Err(e) => return Err(e.into()),
    }
    // Walk down one directory at a time, holding only the current handle;
    // climb back with "..", which inside a tree we own is the real parent.
    let mut names: Vec<CString> = vec![name.to_owned()];
    let top = rustix::fs::openat(
        dir,
        c".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut cur = rustix::fs::openat(
        top.as_fd(),
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    loop {
        let mut descended = false;
        for child in list_dir(cur.as_fd())? {
            match rustix::fs::unlinkat(cur.as_fd(), child.as_c_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(Errno::ISDIR) | Err(Errno::PERM) => {
                    let next = rustix::fs::openat(
                        cur.as_fd(),
                        child.as_c_str(),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    names.push(child);
                    cur = next;
                    descended = true;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        if descended {
            continue;
        }
        // `cur` is empty now: go up and remove it.
        let done = names.pop().expect("names is non-empty while walking");
        let parent = if names.is_empty() {
            rustix::fs::openat(
                top.as_fd(),
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        } else {
            rustix::fs::openat(
                cur.as_fd(),
                c"..",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?
        };
        rustix::fs::unlinkat(parent.as_fd(), done.as_c_str(), AtFlags::REMOVEDIR)?;
        if names.is_empty() {
            return Ok(());
        }
        cur = parent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_outside_a_namespaces_map_are_named() {
        let e = Owners::Mapped(65537)
            .chown_failed(Errno::INVAL, b"etc/x", 70000, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"etc/x\" is owned by uid 70000")
                && e.contains("maps 65537 IDs")
                && e.contains("1..65536")
                && e.contains("/etc/subuid"),
            "{e}"
        );
        let e = Owners::Mapped(65537)
            .chown_failed(Errno::INVAL, b"f", 0, 70001)
            .unwrap_err()
            .to_string();
        assert!(e.contains("gid 70001") && e.contains("/etc/subgid"), "{e}");
        // A single-ID namespace keeps files root's; real root fails loudly.
        assert!(Owners::Single
            .chown_failed(Errno::INVAL, b"f", 42, 42)
            .is_ok());
        assert!(Owners::Any
            .chown_failed(Errno::INVAL, b"f", 42, 42)
            .is_err());
        assert!(Owners::Own.chown_failed(Errno::PERM, b"f", 42, 42).is_ok());
        assert!(Owners::Mapped(65537).xattr_failed(Errno::PERM, b"trusted.x"));
        assert!(!Owners::Mapped(65537).xattr_failed(Errno::PERM, b"security.capability"));
        assert!(!Owners::Any.xattr_failed(Errno::PERM, b"trusted.x"));
    }

    #[test]
    fn user_overlay_xattrs_from_a_layer_are_never_applied() {
        let x = vec![
            (b"user.overlay.opaque".to_vec(), b"y".to_vec()),
            (b"trusted.overlay.redirect".to_vec(), b"/x".to_vec()),
            (b"user.mine".to_vec(), b"1".to_vec()),
        ];
        let kept = applied_xattrs(b"d", &x).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, b"user.mine");
    }

    #[test]
    fn clean_path_cases() {
        let c = |s: &str| {
            clean_path(s.as_bytes())
                .map(|v| v.join(&b'/'))
                .map(|v| String::from_utf8(v).unwrap())
        };
        assert_eq!(c("./a/b/").unwrap(), "a/b");
        assert_eq!(c("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(c("a/../b").unwrap(), "b");
        assert_eq!(c("./").unwrap(), "");
        assert!(c("../x").is_err());
        assert!(c("a/../../x").is_err());
        assert!(clean_path(b"a\0b").is_err());
        assert!(clean_path(&vec![b'a'; 256]).is_err());
        assert!(clean_path(&b"a/".repeat(2100)).is_err());
    }
}
