//! Images whose layers hide the paths kiln mounts on: an opaque /etc (a
//! layer with `etc/`, `etc/newfile` and `etc/.wh..wh..opq`, stored as an
//! overlay opaque directory) or a whiteout of /etc/hosts. Docker runs them;
//! so must we, without writing the mount points into the upper dir.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;
use kiln_runner::{MountKind, MountSpec, RootFs};

/// A layer over busybox whose /etc is opaque (mode 0750, owner 7:8, an
/// old mtime): only `newfile` is left in it.
fn opaque_etc_layer(dir: &Path) {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("newfile"), "new\n").unwrap();
    rustix::fs::setxattr(
        &etc,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o750)).unwrap();
    std::os::unix::fs::chown(&etc, Some(7), Some(8)).unwrap();
    let t = rustix::fs::Timespec {
        tv_sec: 1_000_000_000,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        &etc,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn opaque_etc_runs_with_hosts_and_mounts_and_a_clean_upper() {
    if !can_run("opaque_etc_runs_with_hosts_and_mounts_and_a_clean_upper") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    opaque_etc_layer(&layer);
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let src = t.path().join("extra.conf");
    std::fs::write(&src, "extra\n").unwrap();

    let mut s = sh("cat /etc/newfile; test -e /etc/passwd || echo no-passwd; \
         cat /etc/hostname >/dev/null && grep -q localhost /etc/hosts && echo hosts; \
         test -s /etc/resolv.conf && echo resolv; cat /etc/conf.d/extra.conf; \
         ls /etc/cache.d | wc -l; stat -c '%a %u %g %Y' /etc; ls /proc/self >/dev/null && echo proc");
    s.rootfs = RootFs {
        lowers: vec![layer.clone(), busybox_root().to_path_buf()],
        upper: Some((upper.clone(), work.clone())),
    };
    s.hostname = Some("opaque".into());
    s.mounts.push(MountSpec {
        target: "/etc/conf.d/extra.conf".into(),
        kind: MountKind::Bind {
            source: src,
            readonly: true,
        },
    });
    s.mounts.push(MountSpec {
        target: "/etc/cache.d".into(),
        kind: MountKind::Tmpfs { size: None },
    });
    assert_eq!(
        ok(&s),
        "new\nno-passwd\nhosts\nresolv\nextra\n0\n750 7 8 1000000000\nproc\n"
    );
    assert_eq!(tree(&upper), Vec::<String>::new(), "nothing written");

    // A process that writes into /etc copies it up with the image's
    // attributes, not the stub's.
    let mut s = sh("echo x > /etc/written");
    s.rootfs = RootFs {
        lowers: vec![layer, busybox_root().to_path_buf()],
        upper: Some((upper.clone(), work)),
    };
    ok(&s);
    assert_eq!(tree(&upper), ["etc", "etc/written"]);
    let m = std::fs::metadata(upper.join("etc")).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid()),
        (0o750, 7, 8),
        "/etc in the diff keeps the image's mode and owner"
    );
}

#[test]
fn a_whiteout_of_etc_hosts_does_not_stop_the_container() {
    if !can_run("a_whiteout_of_etc_hosts_does_not_stop_the_container") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let layer = t.path().join("layer");
    std::fs::create_dir_all(layer.join("etc")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        layer.join("etc/hosts"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
    let mut s = sh("grep -c localhost /etc/hosts; test -e /etc/passwd && echo passwd");
    s.rootfs = RootFs {
        lowers: vec![layer, busybox_root().to_path_buf()],
        upper: None,
    };
    assert_eq!(ok(&s), "2\npasswd\n");
}
