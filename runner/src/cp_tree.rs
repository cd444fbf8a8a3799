//! The tree copier behind `kiln cp`: every entry is opened once, as an
//! `O_PATH | O_NOFOLLOW` descriptor relative to its parent's, and read
//! through that descriptor, so what is copied is what was looked at:
//! links are copied as links, hard links inside the tree stay hard links,
//! and nothing the container changes mid-copy can redirect a read or a
//! write outside the two trees.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps, CWD};
use rustix::io::Errno;

use crate::cp::IdMap;
use crate::error::RunError;

/// Who owns what the copy creates.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    /// The caller (no chown): `kiln cp` out without `-a`, or into a
    /// container whose root is the caller (rootless).
    Caller,
    /// These host IDs: into a container without `-a` (its root).
    Fixed(u32, u32),
    /// `-a` into a container: the source's IDs are container IDs; these
    /// maps give their host IDs.
    ToHost { uids: IdMap, gids: IdMap },
    /// `-a` out of a container: the source's host IDs back to container IDs.
    ToContainer { uids: IdMap, gids: IdMap },
}

/// The kernel's "nobody" for an ID a map does not cover.
const OVERFLOW_ID: u32 = 65534;

impl Owner {
    fn ids(&self, st: &Stat) -> Option<(u32, u32)> {
        match self {
            Owner::Caller => None,
            Owner::Fixed(u, g) => Some((*u, *g)),
            Owner::ToHost { uids, gids } => Some((
                uids.to_host(st.st_uid).unwrap_or(OVERFLOW_ID),
                gids.to_host(st.st_gid).unwrap_or(OVERFLOW_ID),
            )),
            Owner::ToContainer { uids, gids } => Some((
                uids.to_container(st.st_uid).unwrap_or(OVERFLOW_ID),
                gids.to_container(st.st_gid).unwrap_or(OVERFLOW_ID),
            )),
        }
    }
}

/// Filesystems whose files are the kernel's, not the container's: a copy
/// out takes their mount points as empty directories (as `docker cp` of
/// `/` does not read `/proc`).
const VIRTUAL_FS: [i64; 10] = [
    0x9fa0,      // proc
    0x6265_6572, // sysfs
    0x0027_e0eb, // cgroup
    0x6367_7270, // cgroup2
    0x1cd1,      // devpts
    0x6462_6720, // debugfs
    0x7363_6673, // securityfs
    0x7472_6163, // tracefs
    0x1980_0202, // mqueue
    0xcafe_4a11, // bpf
];

pub(crate) struct Copier {
    owner: Owner,
    /// The source is a container's tree (its virtual mounts are skipped).
    from_container: bool,
    /// Hard links already copied: (dev, ino) -> where the first went.
    links: HashMap<(u64, u64), (OwnedFd, OsString)>,
    /// File content copied, in bytes.
    pub bytes: u64,
}

fn err(what: &OsStr, e: Errno) -> RunError {
    let name = what.to_string_lossy();
    match e {
        Errno::ROFS => RunError::Copy(format!(
            "cannot write {name}: the destination is on a read-only mount"
        )),
        _ => RunError::Copy(format!("{name}: {}", std::io::Error::from(e))),
    }
}

