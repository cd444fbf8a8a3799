//! A read-only merged view over a stack of snapshot directories (the way
//! overlayfs would show them, whiteouts and opaque directories included),
//! used to read files of an image without mounting it: /etc/passwd for
//! `--chown`, the sources of `COPY --from`, whether a destination exists.
//! Plus the small file-writing helpers the COPY executor needs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use kiln_runner::user::{self, parse_id_field, range_subject, IdField, MAX_ID};

const MAX_SYMLINK_HOPS: usize = 40;

/// Splits an absolute or relative container path into clean components,
/// resolving "." and ".." lexically (".." at the root stays at the root).
pub fn clean_components(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

/// "/a/b" form of a cleaned path.
pub fn clean_abs(path: &str) -> String {
    let c = clean_components(path);
    if c.is_empty() {
        "/".to_string()
    } else {
        format!("/{}", c.join("/"))
    }
}

fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let name = b"trusted.overlay.opaque\0";
    let mut buf = [0u8; 4];
    // SAFETY: both strings are NUL-terminated and the buffer length is passed.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr().cast(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// What a path is in the merged view.
#[derive(Debug, Clone)]
pub struct Found {
    /// The real file in the top-most layer that has it.
    pub real: PathBuf,
    pub meta: fs::Metadata,
}

#[derive(Debug, Clone, Default)]
pub struct RootView {
    /// Snapshot dirs, top-most first (overlay's lowerdir order).
    pub layers: Vec<PathBuf>,
}

impl RootView {
    pub fn new(layers: Vec<PathBuf>) -> RootView {
        RootView { layers }
    }

    /// Looks up a cleaned path (components) without following a symlink in
    /// the last component; intermediate components must already be
    /// resolved (use `resolve`).
    fn lookup_raw(&self, comps: &[String]) -> Option<Found> {
        'layers: for layer in &self.layers {
            let mut p = layer.clone();
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                match fs::symlink_metadata(&p) {
                    Err(_) => {
                        // Not in this layer; an opaque ancestor above hides
                        // the lower layers.
                        let mut q = layer.clone();
                        for c in &comps[..i] {
                            q.push(c);
                            if is_opaque(&q) {
                                return None;
                            }
                        }
                        continue 'layers;
                    }
                    Ok(m) if is_whiteout(&m) => return None,
                    Ok(m) => {
                        if i + 1 == comps.len() {
                            return Some(Found { real: p, meta: m });
                        }
                        if !m.is_dir() {
                            // A file or symlink shadows everything below.
                            return None;
                        }
                    }
                }
            }
            // comps empty: the root.
            if let Ok(m) = fs::symlink_metadata(layer) {
                return Some(Found {
                    real: layer.clone(),
                    meta: m,
                });
            }
        }
        None
    }

    /// Resolves `path` inside the view, following symlinks (all of them,
    /// or all but the last component), never leaving the root: an absolute
    /// target restarts at the view's root and ".." stops there.
    /// Returns the resolved components and what is there, if anything.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Result<(Vec<String>, Option<Found>)> {
        let mut todo: Vec<String> = clean_components(path);
        todo.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            if c == "." || c.is_empty() {
                continue;
            }
            done.push(c);
            let last = todo.is_empty();
            let Some(found) = self.lookup_raw(&done) else {
                if last {
                    return Ok((done, None));
                }
                // Missing intermediate directory: what remains is lexical.
                while let Some(c) = todo.pop() {
                    match c.as_str() {
                        ".." => {
                            done.pop();
                        }
                        "." | "" => {}
                        _ => done.push(c),
                    }
                }
                return Ok((done, None));
            };
            if found.meta.file_type().is_symlink() && (!last || follow_last) {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    bail!("too many levels of symbolic links resolving {path}");
                }
                let target = fs::read_link(&found.real)?;
                let target = target.to_string_lossy().into_owned();
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                let mut t: Vec<String> = target
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                t.reverse();
                todo.extend(t);
                continue;
            }
            if last {
                return Ok((done, Some(found)));
            }
        }
        Ok((done, self.lookup_raw(&[])))
    }

    pub fn stat(&self, path: &str) -> Result<Option<Found>> {
        Ok(self.resolve(path, true)?.1)
    }

    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self.stat(path)? {
            Some(f) if f.meta.is_file() => Ok(Some(fs::read(&f.real)?)),
            _ => Ok(None),
        }
    }

    /// The merged entries of a (resolved) directory: name -> real path in
    /// the layer that provides it.
    pub fn read_dir(&self, comps: &[String]) -> Result<BTreeMap<String, PathBuf>> {
        let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut hidden: std::collections::BTreeSet<String> = Default::default();
        for layer in &self.layers {
            let mut p = layer.clone();
            let mut present = true;
            for (i, c) in comps.iter().enumerate() {
                p.push(c);
                match fs::symlink_metadata(&p) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        // whiteout or non-dir: hides the lower layers
                        let _ = i;
                        return Ok(out);
                    }
                    Err(_) => {
                        present = false;
                        break;
                    }
                }
            }
            if present {
                for item in fs::read_dir(&p)? {
                    let item = item?;
                    let name = item.file_name().to_string_lossy().into_owned();
                    if out.contains_key(&name) || hidden.contains(&name) {
                        continue;
                    }
                    let m = item.metadata()?;
                    if is_whiteout(&m) {
                        hidden.insert(name);
                    } else {
                        out.insert(name, item.path());
                    }
                }
                if is_opaque(&p) {
                    break;
                }
            } else {
                // Stop at an opaque ancestor present in this layer.
                let mut q = layer.clone();
                for c in comps {
                    q.push(c);
                    if q.is_dir() && is_opaque(&q) {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Resolves a `--chown`/`USER` spec to numeric ids by reading the image's
/// own /etc/passwd and /etc/group (never the host's), as BuildKit's file
/// operations do: a user named alone gets its primary gid from passwd, a
/// number alone is both ids, and a group name /etc/group does not know
/// leaves that gid (BuildKit does not fail there). An unknown user name is
/// an error (BuildKit silently uses root: see fixtures/cases/README.md).
/// IDs follow runc's range (0 to 2^31-1), in the spec and in the entries it
/// selects.
pub fn resolve_user(view: &RootView, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match parse_id_field(user) {
        IdField::Id(n) => (n, n),
        IdField::OutOfRange => bail!("{}", out_of_range(spec, user)),
        IdField::Name(name) => {
            let Some(ids) = lookup_ids(view, "/etc/passwd", name, 2)? else {
                bail!("unable to find user {name}: no matching entries in passwd file");
            };
            (ids[0], ids[1])
        }
    };
    let gid = match group.map(parse_id_field) {
        None => primary,
        Some(IdField::Id(n)) => n,
        Some(IdField::OutOfRange) => bail!("{}", out_of_range(spec, group.unwrap_or(""))),
        Some(IdField::Name(name)) => lookup_ids(view, "/etc/group", name, 1)?
            .map(|ids| ids[0])
            .unwrap_or(primary),
    };
    Ok((uid, gid))
}

fn out_of_range(spec: &str, id: &str) -> String {
    format!(
        "invalid user {}: uids and gids must be in range 0-{MAX_ID}",
        range_subject(spec, id)
    )
}

/// The uid and primary gid (`/etc/passwd`) or the gid (`/etc/group`) of
/// the first entry of the image's `file` naming `name`, read by the
/// runner's parser (the one USER uses); an entry whose id is not a number
/// in range is an error naming the line.
fn lookup_ids(view: &RootView, file: &str, name: &str, count: usize) -> Result<Option<Vec<u32>>> {
    let Some(bytes) = view.read_file(file)? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    let found = match (file, count) {
        ("/etc/group", _) => user::group_gid(&text, name).map(|g| g.map(|g| vec![g])),
        (_, 1) => user::passwd_uid(&text, name).map(|u| u.map(|u| vec![u])),
        _ => user::passwd_ids(&text, name).map(|ids| ids.map(|(u, g)| vec![u, g])),
    };
    match found {
        Ok(ids) => Ok(ids),
        // `--chown` names the field `id` whichever file it came from.
        Err(user::UserError::BadEntry {
            file, line, value, ..
        }) => bail!(
            "{file} line {line}: id {value:?} of {name:?} is not a valid id: \
             uids and gids must be in range 0-{MAX_ID}"
        ),
        Err(e) => Err(e.into()),
    }
}

pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets atime and mtime (nanoseconds) without following a symlink.
pub fn set_mtime(path: &Path, mtime_ns: i64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let ts = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = [ts, ts];
    // SAFETY: valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub fn mtime_ns(meta: &fs::Metadata) -> i64 {
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// Creates the directories of `comps` under `upper` that do not exist yet.
/// A directory that exists in the image below keeps its metadata (as an
/// overlay copy-up would); a new one gets 0755 and `owner`.
pub fn ensure_dirs(
    upper: &Path,
    view: &RootView,
    comps: &[String],
    owner: Option<(u32, u32)>,
) -> Result<PathBuf> {
    let mut p = upper.to_path_buf();
    for i in 0..comps.len() {
        p.push(&comps[i]);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                fs::remove_file(&p)?;
            }
            Err(_) => {}
        }
        let below = match view.lookup_raw(&comps[..=i]) {
            // (A dangling symlink is replaced, as before.)
            Some(f) if !f.meta.is_dir() && !f.meta.file_type().is_symlink() => bail!(
                "cannot make directory /{}: the image has a file there (not a directory)",
                comps[..=i].join("/")
            ),
            found => found,
        };
        // A directory the layers below have is only brought up to hold
        // children (overlayfs' copy-up): its parent is not modified by that.
        let parent_mtime = match (&below, p.parent()) {
            (Some(_), Some(parent)) if i > 0 => Some(mtime_ns(&fs::symlink_metadata(parent)?)),
            _ => None,
        };
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        if let (Some(t), Some(parent)) = (parent_mtime, p.parent()) {
            set_mtime(parent, t)?;
        }
        match below {
            Some(f) => {
                fs::set_permissions(&p, fs::Permissions::from_mode(f.meta.mode() & 0o7777))?;
                lchown(&p, f.meta.uid(), f.meta.gid())?;
                set_mtime(&p, mtime_ns(&f.meta))?;
            }
            _ => {
                let (u, g) = owner.unwrap_or((0, 0));
                lchown(&p, u, g)?;
                fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            }
        }
    }
    Ok(p)
}

/// Copies the tree at `comps` in `view` into `dest`, an existing directory
/// that stands for its root (a file is copied into `dest` under its name),
/// keeping every entry's mode, owner and mtime, the root's included: what a
/// bind mount of that tree shows (BuildKit mounts the stage's snapshot).
pub fn materialize(view: &RootView, comps: &[String], dest: &Path) -> Result<()> {
    let Some(found) = view.resolve(&format!("/{}", comps.join("/")), true)?.1 else {
        return Ok(());
    };
    if !found.meta.is_dir() {
        let name = comps.last().cloned().unwrap_or_else(|| "file".into());
        let d = dest.join(name);
        fs::copy(&found.real, &d)?;
        keep_metadata(&found.meta, &d)?;
        return Ok(());
    }
    fn rec(
        view: &RootView,
        comps: &mut Vec<String>,
        dest: &Path,
        dirs: &mut Vec<(PathBuf, i64)>,
    ) -> Result<()> {
        for (name, real) in view.read_dir(comps)? {
            let m = fs::symlink_metadata(&real)?;
            let d = dest.join(&name);
            if m.is_dir() {
                fs::create_dir(&d)?;
                keep_metadata(&m, &d)?;
                dirs.push((d.clone(), mtime_ns(&m)));
                comps.push(name);
                rec(view, comps, &d, dirs)?;
                comps.pop();
            } else if m.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&real)?, &d)?;
                keep_metadata(&m, &d)?;
            } else if m.is_file() {
                fs::copy(&real, &d)?;
                keep_metadata(&m, &d)?;
            }
        }
        Ok(())
    }
    keep_metadata(&found.meta, dest)?;
    let mut dirs = vec![(dest.to_path_buf(), mtime_ns(&found.meta))];
    rec(view, &mut comps.to_vec(), dest, &mut dirs)?;
    // Writing a child re-stamps its directory: the mtimes go back last.
    restore_dir_mtimes(&dirs)
}

