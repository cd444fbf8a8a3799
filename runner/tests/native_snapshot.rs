//! The native snapshotter (copied roots, for where overlayfs is refused):
//! a container sees what overlayfs would show of the same lowers, and the
//! upper dir it leaves is the diff an overlay would have left.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;
use kiln_runner::{MountKind, MountSpec, RootFs, RunnerConfig, Snapshotter};

const OLD: i64 = 1_000_000_000;

fn set_old_time(p: &Path) {
    let t = rustix::fs::Timespec {
        tv_sec: OLD as _,
        tv_nsec: 0,
    };
    let ts = rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn whiteout(p: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        0,
    )
    .unwrap();
}

/// A layer over busybox, as the store unpacks one: whiteouts, an opaque
/// directory hiding a lower one's content, hard links, old times.
fn layer(dir: &Path, lower: &Path) {
    let w = |p: &str, s: &str| {
        let p = dir.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, s).unwrap();
    };
    w("data/a", "a\n");
    w("data/b", "b\n");
    std::fs::hard_link(dir.join("data/b"), dir.join("data/c")).unwrap();
    w("data/sub/x", "x\n");
    w("rm-me/inner/deep", "deep\n");
    w("f", "a file that becomes a directory\n");
    w("d/in-d", "a directory that becomes a file\n");
    w("keep/k", "kept\n");
    std::os::unix::fs::chown(dir.join("keep/k"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(dir.join("data/sub"), std::fs::Permissions::from_mode(0o750)).unwrap();
    // The lower layer has /opq/hidden; this one makes /opq opaque.
    std::fs::create_dir_all(lower.join("opq")).unwrap();
    std::fs::write(lower.join("opq/hidden"), "hidden\n").unwrap();
    std::fs::write(lower.join("gone"), "whited out\n").unwrap();
    w("opq/shown", "shown\n");
    rustix::fs::setxattr(
        dir.join("opq"),
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    whiteout(&dir.join("gone"));
    for p in [
        "data/a",
        "data/b",
        "data/sub/x",
        "data/sub",
        "data",
        "keep/k",
        "keep",
        "opq",
    ] {
        set_old_time(&dir.join(p));
    }
}

/// What a layer writer reads from an upper dir: per path, its type, mode,
/// owner, size, contents, link target, whiteout and opaque markers, which
/// hard link group it is in, and its mtime when it is an old (kept) one.
fn upper_listing(upper: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut groups: BTreeMap<u64, String> = BTreeMap::new();
    for e in walkdir(upper) {
        let rel = e.strip_prefix(upper).unwrap().display().to_string();
        let m = std::fs::symlink_metadata(&e).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            let opaque = xattr(&e, "trusted.overlay.opaque") == Some(b"y".to_vec());
            format!("dir opaque={opaque}")
        } else if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(&e).unwrap().display())
        } else if ft.is_file() {
            let group = if m.nlink() > 1 {
                groups.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
            } else {
                String::new()
            };
            format!(
                "file {:?} links={group}",
                String::from_utf8_lossy(&std::fs::read(&e).unwrap())
            )
        } else if std::os::unix::fs::FileTypeExt::is_char_device(&ft) && m.rdev() == 0 {
            "whiteout".into()
        } else {
            format!("special {:o}", m.mode())
        };
        let time = if m.mtime() == OLD { "old" } else { "new" };
        let mode = if ft.is_symlink() {
            0
        } else {
            m.mode() & 0o7777
        };
        out.insert(
            rel,
            format!("{kind} {mode:o} {}:{} {time}", m.uid(), m.gid()),
        );
    }
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.clone());
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 64];
    let n = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    buf.truncate(n);
    Some(buf)
}

const SCRIPT: &str = "\
cat /opq/shown; test -e /opq/hidden && echo hidden-shows; test -e /gone && echo gone-shows; \
cat /data/c; stat -c '%a %Y' /data/sub; stat -c '%u' /keep/k; \
echo more >> /data/a; rm /data/c; mkdir -p /new/dir; echo n > /new/dir/f; \
rm -rf /rm-me; rm /f && mkdir /f && echo in > /f/in; rm -rf /d && echo now-a-file > /d; \
chmod 700 /data/sub; ln /data/sub/x /data/sub/y; ln -s /etc/shadow /link; \
mkfifo /fifo; rm /bin/ls; \
mkdir /src/made-in-bind 2>/dev/null; ls /mnt-target | wc -l; echo done";

