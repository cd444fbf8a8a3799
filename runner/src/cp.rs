//! `kiln cp`: files between a running container and the host, with
//! docker's rules for where a copy lands, and no way for the container's
//! files to reach the host's.
//!
//! The container's root is its PID 1's `/proc/<pid>/root` (its mount
//! namespace's view: volumes and bind mounts included). A container path
//! is resolved with `openat2(RESOLVE_IN_ROOT)` under that root, so a
//! symlink in it (absolute, or climbing with `..`) resolves as it would
//! inside the container, never onto the host; then every entry of the
//! copied tree is opened relative to its parent's descriptor with
//! `O_NOFOLLOW` ([`crate::cp_tree`]), so a link met on the way is copied
//! as a link and a directory swapped for a link mid-copy is not followed.
//! Only `-L` follows the source's own final link, and still inside the
//! container's root.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

use crate::cp_tree::{Copier, Owner};
use crate::error::RunError;

/// `kiln cp`'s flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpOptions {
    /// `-a`: keep the files' owners (container IDs on both sides).
    pub archive: bool,
    /// `-L`: follow a symlink given as the source.
    pub follow_link: bool,
}

/// Where a copy lands, by docker's rules (`docker cp --help`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Landing {
    /// Create (or overwrite) the entry `name` in the destination's parent.
    As,
    /// Into the existing destination directory, under the source's name.
    Into,
    /// The source directory's content into the existing destination.
    ContentsInto,
}

/// What the source is, as far as the rules care.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SrcShape {
    pub is_dir: bool,
    /// The path ends with `/.`: copy a directory's content.
    pub contents_only: bool,
}

/// Docker's rules. `dest_dir`: None when DEST does not exist, else
/// whether it is a directory; `dest_slash`: DEST ends with `/`.
pub(crate) fn landing(
    src: SrcShape,
    dest_dir: Option<bool>,
    dest_slash: bool,
    dest: &str,
) -> Result<Landing, String> {
    match (src.is_dir, dest_dir) {
        (false, None) if dest_slash => Err(format!(
            "destination directory {dest} does not exist (a path ending in / must be an existing directory)"
        )),
        (_, None) => Ok(Landing::As),
        (false, Some(false)) => Ok(Landing::As),
        (true, Some(false)) => Err(format!("cannot copy a directory to a file: {dest}")),
        (false, Some(true)) => Ok(Landing::Into),
        (true, Some(true)) if src.contents_only => Ok(Landing::ContentsInto),
        (true, Some(true)) => Ok(Landing::Into),
    }
}

/// A path's parent (for `openat2`) and last component; `/.` and a
/// trailing `/` are noted. The last component of `/`, `.` or `..` is
/// `.` after resolving the whole path as the parent.
pub(crate) struct Split<'a> {
    pub parent: &'a str,
    pub name: &'a str,
    pub contents_only: bool,
    pub slash: bool,
}

pub(crate) fn split(path: &str) -> Split<'_> {
    let contents_only = path.ends_with("/.") || path == ".";
    let slash = path.ends_with('/');
    let trimmed = path.trim_end_matches('/');
    let trimmed = trimmed.strip_suffix("/.").unwrap_or(trimmed);
    let (parent, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (".", trimmed),
    };
    let parent = if parent.is_empty() { "/" } else { parent };
    match name {
        "" | "." | ".." => Split {
            parent: if trimmed.is_empty() { "/" } else { trimmed },
            name: ".",
            contents_only,
            slash,
        },
        _ => Split {
            parent,
            name,
            contents_only,
            slash,
        },
    }
}

/// One side of a copy: the host, or a container's root.
pub(crate) enum Side<'a> {
    Host,
    Container { root: BorrowedFd<'a> },
}

