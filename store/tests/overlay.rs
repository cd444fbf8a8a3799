//! Snapshots are valid overlayfs lower dirs: stacking a layer with
//! whiteouts over its parent hides exactly what the whiteouts say.
mod common;

use std::fs;
use std::process::Command;

use kiln_store::*;

fn mount_overlay(lower: &str, target: &std::path::Path) -> bool {
    // Read-only overlay of lower dirs only (no upper needed).
    Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={lower}"),
            target.to_str().unwrap(),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn snapshots_stack_as_overlay_lower_dirs() {
    require_root!();
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    // Layer 1: a/x, a/y, d/z.
    let p = s.new_snapshot().unwrap();
    fs::create_dir_all(p.upper().join("a")).unwrap();
    fs::create_dir_all(p.upper().join("d")).unwrap();
    for f in ["a/x", "a/y", "d/z"] {
        fs::write(p.upper().join(f), f).unwrap();
    }
    let l1 = s.commit_snapshot(p, &LayerOptions::default()).unwrap();
    // Layer 2, as an overlay upper dir would hold it: a/x deleted, d/
    // replaced (opaque) with d/new.
    let p = s.new_snapshot().unwrap();
    fs::create_dir_all(p.upper().join("a")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p.upper().join("a/x").as_path(),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    fs::create_dir_all(p.upper().join("d")).unwrap();
    rustix::fs::lsetxattr(
        p.upper().join("d").as_path(),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::write(p.upper().join("d/new"), b"new").unwrap();
    let l2 = s.commit_snapshot(p, &LayerOptions::default()).unwrap();

    // Unpack both from their blobs in a second store, then mount.
    let s2 = Store::open(&dir.path().join("root2")).unwrap();
    for l in [&l1, &l2] {
        let mut f = s.open_blob(&l.digest).unwrap();
        s2.write_blob(&mut f, Some(&l.digest), Some(l.size))
            .unwrap();
    }
    for (st, name) in [(&s, "committed"), (&s2, "unpacked")] {
        let lower1 = st.ensure_snapshot(&l1).unwrap();
        let lower2 = st.ensure_snapshot(&l2).unwrap();
        let merged = dir.path().join(format!("merged-{name}"));
        fs::create_dir(&merged).unwrap();
        if !mount_overlay(
            &format!("{}:{}", lower2.display(), lower1.display()),
            &merged,
        ) {
            kiln_testkit::skip("mount -t overlay failed (no overlayfs or no CAP_SYS_ADMIN here)");
            return;
        }
        let seen = (
            merged.join("a/x").exists(),
            fs::read(merged.join("a/y")).ok(),
            merged.join("d/z").exists(),
            fs::read(merged.join("d/new")).ok(),
        );
        let _ = Command::new("umount").arg(&merged).status();
        assert_eq!(
            seen,
            (false, Some(b"a/y".to_vec()), false, Some(b"new".to_vec())),
            "{name}"
        );
    }
}
