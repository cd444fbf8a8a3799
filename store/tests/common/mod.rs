//! Helpers shared by the behaviour tests.
#![allow(dead_code)]

pub mod registry;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

#[allow(unused_imports)]
pub use kiln_testkit::is_root;

/// Skips a test loudly when not root (under CI, fails it: CI runs as root).
#[macro_export]
macro_rules! require_root {
    () => {
        if !kiln_testkit::require_root("mknod, chown, trusted.* xattrs") {
            return;
        }
    };
}

/// A small tree with most file kinds.
pub fn sample_tree(dir: &Path) {
    fs::create_dir_all(dir.join("app/static")).unwrap();
    fs::write(dir.join("app/app.py"), b"print('hello')\n").unwrap();
    fs::write(dir.join("app/static/style.css"), vec![b'x'; 70_000]).unwrap();
    fs::write(dir.join("app/run.sh"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("app/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    symlink("app/app.py", dir.join("entry")).unwrap();
    fs::hard_link(dir.join("app/app.py"), dir.join("app/app-link.py")).unwrap();
    fs::create_dir(dir.join("empty")).unwrap();
}

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Everything the codec must preserve about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Vec<u8>,
    pub link: Option<String>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Index of the first path with the same inode (hard links).
    pub link_group: Option<String>,
}

/// Describes a tree (paths relative to `root`), for comparisons.
pub fn describe(root: &Path, with_dir_mtimes: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            let link_group = if ft.is_file() && m.nlink() > 1 {
                Some(
                    inodes
                        .entry((m.dev(), m.ino()))
                        .or_insert_with(|| rel.clone())
                        .clone(),
                )
            } else {
                None
            };
            let node = Node {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                mtime: if ft.is_dir() && !with_dir_mtimes {
                    0
                } else {
                    m.mtime()
                },
                content: if ft.is_file() {
                    fs::read(&p).unwrap()
                } else {
                    Vec::new()
                },
                link: if ft.is_symlink() {
                    Some(fs::read_link(&p).unwrap().to_string_lossy().into_owned())
                } else {
                    None
                },
                rdev: if ft.is_char_device() || ft.is_block_device() {
                    m.rdev()
                } else {
                    0
                },
                xattrs: xattrs(&p),
                link_group,
            };
            if ft.is_dir() {
                stack.push(p.clone());
            }
            out.insert(rel, node);
        }
    }
    out
}

pub fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return BTreeMap::new(),
    };
    let mut out = BTreeMap::new();
    for name in names[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let mut v = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(p, name, &mut v[..]) {
            out.insert(
                String::from_utf8_lossy(name).into_owned(),
                v[..len].to_vec(),
            );
        }
    }
    out
}

pub fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// Snapshot of a canary directory: any change to it shows in the map.
pub fn canary_state(p: &Path) -> BTreeMap<String, (Node, u64)> {
    let d = describe(p, true);
    d.into_iter()
        .map(|(k, v)| {
            let nlink = fs::symlink_metadata(p.join(&k)).unwrap().nlink();
            (k, (v, nlink))
        })
        .collect()
}
