//! `KILN_SNAPSHOTTER=native` (copied roots) and the automatic fallback to
//! it where overlayfs is refused (a store on overlayfs, as in a container's
//! own root): the image is the one an overlay build gives, to the digest.

mod common;

use std::path::Path;

use common::{write_tree, Kiln};

const DOCKERFILE: &str = "FROM busybox\n\
    RUN mkdir -p /d1 /d2 /opq /gone/deep && touch /d1/f /d2/g /opq/x /gone/deep/z \
        && echo a > /hl && ln /hl /hl2 && echo f > /was-file && mkdir /was-dir\n\
    RUN chown 1000:1000 /d1/f && chown -R 65534:65534 /d2 && rm /bin/vi \
        && rm -rf /opq && mkdir /opq && touch /opq/y && rm -rf /gone && rm /hl2 \
        && rm /was-file && mkdir /was-file && rmdir /was-dir && echo now > /was-dir \
        && ln -s /etc/shadow /link && ln /bin/busybox /bin/bb2\n\
    RUN echo more >> /d1/f && chmod 600 /d1/f && mkdir -p /run/secrets\n\
    COPY data.txt /ctx/\n\
    RUN --mount=type=bind,target=/src cp /src/data.txt /copied\n";

fn context() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[("Dockerfile", DOCKERFILE), ("data.txt", "data\n")],
    );
    ctx
}

fn build_id(k: &Kiln, ctx: &Path, snapshotter: &str) -> (String, String) {
    let out = k
        .cmd()
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("KILN_SNAPSHOTTER", snapshotter)
        .args(["build", "--no-cache", "--progress=plain", "-t", "snap"])
        .arg("--iidfile")
        .arg(ctx.join("iid"))
        .arg(ctx)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{snapshotter}: {err}");
    let id = std::fs::read_to_string(ctx.join("iid")).unwrap();
    (id.trim().to_string(), err)
}

#[test]
fn a_native_build_gives_the_image_an_overlay_build_gives() {
    let Some(k) = common::root_with_busybox("kiln build runs containers: needs root") else {
        return;
    };
    let ctx = context();
    let (overlay, _) = build_id(&k, ctx.path(), "overlayfs");
    let (native, err) = build_id(&k, ctx.path(), "native");
    assert!(overlay.starts_with("sha256:"), "{overlay}");
    assert_eq!(native, overlay, "native and overlayfs builds differ");
    assert!(!err.contains("overlayfs was refused"), "{err}");

    let bad = k
        .cmd()
        .env("KILN_SNAPSHOTTER", "zfs")
        .args(["images"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(125));
    assert!(
        String::from_utf8_lossy(&bad.stderr)
            .contains("KILN_SNAPSHOTTER=\"zfs\": expected auto, overlayfs or native"),
        "{bad:?}"
    );
}

struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_store_on_overlayfs_builds_with_copies_and_says_so_once() {
    let Some(k) = common::root_with_busybox("kiln build runs containers: needs root") else {
        return;
    };
    let ctx = context();
    let (want, _) = build_id(&k, ctx.path(), "overlayfs");
    // A store inside an overlay mount, as in a container's own root.
    let t = tempfile::tempdir().unwrap();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(t.path().join(d)).unwrap();
    }
    let p = |d: &str| t.path().join(d).display().to_string();
    let opts = format!("lowerdir={},upperdir={},workdir={}", p("l"), p("u"), p("w"));
    let st = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts, &p("m")])
        .status()
        .unwrap();
    assert!(st.success(), "mount -t overlay");
    let _guard = Unmount(t.path().join("m"));
    let root = t.path().join("m/kiln");
    let on_ovl = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = k.cmd();
        c.env("KILN_ROOT", &root).env_remove("KILN_SNAPSHOTTER");
        for (a, b) in env {
            c.env(a, b);
        }
        c.args(args).output().unwrap()
    };
    // The base, from the other store.
    let tar = t.path().join("busybox.tar");
    k.run(&["save", "-o", tar.to_str().unwrap(), "busybox"])
        .ok();
    let load = on_ovl(&["load", "-i", tar.to_str().unwrap()], &[]);
    assert!(load.status.success(), "{load:?}");

    let iid = t.path().join("iid");
    let b = on_ovl(
        &[
            "build",
            "--progress=plain",
            "--iidfile",
            iid.to_str().unwrap(),
            ctx.path().to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(b.status.success(), "{err}");
    assert_eq!(
        err.matches("overlayfs was refused").count(),
        1,
        "one warning for the build:\n{err}"
    );
    assert!(err.contains("KILN_SNAPSHOTTER=native"), "{err}");
    assert_eq!(std::fs::read_to_string(&iid).unwrap().trim(), want);

    // A detached container there: copied root, kept across a restart.
    let script = "if [ -f /marker ]; then sleep 60; else echo first > /marker; exit 1; fi";
    let r = on_ovl(
        &[
            "run",
            "-d",
            "--restart",
            "on-failure:1",
            "busybox",
            "sh",
            "-c",
            script,
        ],
        &[],
    );
    assert!(r.status.success(), "{r:?}");
    let id = String::from_utf8_lossy(&r.stdout).trim().to_string();
    let mut seen = String::new();
    for _ in 0..100 {
        let e = on_ovl(&["exec", &id, "cat", "/marker"], &[]);
        seen = String::from_utf8_lossy(&e.stdout).into_owned();
        if e.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(seen, "first\n", "the restarted container kept its files");
    let rm = on_ovl(&["rm", "-f", &id], &[]);
    assert!(rm.status.success(), "{rm:?}");

    // overlayfs only: the refusal is the error, with the way out.
    let b = on_ovl(
        &["build", "--no-cache", "-q", ctx.path().to_str().unwrap()],
        &[("KILN_SNAPSHOTTER", "overlayfs")],
    );
    let err = String::from_utf8_lossy(&b.stderr);
    assert!(!b.status.success());
    assert!(
        err.contains("overlay filesystem") && err.contains("KILN_SNAPSHOTTER=overlayfs"),
        "{err}"
    );
}