impl Side<'_> {
    /// Open `path` on this side; in a container, every link it meets
    /// resolves inside the container's root.
    fn open(&self, path: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC;
        match self {
            Side::Host => rustix::fs::openat(CWD, path, flags, Mode::empty()),
            Side::Container { root } => rustix::fs::openat2(
                root,
                path,
                flags,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ),
        }
    }

    fn error(&self, path: &str, e: Errno) -> RunError {
        let cause = std::io::Error::from(e);
        match self {
            Side::Container { .. } if e == Errno::NOENT => {
                RunError::Copy(format!("Could not find the file {path} in container"))
            }
            Side::Container { .. } => RunError::Copy(format!("{path} in container: {cause}")),
            Side::Host => RunError::Copy(format!("{path}: {cause}")),
        }
    }

    /// The source entry as an `O_PATH` descriptor: the link itself unless
    /// `follow`.
    fn source(&self, path: &str, follow: bool) -> Result<OwnedFd, RunError> {
        let sp = split(path);
        let got = if sp.name == "." {
            self.open(sp.parent, OFlags::PATH | OFlags::DIRECTORY)
        } else if follow {
            self.open(&join(sp.parent, sp.name), OFlags::PATH)
        } else {
            self.open(sp.parent, OFlags::PATH | OFlags::DIRECTORY)
                .and_then(|dir| {
                    rustix::fs::openat(
                        &dir,
                        sp.name,
                        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                })
        };
        got.map_err(|e| self.error(path, e))
    }

    /// What is at `path` (links followed, inside the root): None if nothing.
    fn kind(&self, path: &str) -> Result<Option<FileType>, RunError> {
        match self.open(path, OFlags::PATH) {
            Ok(fd) => {
                let st = rustix::fs::fstat(&fd).map_err(|e| self.error(path, e))?;
                Ok(Some(FileType::from_raw_mode(st.st_mode)))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.error(path, e)),
        }
    }

    /// The directory `path`, open for reading and writing entries.
    fn dir(&self, path: &str) -> Result<OwnedFd, RunError> {
        self.open(path, OFlags::RDONLY | OFlags::DIRECTORY)
            .map_err(|e| self.error(path, e))
    }
}

fn join(parent: &str, name: &str) -> String {
    if parent.ends_with('/') {
        format!("{parent}{name}")
    } else {
        format!("{parent}/{name}")
    }
}

/// Copy `src` on `from` to `dest` on `to`, by docker's rules. Returns the
/// bytes of file content copied.
pub(crate) fn copy(
    from: &Side<'_>,
    src: &str,
    to: &Side<'_>,
    dest: &str,
    opts: CpOptions,
    owner: Owner,
) -> Result<u64, RunError> {
    let ssp = split(src);
    let entry = from.source(src, opts.follow_link)?;
    let st = rustix::fs::fstat(&entry).map_err(|e| from.error(src, e))?;
    let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
    if ssp.slash && !is_dir {
        return Err(RunError::Copy(format!("{src}: not a directory")));
    }
    let dsp = split(dest);
    let dkind = to.kind(dest)?;
    let shape = SrcShape {
        is_dir,
        // A source of `/` or `.` has no name of its own to land under.
        contents_only: ssp.contents_only || ssp.name == ".",
    };
    let how = landing(
        shape,
        dkind.map(|k| k == FileType::Directory),
        dsp.slash,
        dest,
    )
    .map_err(RunError::Copy)?;
    let mut c = Copier::new(owner, matches!(from, Side::Container { .. }));
    let src_name = OsStr::from_bytes(ssp.name.as_bytes());
    match how {
        Landing::As => {
            if dsp.name == "." {
                return Err(RunError::Copy(format!("{dest}: not a valid destination")));
            }
            let parent = to.dir(dsp.parent)?;
            c.entry(entry, parent.as_fd(), OsStr::new(dsp.name))?
        }
        Landing::Into => c.entry(entry, to.dir(dest)?.as_fd(), src_name)?,
        Landing::ContentsInto => {
            let input = rustix::fs::openat(
                &entry,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| from.error(src, e))?;
            c.contents(input.as_fd(), to.dir(dest)?.as_fd())?
        }
    }
    Ok(c.bytes)
}

/// A running container's root, with its ID maps.
pub(crate) struct Root {
    pub fd: OwnedFd,
    pub uids: IdMap,
    pub gids: IdMap,
}

impl Root {
    /// The root of the process `pid` (the container's PID 1).
    pub fn of(pid: i32) -> Result<Root, RunError> {
        let fd = rustix::fs::openat(
            CWD,
            format!("/proc/{pid}/root").as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| RunError::io("opening the container's root", e.into()))?;
        // In the container's own user namespace (rootless kiln joins it),
        // its IDs are ours: /proc/PID/uid_map would show the parent's.
        let ours = crate::userns::in_user_namespace_of(pid);
        let map = |f: &str| {
            if ours {
                return Ok(IdMap::parse("0 0 4294967295"));
            }
            std::fs::read_to_string(format!("/proc/{pid}/{f}"))
                .map(|s| IdMap::parse(&s))
                .map_err(|e| RunError::io(format!("reading the container's {f}"), e))
        };
        Ok(Root {
            fd,
            uids: map("uid_map")?,
            gids: map("gid_map")?,
        })
    }

    /// `kiln cp CONTAINER:SRC DEST`.
    pub fn copy_out(&self, src: &str, dest: &str, opts: CpOptions) -> Result<u64, RunError> {
        let owner = if opts.archive {
            Owner::ToContainer {
                uids: self.uids.clone(),
                gids: self.gids.clone(),
            }
        } else {
            Owner::Caller
        };
        let from = Side::Container {
            root: self.fd.as_fd(),
        };
        copy(&from, src, &Side::Host, dest, opts, owner)
    }

