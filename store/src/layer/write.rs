//! Directory tree -> deterministic tar -> compressed stream, hashing both the
//! uncompressed (diffID) and the compressed (digest) bytes in one pass.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::offload::OffloadHashingWriter;
use super::tarfmt::{padding, pax_record, BLOCK};
use super::{Compression, LayerDigests, LayerError, LayerOptions};

const USTAR_NAME_MAX: usize = 100;
/// zstd multithreaded job size (see `write_layer`).
const ZSTD_JOB_SIZE: u32 = 1 << 20;
const OCTAL_ID_MAX: u64 = 0o7777777;
const OCTAL_SIZE_MAX: u64 = 0o77777777777;

/// overlayfs' own xattrs in an upper dir: `trusted.overlay.*` as root,
/// `user.overlay.*` from an overlay mounted in a user namespace
/// (`userxattr`, rootless kiln).
fn overlay_xattr(name: &[u8], key: &str) -> bool {
    let prefix = crate::userns::UserNs::overlay_xattr_prefix().as_bytes();
    name.strip_prefix(prefix) == Some(key.as_bytes())
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(crate::userns::UserNs::overlay_xattr_prefix().as_bytes())
}

/// Encodes the tree under `dir` as a layer into `out` and returns its digests.
///
/// Entries are emitted depth-first with each directory's children sorted by
/// their (emitted) byte name, so the same tree gives the same bytes. Overlay
/// whiteouts (char device 0/0) become `.wh.<name>` entries, an opaque
/// directory (`trusted.overlay.opaque=y`, `user.overlay.opaque=y` in a user
/// namespace) gets a `.wh..wh..opq` entry, overlay's other xattrs are
/// dropped. Owner names, atimes and ctimes are
/// not recorded; mtimes are whole seconds, clamped to `source_date_epoch`.
pub fn write_layer(
    dir: &Path,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<LayerDigests, LayerError> {
    let compressed = OffloadHashingWriter::new(out);
    let (diff_id, uncompressed_size, compressed) = match opts.compression {
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(compressed, opts.zstd_level)?;
            // Always the multithreaded mode: its output does not depend on the
            // worker count, unlike the single-threaded mode's.
            enc.multithread(opts.zstd_workers.max(1))?;
            // A fixed job size keeps the output independent of the worker
            // count and bounds memory: each in-flight job holds its input
            // and output buffers (the default, 4x the window, costs ~17 MiB
            // per job).
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB_SIZE))?;
            let mut tarw = OffloadHashingWriter::new(enc);
            write_tar(dir, opts, &mut tarw)?;
            let (inner, hasher) = tarw.finish()?;
            let n = hasher.len();
            (hasher.finish(), n, inner.finish()?)
        }
        Compression::Gzip => {
            let enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(compressed, flate2::Compression::default());
            let mut tarw = OffloadHashingWriter::new(enc);
            write_tar(dir, opts, &mut tarw)?;
            let (inner, hasher) = tarw.finish()?;
            let n = hasher.len();
            (hasher.finish(), n, inner.finish()?)
        }
        Compression::None => {
            let mut tarw = OffloadHashingWriter::new(compressed);
            write_tar(dir, opts, &mut tarw)?;
            let (inner, hasher) = tarw.finish()?;
            let n = hasher.len();
            (hasher.finish(), n, inner)
        }
    };
    let (inner, hasher) = compressed.finish()?;
    inner.flush()?;
    let size = hasher.len();
    Ok(LayerDigests {
        digest: hasher.finish(),
        diff_id,
        size,
        uncompressed_size,
    })
}

struct Child {
    /// Name as emitted in the tar (whiteouts renamed to `.wh.<name>`).
    emit: Vec<u8>,
    /// Name on disk.
    disk: OsString,
    meta: fs::Metadata,
}

struct Frame {
    /// Path relative to the layer root, without trailing slash ("" for root).
    rel: Vec<u8>,
    disk: PathBuf,
    children: std::vec::IntoIter<Child>,
}

fn list_children(disk: &Path) -> Result<Vec<Child>, LayerError> {
    let mut out = Vec::new();
    for e in fs::read_dir(disk).map_err(|e| LayerError::io(disk.display().to_string(), e))? {
        let e = e.map_err(|e| LayerError::io(disk.display().to_string(), e))?;
        let p = e.path();
        let meta =
            fs::symlink_metadata(&p).map_err(|e| LayerError::io(p.display().to_string(), e))?;
        let disk_name = e.file_name();
        let emit = if is_overlay_whiteout(&meta) {
            let mut v = b".wh.".to_vec();
            v.extend_from_slice(disk_name.as_bytes());
            v
        } else {
            disk_name.as_bytes().to_vec()
        };
        out.push(Child {
            emit,
            disk: disk_name,
            meta,
        });
    }
    out.sort_by(|a, b| a.emit.cmp(&b.emit));
    Ok(out)
}

