//! What the container's filesystem needs when the runner is root of a user
//! namespace (rootless kiln) instead of the machine's root.
//!
//! - overlay is mounted with `userxattr`: its whiteouts stay 0/0 character
//!   devices (an unprivileged mknod of 0/0 is allowed since Linux 5.8), its
//!   opaque marker and other bookkeeping become `user.overlay.*` (only real
//!   root may write `trusted.*`). `redirect_dir` must be `nofollow` then,
//!   which like `off` never creates a redirect, so the upper dir stays a
//!   plain diff.
//! - device nodes cannot be made (mknod of a real device needs the
//!   machine's CAP_MKNOD): the host's /dev/null, /dev/zero, ... are bound
//!   onto empty files instead, as rootless podman and runc do.
//! - sysfs can be mounted only in a network namespace the user namespace
//!   owns; with the host's network the host's /sys is bound read-only.

use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{Mode, OFlags};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use crate::userns;

/// Whether this process is root of a user namespace rather than of the
/// machine.
pub(crate) fn nested() -> bool {
    userns::current().is_nested()
}

/// overlay's options beyond the dirs: the upper dir must stay a plain diff.
pub(crate) fn overlay_options() -> &'static [(&'static str, &'static str)] {
    if nested() {
        &[
            ("userxattr", ""),
            ("redirect_dir", "nofollow"),
            ("metacopy", "off"),
            ("index", "off"),
        ]
    } else {
        &[
            ("redirect_dir", "off"),
            ("metacopy", "off"),
            ("index", "off"),
        ]
    }
}

/// The same as one mount(2) option string.
pub(crate) fn overlay_options_legacy() -> String {
    overlay_options()
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.to_string()
            } else {
                format!("{k}={v}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An overlay mount the kernel refused, said plainly when rootless: overlay
/// in a user namespace needs Linux 5.11 (Debian 12 has 6.1), and on some
/// filesystems (an upper dir on NFS, or on overlay itself) it is refused
/// anyway. The caller then falls back to copied snapshots
/// ([`crate::snapshot`]) unless told to use overlayfs only.
pub(crate) fn overlay_refused(message: String) -> String {
    if !nested() {
        return message;
    }
    format!(
        "{message}: the kernel refused overlayfs in rootless kiln's user namespace (it needs \
         Linux 5.11 or later and a store on a local filesystem such as ext4, xfs or btrfs; \
         this kernel is {})",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    )
}

/// Binds the host's device `name` (from /dev) onto a new empty file in the
/// container's /dev tmpfs `dev`. Runs before pivot_root, while the host's
/// /dev is still reachable.
pub(crate) fn bind_host_device(dev: &OwnedFd, name: &str) -> Result<(), String> {
    let host = format!("/dev/{name}");
    let src = open_tree(
        rustix::fs::CWD,
        host.as_str(),
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(|e| format!("binding the host's {host} (rootless: no mknod): {e}"))?;
    let target = rustix::fs::openat(
        dev,
        name,
        OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )
    .map_err(|e| format!("/dev/{name}: {e}"))?;
    move_mount(
        src.as_fd(),
        "",
        target.as_fd(),
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(|e| format!("mounting the host's {host} at /dev/{name}: {e}"))
}

/// The host's /sys, recursively, for [`crate::NetworkMode::Host`] in a user
/// namespace (sysfs itself would be refused). Read-only is set by the
/// caller.
pub(crate) fn host_sys() -> Result<OwnedFd, String> {
    open_tree(
        rustix::fs::CWD,
        "/sys",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE,
    )
    .map_err(|e| format!("binding the host's /sys (rootless, host network): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_options_are_one_string() {
        let s = overlay_options_legacy();
        assert!(s.contains("metacopy=off") && s.contains("index=off"), "{s}");
        if nested() {
            assert!(s.starts_with("userxattr,redirect_dir=nofollow"), "{s}");
        } else {
            assert!(s.starts_with("redirect_dir=off"), "{s}");
        }
    }
}