/// Open `fd` (an `O_PATH` descriptor) again for reading, through
/// `/proc/self/fd`: the same inode, never a path looked up again.
fn reopen(fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd, Errno> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::openat(
        CWD,
        p.as_str(),
        flags | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
}

impl Copier {
    pub fn new(owner: Owner, from_container: bool) -> Copier {
        Copier {
            owner,
            from_container,
            links: HashMap::new(),
            bytes: 0,
        }
    }

    /// Copy the entry `src` (an `O_PATH` descriptor) to `name` in `dst`.
    pub fn entry(
        &mut self,
        src: OwnedFd,
        dst: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), RunError> {
        let st = rustix::fs::fstat(&src).map_err(|e| err(name, e))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => self.dir(&src, &st, dst, name),
            FileType::RegularFile => self.file(&src, &st, dst, name),
            FileType::Symlink => self.symlink(&src, &st, dst, name),
            // Sockets belong to a process, not a tree (tar skips them too).
            FileType::Socket => Ok(()),
            kind => self.node(kind, &st, dst, name),
        }
    }

    /// Every entry of the directory `src` (open for reading) into `dst`.
    pub fn contents(&mut self, src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<(), RunError> {
        let dir = rustix::fs::Dir::read_from(src).map_err(|e| err(OsStr::new("."), e))?;
        for ent in dir {
            let ent = ent.map_err(|e| err(OsStr::new("."), e))?;
            let raw = ent.file_name().to_bytes();
            if raw == b"." || raw == b".." {
                continue;
            }
            let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(raw).to_os_string();
            let child = rustix::fs::openat(
                src,
                ent.file_name(),
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            );
            match child {
                Ok(c) => self.entry(c, dst, &name)?,
                // Gone since the listing (a running container's files move).
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(err(&name, e)),
            }
        }
        Ok(())
    }

    fn dir(
        &mut self,
        src: &OwnedFd,
        st: &Stat,
        dst: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), RunError> {
        match rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let have = rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| err(name, e))?;
                if FileType::from_raw_mode(have.st_mode) != FileType::Directory {
                    rustix::fs::unlinkat(dst, name, AtFlags::empty()).map_err(|e| err(name, e))?;
                    rustix::fs::mkdirat(dst, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| err(name, e))?;
                }
            }
            Err(e) => return Err(err(name, e)),
        }
        let out = rustix::fs::openat(
            dst,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(name, e))?;
        let input =
            reopen(src.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY).map_err(|e| err(name, e))?;
        let is_virtual = self.from_container
            && rustix::fs::fstatfs(&input).is_ok_and(|s| VIRTUAL_FS.contains(&{ s.f_type }));
        if !is_virtual {
            self.contents(input.as_fd(), out.as_fd())?;
        }
        self.set_meta(&out, st, name)
    }

    fn file(
        &mut self,
        src: &OwnedFd,
        st: &Stat,
        dst: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), RunError> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some((dir, first)) = self.links.get(&key) {
                clear(dst, name)?;
                return rustix::fs::linkat(dir, first.as_os_str(), dst, name, AtFlags::empty())
                    .map_err(|e| err(name, e));
            }
        }
        clear(dst, name)?;
        let out = rustix::fs::openat(
            dst,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| err(name, e))?;
        // NONBLOCK: a FIFO swapped in since the fstat does not hang us;
        // the fstat after the open checks it is the file we looked at.
        let input =
            reopen(src.as_fd(), OFlags::RDONLY | OFlags::NONBLOCK).map_err(|e| err(name, e))?;
        let again = rustix::fs::fstat(&input).map_err(|e| err(name, e))?;
        if (again.st_dev, again.st_ino) != key {
            return Err(RunError::Copy(format!(
                "{}: changed while it was copied",
                name.to_string_lossy()
            )));
        }
        let (mut r, mut w) = (File::from(input), File::from(out));
        self.bytes += std::io::copy(&mut r, &mut w)
            .map_err(|e| RunError::Copy(format!("{}: {e}", name.to_string_lossy())))?;
        let out = OwnedFd::from(w);
        self.set_meta(&out, st, name)?;
        if st.st_nlink > 1 {
            let dir = rustix::io::fcntl_dupfd_cloexec(dst, 0).map_err(|e| err(name, e))?;
            self.links.insert(key, (dir, name.to_os_string()));
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        src: &OwnedFd,
        st: &Stat,
        dst: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), RunError> {
        let target = rustix::fs::readlinkat(src, "", Vec::new()).map_err(|e| err(name, e))?;
        clear(dst, name)?;
        rustix::fs::symlinkat(target.as_c_str(), dst, name).map_err(|e| err(name, e))?;
        if let Some((u, g)) = self.owner.ids(st) {
            rustix::fs::chownat(
                dst,
                name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err(name, e))?;
        }
        let times = times_of(st);
        rustix::fs::utimensat(dst, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err(name, e))
    }

    fn node(
        &mut self,
        kind: FileType,
        st: &Stat,
        dst: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<(), RunError> {
        clear(dst, name)?;
        let mode = Mode::from_raw_mode(st.st_mode & 0o7777);
        rustix::fs::mknodat(dst, name, kind, mode, st.st_rdev).map_err(|e| match e {
            Errno::PERM => RunError::Copy(format!(
                "{}: cannot create a device node here (it needs root on the host)",
                name.to_string_lossy()
            )),
            e => err(name, e),
        })?;
        let out = rustix::fs::openat(
            dst,
            name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(name, e))?;
        if let Some((u, g)) = self.owner.ids(st) {
            rustix::fs::chownat(
                dst,
                name,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| err(name, e))?;
        }
        drop(out);
        rustix::fs::utimensat(dst, name, &times_of(st), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err(name, e))
    }

    /// Owner (first: chown clears set-ID bits), then mode, then times.
    fn set_meta(&self, fd: &OwnedFd, st: &Stat, name: &OsStr) -> Result<(), RunError> {
        if let Some((u, g)) = self.owner.ids(st) {
            rustix::fs::fchown(
                fd,
                Some(rustix::fs::Uid::from_raw(u)),
                Some(rustix::fs::Gid::from_raw(g)),
            )
            .map_err(|e| match e {
                Errno::PERM => RunError::Copy(format!(
                    "{}: cannot set its owner to {u}:{g} (keeping owners with -a needs root)",
                    name.to_string_lossy()
                )),
                e => err(name, e),
            })?;
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| err(name, e))?;
        rustix::fs::futimens(fd, &times_of(st)).map_err(|e| err(name, e))
    }
}

