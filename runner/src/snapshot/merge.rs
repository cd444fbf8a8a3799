//! The merged view of overlay lower dirs, copied into one plain directory:
//! what overlayfs would show, made by hand for where it cannot be mounted.
//!
//! A directory shows the union of the same-named directories of the layers
//! from the top-most down, stopping below an opaque one or where a layer
//! has a whiteout or a non-directory by that name; any other name shows
//! the top-most layer's entry, and a whiteout hides it.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, Stat};

use super::fsops::{self, file_type, is_whiteout};

/// Where each copied regular file came from (its path in the lower dir
/// that shows it), for a diff that must compare contents.
pub(crate) type Origins = HashMap<PathBuf, PathBuf>;

struct Cx<'a> {
    lowers: &'a [PathBuf],
    /// Files with several links already copied, by (dev, inode): the copy's
    /// directory and name, so the next name is a link again.
    links: HashMap<(u64, u64), (std::rc::Rc<OwnedFd>, OsString)>,
    origins: Origins,
}

/// One layer's directory at the path being merged.
struct Src {
    layer: usize,
    fd: OwnedFd,
}

/// Copies the merged view of `lowers` (top-most first) into the empty
/// directory `dest`, owners, modes, xattrs and times kept.
pub(crate) fn merge_into(lowers: &[PathBuf], dest: &Path) -> io::Result<Origins> {
    let dst = std::rc::Rc::new(fsops::open_dir(rustix::fs::CWD, dest.as_os_str())?);
    let mut srcs = Vec::new();
    for (layer, l) in lowers.iter().enumerate() {
        let fd = fsops::open_dir(rustix::fs::CWD, l.as_os_str())
            .map_err(|e| io::Error::new(e.kind(), format!("lower dir {}: {e}", l.display())))?;
        let opaque = fsops::is_opaque(fd.as_fd());
        srcs.push(Src { layer, fd });
        if opaque {
            break;
        }
    }
    let mut cx = Cx {
        lowers,
        links: HashMap::new(),
        origins: HashMap::new(),
    };
    merge_dir(&srcs, &dst, Path::new(""), &mut cx)?;
    if let Some(top) = srcs.first() {
        let st = rustix::fs::fstat(&top.fd)?;
        fsops::set_meta(dst.as_fd(), &st, &fsops::xattrs(top.fd.as_fd())?)?;
    }
    Ok(cx.origins)
}

fn merge_dir(
    srcs: &[Src],
    dst: &std::rc::Rc<OwnedFd>,
    rel: &Path,
    cx: &mut Cx<'_>,
) -> io::Result<()> {
    // name -> (index into srcs, lstat) of the entry that shows; None: a
    // whiteout hides every lower one.
    let mut shown: BTreeMap<OsString, Option<(usize, Stat)>> = BTreeMap::new();
    for (i, s) in srcs.iter().enumerate() {
        for name in fsops::entries(s.fd.as_fd())? {
            if shown.contains_key(&name) {
                continue;
            }
            let st = fsops::stat_at(s.fd.as_fd(), &name)?;
            shown.insert(name, (!is_whiteout(&st)).then_some((i, st)));
        }
    }
    for (name, entry) in shown {
        let Some((i, st)) = entry else { continue };
        let child = rel.join(&name);
        if file_type(&st) == FileType::Directory {
            let sub = layers_below(&srcs[i..], &name)?;
            rustix::fs::mkdirat(dst.as_ref(), &name, Mode::from_raw_mode(0o700))?;
            let d = std::rc::Rc::new(fsops::open_dir(dst.as_fd(), &name)?);
            merge_dir(&sub, &d, &child, cx)?;
            fsops::set_meta(d.as_fd(), &st, &fsops::xattrs(sub[0].fd.as_fd())?)?;
        } else {
            copy_leaf(&srcs[i], &name, &st, dst, &child, cx)?;
        }
    }
    Ok(())
}

/// The directories named `name` that show through, from the layer of
/// `srcs[0]` down: each layer's is added until one is opaque, or a layer
/// has a whiteout or a non-directory by that name.
fn layers_below(srcs: &[Src], name: &OsStr) -> io::Result<Vec<Src>> {
    let mut out = Vec::new();
    for s in srcs {
        let st = match fsops::stat_at(s.fd.as_fd(), name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type(&st) != FileType::Directory {
            break;
        }
        let fd = fsops::open_dir(s.fd.as_fd(), name)?;
        let opaque = fsops::is_opaque(fd.as_fd());
        out.push(Src { layer: s.layer, fd });
        if opaque {
            break;
        }
    }
    Ok(out)
}

fn copy_leaf(
    src: &Src,
    name: &OsStr,
    st: &Stat,
    dst: &std::rc::Rc<OwnedFd>,
    rel: &Path,
    cx: &mut Cx<'_>,
) -> io::Result<()> {
    let is_file = file_type(st) == FileType::RegularFile;
    if is_file && st.st_nlink > 1 {
        let key = (st.st_dev, st.st_ino);
        if let Some((dir, first)) = cx.links.get(&key) {
            rustix::fs::linkat(
                dir.as_ref(),
                first,
                dst.as_ref(),
                name,
                rustix::fs::AtFlags::empty(),
            )?;
            cx.origins
                .insert(rel.to_path_buf(), cx.lowers[src.layer].join(rel));
            return Ok(());
        }
        cx.links.insert(key, (dst.clone(), name.to_os_string()));
    }
    if fsops::copy_node(src.fd.as_fd(), name, st, dst.as_fd(), name)? && is_file {
        cx.origins
            .insert(rel.to_path_buf(), cx.lowers[src.layer].join(rel));
    }
    Ok(())
}
