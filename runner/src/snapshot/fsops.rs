//! Descriptor-relative file operations for copied snapshots. Every name is
//! looked up relative to an open directory with `O_NOFOLLOW`: a tree a RUN
//! step wrote is untrusted, and nothing in it is ever followed.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::process::{Gid, Uid};

/// A directory `name` under `at`, opened for reading; a symlink is refused.
pub(crate) fn open_dir(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        at,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `lstat` of `name` under `at`.
pub(crate) fn stat_at(at: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    Ok(rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)?)
}

pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// The inode's generation (ext4, xfs, btrfs, tmpfs give each new inode
/// one): a directory removed and made again can get the same inode number
/// but not the same generation. None where the filesystem has none.
pub(crate) fn generation(fd: BorrowedFd<'_>) -> Option<u32> {
    let mut v: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes at most a long (the kernel an int)
    // into `v`; the fd is open for the call's duration.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            libc::FS_IOC_GETVERSION,
            &mut v,
        )
    };
    (r == 0).then_some(v as u32)
}

/// overlayfs's deletion marker: a character device 0/0.
pub(crate) fn is_whiteout(st: &Stat) -> bool {
    file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// The names in a directory, `.` and `..` left out, sorted (so a copy and
/// a diff visit a tree in one order, whatever the filesystem's).
pub(crate) fn entries(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    let mut d = rustix::fs::Dir::read_from(dir)?;
    while let Some(e) = d.read() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    out.sort();
    Ok(out)
}

/// The prefixes of overlayfs's own xattrs (as root and in a user
/// namespace): bookkeeping that never belongs to a file's content.
fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The xattrs of an open file or directory, overlay's own left out. A
/// filesystem without xattrs has none.
pub(crate) fn xattrs(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let n = match rustix::fs::flistxattr_query(fd) {
        Ok(0) => return Ok(Vec::new()),
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut list = vec![0u8; n];
    let n = rustix::fs::flistxattr(fd, &mut list[..])?;
    let mut out = Vec::new();
    for name in list[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        if is_overlay_xattr(name) {
            continue;
        }
        let len = match rustix::fs::fgetxattr_query(fd, name) {
            Ok(len) => len,
            // Listed, then gone or not readable by us (trusted.* in a user
            // namespace): not part of what we can copy.
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::PERM) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut v = vec![0u8; len];
        let got = rustix::fs::fgetxattr(fd, name, &mut v[..])?;
        v.truncate(got);
        out.push((name.to_vec(), v));
    }
    out.sort();
    Ok(out)
}

/// Whether `dir` carries overlayfs's opaque marker (either namespace's).
pub(crate) fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut v = [0u8; 2];
    ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|k| matches!(rustix::fs::fgetxattr(dir, *k, &mut v[..]), Ok(1) if v[0] == b'y'))
}

/// The opaque marker of this process's overlay flavour.
pub(crate) fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let key = if crate::rootless_fs::nested() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    };
    Ok(rustix::fs::fsetxattr(
        dir,
        key,
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?)
}

pub(crate) fn timestamps(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Owner, then xattrs, then mode (chown clears set-id bits), then times, on
/// an open file or directory. `trusted.*` xattrs are kept only by the
/// machine's root (in a user namespace the kernel refuses them; the
/// store's snapshots leave them out there too).
pub(crate) fn set_meta(fd: BorrowedFd<'_>, st: &Stat, xattrs: &Xattrs) -> io::Result<()> {
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )?;
    let nested = crate::rootless_fs::nested();
    for (k, v) in xattrs {
        if nested && k.starts_with(b"trusted.") {
            continue;
        }
        rustix::fs::fsetxattr(fd, &k[..], v, rustix::fs::XattrFlags::empty())?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    rustix::fs::futimens(fd, &timestamps(st))?;
    Ok(())
}

/// Owner and times of a symlink (its mode is always 0777; xattrs on
/// symlinks are not copied).
pub(crate) fn set_link_meta(dir: BorrowedFd<'_>, name: &OsStr, st: &Stat) -> io::Result<()> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    rustix::fs::utimensat(dir, name, &timestamps(st), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Copies the regular file `name` of `from` to a new `to_name` in `to`:
/// a reflink where the filesystem has them (btrfs, xfs), else the kernel's
/// copy_file_range. Returns the new file, open, for its metadata.
pub(crate) fn copy_file(
    from: BorrowedFd<'_>,
    name: &OsStr,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<OwnedFd> {
    copy_file_keep_source(from, name, to, to_name).map(|(_, dst)| dst)
}

/// [`copy_file`], also returning the source, open (for its xattrs).
fn copy_file_keep_source(
    from: BorrowedFd<'_>,
    name: &OsStr,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<(std::fs::File, OwnedFd)> {
    let src = rustix::fs::openat(
        from,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let dst = rustix::fs::openat(
        to,
        to_name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut r = std::fs::File::from(src);
    if rustix::fs::ioctl_ficlone(&dst, &r).is_err() {
        let mut w = std::fs::File::from(dst.try_clone()?);
        io::copy(&mut r, &mut w)?;
    }
    Ok((r, dst))
}

/// Makes `to_name` in `to` a copy of the non-directory `name` of `from`
/// (`st` its lstat): a regular file, symlink, FIFO or device node, with
/// its metadata. Sockets are left out (they cannot live in a layer).
/// Returns false when nothing was made.
pub(crate) fn copy_node(
    from: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<bool> {
    match file_type(st) {
        FileType::RegularFile => {
            let (src, dst) = copy_file_keep_source(from, name, to, to_name)?;
            set_meta(dst.as_fd(), st, &xattrs(src.as_fd())?)?;
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(from, name, Vec::new())?;
            rustix::fs::symlinkat(target.as_c_str(), to, to_name)?;
            set_link_meta(to, to_name, st)?;
        }
        FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice => {
            rustix::fs::mknodat(
                to,
                to_name,
                file_type(st),
                Mode::from_raw_mode(st.st_mode & 0o7777),
                st.st_rdev,
            )?;
            let fd = rustix::fs::openat(
                to,
                to_name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            // O_PATH: owner and times through /proc/self/fd.
            let p = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
            rustix::fs::chown(
                p.as_str(),
                Some(Uid::from_raw(st.st_uid)),
                Some(Gid::from_raw(st.st_gid)),
            )?;
            rustix::fs::chmod(p.as_str(), Mode::from_raw_mode(st.st_mode & 0o7777))?;
            rustix::fs::utimensat(
                rustix::fs::CWD,
                p.as_str(),
                &timestamps(st),
                AtFlags::empty(),
            )?;
        }
        _ => return Ok(false),
    }
    Ok(true)
}