fn keep_metadata(m: &fs::Metadata, path: &Path) -> Result<()> {
    lchown(path, m.uid(), m.gid())?;
    if !m.file_type().is_symlink() {
        fs::set_permissions(path, fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    set_mtime(path, mtime_ns(m))?;
    Ok(())
}

/// The mount points a container runtime makes for /dev, /proc and /sys
/// stay in a RUN's layer where the image has none (a FROM scratch stage),
/// as under BuildKit 0.13 (runc makes them; BuildKit removes only its own
/// mount stubs). kiln's runner mounts them over a stub layer instead, so
/// they are added here, 0755 root-owned.
pub fn keep_runtime_mount_points(upper: &Path, below: &RootView) -> Result<()> {
    for name in ["dev", "proc", "sys"] {
        let p = upper.join(name);
        if below.lookup_raw(&[name.to_string()]).is_some() || fs::symlink_metadata(&p).is_ok() {
            continue;
        }
        fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
        lchown(&p, 0, 0)?;
    }
    Ok(())
}

/// Copies the metadata-bearing parts of a directory's stored mtimes back
/// after its children were written (writing a child bumps the parent).
pub fn restore_dir_mtimes(fixups: &[(PathBuf, i64)]) -> Result<()> {
    for (p, t) in fixups.iter().rev() {
        set_mtime(p, *t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn resolve_follows_symlinks_inside_the_view() {
        let base = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("usr/bin")).unwrap();
        fs::write(base.path().join("usr/bin/tool"), "x").unwrap();
        symlink("usr/bin", base.path().join("bin")).unwrap();
        // A hostile absolute symlink must resolve inside the view.
        symlink("/etc/shadow", top.path().join("evil")).unwrap();
        let v = RootView::new(vec![top.path().into(), base.path().into()]);
        let (comps, found) = v.resolve("/bin/tool", true).unwrap();
        assert_eq!(comps, vec!["usr", "bin", "tool"]);
        assert!(found.unwrap().real.starts_with(base.path()));
        let (comps, found) = v.resolve("/evil", true).unwrap();
        assert_eq!(comps, vec!["etc", "shadow"]);
        assert!(found.is_none(), "must not see the host's /etc/shadow");
    }

    #[test]
    fn whiteouts_and_opaque_dirs_hide_lower_layers() {
        if !kiln_testkit::require_root("mknod of a 0/0 char device") {
            return;
        }
        let base = tempfile::tempdir().unwrap();
        let top = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("d")).unwrap();
        fs::write(base.path().join("d/a"), "a").unwrap();
        fs::write(base.path().join("gone"), "g").unwrap();
        let c = CString::new(top.path().join("gone").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path; creating an overlay whiteout.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
        let v = RootView::new(vec![top.path().into(), base.path().into()]);
        assert!(v.stat("/gone").unwrap().is_none());
        assert!(v.stat("/d/a").unwrap().is_some());
        let names: Vec<String> = v.read_dir(&[]).unwrap().into_keys().collect();
        assert_eq!(names, vec!["d"]);
    }

    #[test]
    fn users_resolve_from_the_images_files() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("etc")).unwrap();
        fs::write(
            base.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n\
             svc:x:1500:2000::/:/bin/sh\nweb:x:1600:1600::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            base.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\nweb:x:1700:\n",
        )
        .unwrap();
        let v = RootView::new(vec![base.path().into()]);
        assert_eq!(resolve_user(&v, "app").unwrap(), (1000, 1000));
        assert_eq!(resolve_user(&v, "app:staff").unwrap(), (1000, 50));
        assert_eq!(resolve_user(&v, "7:8").unwrap(), (7, 8));
        assert!(resolve_user(&v, "nobody-here").is_err());
        // BuildKit 0.13 (copy-owners-more): the primary gid, not the uid.
        assert_eq!(resolve_user(&v, "svc").unwrap(), (1500, 2000));
        assert_eq!(resolve_user(&v, "1500").unwrap(), (1500, 1500));
        // A group named like a user is looked up in /etc/group.
        assert_eq!(resolve_user(&v, "web:web").unwrap(), (1600, 1700));
        // A group /etc/group does not have leaves the user's gid.
        assert_eq!(resolve_user(&v, "svc:svc").unwrap(), (1500, 2000));
        assert_eq!(resolve_user(&v, "1600:nogroup").unwrap(), (1600, 1600));
    }

    #[test]
    fn ids_out_of_range_are_refused() {
        let base = tempfile::tempdir().unwrap();
        fs::create_dir_all(base.path().join("etc")).unwrap();
        fs::write(
            base.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nbig:x:4294967295:0::/:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            base.path().join("etc/group"),
            "root:x:0:\nhuge:x:2147483648:\n",
        )
        .unwrap();
        let v = RootView::new(vec![base.path().into()]);
        for (spec, subject) in [
            ("4294967295", "\"4294967295\""),
            ("2147483648", "\"2147483648\""),
            ("-1", "\"-1\""),
            ("0:4294967295", "\"0:4294967295\" (4294967295)"),
            ("root:-3", "\"root:-3\" (-3)"),
        ] {
            let e = format!("{:#}", resolve_user(&v, spec).unwrap_err());
            assert_eq!(
                e,
                format!("invalid user {subject}: uids and gids must be in range 0-2147483647")
            );
        }
        assert_eq!(
            resolve_user(&v, "2147483647:2147483647").unwrap(),
            (2147483647, 2147483647)
        );
        let e = format!("{:#}", resolve_user(&v, "big").unwrap_err());
        assert!(
            e.starts_with("/etc/passwd line 2: id \"4294967295\" of \"big\""),
            "{e}"
        );
        let e = format!("{:#}", resolve_user(&v, "root:huge").unwrap_err());
        assert!(e.starts_with("/etc/group line 2: id \"2147483648\""), "{e}");
    }
}