    /// `kiln cp SRC CONTAINER:DEST`: new files belong to the container's
    /// root, or with `-a` keep their IDs as container IDs.
    pub fn copy_in(&self, src: &str, dest: &str, opts: CpOptions) -> Result<u64, RunError> {
        let owner = if opts.archive {
            Owner::ToHost {
                uids: self.uids.clone(),
                gids: self.gids.clone(),
            }
        } else if rustix::process::geteuid().is_root() {
            Owner::Fixed(
                self.uids.to_host(0).unwrap_or(0),
                self.gids.to_host(0).unwrap_or(0),
            )
        } else {
            // Rootless: what the caller creates is the container's root.
            Owner::Caller
        };
        let to = Side::Container {
            root: self.fd.as_fd(),
        };
        copy(&Side::Host, src, &to, dest, opts, owner)
    }
}

/// An ID map of a process (`/proc/<pid>/uid_map`): inside, outside, count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct IdMap(pub Vec<(u32, u32, u32)>);

impl IdMap {
    pub fn parse(s: &str) -> IdMap {
        IdMap(
            s.lines()
                .filter_map(|l| {
                    let f: Vec<u32> = l
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    (f.len() == 3).then(|| (f[0], f[1], f[2]))
                })
                .collect(),
        )
    }

    /// The host ID of a container ID.
    pub fn to_host(&self, id: u32) -> Option<u32> {
        self.0
            .iter()
            .find(|(i, _, n)| id >= *i && id - i < *n)
            .map(|(i, o, _)| o + (id - i))
    }

    /// The container ID of a host ID.
    pub fn to_container(&self, id: u32) -> Option<u32> {
        self.0
            .iter()
            .find(|(_, o, n)| id >= *o && id - o < *n)
            .map(|(i, o, _)| i + (id - o))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: SrcShape = SrcShape {
        is_dir: false,
        contents_only: false,
    };
    const DIR: SrcShape = SrcShape {
        is_dir: true,
        contents_only: false,
    };
    const DIR_DOT: SrcShape = SrcShape {
        is_dir: true,
        contents_only: true,
    };

    #[test]
    fn landings_follow_dockers_table() {
        assert_eq!(landing(FILE, None, false, "d"), Ok(Landing::As));
        assert!(landing(FILE, None, true, "d/")
            .unwrap_err()
            .contains("does not exist"));
        assert_eq!(landing(FILE, Some(false), false, "d"), Ok(Landing::As));
        assert_eq!(landing(FILE, Some(true), false, "d"), Ok(Landing::Into));
        assert_eq!(landing(DIR, None, false, "d"), Ok(Landing::As));
        assert_eq!(
            landing(DIR, Some(false), false, "f"),
            Err("cannot copy a directory to a file: f".into())
        );
        assert_eq!(landing(DIR, Some(true), false, "d"), Ok(Landing::Into));
        assert_eq!(
            landing(DIR_DOT, Some(true), false, "d"),
            Ok(Landing::ContentsInto)
        );
        assert_eq!(landing(DIR_DOT, None, false, "d"), Ok(Landing::As));
    }

    #[test]
    fn paths_split_into_parent_and_name() {
        let s = split("/etc/passwd");
        assert_eq!(
            (s.parent, s.name, s.contents_only, s.slash),
            ("/etc", "passwd", false, false)
        );
        let s = split("/data/.");
        assert_eq!((s.parent, s.name, s.contents_only), ("/", "data", true));
        let s = split("/data/");
        assert_eq!((s.parent, s.name, s.slash), ("/", "data", true));
        let s = split("/");
        assert_eq!((s.parent, s.name), ("/", "."));
        let s = split("file");
        assert_eq!((s.parent, s.name), (".", "file"));
        let s = split("/a/..");
        assert_eq!((s.parent, s.name), ("/a/..", "."));
        let s = split(".");
        assert_eq!((s.parent, s.name, s.contents_only), (".", ".", true));
    }

    #[test]
    fn id_maps_go_both_ways() {
        let m =
            IdMap::parse("         0       1000          1\n         1     100000      65536\n");
        assert_eq!(m.to_host(0), Some(1000));
        assert_eq!(m.to_host(1), Some(100000));
        assert_eq!(m.to_host(65536), Some(165535));
        assert_eq!(m.to_host(65537), None);
        assert_eq!(m.to_container(1000), Some(0));
        assert_eq!(m.to_container(100005), Some(6));
        assert_eq!(m.to_container(5), None);
        let identity = IdMap::parse("0 0 4294967295\n");
        assert_eq!(identity.to_host(1234), Some(1234));
    }
}
