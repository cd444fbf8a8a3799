//! Helpers shared by the behaviour tests.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Skips a test loudly when not root (CI runs as root, so it runs there).
#[macro_export]
macro_rules! require_root {
    () => {
        if !common::is_root() {
            eprintln!(
                "SKIPPED {}: needs root (mknod, chown, trusted.* xattrs)",
                module_path!()
            );
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