fn is_overlay_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn write_tar(root: &Path, opts: &LayerOptions, w: &mut dyn Write) -> Result<(), LayerError> {
    let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut stack = vec![Frame {
        rel: Vec::new(),
        disk: root.to_path_buf(),
        children: list_children(root)?.into_iter(),
    }];
    let mut buf = vec![0u8; 256 * 1024];
    while let Some(frame) = stack.last_mut() {
        let Some(child) = frame.children.next() else {
            stack.pop();
            continue;
        };
        let mut rel = frame.rel.clone();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        let disk = frame.disk.join(&child.disk);
        let meta = &child.meta;
        let ft = meta.file_type();
        if is_overlay_whiteout(meta) {
            rel.extend_from_slice(&child.emit);
            let e = Entry::new(rel, tar::EntryType::Regular, meta, opts, 0o644);
            e.write(w, &[], None, &mut buf)?;
            continue;
        }
        rel.extend_from_slice(&child.emit);
        let xattrs = read_xattrs(&disk)?;
        // A redirect (renamed lower dir) or metacopy (metadata-only copy-up)
        // means the upper dir does not hold the content the layer needs:
        // the overlay must be mounted with redirect_dir=off,metacopy=off.
        for (k, _) in &xattrs {
            if overlay_xattr(k, "redirect") || overlay_xattr(k, "metacopy") {
                return Err(LayerError::OverlayFeature {
                    path: String::from_utf8_lossy(&rel).into_owned(),
                    xattr: String::from_utf8_lossy(k).into_owned(),
                });
            }
        }
        let opaque = xattrs
            .iter()
            .any(|(k, v)| overlay_xattr(k, "opaque") && v.as_slice() == b"y");
        let xattrs: Vec<_> = xattrs
            .into_iter()
            .filter(|(k, _)| !is_overlay_xattr(k))
            .collect();
        if ft.is_dir() {
            let mut name = rel.clone();
            name.push(b'/');
            Entry::new(name, tar::EntryType::Directory, meta, opts, meta.mode())
                .write(w, &xattrs, None, &mut buf)?;
            if opaque {
                let mut wh = rel.clone();
                wh.extend_from_slice(b"/.wh..wh..opq");
                Entry::new(wh, tar::EntryType::Regular, meta, opts, 0o644).write(
                    w,
                    &[],
                    None,
                    &mut buf,
                )?;
            }
            let children = list_children(&disk)?;
            stack.push(Frame {
                rel,
                disk,
                children: children.into_iter(),
            });
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(target) = links.get(&key) {
                    let mut e = Entry::new(rel, tar::EntryType::Link, meta, opts, meta.mode());
                    e.link = target.clone();
                    e.size = 0;
                    e.write(w, &xattrs, None, &mut buf)?;
                    continue;
                }
                links.insert(key, rel.clone());
            }
            let mut f = open_nofollow(&disk)?;
            let mut e = Entry::new(rel, tar::EntryType::Regular, meta, opts, meta.mode());
            e.size = meta.len();
            e.write(w, &xattrs, Some(&mut f), &mut buf)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(&disk).map_err(|e| LayerError::io(disk.display().to_string(), e))?;
            let mut e = Entry::new(rel, tar::EntryType::Symlink, meta, opts, 0o777);
            e.link = target.into_os_string().into_vec();
            e.write(w, &xattrs, None, &mut buf)?;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                tar::EntryType::Char
            } else {
                tar::EntryType::Block
            };
            let mut e = Entry::new(rel, kind, meta, opts, meta.mode());
            let rdev = meta.rdev();
            e.dev = Some((u64::from(libc::major(rdev)), u64::from(libc::minor(rdev))));
            e.write(w, &xattrs, None, &mut buf)?;
        } else if ft.is_fifo() {
            Entry::new(rel, tar::EntryType::Fifo, meta, opts, meta.mode())
                .write(w, &xattrs, None, &mut buf)?;
        }
        // Sockets cannot be represented in tar; like docker, skip them.
    }
    // End of archive: two zero blocks.
    w.write_all(&[0u8; BLOCK * 2])?;
    Ok(())
}

fn open_nofollow(p: &Path) -> Result<File, LayerError> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| LayerError::io(p.display().to_string(), e))
}

struct Entry {
    name: Vec<u8>,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    link: Vec<u8>,
    dev: Option<(u64, u64)>,
}

impl Entry {
    fn new(
        name: Vec<u8>,
        kind: tar::EntryType,
        meta: &fs::Metadata,
        opts: &LayerOptions,
        mode: u32,
    ) -> Entry {
        let mut mtime = meta.mtime();
        if let Some(epoch) = opts.source_date_epoch {
            mtime = mtime.min(epoch);
        }
        Entry {
            name,
            kind,
            mode: mode & 0o7777,
            uid: u64::from(meta.uid()),
            gid: u64::from(meta.gid()),
            mtime: mtime.max(0),
            size: 0,
            link: Vec::new(),
            dev: None,
        }
    }

