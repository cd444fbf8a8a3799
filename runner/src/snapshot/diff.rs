//! The diff of a copied root after the container ran, written into the
//! upper dir in overlayfs's own format, so that the layer writer reads it
//! as it reads an overlay upper dir: changed and added entries (moved out
//! of the copy, hard links kept), whiteouts (0/0 character devices) for
//! what was deleted, opaque directories where a directory replaced
//! something of the image's.
//!
//! An entry is unchanged when its inode and change time are those of the
//! index (the kernel moves the change time on every write, chmod, chown,
//! link and rename, and nothing can set it back). When only the change
//! time moved, the metadata a layer records is compared, and where the
//! modification time has no sub-second part (every file unpacked from a
//! tar), the contents too, as containerd's naive diff does.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FileType, Mode, Stat};

use super::fsops::{self, file_type};
use super::index::{Index, Seen};
use super::merge::Origins;

struct Frame {
    rel: PathBuf,
    name: OsString,
    new: OwnedFd,
    /// The directory's metadata before anything was moved out of it.
    st: Stat,
    upper: Option<Rc<OwnedFd>>,
    opaque: bool,
}

struct Cx<'a> {
    index: &'a Index,
    origins: &'a Origins,
    /// Files with several links already moved into the upper dir.
    links: HashMap<(u64, u64), (Rc<OwnedFd>, OsString)>,
}

/// Writes the changes of the tree at `root` since `index` was taken into
/// the empty directory `upper`, moving entries out of `root`.
pub(crate) fn diff_into(
    root: &Path,
    index: &Index,
    origins: &Origins,
    upper: &Path,
) -> io::Result<()> {
    let new = fsops::open_dir(rustix::fs::CWD, root.as_os_str())?;
    let st = rustix::fs::fstat(&new)?;
    let up = fsops::open_dir(rustix::fs::CWD, upper.as_os_str())?;
    let mut stack = vec![Frame {
        rel: PathBuf::new(),
        name: OsString::new(),
        new,
        st,
        upper: Some(Rc::new(up)),
        opaque: false,
    }];
    let mut cx = Cx {
        index,
        origins,
        links: HashMap::new(),
    };
    diff_dir(&mut stack, false, &mut cx)
}

/// The top frame's directory: its entries, then the whiteouts of what it
/// lost. `fresh`: the directory is not the image's (added or replacing
/// something), so everything in it is added.
fn diff_dir(stack: &mut Vec<Frame>, fresh: bool, cx: &mut Cx<'_>) -> io::Result<()> {
    let top = stack.last().expect("a frame");
    let rel = top.rel.clone();
    let names = fsops::entries(top.new.as_fd())?;
    for name in &names {
        let child = rel.join(name);
        let top = stack.last().expect("a frame");
        let st = fsops::stat_at(top.new.as_fd(), name)?;
        let old = if fresh {
            None
        } else {
            cx.index.seen.get(&child)
        };
        if file_type(&st) == FileType::Directory {
            let new = fsops::open_dir(top.new.as_fd(), name)?;
            // The same directory: not one made again on a reused inode.
            let same_inode = old.is_some_and(|o| {
                o.is_dir && o.ino == st.st_ino && o.generation == fsops::generation(new.as_fd())
            });
            let untouched = same_inode && old.is_some_and(|o| o.untouched(&st));
            stack.push(Frame {
                rel: child,
                name: name.clone(),
                new,
                st,
                upper: None,
                opaque: !same_inode && old.is_some_and(|o| !o.stub),
            });
            if !untouched {
                ensure_upper(stack)?;
            }
            diff_dir(stack, fresh || !same_inode, cx)?;
            finish_frame(stack.pop().expect("pushed"))?;
        } else if !old.is_some_and(|o| unchanged(o, &st, &child, top.new.as_fd(), name, cx)) {
            let up = ensure_upper(stack)?;
            let top = stack.last().expect("a frame");
            move_entry(top.new.as_fd(), name, &st, &up, cx)?;
        }
    }
    if fresh {
        return Ok(());
    }
    let now: HashSet<&OsString> = names.iter().collect();
    for gone in cx.index.children.get(&rel).into_iter().flatten() {
        if now.contains(gone) || cx.index.seen.get(&rel.join(gone)).is_some_and(|s| s.stub) {
            continue;
        }
        let up = ensure_upper(stack)?;
        whiteout(up.as_fd(), gone)?;
    }
    Ok(())
}

