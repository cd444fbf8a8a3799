//! The overlay mounted with mount(2), the way kernels before 6.8 need it
//! (forced with KILN_RUNNER_LEGACY_OVERLAY=1; its own test binary because
//! the switch is process-wide).

mod common;

use std::path::PathBuf;

use common::*;
use kiln_runner::RootFs;

#[test]
fn legacy_overlay_mount_with_many_lowers() {
    if !can_run("legacy_overlay_mount_with_many_lowers") {
        return;
    }
    std::env::set_var("KILN_RUNNER_LEGACY_OVERLAY", "1");
    let t = tempfile::tempdir().unwrap();
    let mut lowers: Vec<PathBuf> = Vec::new();
    // Long paths with ':' and ',' in them: named /proc/self/fd/N instead.
    for i in 0..100 {
        let d = t.path().join(format!("{:0>150}:a,b", i));
        std::fs::create_dir_all(d.join("layers")).unwrap();
        std::fs::write(d.join("layers").join(format!("l{i}")), "").unwrap();
        std::fs::write(d.join("which"), format!("{i}")).unwrap();
        lowers.push(d);
    }
    lowers.push(busybox_root().to_path_buf());
    let upper = t.path().join("upper");
    let work = t.path().join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut s = sh("ls /layers | wc -l; cat /which; echo; echo new > /f; grep ' / ' /proc/mounts | cut -d' ' -f3");
    s.rootfs = RootFs {
        lowers,
        upper: Some((upper.clone(), work)),
    };
    assert_eq!(ok(&s), "100\n0\noverlay\n");
    assert_eq!(std::fs::read_to_string(upper.join("f")).unwrap(), "new\n");
}