    fn write(
        &self,
        w: &mut dyn Write,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: Option<&mut File>,
        buf: &mut [u8],
    ) -> Result<(), LayerError> {
        let mut pax = Vec::new();
        if self.name.len() > USTAR_NAME_MAX || !self.name.is_ascii() {
            pax_record(&mut pax, "path", &self.name);
        }
        if self.link.len() > USTAR_NAME_MAX || !self.link.is_ascii() {
            pax_record(&mut pax, "linkpath", &self.link);
        }
        if self.uid > OCTAL_ID_MAX {
            pax_record(&mut pax, "uid", self.uid.to_string().as_bytes());
        }
        if self.gid > OCTAL_ID_MAX {
            pax_record(&mut pax, "gid", self.gid.to_string().as_bytes());
        }
        if self.size > OCTAL_SIZE_MAX {
            pax_record(&mut pax, "size", self.size.to_string().as_bytes());
        }
        for (k, v) in xattrs {
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(k);
            // xattr names are NUL-free C strings; lossy conversion only
            // affects names that are not UTF-8, which PAX keys cannot carry.
            pax_record(&mut pax, &String::from_utf8_lossy(&key), v);
        }
        if !pax.is_empty() {
            let mut name = b"PaxHeaders.0/".to_vec();
            let base = self
                .name
                .rsplit(|&b| b == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"x");
            name.extend_from_slice(&base[..base.len().min(USTAR_NAME_MAX - name.len())]);
            let mut h = header(
                &name,
                tar::EntryType::XHeader,
                0o644,
                0,
                0,
                0,
                pax.len() as u64,
                b"",
                None,
            );
            h.set_cksum();
            w.write_all(h.as_bytes())?;
            w.write_all(&pax)?;
            w.write_all(&[0u8; BLOCK][..padding(pax.len() as u64) as usize])?;
        }
        let mut h = header(
            &self.name,
            self.kind,
            self.mode,
            self.uid.min(OCTAL_ID_MAX),
            self.gid.min(OCTAL_ID_MAX),
            self.mtime as u64,
            self.size.min(OCTAL_SIZE_MAX),
            &self.link,
            self.dev,
        );
        h.set_cksum();
        w.write_all(h.as_bytes())?;
        if let Some(f) = data {
            let mut left = self.size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = f.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(LayerError::FileChanged(
                        String::from_utf8_lossy(&self.name).into_owned(),
                    ));
                }
                w.write_all(&buf[..n])?;
                left -= n as u64;
            }
            w.write_all(&[0u8; BLOCK][..padding(self.size) as usize])?;
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn header(
    name: &[u8],
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    link: &[u8],
    dev: Option<(u64, u64)>,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().expect("new_ustar header is ustar");
        let n = name.len().min(USTAR_NAME_MAX);
        u.name[..n].copy_from_slice(&name[..n]);
        let l = link.len().min(USTAR_NAME_MAX);
        u.linkname[..l].copy_from_slice(&link[..l]);
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mtime(mtime);
    h.set_size(size);
    // Device fields are "00000000"-style zero unless a device.
    let (maj, min) = dev.unwrap_or((0, 0));
    // Values were validated to fit in the octal field (majors/minors are
    // 32-bit on Linux, the field holds 21 bits; larger ones are truncated by
    // the kernel's encoding anyway and cannot be created).
    let _ = h.set_device_major(maj.min(0o7777777) as u32);
    let _ = h.set_device_minor(min.min(0o7777777) as u32);
    h
}

/// Reads all xattrs of `p` (not following symlinks), sorted by name.
/// (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn read_xattrs(p: &Path) -> Result<Xattrs, LayerError> {
    let cpath = CString::new(p.as_os_str().as_bytes()).map_err(|_| LayerError::UnsafePath {
        path: p.display().to_string(),
        reason: "NUL byte",
    })?;
    let err = |e: io::Error| LayerError::io(p.display().to_string(), e);
    // SAFETY: cpath is a valid C string; a NULL buffer with size 0 queries the size.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(err(e)),
        };
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; n as usize + 256];
    // SAFETY: the buffer is valid for names.len() bytes.
    let n = unsafe { libc::llistxattr(cpath.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname =
            CString::new(name).map_err(|_| err(io::Error::from(io::ErrorKind::InvalidData)))?;
        let mut val = vec![0u8; 4096];
        loop {
            // SAFETY: valid C strings and a buffer of val.len() bytes.
            let r = unsafe {
                libc::lgetxattr(
                    cpath.as_ptr(),
                    cname.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            };
            if r >= 0 {
                val.truncate(r as usize);
                break;
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if val.len() < 1 << 20 => val.resize(val.len() * 4, 0),
                // Removed between listing and reading: nothing to record.
                Some(libc::ENODATA) => {
                    val.clear();
                    break;
                }
                _ => return Err(err(e)),
            }
        }
        // An empty value: whether the attribute still exists (a size
        // query, length 0 with a null buffer).
        // SAFETY: both pointers are to live NUL-terminated CStrings; a null
        // buffer with size 0 asks only for the size and writes nothing.
        let gone = val.is_empty()
            && unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) }
                < 0;
        if gone {
            continue;
        }
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}
