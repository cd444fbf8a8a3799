//! kiln-testkit: what every kiln crate's tests share about prerequisites.
//!
//! A test that needs something this machine may lack (root, overlayfs, a
//! Docker engine, BuildKit's conformance data) asks [`require`]. When the
//! prerequisite is missing, the test prints `SKIPPED <test>: <why>` and
//! returns - except under CI ([`strict`]: `CI` set to anything but `0`,
//! `false` or empty), where the test command installs every prerequisite,
//! so a missing one fails the test with its reason instead of passing by
//! skipping.
//!
//! Only tests depend on this crate (as a dev-dependency); it depends on no
//! other kiln crate, so the crate boundaries stay as they are.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// Whether missing prerequisites are failures (CI) rather than skips.
pub fn strict() -> bool {
    strict_for(std::env::var("CI").ok().as_deref())
}

fn strict_for(ci: Option<&str>) -> bool {
    ci.is_some_and(|v| !matches!(v, "" | "0" | "false"))
}

/// The running test's name, as libtest names its thread.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("test")
        .to_string()
}

/// `ok` when a prerequisite of the running test is met. Otherwise: under CI
/// the test fails, saying `why`; elsewhere it prints why it skipped and this
/// returns false (the test returns early).
#[track_caller]
pub fn require(ok: bool, why: &str) -> bool {
    require_in(strict(), ok, why)
}

#[track_caller]
fn require_in(strict: bool, ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    let test = test_name();
    if strict {
        panic!("{test} cannot run under CI: {why}");
    }
    eprintln!("\n!!! SKIPPED {test}: {why} !!!\n");
    false
}

/// [`require`] of a prerequisite that is known to be missing.
#[track_caller]
pub fn skip(why: &str) -> bool {
    require(false, why)
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether the kernel offers overlayfs.
pub fn has_overlayfs() -> bool {
    std::fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("\toverlay\n"))
}

/// Root, which the test needs for `what` (mknod, namespaces...).
#[track_caller]
pub fn require_root(what: &str) -> bool {
    require(is_root(), &format!("needs root ({what})"))
}

/// Root and overlayfs: what building or running a container needs.
#[track_caller]
pub fn require_containers() -> bool {
    require_root("namespaces and mounts") && require(has_overlayfs(), "overlayfs is not available")
}

/// Where BuildKit's conformance data is: `$KILN_CONFORMANCE`, else the
/// first `shared/conformance` beside the repository or one of its
/// ancestors (the checkout's `../shared/conformance`, also when the
/// checkout is a worktree nested deeper).
pub fn conformance_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("KILN_CONFORMANCE").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d)).filter(|d| d.is_dir());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent()?;
    repo.ancestors()
        .skip(1)
        .map(|a| a.join("shared/conformance"))
        .find(|d| d.is_dir())
}

/// The conformance data, or why the test cannot run without it.
#[track_caller]
pub fn require_conformance() -> Option<PathBuf> {
    let found = conformance_dir();
    require(
        found.is_some(),
        "BuildKit's conformance data is missing: put it at ../shared/conformance beside the repository, or set KILN_CONFORMANCE",
    )
    .then(|| found.expect("checked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_met_prerequisite_never_skips() {
        assert!(require_in(true, true, "unused"));
        assert!(require_in(false, true, "unused"));
    }

    #[test]
    fn a_missing_one_skips_on_a_developers_machine() {
        assert!(!require_in(false, false, "no docker"));
    }

    #[test]
    #[should_panic(expected = "cannot run under CI: no docker")]
    fn a_missing_one_fails_under_ci() {
        require_in(true, false, "no docker");
    }

    #[test]
    fn ci_values() {
        for (v, want) in [
            (Some("1"), true),
            (Some("true"), true),
            (Some("0"), false),
            (Some("false"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(strict_for(v), want, "CI={v:?}");
        }
    }
}