fn times_of(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}

/// Make room for a non-directory `name` in `dst`: an existing file or
/// link goes (never followed); a directory there is an error.
fn clear(dst: BorrowedFd<'_>, name: &OsStr) -> Result<(), RunError> {
    match rustix::fs::statat(dst, name, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err(name, e)),
        Ok(s) if FileType::from_raw_mode(s.st_mode) == FileType::Directory => {
            Err(RunError::Copy(format!(
                "cannot overwrite directory {} with non-directory",
                name.to_string_lossy()
            )))
        }
        Ok(_) => rustix::fs::unlinkat(dst, name, AtFlags::empty()).map_err(|e| err(name, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn path_fd(p: &std::path::Path) -> OwnedFd {
        rustix::fs::openat(
            CWD,
            p,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .unwrap()
    }

    #[test]
    fn trees_copy_with_links_as_links_and_hard_links_kept() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a"), "hello").unwrap();
        std::fs::hard_link(src.join("sub/a"), src.join("b")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", src.join("shadow")).unwrap();
        std::fs::set_permissions(src.join("sub/a"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        let dst = t.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let out = rustix::fs::openat(CWD, &dst, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty())
            .unwrap();
        let mut c = Copier::new(Owner::Caller, false);
        c.entry(path_fd(&src), out.as_fd(), OsStr::new("copy"))
            .unwrap();
        let got = dst.join("copy");
        assert_eq!(std::fs::read_to_string(got.join("sub/a")).unwrap(), "hello");
        assert_eq!(
            std::fs::read_link(got.join("shadow")).unwrap().to_str(),
            Some("/etc/shadow")
        );
        let a = std::fs::metadata(got.join("sub/a")).unwrap();
        let b = std::fs::metadata(got.join("b")).unwrap();
        assert_eq!(a.ino(), b.ino(), "hard link kept");
        assert_eq!(a.mode() & 0o7777, 0o4755);
        assert_eq!(c.bytes, 5);
        let smt = std::fs::metadata(src.join("sub")).unwrap().mtime();
        assert_eq!(std::fs::metadata(got.join("sub")).unwrap().mtime(), smt);
    }

    #[test]
    fn an_existing_link_at_the_destination_is_replaced_not_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("new"), "new").unwrap();
        std::fs::write(t.path().join("victim"), "keep").unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::os::unix::fs::symlink(t.path().join("victim"), d.join("f")).unwrap();
        let out =
            rustix::fs::openat(CWD, &d, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let mut c = Copier::new(Owner::Caller, false);
        c.entry(path_fd(&t.path().join("new")), out.as_fd(), OsStr::new("f"))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("victim")).unwrap(),
            "keep"
        );
        assert_eq!(std::fs::read_to_string(d.join("f")).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(d.join("f"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_file_does_not_replace_a_directory() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("new"), "new").unwrap();
        std::fs::create_dir_all(t.path().join("d/f")).unwrap();
        let out = rustix::fs::openat(
            CWD,
            t.path().join("d"),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let e = Copier::new(Owner::Caller, false)
            .entry(path_fd(&t.path().join("new")), out.as_fd(), OsStr::new("f"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot overwrite directory f with non-directory"
        );
    }
}
