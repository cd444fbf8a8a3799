//! Docker's copy-up: a fresh (empty) volume mounted over a directory of
//! the image starts as a copy of that directory, owners, modes and times
//! kept. Runs in the container's mount namespace before the volume is
//! mounted, on the merged rootfs, so whiteouts and opaque directories of
//! the image are already applied.
//!
//! The image is untrusted: nothing on its side is followed. The target was
//! resolved inside the root ([`crate::mounts::secure_join`]), every entry
//! is read with `lstat`, files are opened `O_NOFOLLOW`, symlinks are copied
//! as symlinks, and the volume side is created `O_EXCL`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, Timespec, Timestamps, CWD};
use rustix::process::{Gid, Uid};

/// Copies the contents of `from` (a directory in the rootfs) into the
/// empty directory `to`, and gives `to` the owner and mode of `from`.
/// Does nothing when `to` already holds anything or `from` is not a
/// directory.
///
/// The volume side is written only through directory descriptors opened
/// `O_NOFOLLOW` (`mkdirat`, `openat`, `symlinkat`): another container
/// already using the volume cannot swap a directory being filled for a
/// symlink and have the copy land on the host.
pub(crate) fn seed(from: &Path, to: &Path) -> io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(from) else {
        return Ok(());
    };
    if !meta.is_dir() || fs::read_dir(to)?.next().is_some() {
        return Ok(());
    }
    let dst = Rc::new(open_dir(CWD, to.as_os_str())?);
    copy_dir_contents(from, &dst, &mut Links::new())?;
    set_attrs(&dst, &meta)
}

fn open_dir(at: impl AsFd, name: &OsStr) -> io::Result<OwnedFd> {
    crate::snapshot::open_dir(at.as_fd(), name)
}

fn owner(m: &fs::Metadata) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(m.uid())), Some(Gid::from_raw(m.gid())))
}

/// Files with several links already copied, by (dev, inode): the
/// directory and name of the copy, so the next link is a link again (a
/// busybox image's hundreds of applets stay one file).
type Links = HashMap<(u64, u64), (Rc<OwnedFd>, OsString)>;

fn copy_dir_contents(from: &Path, dst: &Rc<OwnedFd>, links: &mut Links) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let name = e.file_name();
        let src = from.join(&name);
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            rustix::fs::mkdirat(&**dst, &name, Mode::from_raw_mode(0o700))?;
            let sub = Rc::new(open_dir(&**dst, &name)?);
            copy_dir_contents(&src, &sub, links)?;
            set_attrs(&*sub, &m)?;
        } else if ft.is_symlink() {
            rustix::fs::symlinkat(fs::read_link(&src)?.as_os_str(), &**dst, &name)?;
            let (u, g) = owner(&m);
            rustix::fs::chownat(&**dst, &name, u, g, AtFlags::SYMLINK_NOFOLLOW)?;
            rustix::fs::utimensat(&**dst, &name, &times(&m), AtFlags::SYMLINK_NOFOLLOW)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                if let Some((dir, first)) = links.get(&(m.dev(), m.ino())) {
                    rustix::fs::linkat(&**dir, first, &**dst, &name, AtFlags::empty())?;
                    continue;
                }
                links.insert((m.dev(), m.ino()), (dst.clone(), name.clone()));
            }
            copy_file(&src, dst, &name, &m)?;
        } else {
            // FIFOs, sockets and device nodes: Docker copies them too, with
            // mknod; kiln's copy-up leaves them out.
            continue;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &OwnedFd, name: &OsStr, m: &fs::Metadata) -> io::Result<()> {
    let w = crate::snapshot::copy_file(rustix::fs::CWD, src.as_os_str(), dst.as_fd(), name)?;
    set_attrs(&w, m)
}

/// Owner, then mode (chown clears set-id bits), then times, on an open fd.
fn set_attrs(fd: impl AsFd, m: &fs::Metadata) -> io::Result<()> {
    let fd: BorrowedFd<'_> = fd.as_fd();
    let (u, g) = owner(m);
    rustix::fs::fchown(fd, u, g)?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode() & 0o7777))?;
    rustix::fs::futimens(fd, &times(m))?;
    Ok(())
}

pub(crate) fn times(m: &fs::Metadata) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn copies_tree_and_symlinks_without_following() {
        let d = tempfile::tempdir().unwrap();
        let from = d.path().join("img");
        let to = d.path().join("vol");
        fs::create_dir_all(from.join("sub")).unwrap();
        fs::create_dir(&to).unwrap();
        fs::write(from.join("sub/f"), b"hello").unwrap();
        fs::set_permissions(from.join("sub/f"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", from.join("link")).unwrap();
        fs::hard_link(from.join("sub/f"), from.join("hard")).unwrap();
        fs::set_permissions(&from, fs::Permissions::from_mode(0o750)).unwrap();
        seed(&from, &to).unwrap();
        assert_eq!(fs::read(to.join("sub/f")).unwrap(), b"hello");
        let m = fs::metadata(to.join("sub/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_eq!(
            fs::read_link(to.join("link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert_eq!(fs::metadata(&to).unwrap().mode() & 0o777, 0o750);
        assert_eq!(
            fs::metadata(to.join("hard")).unwrap().ino(),
            fs::metadata(to.join("sub/f")).unwrap().ino(),
            "hard links stay links"
        );
        // A volume that holds something is never seeded again.
        fs::write(from.join("new"), b"x").unwrap();
        seed(&from, &to).unwrap();
        assert!(!to.join("new").exists());
    }
}