/// Runs SCRIPT over fresh copies of the two lowers with `snapshotter`;
/// returns its output and the upper dir's listing.
fn run_script(snapshotter: Snapshotter) -> (String, BTreeMap<String, String>) {
    let t = tempfile::tempdir().unwrap();
    let (lay, low) = (t.path().join("layer"), t.path().join("lower"));
    std::fs::create_dir_all(&low).unwrap();
    layer(&lay, &low);
    let (upper, work) = (t.path().join("upper"), t.path().join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let bind = t.path().join("bind");
    std::fs::create_dir_all(&bind).unwrap();
    let mut s = sh(SCRIPT);
    s.rootfs = RootFs {
        lowers: vec![lay, low, busybox_root().to_path_buf()],
        upper: Some((upper.clone(), work.clone())),
    };
    s.mounts.push(MountSpec {
        target: "/src".into(),
        kind: MountKind::Bind {
            source: bind,
            readonly: true,
        },
    });
    s.mounts.push(MountSpec {
        target: "/mnt-target".into(),
        kind: MountKind::Tmpfs { size: None },
    });
    let cfg = RunnerConfig {
        snapshotter,
        ..cfg()
    };
    let o = run_with(&cfg, &s).unwrap();
    assert_eq!(o.code, 0, "{snapshotter:?}: {}{}", o.stdout, o.stderr);
    assert!(
        !work.join("root").exists(),
        "{snapshotter:?}: the copy is removed after the diff"
    );
    (o.stdout, upper_listing(&upper))
}

#[test]
fn a_copied_root_shows_what_overlay_shows_and_leaves_the_same_diff() {
    if !can_run("a_copied_root_shows_what_overlay_shows_and_leaves_the_same_diff") {
        return;
    }
    let (overlay_out, overlay) = run_script(Snapshotter::Overlayfs);
    let (native_out, native) = run_script(Snapshotter::Native);
    assert_eq!(
        overlay_out, "shown\nb\n750 1000000000\n1000\n0\ndone\n",
        "overlay's view"
    );
    assert_eq!(native_out, overlay_out, "the copy shows the merged view");
    // Pinned, so that a change to both at once is seen too.
    let expect = |k: &str| native.get(k).map(String::as_str);
    assert_eq!(
        expect("data/a"),
        Some("file \"a\\nmore\\n\" links= 644 0:0 new")
    );
    assert_eq!(expect("data/c"), Some("whiteout 0 0:0 new"));
    assert_eq!(expect("data/sub"), Some("dir opaque=false 700 0:0 new"));
    assert_eq!(expect("rm-me"), Some("whiteout 0 0:0 new"));
    assert_eq!(
        expect("rm-me/inner"),
        None,
        "only the top of a removed tree"
    );
    assert_eq!(expect("f"), Some("dir opaque=true 755 0:0 new"));
    assert_eq!(
        expect("d"),
        Some("file \"now-a-file\\n\" links= 644 0:0 new")
    );
    assert_eq!(expect("bin/ls"), Some("whiteout 0 0:0 new"));
    assert_eq!(expect("keep"), None, "untouched");
    assert_eq!(expect("src"), None, "mount points are not in the diff");
    assert_eq!(expect("mnt-target"), None);
    assert_eq!(expect("etc/hosts"), None);
    assert!(
        expect("data/sub/y").unwrap().contains("links=data/sub/"),
        "{native:#?}\n{overlay:#?}"
    );
    let (o, n): (Vec<_>, Vec<_>) = (overlay.iter().collect(), native.iter().collect());
    assert_eq!(n, o, "the same diff as overlay's upper dir");
}

#[test]
fn a_copied_root_keeps_owners_modes_and_hard_links_of_the_image() {
    if !can_run("a_copied_root_keeps_owners_modes_and_hard_links_of_the_image") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (lay, low) = (t.path().join("layer"), t.path().join("lower"));
    std::fs::create_dir_all(&low).unwrap();
    layer(&lay, &low);
    let mut s = sh("stat -c '%h %u:%g %a' /data/b /keep/k /data/sub; \
         stat -c %i /data/b /data/c | uniq | wc -l; readlink /bin/sh");
    s.rootfs = RootFs {
        lowers: vec![lay, low, busybox_root().to_path_buf()],
        upper: None,
    };
    let cfg = RunnerConfig {
        snapshotter: Snapshotter::Native,
        ..cfg()
    };
    let o = run_with(&cfg, &s).unwrap();
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "2 0:0 644\n1 1000:1000 644\n2 0:0 750\n1\nbusybox\n"
    );
}
