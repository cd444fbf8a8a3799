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

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps, CWD};

/// Copies the contents of `from` (a directory in the rootfs) into the
/// empty directory `to`, and gives `to` the owner and mode of `from`.
/// Does nothing when `to` already holds anything or `from` is not a
/// directory.
pub(crate) fn seed(from: &Path, to: &Path) -> io::Result<()> {
    let Ok(meta) = fs::symlink_metadata(from) else {
        return Ok(());
    };
    if !meta.is_dir() || fs::read_dir(to)?.next().is_some() {
        return Ok(());
    }
    copy_dir_contents(from, to)?;
    set_attrs(to, &meta)
}

fn copy_dir_contents(from: &Path, to: &Path) -> io::Result<()> {
    for e in fs::read_dir(from)? {
        let e = e?;
        let src = from.join(e.file_name());
        let dst = to.join(e.file_name());
        let m = fs::symlink_metadata(&src)?;
        let ft = m.file_type();
        if ft.is_dir() {
            fs::create_dir(&dst)?;
            copy_dir_contents(&src, &dst)?;
            set_attrs(&dst, &m)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
            set_times(&dst, &m)?;
        } else if ft.is_file() {
            copy_file(&src, &dst, &m)?;
        } else {
            // FIFOs, sockets and device nodes: Docker copies them too, with
            // mknod; kiln's volumes do not make device nodes (a volume is
            // mounted nodev anyway), so they are left out.
            continue;
        }
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path, m: &fs::Metadata) -> io::Result<()> {
    let inf = rustix::fs::open(
        src,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let outf = rustix::fs::open(
        dst,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut r = fs::File::from(inf);
    let mut w = fs::File::from(outf);
    io::copy(&mut r, &mut w)?;
    rustix::fs::fchown(
        &w,
        Some(rustix::process::Uid::from_raw(m.uid())),
        Some(rustix::process::Gid::from_raw(m.gid())),
    )?;
    // After chown, which clears set-id bits.
    w.set_permissions(fs::Permissions::from_mode(m.mode() & 0o7777))?;
    drop(w);
    set_times(dst, m)
}

fn set_attrs(p: &Path, m: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))?;
    fs::set_permissions(p, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    set_times(p, m)
}

fn set_times(p: &Path, m: &fs::Metadata) -> io::Result<()> {
    let ts = Timestamps {
        last_access: Timespec {
            tv_sec: m.atime(),
            tv_nsec: m.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: m.mtime(),
            tv_nsec: m.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // A volume that holds something is never seeded again.
        fs::write(from.join("new"), b"x").unwrap();
        seed(&from, &to).unwrap();
        assert!(!to.join("new").exists());
    }
}
