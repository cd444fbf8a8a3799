//! overlayfs refused (an upper dir on overlayfs itself, as with a store in
//! a container's own root): `Auto` falls back to copied roots and says so
//! once; `Overlayfs` says how to get the fallback. Its own test binary:
//! the fallback, once taken, holds for the whole process.

mod common;

use std::path::Path;

use common::*;
use kiln_runner::{RootFs, RunError, RunnerConfig, Snapshotter};

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn an_upper_dir_on_overlayfs_falls_back_to_a_copied_root() {
    if !can_run("an_upper_dir_on_overlayfs_falls_back_to_a_copied_root") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |s: &str| t.path().join(s);
    for d in ["l", "u", "w", "ovl"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        p("l").display(),
        p("u").display(),
        p("w").display()
    );
    rustix::mount::mount(
        "overlay",
        p("ovl"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        std::ffi::CString::new(opts).unwrap().as_c_str(),
    )
    .expect("an overlay to put the store on");
    let _guard = Unmount(&p("ovl"));
    let (upper, work) = (p("ovl/upper"), p("ovl/work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let mut s = sh("echo made > /made; rm /bin/cat; echo ran");
    s.rootfs = RootFs {
        lowers: vec![busybox_root().to_path_buf()],
        upper: Some((upper.clone(), work.clone())),
    };

    let forced = RunnerConfig {
        snapshotter: Snapshotter::Overlayfs,
        ..cfg()
    };
    let e = run_with(&forced, &s)
        .err()
        .expect("overlayfs only: refused");
    let msg = e.to_string();
    assert!(matches!(e, RunError::Setup(_)), "{e:?}");
    assert!(
        msg.contains("overlay filesystem") && msg.contains("KILN_SNAPSHOTTER=overlayfs"),
        "{msg}"
    );
    assert_eq!(kiln_runner::take_fallback_warning(), None);

    let auto = RunnerConfig {
        snapshotter: Snapshotter::Auto,
        ..cfg()
    };
    let o = run_with(&auto, &s).unwrap();
    assert_eq!((o.code, o.stdout.as_str()), (0, "ran\n"), "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(upper.join("made")).unwrap(),
        "made\n"
    );
    // overlayfs refuses to make its own whiteouts: the OCI marker instead.
    let m = std::fs::symlink_metadata(upper.join("bin/.wh.cat")).unwrap();
    assert!(m.is_file() && m.len() == 0, "{m:?}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
        0o644
    );
    assert!(std::fs::symlink_metadata(upper.join("bin/cat")).is_err());
    let w = kiln_runner::take_fallback_warning().expect("said once");
    assert!(
        w.contains("overlayfs was refused") && w.contains("copied snapshots"),
        "{w}"
    );
    assert_eq!(kiln_runner::take_fallback_warning(), None, "only once");
}
