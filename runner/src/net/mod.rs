//! Private network namespaces with outbound access ([`NetworkMode::Private`]).
//!
//! The namespace gets `lo` and a user-mode network stack: `pasta` (from
//! Debian's `passt` package, what podman uses) or, when pasta is missing,
//! `slirp4netns`. The stack runs on the host side and turns the namespace's
//! connections into ordinary sockets of the host, so nothing needs a bridge,
//! iptables or a veth. Pasta is preferred: it maps TCP/UDP flows onto host
//! sockets directly (no emulated TCP/IP stack in between as in libslirp),
//! copies the host's addresses and routes into the namespace so nothing is
//! NATed to a private range, and starts in a few ms.
//!
//! What the namespace must not reach: the host's loopback (pasta runs with
//! `--no-map-gw` and no namespace-to-host port forwarding, slirp4netns with
//! `--disable-host-loopback`), and the link-local range 169.254.0.0/16 with
//! the cloud metadata endpoint, which gets a `prohibit` route inside the
//! namespace (the container has no CAP_NET_ADMIN to remove it).
//!
//! Starting a stack costs about 20 ms, so a build shares one namespace and
//! stack among its RUN steps ([`SharedNet`], started on first use); `kiln
//! run` gets one per container, started by the container's helper and gone
//! with it.
//!
//! [`NetworkMode::Private`]: crate::NetworkMode::Private

mod child_ns;
mod route;
mod shared;
mod stack;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::RunError;

pub(crate) use shared::netns_main;
pub use shared::SharedNet;
pub(crate) use stack::enter;

/// Which user-mode stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StackKind {
    Pasta,
    Slirp4netns,
}

impl StackKind {
    pub fn program(self) -> &'static str {
        match self {
            StackKind::Pasta => "pasta",
            StackKind::Slirp4netns => "slirp4netns",
        }
    }

    /// The nameserver the namespace must use instead of the host's, if the
    /// stack has its own forwarder (slirp4netns: 10.0.2.3). Pasta lets the
    /// namespace reach the host's nameservers directly.
    pub(crate) fn dns(self) -> Option<&'static str> {
        match self {
            StackKind::Pasta => None,
            StackKind::Slirp4netns => Some("10.0.2.3"),
        }
    }
}

/// A user-mode stack found on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stack {
    pub kind: StackKind,
    pub exe: PathBuf,
}

/// How a helper sets up a private network (part of the job).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NetPlan {
    /// The stack to start for a namespace of the container's own, or the
    /// one already attached to `join`.
    pub stack: Option<Stack>,
    /// Join this network namespace (a [`SharedNet`]'s) instead of making one.
    pub join: Option<PathBuf>,
}

/// Find the stack: pasta, else slirp4netns, in `PATH` (the caller's).
/// `KILN_NET_STACK=pasta|slirp4netns` allows only that one.
pub fn find_stack() -> Result<Stack, RunError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let only = std::env::var("KILN_NET_STACK").ok();
    find_stack_in(&path, only.as_deref())
}

fn find_stack_in(path: &std::ffi::OsStr, only: Option<&str>) -> Result<Stack, RunError> {
    let kinds = [StackKind::Pasta, StackKind::Slirp4netns];
    for kind in kinds {
        if only.is_some_and(|o| !o.is_empty() && o != kind.program()) {
            continue;
        }
        for dir in std::env::split_paths(path) {
            let exe = dir.join(kind.program());
            if is_executable(&exe) {
                return Ok(Stack { kind, exe });
            }
        }
    }
    Err(RunError::NoNetworkStack {
        searched: std::env::split_paths(path)
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":"),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn fake(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn pasta_is_preferred_and_slirp4netns_is_the_fallback() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        fake(a.path(), "slirp4netns");
        fake(b.path(), "pasta");
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        let s = find_stack_in(&path, None).unwrap();
        assert_eq!((s.kind, s.exe), (StackKind::Pasta, b.path().join("pasta")));
        let s = find_stack_in(&path, Some("slirp4netns")).unwrap();
        assert_eq!(s.kind, StackKind::Slirp4netns);
        assert_eq!(s.exe, a.path().join("slirp4netns"));
    }

    #[test]
    fn a_missing_stack_names_the_package_and_the_alternatives() {
        let a = tempfile::tempdir().unwrap();
        // Not executable: does not count.
        std::fs::write(a.path().join("pasta"), "").unwrap();
        let path = std::env::join_paths([a.path()]).unwrap();
        let e = find_stack_in(&path, None).unwrap_err().to_string();
        for want in [
            "pasta",
            "slirp4netns",
            "passt",
            "--network host",
            "--network none",
        ] {
            assert!(e.contains(want), "{want} missing from: {e}");
        }
        assert!(e.contains(&a.path().display().to_string()), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }
}