/// overlayfs's whiteout (a 0/0 character device), or where the upper dir's
/// filesystem refuses to make one (overlayfs itself: a store in a
/// container's own root), OCI's: an empty `.wh.NAME`, root's, 0644, which
/// the layer writer emits as the same tar entry.
fn whiteout(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0) {
        Err(rustix::io::Errno::PERM) => {}
        r => return Ok(r?),
    }
    let mut marker = OsString::from(".wh.");
    marker.push(name);
    let fd = rustix::fs::openat(
        dir,
        &marker,
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::EXCL
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o644))?)
}

/// A non-directory the image had: untouched, or touched without a change a
/// layer would record.
fn unchanged(
    old: &Seen,
    st: &Stat,
    rel: &Path,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    cx: &Cx<'_>,
) -> bool {
    if old.is_dir {
        return false;
    }
    if old.untouched(st) {
        return true;
    }
    if !old.same_metadata(st) {
        return false;
    }
    if file_type(st) != FileType::RegularFile || st.st_mtime_nsec != 0 {
        return true;
    }
    cx.origins
        .get(rel)
        .is_some_and(|origin| same_contents(origin, dir, name).unwrap_or(false))
}

fn same_contents(origin: &Path, dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let a = std::fs::File::open(origin)?;
    let b = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let (mut a, mut b) = (
        io::BufReader::new(a),
        io::BufReader::new(std::fs::File::from(b)),
    );
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = read_full(&mut a, &mut x)?;
        let m = read_full(&mut b, &mut y)?;
        if n != m || x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The upper dir of the top frame, made (with its parents) on first use.
fn ensure_upper(stack: &mut [Frame]) -> io::Result<Rc<OwnedFd>> {
    let first_missing = stack
        .iter()
        .rposition(|f| f.upper.is_some())
        .map_or(0, |i| i + 1);
    for i in first_missing..stack.len() {
        let parent = stack[i - 1].upper.clone().expect("made above");
        let name = stack[i].name.clone();
        rustix::fs::mkdirat(parent.as_ref(), &name, Mode::from_raw_mode(0o700))?;
        stack[i].upper = Some(Rc::new(fsops::open_dir(parent.as_fd(), &name)?));
    }
    Ok(stack.last().and_then(|f| f.upper.clone()).expect("made"))
}

/// The upper copy of a directory gets its metadata once its entries are
/// in (adding them moved its times).
fn finish_frame(f: Frame) -> io::Result<()> {
    let Some(up) = f.upper else { return Ok(()) };
    if f.opaque {
        fsops::set_opaque(up.as_fd())?;
    }
    let xattrs = fsops::xattrs(f.new.as_fd())?;
    fsops::set_meta(up.as_fd(), &f.st, &xattrs)
}

/// Moves a changed or added non-directory into the upper dir; a further
/// name of a file already moved becomes a hard link to it there.
fn move_entry(
    from: BorrowedFd<'_>,
    name: &OsStr,
    st: &Stat,
    to: &Rc<OwnedFd>,
    cx: &mut Cx<'_>,
) -> io::Result<()> {
    if file_type(st) == FileType::RegularFile && st.st_nlink > 1 {
        let key = (st.st_dev, st.st_ino);
        if let Some((dir, first)) = cx.links.get(&key) {
            return Ok(rustix::fs::linkat(
                dir.as_ref(),
                first,
                to.as_ref(),
                name,
                rustix::fs::AtFlags::empty(),
            )?);
        }
        cx.links.insert(key, (to.clone(), name.to_os_string()));
    }
    Ok(rustix::fs::renameat(from, name, to.as_ref(), name)?)
}
